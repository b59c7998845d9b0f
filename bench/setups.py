"""The contenders of the data-path benchmark, each built on a `weave lab` of namespaces.

Theory of operation: every setup starts from `weave lab up --no-launch` (hosts `{P}h{i}` on
the underlay bridge, 192.0.2.{10+i}, and one container namespace `{P}h{i}c1` each) and then
wires the containers its own way:

  underlay   no overlay: iperf3 runs between the host namespaces themselves;
  vxlan      kernel VXLAN: per host a bridge `brvx` with a vxlan port (unicast flood list
             to the other hosts) and a veth into the container, 10.129.{i}.1/16, MTU 1450;
  tinc       tinc 1.0 in switch mode: tincd's TAP on a bridge `brtc` with the container's
             veth, 10.130.{i}.1/16, MTU 1376; `cipher="default"` (aes-256-cbc + sha256,
             tinc's defaults) or `"none"` (Cipher = none, Digest = none: no crypto);
  pyweave    `weave launch` in every host (h{i} peers with h{i-1}: a chain, so the 3-host
             relay topology works with h1<->h3 blocked), `weave attach 10.128.{i}.1/10`,
             plain or with a password; `weave` may come from another commit (`tree`).

With three hosts, h1 and h3 cannot reach each other on the underlay (iptables DROP in both)
before anything starts, so overlays must relay through h2.  `down` removes the lab (every
process in its namespaces included) and the temporary tinc configuration.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAB = [sys.executable, "-m", "pyweave.cli.lab"]
LAB_ROOT = Path(os.environ.get("PYWEAVE_LAB_ROOT", "/var/lib/pyweave-lab"))
TINC_MTU = 1376
VXLAN_MTU = 1450


def sh(netns: str, *cmd: str, check: bool = True, timeout: float = 60) -> str:
    """Run cmd inside netns; return stdout (raise with the output on failure)."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{netns}: {' '.join(cmd)}: {result.stderr.strip() or result.stdout}")
    return result.stdout


def underlay_ip(i: int) -> str:
    return f"192.0.2.{10 + i}"


class Setup:
    """A lab of `hosts` hosts; subclasses add the overlay in `wire`."""

    name = "?"
    uses_containers = True

    def __init__(self, prefix: str, hosts: int) -> None:
        self.prefix = prefix
        self.hosts = hosts

    def host(self, i: int) -> str:
        return f"{self.prefix}h{i}"

    def container(self, i: int) -> str:
        return f"{self.prefix}h{i}c1"

    def up(self) -> None:
        subprocess.run([*LAB, "down", "--prefix", self.prefix], capture_output=True, check=False)
        containers = "1" if self.uses_containers else "0"
        argv = ["up", "--no-launch", "--hosts", str(self.hosts), "--containers", containers]
        subprocess.run([*LAB, *argv, "--prefix", self.prefix], capture_output=True, check=True)
        if self.hosts >= 3:
            self._block(1, self.hosts)
        self.wire()

    def _block(self, a: int, b: int) -> None:
        for me, other in ((a, b), (b, a)):
            sh(self.host(me), "iptables", "-I", "INPUT", "-s", underlay_ip(other), "-j", "DROP")
            sh(self.host(me), "iptables", "-I", "OUTPUT", "-d", underlay_ip(other), "-j", "DROP")

    def wire(self) -> None:
        raise NotImplementedError

    def down(self) -> None:
        subprocess.run([*LAB, "down", "--prefix", self.prefix], capture_output=True, check=False)

    def client(self) -> str:
        return self.container(1)

    def server(self) -> str:
        return self.container(self.hosts)

    def server_address(self) -> str:
        raise NotImplementedError

    def router_pids(self) -> list[int]:
        return []

    def _veth_to_container(self, i: int, bridge: str, cidr: str, mtu: int) -> None:
        host, box = self.host(i), self.container(i)
        sh(host, "ip", "link", "add", "vbx", "type", "veth", "peer", "name", "eth1", "netns", box)
        sh(host, "ip", "link", "set", "vbx", "mtu", str(mtu), "master", bridge, "up")
        sh(box, "ip", "link", "set", "eth1", "mtu", str(mtu), "up")
        sh(box, "ip", "addr", "add", cidr, "dev", "eth1")


class Underlay(Setup):
    name = "underlay"
    uses_containers = False

    def wire(self) -> None:
        pass

    def client(self) -> str:
        return self.host(1)

    def server(self) -> str:
        return self.host(self.hosts)

    def server_address(self) -> str:
        return underlay_ip(self.hosts)


class Vxlan(Setup):
    name = "vxlan"

    def wire(self) -> None:
        for i in range(1, self.hosts + 1):
            host = self.host(i)
            sh(host, "ip", "link", "add", "brvx", "type", "bridge")
            sh(host, "ip", "link", "set", "brvx", "up")
            sh(host, "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789",
               "local", underlay_ip(i), "dev", "eth0")  # fmt: skip
            sh(host, "ip", "link", "set", "vx0", "master", "brvx", "up")
            for j in range(1, self.hosts + 1):
                if j != i:
                    sh(host, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0",
                       "dst", underlay_ip(j))  # fmt: skip
            self._veth_to_container(i, "brvx", f"10.129.{i}.1/16", VXLAN_MTU)

    def server_address(self) -> str:
        return f"10.129.{self.hosts}.1"


class Tinc(Setup):
    def __init__(self, prefix: str, hosts: int, cipher: str) -> None:
        super().__init__(prefix, hosts)
        self.cipher = cipher
        self.name = f"tinc-{cipher}"
        self.confdir = Path(tempfile.mkdtemp(prefix="pyweave-bench-tinc-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def wire(self) -> None:
        for i in range(1, self.hosts + 1):
            self._configure(i)
        for i in range(1, self.hosts + 1):  # every host file (with its key) everywhere
            for j in range(1, self.hosts + 1):
                if i != j:
                    shutil.copy(self._dir(j) / "hosts" / f"h{j}", self._dir(i) / "hosts")
        for i in range(1, self.hosts + 1):
            host = self.host(i)
            sh(host, "ip", "link", "add", "brtc", "type", "bridge")
            sh(host, "ip", "link", "set", "brtc", "up")
            pidfile = self._dir(i) / "pid"
            argv = ["tincd", "-D", "-c", str(self._dir(i)), f"--pidfile={pidfile}"]
            self.procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", host, *argv],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for i in range(1, self.hosts + 1):
            _wait(lambda i=i: "tinc" in sh(self.host(i), "ip", "-o", "link"), 10, "tinc TAP")
            self._veth_to_container(i, "brtc", f"10.130.{i}.1/16", TINC_MTU)

    def _dir(self, i: int) -> Path:
        return self.confdir / f"h{i}"

    def _configure(self, i: int) -> None:
        conf = self._dir(i)
        (conf / "hosts").mkdir(parents=True)
        connect = f"ConnectTo = h{i - 1}\n" if i > 1 else ""
        (conf / "tinc.conf").write_text(
            f"Name = h{i}\nMode = switch\nAddressFamily = ipv4\nInterface = tinc{i}\n{connect}"
        )
        crypto = "Cipher = none\nDigest = none\n" if self.cipher == "none" else ""
        if self.hosts >= 3 and i in (1, self.hosts):  # h1 <-> h3 blocked: relay via h2
            crypto += "IndirectData = yes\n"
        (conf / "hosts" / f"h{i}").write_text(f"Address = {underlay_ip(i)}\nPort = 655\n{crypto}")
        up = conf / "tinc-up"
        up.write_text("#!/bin/sh\nip link set $INTERFACE up\nip link set $INTERFACE master brtc\n")
        up.chmod(0o755)
        subprocess.run(
            ["tincd", "-c", str(conf), "-K2048"],
            input=b"\n\n",
            capture_output=True,
            check=True,
        )

    def router_pids(self) -> list[int]:
        pids = []
        for i in range(1, self.hosts + 1):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pids.append(int((self._dir(i) / "pid").read_text().split()[0]))
        return pids

    def server_address(self) -> str:
        return f"10.130.{self.hosts}.1"

    def down(self) -> None:
        for proc in self.procs:  # our own children, by PID
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        super().down()
        shutil.rmtree(self.confdir, ignore_errors=True)


class Pyweave(Setup):
    """pyweave routers; `weave` is a program path (this tree's, or another commit's)."""

    def __init__(
        self, prefix: str, hosts: int, password: str | None, weave: list[str], label: str
    ) -> None:
        super().__init__(prefix, hosts)
        self.password = password
        self.weave = weave
        self.name = label

    def _env(self, i: int) -> dict[str, str]:
        env = dict(os.environ, WEAVE_STATE_DIR=str(self.state_dir(i)))
        env.pop("WEAVE_PASSWORD", None)
        if self.password:
            env["WEAVE_PASSWORD"] = self.password
        return env

    def state_dir(self, i: int) -> Path:
        return LAB_ROOT / self.prefix / f"h{i}"

    def _weave(self, i: int, *args: str, attempts: int = 5) -> None:
        """Run weave in host i; retried (a router may still be starting), errors shown."""
        for attempt in range(attempts):
            result = subprocess.run(
                ["ip", "netns", "exec", self.host(i), *self.weave, *args],
                env=self._env(i),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if result.returncode == 0:
                return
            time.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"h{i}: weave {' '.join(args)}: {result.stderr or result.stdout}")

    def wire(self) -> None:
        for i in range(1, self.hosts + 1):
            peers = [underlay_ip(i - 1)] if i > 1 else []
            self._weave(i, "launch", "--nickname", f"h{i}", *peers)
        for i in range(1, self.hosts + 1):
            self._weave(i, "attach", f"10.128.{i}.1/10", f"netns:{self.container(i)}")

    def server_address(self) -> str:
        return f"10.128.{self.hosts}.1"

    def router_pids(self) -> list[int]:
        pids = []
        for i in range(1, self.hosts + 1):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pids.append(int((self.state_dir(i) / "weave.pid").read_text().split()[0]))
        return pids


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def wait_reachable(setup: Setup, timeout: float = 40.0) -> None:
    """Until the client can ping the server (routes, handshakes, ARP all done)."""
    address = setup.server_address()

    def ping() -> bool:
        result = subprocess.run(
            ["ip", "netns", "exec", setup.client(), "ping", "-c", "1", "-W", "1", address],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    _wait(ping, timeout, f"{setup.name}: {setup.client()} reaching {address}")
