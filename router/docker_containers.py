"""Docker containers on the weave network: the proxy's hooks, the events watcher, cleanup.

Theory of operation: when the router knows a Docker engine (`--docker-api`), it serves
the Docker API proxy (`io/docker_proxy.py`) and watches the engine's container events.

* **Create** (through the proxy): unless the container opts out (`WEAVE_CIDR=none`) or
  has no network of its own (`--network host` / `container:...`), its command is
  wrapped: the entrypoint becomes `/bin/sh /.pyweave/weavewait <original entrypoint>`,
  with the original command kept, and the router's wait directory is bind-mounted
  read-only at `/.pyweave`.  `weavewait` polls `/proc/net/route` until `ethwe` carries
  an address, then `exec`s the original command — so the container's own process never
  runs without its weave address, also after a restart, which gets a fresh network
  namespace.  The container gets the label `works.pyweave.wrapped=<our peer name>`, so
  that of several routers sharing one engine only this one re-attaches it.
* **Start** (through the proxy, answer held until done) and **start events** (restart
  policies, `docker restart`, `docker start` without the proxy) attach the container by
  running `weave attach [ADDR...] <id>` — the very code path a user runs, as Weave Net's
  proxy ran its `weave` script.  Addresses come from the attachment record if the
  container was attached before (so a restart keeps its address), else from
  `WEAVE_CIDR` (space separated, as Weave), else from IPAM (`weave attach` without an
  address).  Attaching is serialised per container and skipped when the container's
  current init pid is already attached, so the proxy and the event never attach twice.
* **Die** marks the container dead; if it is not running again `release_delay` seconds
  later (Weave Net's grace period for restarts), its record and addresses are released.
  **Destroy** (`docker rm`) releases at once.  Releasing removes the attachment record
  and asks the router's own API to free the container's IPAM addresses
  (`DELETE /ip/<id>`, when IPAM exists).
* **Router restart**: the records persist in the state dir; on start every recorded
  Docker container is looked up again: gone -> released, stopped -> dead, running
  without `ethwe` (restarted while we were away) -> re-attached.  Running wrapped
  containers without a record (started while the router was down) are attached too.

Docker SDK calls block, so they run in threads; the events stream has a thread of its
own that hands events to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyweave.router.core.names import format_peer_name
from pyweave.router.io.docker_proxy import DockerProxy

if TYPE_CHECKING:
    from pyweave.router.router import Router

log = logging.getLogger(__name__)

WRAPPED_LABEL = "works.pyweave.wrapped"
WAIT_MOUNT = "/.pyweave"
WAIT_SCRIPT = "weavewait"
ATTACH_TIMEOUT = 60.0
RELEASE_CHECK = 1.0
WAIT_SCRIPT_TEXT = """#!/bin/sh
# pyweave: wait until weave has given ethwe an address, then run the container's command.
# (exec only after the loop: inside it, stdin is redirected from /proc/net/route)
n=0
up=
while [ -z "$up" ]; do
  while read -r dev rest; do
    if [ "$dev" = ethwe ]; then up=1; break; fi
  done < /proc/net/route
  [ -n "$up" ] && break
  n=$((n + 1))
  if [ "$n" -ge "${WEAVE_WAIT_TICKS:-1200}" ]; then
    echo "weavewait: ethwe did not come up; is the weave router running?" >&2
    exit 1
  fi
  sleep 0.05 2>/dev/null || :
done
exec "$@"
"""


@dataclass
class DockerConfig:
    api: str  # the engine: unix:///var/run/docker.sock or tcp://host:port
    proxy_listen: str  # tcp://127.0.0.1:12375, unix:///path, or "" for no proxy
    release_delay: float = 30.0


def weave_cidr(env: list[str] | None) -> list[str] | None:
    """WEAVE_CIDR from a container's environment: None if unset, else its words."""
    for item in env or []:
        if item.startswith("WEAVE_CIDR="):
            return item[len("WEAVE_CIDR=") :].split()
    return None


def _strings(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return None


def wrapped_command(config: dict[str, Any], image: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(entrypoint, cmd) the engine would run for `config`, resolved against the image's.

    Mirrors the engine's merge: no entrypoint in the request -> the image's, and then an
    empty command -> the image's; an explicitly empty entrypoint -> none at all.
    """
    entry = _strings(config.get("Entrypoint"))
    cmd = _strings(config.get("Cmd")) or []
    image_entry = _strings(image.get("Entrypoint")) or []
    image_cmd = _strings(image.get("Cmd")) or []
    if entry is None:
        return image_entry, cmd or image_cmd
    if entry in ([], [""]):
        return [], cmd or image_cmd
    return entry, cmd


def _own_network(host_config: dict[str, Any]) -> bool:
    mode = str(host_config.get("NetworkMode") or "")
    return mode != "host" and not mode.startswith("container:")


class DockerContainers:
    def __init__(self, router: Router, config: DockerConfig) -> None:
        self.router = router
        self.config = config
        self.client: Any = None  # Docker SDK APIClients, made in start(): they dial the engine
        self.events_client: Any = None
        self.proxy = (
            DockerProxy(config.proxy_listen, config.api, self) if config.proxy_listen else None
        )
        self.wait_dir = os.path.join(router.config.state_dir, "weavewait")
        self.label = format_peer_name(router.config.name)  # WRAPPED_LABEL's value
        self.attached_pid: dict[str, int] = {}
        self.dead: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = threading.Event()
        self._events_stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- start / stop --------------------------------------------------------------

    async def start(self) -> None:
        import docker  # the SDK: only needed when the router knows an engine

        self._loop = asyncio.get_running_loop()
        api = self.config.api
        self.client = await asyncio.to_thread(docker.APIClient, base_url=api, timeout=30)
        self.events_client = await asyncio.to_thread(docker.APIClient, base_url=api, timeout=None)
        self._write_wait_script()
        if self.proxy is not None:
            await self.proxy.start()
        self.router.api.route("GET", "/proxy", self._proxy_info)
        threading.Thread(target=self._watch_events, name="docker-events", daemon=True).start()
        self._tasks = [
            asyncio.ensure_future(self._reconcile()),
            asyncio.ensure_future(self._release_loop()),
        ]
        log.info("docker: engine %s, proxy %s", self.config.api, self.config.proxy_listen or "off")

    async def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(Exception):
            if self._events_stream is not None:
                self._events_stream.close()
        for task in self._tasks:
            task.cancel()
        if self.proxy is not None:
            await self.proxy.stop()

    async def _proxy_info(self, rest: str, body: object) -> tuple[int, object]:
        if self.proxy is None:
            return 404, {"error": "the Docker API proxy is off (--no-proxy)"}
        return 200, {"address": self.config.proxy_listen, "engine": self.config.api}

    def _write_wait_script(self) -> None:
        os.makedirs(self.wait_dir, exist_ok=True)
        os.chmod(self.wait_dir, 0o755)
        path = os.path.join(self.wait_dir, WAIT_SCRIPT)
        with open(path + ".tmp", "w") as f:
            f.write(WAIT_SCRIPT_TEXT)
        os.chmod(path + ".tmp", 0o755)
        os.replace(path + ".tmp", path)

    # -- the proxy's hooks ---------------------------------------------------------

    async def rewrite_create(self, query: str, config: dict[str, Any]) -> dict[str, Any]:
        host_config = config.get("HostConfig") or {}
        if weave_cidr(config.get("Env")) == ["none"] or not _own_network(host_config):
            return config
        try:
            image = await asyncio.to_thread(self.client.inspect_image, config.get("Image"))
        except Exception:
            return config  # no such image yet: the engine answers 404, the client pulls
        entry, cmd = wrapped_command(config, image.get("Config") or {})
        config["Entrypoint"] = ["/bin/sh", f"{WAIT_MOUNT}/{WAIT_SCRIPT}", *entry]
        config["Cmd"] = cmd
        binds = list(host_config.get("Binds") or [])
        binds.append(f"{self.wait_dir}:{WAIT_MOUNT}:ro")
        host_config["Binds"] = binds
        config["HostConfig"] = host_config
        labels = dict(config.get("Labels") or {})
        labels[WRAPPED_LABEL] = self.label  # only this router re-attaches it
        config["Labels"] = labels
        return config

    async def container_started(self, container: str) -> str | None:
        return await self._attach(container, from_proxy=True)

    # -- attaching -----------------------------------------------------------------

    async def _attach(self, container: str, from_proxy: bool) -> str | None:
        """Attach if the container should be on weave; an error text, or None."""
        try:
            info = await asyncio.to_thread(self.client.inspect_container, container)
        except Exception as exc:
            return f"weave: cannot inspect container {container}: {exc}"
        short = str(info["Id"])[:12]
        lock = self._locks.setdefault(short, asyncio.Lock())
        async with lock:
            state = info.get("State") or {}
            pid = int(state.get("Pid") or 0)
            if not state.get("Running") or pid <= 0:
                return None
            if self.attached_pid.get(short) == pid:
                return None
            addresses = self._addresses_for(short, info, from_proxy)
            if addresses is None:
                return None
            error = await self._run_attach(short, addresses)
            if error is None:
                self.attached_pid[short] = pid
                self.dead.pop(short, None)
            elif not await self._is_running(short, pid):
                return None  # it ran and ended (docker run --rm true) while we attached it
            else:
                log.warning("docker: attaching %s failed: %s", short, error)
            return error

    def _addresses_for(
        self, short: str, info: dict[str, Any], from_proxy: bool
    ) -> list[str] | None:
        """The addresses to attach with ([] = IPAM), or None if it stays off weave."""
        record = self.router.attachments.items.get(short)
        if record is not None and record.get("cidrs"):
            return list(record["cidrs"])
        config = info.get("Config") or {}
        requested = weave_cidr(config.get("Env"))
        if requested == ["none"] or not _own_network(info.get("HostConfig") or {}):
            return None
        wrapped = (config.get("Labels") or {}).get(WRAPPED_LABEL) == self.label
        if not (from_proxy or wrapped):
            return None
        return requested or []

    async def _run_attach(self, short: str, addresses: list[str]) -> str | None:
        env = dict(os.environ)
        env.pop("ORIG_DOCKER_HOST", None)
        env["DOCKER_HOST"] = self.config.api
        env["WEAVE_STATE_DIR"] = self.router.config.state_dir
        env["WEAVE_HTTP_ADDR"] = f"{self.router.config.api_host}:{self.router.config.api_port}"
        argv = [sys.executable, "-m", "pyweave.cli.main", "attach", *addresses, short]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), ATTACH_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return f"weave: attaching container {short} timed out"
        if proc.returncode != 0:
            return err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        log.info("docker: attached %s: %s", short, out.decode(errors="replace").strip())
        return None

    # -- events --------------------------------------------------------------------

    def _watch_events(self) -> None:
        """Thread: follow the engine's container events, reconnecting after failures."""
        while not self._stopping.is_set():
            try:
                stream = self.events_client.events(decode=True, filters={"type": "container"})
                self._events_stream = stream
                for event in stream:
                    if self._stopping.is_set():
                        return
                    if self._loop is not None:
                        self._loop.call_soon_threadsafe(self._on_event, event)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning("docker: events stream failed (%s); reconnecting", exc)
            self._stopping.wait(1.0)

    def _on_event(self, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        container = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")[:12]
        if not container or self._stopping.is_set():
            return
        if action == "start":
            self._spawn(self._attach_logged(container))
        elif action == "die":
            self.attached_pid.pop(container, None)
            if container in self.router.attachments.items:
                self.dead[container] = self.router.loop_time()
        elif action == "destroy":
            self.attached_pid.pop(container, None)
            self._spawn(self._release(container))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _attach_logged(self, container: str) -> None:
        await self._attach(container, from_proxy=False)  # failures are logged there

    # -- releasing -----------------------------------------------------------------

    async def _release(self, short: str) -> None:
        self.dead.pop(short, None)
        lock = self._locks.get(short)
        if lock is not None and not lock.locked():  # an attach in progress keeps its lock
            del self._locks[short]
        record = self.router.attachments.remove(short)
        with contextlib.suppress(Exception):
            await self.router.api._dispatch("DELETE", f"/ip/{short}", None)
        if record is not None:
            log.info("docker: released %s (%s)", short, " ".join(record.get("cidrs", [])))

    async def _release_loop(self) -> None:
        while True:
            await asyncio.sleep(RELEASE_CHECK)
            now = self.router.loop_time()
            for short, since in list(self.dead.items()):
                if now - since >= self.config.release_delay:
                    if await self._is_running(short):
                        self.dead.pop(short, None)
                    else:
                        await self._release(short)

    async def _is_running(self, container: str, pid: int = 0) -> bool:
        """Is it running (and, given a pid, still the same process)?"""
        try:
            info = await asyncio.to_thread(self.client.inspect_container, container)
        except Exception:
            return False
        state = info.get("State") or {}
        return bool(state.get("Running")) and (not pid or int(state.get("Pid") or 0) == pid)

    async def _reconcile(self) -> None:
        """After a (re)start: find the recorded and the wrapped containers again."""
        import docker.errors

        for record in list(self.router.attachments.list()):
            if not str(record.get("netns", "")).startswith("docker:"):
                continue
            short = record["container"]
            try:
                info = await asyncio.to_thread(self.client.inspect_container, short)
            except docker.errors.NotFound:
                await self._release(short)
                continue
            except Exception as exc:
                log.warning("docker: cannot look up %s: %s", short, exc)
                continue
            await self._adopt(short, info)
        try:
            wrapped = await asyncio.to_thread(
                self.client.containers,
                filters={"label": f"{WRAPPED_LABEL}={self.label}"},
            )
        except Exception as exc:
            log.warning("docker: cannot list containers: %s", exc)
            return
        for item in wrapped:
            short = str(item["Id"])[:12]
            if short not in self.attached_pid:
                await self._attach_logged(short)

    async def _adopt(self, short: str, info: dict[str, Any]) -> None:
        state = info.get("State") or {}
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid <= 0:
            self.dead[short] = self.router.loop_time()
            return
        if _has_ethwe(pid):
            self.attached_pid[short] = pid
        else:
            await self._attach_logged(short)


def _has_ethwe(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            return any(line.strip().startswith("ethwe:") for line in f)
    except OSError:
        return False
