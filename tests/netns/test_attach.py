"""`weave attach` / `weave detach` / `weave ps` against real namespaces and a real router.

Every claim `weave ps` makes is checked against the kernel: the `weave:expose` MAC is the
bridge's, a container's MAC and CIDRs are those of its `ethwe`.  A second address is added
to the existing `ethwe` (and is reachable across the mesh), `detach CIDR` removes only that
address, `detach` without addresses removes `ethwe`, and `ps` then forgets the container.
A `pid:PID` container (a `sleep` in a fresh namespace of its own, made with `unshare --net`,
so nothing named is left to clean up once the process is killed) goes through the same
attach / ps / ping / detach cycle.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from helpers import Lab, ipv4_cidrs, link_info, reap

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
LabFactory = Callable[..., Lab]

SECOND = "10.128.1.77/10"
PID_CIDR = "10.128.1.88/10"


def ps_lines(net: Lab, host: str) -> dict[str, list[str]]:
    """`weave ps` as {id: [mac, cidr...]}, failing on a repeated id."""
    lines: dict[str, list[str]] = {}
    for line in net.weave(host, "ps").stdout.splitlines():
        ident, *rest = line.split()
        assert ident not in lines, f"`weave ps` lists {ident} twice"
        lines[ident] = rest
    return lines


def kernel_view(net: Lab, name: str) -> list[str] | None:
    """[mac, cidr...] of the container's ethwe as the kernel has it, None without ethwe."""
    link = link_info(net, name, "ethwe")
    return None if link is None else [link["address"], *ipv4_cidrs(link)]


def test_attach_second_address_detach_and_ps(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1)
    box = net.netns("h1c1")
    spec = f"netns:{box}"
    bridge = link_info(net, "h1", "weave")
    assert bridge is not None, "no weave bridge on h1"

    ps = ps_lines(net, "h1")
    assert ps["weave:expose"][:1] == [bridge["address"]], ps
    view = kernel_view(net, "h1c1")
    assert view is not None and view[1:] == [f"{net.addr(1, 1)}/10"], view
    assert ps[box] == view, f"`weave ps` says {ps[box]}, the kernel says {view}"
    assert set(ps) == {"weave:expose", box}, ps

    # a second address lands on the same ethwe, and the mesh delivers to it
    out = net.weave("h1", "attach", SECOND, spec).stdout
    assert out.split() == [SECOND.split("/")[0]], out
    after = kernel_view(net, "h1c1")
    assert after == [view[0], f"{net.addr(1, 1)}/10", SECOND], after
    assert ps_lines(net, "h1")[box] == after
    second_ip = SECOND.split("/")[0]
    net.wait_until(lambda: net.ping("h2c1", second_ip), 30, f"h2c1 reaching {second_ip}")

    # detach CIDR removes exactly that address
    out = net.weave("h1", "detach", SECOND, spec).stdout
    assert out.split() == [second_ip], out
    assert kernel_view(net, "h1c1") == view
    assert ps_lines(net, "h1")[box] == view
    net.wait_until(lambda: net.ping("h2c1", net.addr(1, 1)), 30, "h2c1 still reaching h1c1")

    # detach without addresses removes ethwe; ps no longer lists the container
    out = net.weave("h1", "detach", spec).stdout
    assert out.split() == [net.addr(1, 1)], out
    assert kernel_view(net, "h1c1") is None, "ethwe survived `weave detach`"
    ps = ps_lines(net, "h1")
    assert box not in ps, ps
    assert "weave:expose" in ps, ps

    again = net.weave("h1", "detach", spec, check=False)
    assert again.returncode != 0 and again.stderr.startswith("weave: "), again


def test_reattach_after_detach(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1)
    box, spec = net.netns("h1c1"), f"netns:{net.netns('h1c1')}"
    net.weave("h1", "detach", spec)
    assert kernel_view(net, "h1c1") is None
    net.weave("h1", "attach", SECOND, spec)
    view = kernel_view(net, "h1c1")
    assert view is not None and view[1:] == [SECOND], view
    assert ps_lines(net, "h1")[box] == view
    second_ip = SECOND.split("/")[0]
    net.wait_until(lambda: net.ping("h2c1", second_ip), 30, f"h2c1 reaching {second_ip}")


def test_expose_mac_is_stable_across_attach_and_detach(lab: LabFactory) -> None:
    net = lab(hosts=1, containers=1)
    spec = f"netns:{net.netns('h1c1')}"
    first = ps_lines(net, "h1")["weave:expose"][0]
    net.weave("h1", "detach", spec)
    assert ps_lines(net, "h1")["weave:expose"][0] == first, "detach changed the bridge MAC"
    net.weave("h1", "attach", SECOND, spec)
    assert ps_lines(net, "h1")["weave:expose"][0] == first, "attach changed the bridge MAC"


def _own_netns(pid: int) -> bool:
    """True once `pid` runs `sleep` in a network namespace other than ours."""
    with open(f"/proc/{pid}/comm") as comm:
        if comm.read().strip() != "sleep":
            return False
    return os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino


def _pid_ethwe(pid: int) -> list[str] | None:
    """[mac, cidr...] of ethwe in the namespace of process pid, None without ethwe."""
    result = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-j", "addr", "show", "dev", "ethwe"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        return None
    links: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return [links[0]["address"], *ipv4_cidrs(links[0])] if links else None


def test_attach_pid_container(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1)
    sleeper = subprocess.Popen(
        ["unshare", "--net", "sleep", "600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        net.wait_until(lambda: _own_netns(sleeper.pid), 10, "sleep in a namespace of its own")
        spec, ip = f"pid:{sleeper.pid}", PID_CIDR.split("/")[0]
        out = net.weave("h1", "attach", PID_CIDR, spec).stdout
        assert out.split() == [ip], out
        view = _pid_ethwe(sleeper.pid)
        assert view is not None and view[1:] == [PID_CIDR], view
        ps = ps_lines(net, "h1")
        assert ps[spec] == view, f"`weave ps` says {ps.get(spec)}, the kernel says {view}"
        net.wait_until(lambda: net.ping("h2c1", ip), 30, f"h2c1 reaching {spec} at {ip}")

        out = net.weave("h1", "detach", spec).stdout
        assert out.split() == [ip], out
        assert _pid_ethwe(sleeper.pid) is None, "ethwe survived `weave detach`"
        assert spec not in ps_lines(net, "h1")
        assert not net.ping("h2c1", ip), f"{ip} still answers after detach"
    finally:
        reap(sleeper)  # by its PID; its namespace goes with it
