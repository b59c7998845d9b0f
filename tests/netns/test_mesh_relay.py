"""Multi-hop relay: A and C cannot reach each other on the underlay, both reach B.

Theory of operation: before any router starts, `cut` puts `prohibit` routes between h1
and h3 in both host namespaces, so no TCP or UDP packet passes between them in either
direction.  h1 is launched alone, h2 with h1 as peer, h3 with both (its dial to h1 fails and is
retried, as are h1's discovered dials to h3): the only path h1 <-> h3 is via
h2.  The containers on h1 and h3 must still ping each other and carry a TCP transfer
byte-exactly, and h2's `datagrams_relayed` counter (in `weave report`) must grow by at least
the datagrams that traffic needed.  The test runs twice: plain, and with `--password`, where
h2 opens each datagram from h1 with the h1-h2 keys and seals it again with the h2-h3 keys
(hop by hop, docs/protocol.md); there every established connection must say `encrypted`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    Lab,
    assert_tcp_transfer_exact,
)
from mesh_tools import attach_all, connection_lines, cut, launch, relayed, report, reports, view

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
LabFactory = Callable[..., Lab]

CONVERGE = 20.0
TRANSFER_BYTES = 512 * 1024


@pytest.mark.parametrize("password", [None, "relay-secret"], ids=["plain", "encrypted"])
def test_traffic_between_unreachable_hosts_is_relayed(
    lab: LabFactory, tmp_path: Path, password: str | None
) -> None:
    net = lab(hosts=3, containers=1, launch=False)
    cut(net, 1, 3)
    assert not net.ping("h1", net.underlay_addr(3)), "the cut between h1 and h3 does not hold"
    assert net.ping("h1", net.underlay_addr(2)) and net.ping("h3", net.underlay_addr(2))
    secret = ("--password", password) if password else ()
    launch(net, "h1", *secret)
    launch(net, "h2", *secret, net.underlay_addr(1))
    launch(net, "h3", *secret, net.underlay_addr(1), net.underlay_addr(2))
    attach_all(net)
    chain = {"h1": {("h2", True)}, "h2": {("h1", True), ("h3", True)}, "h3": {("h2", True)}}
    net.wait_until(
        lambda: all(view(r) == chain for r in reports(net).values()),
        CONVERGE,
        "all routers to see h1 - h2 - h3 (and no h1 - h3 link)",
    )
    h3_lines = net.weave("h3", "status", "connections").stdout
    assert f"-> {net.underlay_addr(1)}:6783" in h3_lines, h3_lines  # still trying h1

    h1c1, h3c1 = net.addr(1, 1), net.addr(3, 1)
    net.wait_until(lambda: net.ping("h1c1", h3c1), CONVERGE, "h1c1 reaching h3c1 via h2")
    net.wait_until(lambda: net.ping("h3c1", h1c1), CONVERGE, "h3c1 reaching h1c1 via h2")
    before = relayed(net, "h2")
    ping = net.exec("h1c1", "ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", h3c1)
    assert " 0% packet loss" in ping.stdout, ping.stdout
    assert_tcp_transfer_exact(net, "h1c1", "h3c1", net.addr(3, 1), 5301, TRANSFER_BYTES, tmp_path)
    grown = relayed(net, "h2") - before
    # 10 ICMP datagrams, plus the transfer in datagrams of at most 64 KB (TSO super-frames)
    assert grown >= 10 + TRANSFER_BYTES // 65536, f"h2 relayed only {grown} datagrams"
    for host in ("h1", "h3"):
        assert relayed(net, host) == 0, f"{host} relayed datagrams on a chain end"
    if password:
        for host in ("h1", "h2", "h3"):
            links = [c for c in report(net, host)["router"]["connections"] if c.get("peer")]
            assert links and all(c.get("encrypted") is True for c in links), (host, links)
            lines = [line for line in connection_lines(net, host) if "established" in line]
            assert lines and all(" encrypted " in line for line in lines), (host, lines)
