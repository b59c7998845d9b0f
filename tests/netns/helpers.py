"""Helpers for the namespace tests: a handle on one `weave lab`, polling, CLI runners.

Theory of operation: tests drive the lab only through its CLI (`python -m
pyweave.cli.lab`, the same code as `weave lab`), so a test exercises exactly what a user
runs.  `Lab` knows the prefix and answers names and addresses from lab.json; `exec` runs
commands via `weave lab exec`, which sets the host's WEAVE_STATE_DIR, so `lab.weave("h2",
"status")` talks to h2's router.  Waiting is always `wait_until(predicate, timeout, what)`:
poll with a deadline and fail with a message saying what never happened — no sleeps of a
guessed length.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyweave.cli import lab_state
from pyweave.cli.lab import weave_argv

T = TypeVar("T")
LAB_CLI = [sys.executable, "-m", "pyweave.cli.lab"]
NETNS_RUN_DIR = Path("/run/netns")


def netns_unavailable_reason() -> str | None:
    """Why the netns tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "netns tests need root"
    if shutil.which("ip") is None:
        return "netns tests need iproute2 (`ip`)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


def weave_cli_ready() -> bool:
    """True once `weave launch` exists (the router is developed in parallel)."""
    probe = subprocess.run(
        [*weave_argv(), "launch", "--help"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0 and "usage" in probe.stdout.lower()


def lab_cli(
    *args: str, timeout: float = 120.0, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `weave lab ARGS...`; with check, fail the test showing the output."""
    result = subprocess.run(
        [*LAB_CLI, *args], capture_output=True, text=True, timeout=timeout, input=input
    )
    if check and result.returncode != 0:
        raise AssertionError(describe(result))
    return result


def describe(result: subprocess.CompletedProcess[str]) -> str:
    cmd = " ".join(str(a) for a in result.args)
    return (
        f"`{cmd}` exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll predicate until it returns something truthy (returned); fail after timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error}" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)  # poll interval, not a guess at how long things take


def lab_namespaces(prefix: str) -> list[str]:
    """Namespaces that belong to the lab with this prefix (by the lab's naming pattern)."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if lab_state.is_lab_member(prefix, n))


def _number(value: int | str, letter: str) -> int:
    return value if isinstance(value, int) else int(str(value).lstrip(letter))


class Lab:
    """One lab, identified by its prefix; see tests/netns/conftest.py for the fixture."""

    def __init__(self, prefix: str, hosts: int, containers: int, password: str | None) -> None:
        self.prefix = prefix
        self.hosts = hosts
        self.containers = containers
        self.password = password

    def up(self, launch: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["up", "--prefix", self.prefix, "--hosts", str(self.hosts)]
        args += ["--containers", str(self.containers)]
        if self.password:
            args += ["--password", self.password]
        if not launch:
            args.append("--no-launch")
        return lab_cli(*args)

    def down(self) -> subprocess.CompletedProcess[str]:
        return lab_cli("down", "--prefix", self.prefix)

    def loss(self, percent: float) -> None:
        """Random loss of the underlay's packets (`weave lab loss`); 0 ends it."""
        lab_cli("loss", "--prefix", self.prefix, f"{percent:g}")

    def exec(
        self,
        name: str,
        *cmd: str,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd in `h1`, `h1c2`, `ul` (or a full namespace name) via `weave lab exec`."""
        args = ["exec", "--prefix", self.prefix, name, "--", *cmd]
        return lab_cli(*args, timeout=timeout, check=check, input=input)

    def weave(
        self, host: str, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """`weave ARGS...` inside host (e.g. "h2"), talking to that host's router."""
        return self.exec(host, *weave_argv(), *args, check=check, timeout=timeout)

    def ping(self, src: str, address: str, count: int = 1) -> bool:
        result = self.exec(src, "ping", "-n", "-c", str(count), "-W", "1", address, check=False)
        return result.returncode == 0

    def addr(self, host: int | str, container: int | str = 1) -> str:
        """Overlay address (no /len) of container j of host i: addr(2, 1) == addr("h2", "c1")."""
        i, j = _number(host, "h"), _number(container, "c")
        for record_host in self.record().get("hosts", []):
            for box in record_host["containers"]:
                if box["name"] == f"h{i}c{j}":
                    return str(box["address"]).split("/")[0]
        return lab_state.container_addr(i, j)

    def underlay_addr(self, host: int | str) -> str:
        return lab_state.underlay_addr(_number(host, "h"))

    def netns(self, name: str) -> str:
        return lab_state.resolve_target(name, self.prefix).netns

    def state_dir(self, host: int | str) -> Path:
        return lab_state.host_state_dir(self.prefix, _number(host, "h"))

    def record(self) -> dict[str, Any]:
        path = lab_state.lab_dir(self.prefix) / lab_state.RECORD_NAME
        try:
            loaded: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return loaded

    def namespaces(self) -> list[str]:
        return lab_namespaces(self.prefix)

    def wait_until(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        return wait_until(predicate, timeout, what)


def spawn_in(netns: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start a long-running process inside a namespace (`ip netns exec` execs into it)."""
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_in(netns: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Like spawn_in, but stdout/stderr are pipes (for a server whose output the test reads)."""
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def reap(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Make sure a process the test started is gone: SIGTERM, then SIGKILL, by its PID only."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def link_info(net: Lab, name: str, ifname: str) -> dict[str, Any] | None:
    """`ip -j addr show IFNAME` in namespace `name` ("h1", "h1c1"): the link, or None."""
    result = net.exec(name, "ip", "-j", "addr", "show", "dev", ifname, check=False)
    if result.returncode != 0:
        return None
    links: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return links[0] if links else None


def ipv4_cidrs(link: dict[str, Any]) -> list[str]:
    """The IPv4 addresses of a link from link_info, as CIDRs, in kernel order."""
    return [
        f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a["family"] == "inet"
    ]


def tcp_listening(net: Lab, name: str, port: int) -> bool:
    """True once something listens on TCP `port` inside namespace `name`."""
    result = net.exec(name, "ss", "-H", "-l", "-t", "-n", f"sport = :{port}", check=False)
    return result.returncode == 0 and bool(result.stdout.strip())


# Receives one TCP connection and writes everything it carries to a file.
TCP_SINK = """
import socket, sys
port, path = int(sys.argv[1]), sys.argv[2]
with socket.create_server(("0.0.0.0", port)) as srv:
    srv.settimeout(30)
    conn, _ = srv.accept()
    conn.settimeout(30)
    with conn, open(path, "wb") as out:
        while chunk := conn.recv(65536):
            out.write(chunk)
"""

# Sends stdin over one TCP connection, then waits until the sink has read it all and closed.
TCP_SOURCE = """
import socket, sys
data = sys.stdin.buffer.read()
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b"", "sink sent data back"
"""


def assert_tcp_transfer_exact(
    net: Lab, src: str, dst: str, address: str, port: int, size: int, tmp_path: Path
) -> None:
    """Send `size` random bytes from container `src` to `dst` (at `address`) over TCP
    through the overlay; the bytes that arrive must be exactly those sent."""
    sink_file = tmp_path / f"received-{port}.bin"
    payload = os.urandom(size)
    sink = start_in(net.netns(dst), [sys.executable, "-c", TCP_SINK, str(port), str(sink_file)])
    try:
        net.wait_until(lambda: tcp_listening(net, dst, port), 10, "TCP sink listening")
        argv = [sys.executable, "-c", TCP_SOURCE, address, str(port)]
        source = subprocess.run(
            ["ip", "netns", "exec", net.netns(src), *argv],
            input=payload,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert source.returncode == 0, source.stderr.decode(errors="replace")
        _, err = sink.communicate(timeout=30)
        assert sink.returncode == 0, err.decode(errors="replace")
    finally:
        reap(sink)
    received = sink_file.read_bytes()
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
