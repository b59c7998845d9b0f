"""Containers and their network namespaces.

Theory of operation: a *container spec* names a network namespace three ways — a Docker
container (name or ID, resolved to its init PID through the Docker SDK, talking to the
engine itself: ORIG_DOCKER_HOST when `weave proxy-env` set it), `netns:NAME` (a
named namespace under /run/netns, as `ip netns add` makes) or `pid:PID` (any process).
`resolve` turns a spec into a `Container` with the path of its namespace file and the id
`weave ps` shows.  `entered(path)` switches this thread into a namespace and back with
setns(2) (Python 3.11 has no os.setns), so netlink sockets opened inside it act there.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pyweave.cli.errors import CliError

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}$")


@dataclass(frozen=True)
class Container:
    id: str  # what `weave ps` shows and the router keys attachments by
    spec: str  # how the user named it: "netns:NAME", "pid:PID", "docker:ID"
    netns_path: str


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise CliError(f"cannot enter network namespace: {os.strerror(err)}")


@contextlib.contextmanager
def entered(netns_path: str) -> Iterator[None]:
    """Run the body inside the network namespace at `netns_path`."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path, os.O_RDONLY)
    except OSError as exc:
        os.close(home)
        raise CliError(f"cannot open network namespace {netns_path}: {exc.strerror}") from exc
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def resolve(spec: str) -> Container:
    """Resolve a container spec; CliError with a one-line reason when it cannot be."""
    if spec.startswith("netns:"):
        name = spec[len("netns:") :]
        if not _NAME_RE.match(name):
            raise CliError(f"invalid namespace name in {spec!r}")
        path = os.path.join(NETNS_DIR, name)
        if not os.path.exists(path):
            raise CliError(f"network namespace {name!r} does not exist")
        return Container(name, spec, path)
    if spec.startswith("pid:"):
        pid = spec[len("pid:") :]
        if not pid.isdigit() or int(pid) <= 0:
            raise CliError(f"invalid process id in {spec!r}")
        path = f"/proc/{int(pid)}/ns/net"
        if not os.path.exists(path):
            raise CliError(f"no process with pid {pid}")
        return Container(spec, spec, path)
    return _resolve_docker(spec)


def _resolve_docker(ref: str) -> Container:
    if not ref or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", ref):
        raise CliError(
            f"invalid container {ref!r}: expected a Docker container name or ID, "
            "netns:NAME or pid:PID"
        )
    try:
        import docker  # the Docker SDK; only needed for Docker containers
        from docker.errors import DockerException, NotFound
        from pyweave.cli.docker_launch import engine_url

        # the engine itself, not the proxy `eval $(weave proxy-env)` pointed DOCKER_HOST at
        client = docker.from_env(environment={**os.environ, "DOCKER_HOST": engine_url()})
    except Exception as exc:
        raise CliError(
            f"container {ref!r}: Docker is not reachable ({exc}); "
            "use netns:NAME or pid:PID for plain namespaces"
        ) from exc
    try:
        info = client.api.inspect_container(ref)
    except NotFound as exc:
        raise CliError(f"container {ref} not found") from exc
    except DockerException as exc:
        raise CliError(f"container {ref}: {exc}") from exc
    pid = int(info["State"]["Pid"])
    if not info["State"]["Running"] or pid <= 0:
        raise CliError(f"container {ref} is not running")
    return Container(str(info["Id"])[:12], f"docker:{info['Id']}", f"/proc/{pid}/ns/net")
