"""`weave connect [--replace]`, `weave forget`, `weave status targets` (after Weave's 150).

Theory of operation: two routers launched with no peers at all.  h2 is first told to
connect to two addresses where nobody answers: they are listed as targets and shown as
attempts in `status connections`.  `connect --replace h1 h2` swaps them for h1 and h2
itself: h1 gets connected (the containers ping), and the attempt on our own address is
refused for good — `cannot connect to ourself` with `retry: never`, as Weave Net shows it.
`forget` empties the target list without cutting the live connection; after h1 restarts
nobody dials anybody again, so the containers stay apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from helpers import Lab
from mesh_tools import attach_all, connected_to, connection_lines, launch, report

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
LabFactory = Callable[..., Lab]

CONVERGE = 20.0
BOGUS = ["192.0.2.201", "192.0.2.202"]  # on the underlay subnet, but nobody is there


def targets(net: Lab, host: str) -> list[str]:
    return net.weave(host, "status", "targets").stdout.splitlines()


def test_connect_replace_forget(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1, launch=False)
    launch(net, "h1")
    launch(net, "h2")
    attach_all(net)
    h1, h2 = net.underlay_addr(1), net.underlay_addr(2)
    assert targets(net, "h2") == []
    assert "Targets: 0" in net.weave("h2", "status").stdout

    net.weave("h2", "connect", *BOGUS)
    assert targets(net, "h2") == BOGUS
    assert "Targets: 2" in net.weave("h2", "status").stdout
    lines = connection_lines(net, "h2")
    for address in BOGUS:
        assert any(line.startswith(f"-> {address}:6783 ") for line in lines), lines
    assert not net.ping("h1c1", net.addr(2, 1)), "containers reach each other unconnected"

    net.weave("h2", "connect", "--replace", h1, h2)
    assert targets(net, "h2") == [h1, h2]
    net.wait_until(
        lambda: connected_to(report(net, "h2")) == {"h1"}, CONVERGE, "h2 connected to h1"
    )
    net.wait_until(lambda: net.ping("h1c1", net.addr(2, 1)), CONVERGE, "h1c1 reaching h2c1")
    refusal = re.compile(
        rf"^-> {re.escape(h2)}:6783 +failed +cannot connect to ourself, retry: never\b"
    )
    lines = net.wait_until(
        lambda: [line for line in connection_lines(net, "h2") if refusal.match(line)],
        CONVERGE,
        "the dial to our own address to be refused for good",
    )
    assert len(lines) == 1, lines
    everything = "\n".join(connection_lines(net, "h2"))
    assert not any(address in everything for address in BOGUS), everything

    net.weave("h2", "forget", h1, h2)
    assert targets(net, "h2") == []
    assert connected_to(report(net, "h2")) == {"h1"}, "forget cut a live connection"
    assert "cannot connect to ourself" not in "\n".join(connection_lines(net, "h2"))

    net.weave("h1", "stop")
    net.wait_until(
        lambda: not report(net, "h2")["router"]["connections"],
        CONVERGE,
        "h2 to drop h1 and not to dial it again",
    )
    launch(net, "h1")
    # Had h2 kept the target, losing its peer would have made it dial h1 at once.
    assert report(net, "h2")["router"]["connections"] == []
    assert report(net, "h1")["router"]["connections"] == []
    assert not net.ping("h1c1", net.addr(2, 1)), "containers reach each other after forget"
