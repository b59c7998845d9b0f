"""Two simulated hosts, real routers launched by the real CLI: traffic between containers.

Each test brings up its own lab (`lab(hosts=2, containers=1)`: h1c1 on h1, h2c1 on h2)
and first waits — with a deadline, never a fixed sleep — until the containers reach each
other, then checks one property of the overlay: ARP and ICMP both ways, the MTU edge
(largest DF ping passes, one byte more fails locally, loudly), bulk TCP throughput with
iperf3, byte-exact TCP delivery, and recovery after `weave stop` + `weave launch`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Lab,
    assert_tcp_transfer_exact,
    describe,
    link_info,
    reap,
    start_in,
    tcp_listening,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
LabFactory = Callable[..., Lab]

CONNECT_TIMEOUT = 30.0  # first handshake + UDP proof after `lab up`
TRANSFER_BYTES = 5 * 1024 * 1024


def connected_lab(lab: LabFactory) -> Lab:
    """A 2-host lab whose containers already reach each other both ways."""
    net = lab(hosts=2, containers=1)
    a1, a2 = net.addr(1, 1), net.addr(2, 1)
    net.wait_until(lambda: net.ping("h1c1", a2), CONNECT_TIMEOUT, f"h1c1 reaching {a2}")
    net.wait_until(lambda: net.ping("h2c1", a1), CONNECT_TIMEOUT, f"h2c1 reaching {a1}")
    return net


def ethwe(net: Lab, name: str) -> dict[str, Any]:
    link = link_info(net, name, "ethwe")
    assert link is not None, f"{name} has no ethwe"
    return link


def neighbour_mac(net: Lab, name: str, address: str) -> str | None:
    out = net.exec(name, "ip", "-j", "neigh", "show", address, "dev", "ethwe").stdout
    entries = json.loads(out or "[]")
    return entries[0].get("lladdr") if entries else None


def test_arp_and_ping_both_ways(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1)
    boxes = {"h1c1": net.addr(1, 1), "h2c1": net.addr(2, 1)}
    macs = {name: ethwe(net, name)["address"] for name in boxes}
    for name in boxes:  # the ARP resolution below must happen over the overlay
        net.exec(name, "ip", "neigh", "flush", "dev", "ethwe")
    for src, dst in (("h1c1", "h2c1"), ("h2c1", "h1c1")):
        net.wait_until(
            lambda s=src, d=dst: net.ping(s, boxes[d]), CONNECT_TIMEOUT, f"{src} reaching {dst}"
        )
        learned = neighbour_mac(net, src, boxes[dst])
        assert learned == macs[dst], f"{src} resolved {boxes[dst]} to {learned}, not {macs[dst]}"
        result = net.exec(src, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", boxes[dst])
        assert " 0% packet loss" in result.stdout, describe(result)


def test_mtu_edge_is_exact_and_loud(lab: LabFactory) -> None:
    net = connected_lab(lab)
    mtu = int(ethwe(net, "h1c1")["mtu"])
    assert mtu == int(ethwe(net, "h2c1")["mtu"]), "the two containers disagree on the MTU"
    largest = mtu - 28  # IPv4 (20) + ICMP (8) headers
    for src, dst in (("h1c1", net.addr(2, 1)), ("h2c1", net.addr(1, 1))):

        def big_ping(s: str = src, d: str = dst) -> subprocess.CompletedProcess[str] | None:
            argv = ("ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", str(largest), d)
            result = net.exec(s, *argv, check=False)
            return result if result.returncode == 0 else None

        # Poll (the first full-size frame may race a fresh connection), but the verdict
        # is a clean, complete reply.
        result = net.wait_until(big_ping, 15, f"{src}: DF ping of {largest} B (MTU {mtu}) to {dst}")
        assert f"{largest + 8} bytes from {dst}" in result.stdout, describe(result)

        too_big = net.exec(
            src,
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            str(largest + 1),
            dst,
            check=False,
        )
        assert too_big.returncode != 0, describe(too_big)
        output = too_big.stdout + too_big.stderr
        assert "message too long" in output, f"not a local error:\n{describe(too_big)}"
        assert f"mtu={mtu}" in output, describe(too_big)


def test_iperf3_tcp_throughput(lab: LabFactory) -> None:
    net = connected_lab(lab)
    port = 5201
    server = start_in(net.netns("h2c1"), ["iperf3", "-s", "-1", "-p", str(port)])
    try:
        net.wait_until(lambda: tcp_listening(net, "h2c1", port), 10, "iperf3 server listening")
        result = net.exec(
            "h1c1",
            "iperf3",
            "-c",
            net.addr(2, 1),
            "-p",
            str(port),
            "-t",
            "3",
            "-J",
            check=False,
            timeout=30,
        )
        assert result.returncode == 0, describe(result)
        report = json.loads(result.stdout)
        assert "error" not in report, report["error"]
        received = report["end"]["sum_received"]
        assert received["bytes"] > 0, received
        assert received["bits_per_second"] > 0, received
        server.wait(10)  # -1: the server exits after its one test
    finally:
        reap(server)


def test_tcp_transfer_is_byte_exact(lab: LabFactory, tmp_path: Path) -> None:
    net = connected_lab(lab)
    assert_tcp_transfer_exact(net, "h1c1", "h2c1", net.addr(2, 1), 5202, TRANSFER_BYTES, tmp_path)


def is_router(pid: int | str) -> bool:
    try:
        return b"pyweave.router" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def router_pids_in(net: Lab, host: str) -> list[int]:
    """PIDs of pyweave routers running inside the host's namespace."""
    pids = subprocess.run(
        ["ip", "netns", "pids", net.netns(host)], capture_output=True, text=True, check=True
    ).stdout.split()
    return [int(pid) for pid in pids if is_router(pid)]


def test_stop_and_relaunch_recovers(lab: LabFactory) -> None:
    net = connected_lab(lab)
    peer = net.record()["hosts"][0]["peer"]
    pid_file = net.state_dir(1) / "weave.pid"
    old_pid = int(pid_file.read_text())
    assert router_pids_in(net, "h1") == [old_pid]

    net.weave("h1", "stop")
    assert router_pids_in(net, "h1") == [], "a router still runs in h1 after `weave stop`"
    assert not is_router(old_pid), f"router pid {old_pid} still runs after `weave stop`"
    assert not pid_file.exists(), "`weave stop` left the pid file behind"
    assert link_info(net, "h1", "vethwe-tap") is None, "`weave stop` left vethwe-tap behind"
    assert link_info(net, "h1", "weave") is not None, "`weave stop` removed the weave bridge"
    net.wait_until(
        lambda: "established" not in net.weave("h2", "status", "connections").stdout,
        15,
        "h2 to notice that h1's router went away",
    )

    launched = net.weave("h1", "launch", "--nickname", "h1")
    assert launched.stdout.strip() == peer, "the relaunched router lost its peer name"
    net.wait_until(
        lambda: "established" in net.weave("h2", "status", "connections").stdout,
        CONNECT_TIMEOUT,
        "h2's connection to h1 to be established again",
    )
    for src, dst in (("h1c1", net.addr(2, 1)), ("h2c1", net.addr(1, 1))):
        net.wait_until(
            lambda s=src, d=dst: net.ping(s, d), CONNECT_TIMEOUT, f"{src} reaching {dst}"
        )
