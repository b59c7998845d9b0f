"""Connections the mesh refuses: beyond `--conn-limit`, and from a peer that has our name.

Theory of operation: the routers are launched by hand (`lab(..., launch=False)` plus
`mesh_tools.launch`) so each test picks the flags.  For the limit, h1 runs with
`--conn-limit 1`: h2 connects to it first, then h3 names both h1 and h2.  h1 must refuse
h3 (the mesh counts handshaken connections; at the limit it neither accepts nor dials).
h3 then lists its dial to h1 as retrying (with backoff, not redialed at once) with the
reason h1 sent, and h1 lists the refused inbound connection as failed with that reason.
While waiting for that, every sample of h1's report must show at most one connection.
`--conn-limit 0` means no limit: h1 then holds connections to both.  A second router with
our name (same `--name`, other uid) is refused by both ends, and each shows why in
`weave status connections`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import Lab
from mesh_tools import connected_to, connection_lines, launch, report, reports

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]
LabFactory = Callable[..., Lab]

CONVERGE = 20.0
LIMIT_REASON = "connection limit reached (1)"
ANY_LIMIT = "connection limit reached"
SHARED_NAME = "7a:11:22:33:44:55"


def handshaken(document: dict[str, Any]) -> int:
    """How many connections (pending or established) the router holds to a peer."""
    return sum(1 for c in document["router"]["connections"] if c.get("peer"))


def test_conn_limit_one_refuses_the_second_peer(lab: LabFactory) -> None:
    net = lab(hosts=3, containers=0, launch=False)
    launch(net, "h1", "--conn-limit", "1")
    launch(net, "h2", net.underlay_addr(1))
    net.wait_until(lambda: connected_to(report(net, "h1")) == {"h2"}, CONVERGE, "h1 - h2 up")
    launch(net, "h3", net.underlay_addr(1), net.underlay_addr(2))

    most = 0

    def refused_on_both_sides() -> bool:
        nonlocal most
        most = max(most, handshaken(report(net, "h1")))
        h3_failed = [  # failed or retrying: h3 keeps trying h1, with backoff
            line
            for line in connection_lines(net, "h3")
            if line.startswith(f"-> {net.underlay_addr(1)}:6783")
        ]
        h1_failed = [
            line
            for line in connection_lines(net, "h1")
            if line.startswith(f"<- {net.underlay_addr(3)}:") and " failed " in line
        ]
        return any(LIMIT_REASON in line for line in h3_failed) and any(
            LIMIT_REASON in line for line in h1_failed
        )

    net.wait_until(refused_on_both_sides, CONVERGE, f"h1 and h3 to show {LIMIT_REASON!r}")
    net.wait_until(
        lambda: connected_to(report(net, "h3")) == {"h2"}, CONVERGE, "h3 - h2 established"
    )
    views = reports(net)
    assert most <= 1 and handshaken(views["h1"]) <= 1, f"h1 held {most} connections"
    assert connected_to(views["h1"]) == {"h2"}, views["h1"]["router"]["connections"]
    # h1 learns of h3 through gossip all the same
    assert "h3" in {p["nickname"] for p in views["h1"]["router"]["peers"]}


def test_conn_limit_zero_means_no_limit_and_negative_is_refused(lab: LabFactory) -> None:
    net = lab(hosts=3, containers=0, launch=False)
    bad = net.weave("h1", "launch", "--conn-limit", "-1", check=False)
    assert bad.returncode == 1, bad
    assert bad.stderr.splitlines() == [
        "weave: invalid --conn-limit -1: expected 0 (no limit) or more"
    ], bad.stderr
    assert net.weave("h1", "status", check=False).returncode != 0, "a router started anyway"

    launch(net, "h1", "--conn-limit", "0")
    launch(net, "h2", net.underlay_addr(1))
    launch(net, "h3", net.underlay_addr(1))
    net.wait_until(
        lambda: connected_to(report(net, "h1")) == {"h2", "h3"},
        CONVERGE,
        "h1 (--conn-limit 0) connected to h2 and h3",
    )
    assert not any(ANY_LIMIT in line for line in connection_lines(net, "h1"))


def test_peer_with_our_name_is_refused_by_both_ends(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=0, launch=False)
    assert SHARED_NAME in launch(net, "h1", "--name", SHARED_NAME)
    assert SHARED_NAME in launch(net, "h2", "--name", SHARED_NAME, net.underlay_addr(1))
    reason = "peer has our name"

    def both_show_reason() -> bool:
        dialer = [
            line
            for line in connection_lines(net, "h2")
            if line.startswith(f"-> {net.underlay_addr(1)}:6783") and " failed " in line
        ]
        dialed = [
            line
            for line in connection_lines(net, "h1")
            if line.startswith(f"<- {net.underlay_addr(2)}:") and " failed " in line
        ]
        return any(reason in line for line in dialer) and any(reason in line for line in dialed)

    net.wait_until(both_show_reason, CONVERGE, f"h1 and h2 to show {reason!r}")
    for host in ("h1", "h2"):
        assert connected_to(report(net, host)) == set(), f"{host} kept a connection"
