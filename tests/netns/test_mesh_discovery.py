"""Discovery and multi-hop routing with three real routers (after Weave's 120_discovery_3).

Theory of operation: h1 is launched alone, h2 with h1 as its peer, h3 with only h2 — so
h3 can learn of h1 only through topology gossip.  With discovery on, h3 and h1 end up
connected directly (either may dial: both learn the other's address from h2's record),
every router lists all three peers with all six connection ends, and after h2 stops the
containers on h1 and h3 still reach each other.  Then all three are relaunched with
`--no-discovery`: traffic h1c1 <-> h3c1 is relayed by h2, h1 and h3 never connect (or even
try: no target shows up in `status connections`), and once h2 stops they are cut off.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import Lab
from mesh_tools import attach_all, connection_lines, full_mesh, launch, reports, view

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
LabFactory = Callable[..., Lab]

CONVERGE = 20.0


def launch_chain(net: Lab, *options: str) -> None:
    launch(net, "h1", *options)
    launch(net, "h2", *options, net.underlay_addr(1))
    launch(net, "h3", *options, net.underlay_addr(2))


def test_discovery_connects_h3_to_h1_and_no_discovery_relays(lab: LabFactory) -> None:
    net = lab(hosts=3, containers=1, launch=False)
    launch_chain(net)
    attach_all(net)
    hosts = ["h1", "h2", "h3"]
    want = full_mesh(hosts)
    net.wait_until(
        lambda: all(view(r) == want for r in reports(net).values()),
        CONVERGE,
        "all three routers to see the full mesh (h3 discovering h1)",
    )
    for host in hosts:
        status = net.weave(host, "status").stdout
        assert "Peers: 3 (with 6 established connections)" in status, status
        assert "Connections: 2 (2 established)" in status, status
        peers = net.weave(host, "status", "peers").stdout
        for name in hosts:
            assert f"({name})\n" in peers, f"{host} does not list {name}:\n{peers}"
        lines = [line for line in peers.splitlines() if line.startswith("   ")]
        assert len(lines) == 6 and all(line.endswith("established") for line in lines), peers
    h3_to_h1 = [line for line in connection_lines(net, "h3") if "(h1)" in line]
    assert len(h3_to_h1) == 1 and "established" in h3_to_h1[0], h3_to_h1

    h1c1, h3c1 = net.addr(1, 1), net.addr(3, 1)
    net.wait_until(lambda: net.ping("h1c1", h3c1), CONVERGE, "h1c1 reaching h3c1")
    net.weave("h2", "stop")
    net.wait_until(lambda: net.ping("h1c1", h3c1), CONVERGE, "h1c1 -> h3c1 with h2 stopped")
    net.wait_until(lambda: net.ping("h3c1", h1c1), CONVERGE, "h3c1 -> h1c1 with h2 stopped")

    # The same again with --no-discovery everywhere: h2 must relay.
    net.weave("h1", "stop")
    net.weave("h3", "stop")
    launch_chain(net, "--no-discovery")
    chain = {"h1": {("h2", True)}, "h2": {("h1", True), ("h3", True)}, "h3": {("h2", True)}}
    net.wait_until(
        lambda: all(view(r) == chain for r in reports(net).values()),
        CONVERGE,
        "all routers to see the chain h1 - h2 - h3",
    )
    assert "PeerDiscovery: disabled" in net.weave("h3", "status").stdout
    net.wait_until(lambda: net.ping("h1c1", h3c1), CONVERGE, "h1c1 -> h3c1 relayed by h2")
    net.wait_until(lambda: net.ping("h3c1", h1c1), CONVERGE, "h3c1 -> h1c1 relayed by h2")
    for host, other in (("h1", net.underlay_addr(3)), ("h3", net.underlay_addr(1))):
        lines = connection_lines(net, host)
        assert len(lines) == 1 and "(h2)" in lines[0], f"{host}:\n" + "\n".join(lines)
        assert not any(other in line for line in lines), f"{host} tried {other}"

    net.weave("h2", "stop")
    net.wait_until(
        lambda: all(view(r) == {h: set()} for h, r in reports(net, ["h1", "h3"]).items()),
        CONVERGE,
        "h1 and h3 to drop h2 and forget each other",
    )
    assert not net.ping("h1c1", h3c1), "h1c1 reached h3c1 without h2 and without discovery"
    for line in connection_lines(net, "h3"):  # only the target h2 is left, being retried
        assert net.underlay_addr(1) not in line, line
