"""`weave launch` / `weave stop` with Docker: the router as the container `weave`.

Theory of operation: `launch` first decides where the router runs.  `--local` means a
host process (cli/launch.py), `--container` means a container; without either, a
container when a Docker engine answers (DOCKER_HOST, else the default socket) and runs in
this network namespace (its `--network host` must be ours), else a host process.  When
`weave proxy-env` has pointed DOCKER_HOST at the proxy, the real engine is
`ORIG_DOCKER_HOST` (empty: the default socket) — the proxy itself is part of the router
and cannot start it.

In a container the router gets what it needs and no more: the host's network and pid
namespaces (its bridge and TAP must live in the host's network namespace, and it enters
containers' namespaces through /proc/<pid>/ns/net), the capabilities NET_ADMIN, NET_RAW,
SYS_ADMIN (setns) and SYS_PTRACE (opening other processes' namespaces) instead of
`--privileged`, /dev/net/tun, the engine's socket at /var/run/docker.sock, /run/netns
(for `netns:` specs), and the state directory bind-mounted at the *same path*, so the pid
file lock, the log and the weavewait directory mean the same inside and out (likewise the
directory of a unix-socket proxy address).  Restart
policy `always`, as Weave Net.  Either way the router also serves the Docker API proxy
when it knows an engine.  `$WEAVE_STATE_DIR/launch.json` remembers a container launch so
that `weave stop` stops the container (a killed process would be restarted by Docker).
`status` and the other commands need no change: the router answers on the same API
address in both modes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
import time
from importlib import metadata
from typing import Any, cast

from pyweave.cli import api_client
from pyweave.cli.errors import CliError
from pyweave.cli.launch import LAUNCH_TIMEOUT, POLL, prepare_state_dir, state_dir
from pyweave.router.api_types import Status

CONTAINER_NAME = "weave"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
DEFAULT_PROXY = "tcp://127.0.0.1:12375"
RECORD = "launch.json"
CAPABILITIES = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"]
SOCKET_IN_CONTAINER = "/var/run/docker.sock"


def version() -> str:
    try:
        return metadata.version("pyweave")
    except metadata.PackageNotFoundError:
        return "0.1.0"


def image_name() -> str:
    return os.environ.get("WEAVE_IMAGE") or f"pyweave/weave:{version()}"


def engine_url() -> str:
    """The real Docker engine: never the proxy that `weave proxy-env` set."""
    if "ORIG_DOCKER_HOST" in os.environ:
        return os.environ["ORIG_DOCKER_HOST"] or DEFAULT_SOCKET
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def client(url: str, timeout: int = 30) -> Any:
    import docker

    return docker.APIClient(base_url=url, timeout=timeout)


def engine_here(url: str) -> bool:
    """An engine answers at `url` and runs in our network namespace (so its `weave`
    container is this host's router, not another namespace's)."""
    return engine_answers(url) and engine_shares_our_netns(url)


def engine_answers(url: str) -> bool:
    if url.startswith("unix://") and not os.path.exists(url[len("unix://") :]):
        return False
    try:
        return bool(client(url, timeout=5).ping())
    except Exception:
        return False


def engine_shares_our_netns(url: str) -> bool:
    """Does the engine run in this network namespace (so `--network host` means here)?

    For a unix socket the engine's pid comes from SO_PEERCRED; a TCP engine is taken to be
    local.  A simulated host's router must not end up in the root namespace just because
    the machine's own dockerd socket is visible from every network namespace.
    """
    if not url.startswith("unix://"):
        return True
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(url[len("unix://") :])
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        theirs, ours = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/self/ns/net")
        return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
    except OSError:
        return False


def docker_router_args(url: str | None, proxy: str) -> list[str]:
    if url is None:
        return []
    return ["--docker-api", url, "--docker-proxy", proxy]


def _record_path() -> str:
    return os.path.join(state_dir(), RECORD)


def read_record() -> dict[str, str] | None:
    try:
        with open(_record_path()) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return None
    return cast(dict[str, str], raw) if isinstance(raw, dict) else None


def _wait_for_router(api: Any, container_id: str) -> str:
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline:
        try:
            status = cast(Status, api_client.call("GET", "/status", timeout=1.0))
            return status["router"]["name"]
        except CliError:
            pass
        state = api.inspect_container(container_id)["State"]
        if not state.get("Running") and not state.get("Restarting"):
            tail = api.logs(container_id, tail=5).decode(errors="replace").strip()
            last = tail.splitlines()[-1] if tail else "no output"
            raise CliError(f"weave router container exited: {last}")
        time.sleep(POLL)
    raise CliError(
        f"weave router did not answer within {LAUNCH_TIMEOUT:.0f}s; see docker logs weave"
    )


def _remove_stale(api: Any) -> None:
    import docker.errors

    try:
        info = api.inspect_container(CONTAINER_NAME)
    except docker.errors.NotFound:
        return
    if info["State"].get("Running") or info["State"].get("Restarting"):
        raise CliError(f"weave router container is already running ({str(info['Id'])[:12]})")
    api.remove_container(CONTAINER_NAME, force=True)


def _binds(url: str, directory: str, proxy: str) -> tuple[list[str], str]:
    """Bind mounts, and the DOCKER_HOST the router sees."""
    binds = [f"{directory}:{directory}"]
    if proxy.startswith("unix://"):  # the proxy's socket must appear on the host
        socket_dir = os.path.dirname(proxy[len("unix://") :]) or "/"
        os.makedirs(socket_dir, exist_ok=True)
        binds.append(f"{socket_dir}:{socket_dir}")
    inside = url
    if url.startswith("unix://"):
        binds.append(f"{url[len('unix://') :]}:{SOCKET_IN_CONTAINER}")
        inside = f"unix://{SOCKET_IN_CONTAINER}"
    if os.path.ismount("/run/netns"):
        binds.append("/run/netns:/run/netns:rslave")
    return binds, inside


def _image_present(url: str) -> bool:
    try:
        client(url).inspect_image(image_name())
    except Exception:
        return False
    return True


def launch_container(router_args: list[str], password: str | None, url: str, proxy: str) -> str:
    import docker.errors

    directory = prepare_state_dir()
    api = client(url)
    image = image_name()
    try:
        api.inspect_image(image)
    except docker.errors.ImageNotFound as exc:
        raise CliError(
            f"image {image} not found: build it (see docs/docker.md), set WEAVE_IMAGE, "
            "or use weave launch --local"
        ) from exc
    _remove_stale(api)
    binds, inside = _binds(url, directory, proxy)
    env = {"WEAVE_STATE_DIR": directory, "DOCKER_HOST": inside, "PYTHONUNBUFFERED": "1"}
    if password:
        env["WEAVE_PASSWORD"] = password
    host_config = api.create_host_config(
        network_mode="host",
        pid_mode="host",
        restart_policy={"Name": "always"},
        cap_add=CAPABILITIES,
        devices=["/dev/net/tun:/dev/net/tun:rwm"],
        binds=binds,
    )
    argv = ["--state-dir", directory, *docker_router_args(inside, proxy), *router_args]
    created = api.create_container(
        image,
        command=argv,
        name=CONTAINER_NAME,
        environment=env,
        host_config=host_config,
        labels={"works.pyweave.role": "router"},
    )
    container_id = str(created["Id"])
    with open(_record_path(), "w") as f:
        json.dump({"mode": "container", "engine": url, "container": container_id}, f)
    api.start(container_id)
    return _wait_for_router(api, container_id)


def stop_container(url: str) -> bool:
    """Stop and remove the router container; False if there is none to stop."""
    import docker.errors

    api = client(url)
    try:
        info = api.inspect_container(CONTAINER_NAME)
    except docker.errors.NotFound:
        return False
    except docker.errors.DockerException as exc:
        raise CliError(f"cannot reach Docker at {url}: {exc}") from exc
    running = bool(info["State"].get("Running") or info["State"].get("Restarting"))
    if running:
        api.stop(CONTAINER_NAME, timeout=10)
    api.remove_container(CONTAINER_NAME, force=True)
    return running


def launch(router_args: list[str], password: str | None, mode: str, proxy: str | None) -> str:
    """Launch in `mode` ("local", "container" or "auto"); return the peer name."""
    from pyweave.cli.launch import launch as launch_local

    url = engine_url()
    answers = engine_here(url)
    if mode == "container" and not answers:
        raise CliError(
            f"weave launch --container: no Docker engine answers at {url} in this network namespace"
        )
    listen = DEFAULT_PROXY if proxy is None else proxy
    if mode == "auto" and answers and not _image_present(url):
        print(
            f"weave: image {image_name()} not found (see docs/docker.md); "
            "running the router as a host process",
            file=sys.stderr,
        )
        mode = "local"
    if mode == "container" or (mode == "auto" and answers):
        return launch_container(router_args, password, url, listen)
    with contextlib.suppress(OSError):
        os.unlink(_record_path())
    extra = docker_router_args(url if answers else None, listen)
    return launch_local([*extra, *router_args], password)


def stop() -> None:
    from pyweave.cli.launch import stop as stop_local

    record = read_record()
    if record is not None and record.get("mode") == "container":
        url = record.get("engine") or engine_url()
        stopped = stop_container(url)
        with contextlib.suppress(OSError):
            os.unlink(_record_path())
        if stopped:
            return
        raise CliError("weave router is not running")
    url = engine_url()
    if engine_here(url) and stop_container(url):
        return  # launched as a container, record lost: never SIGTERM it (Docker restarts it)
    stop_local()
