"""Mesh facade: refusals, duplicate tie-break, restarts, status shapes, bad gossip."""

from __future__ import annotations

import random

from pyweave.router.core.gossip import SendGossip
from pyweave.router.core.mesh import Dial, DropConnection, Mesh, RoutesChanged
from pyweave.router.core.topology import (
    ConnectionRecord,
    PeerRecord,
    decode_records,
    encode_records,
)

US, LOW, HIGH = 0x50, 0x10, 0x90


def mesh(**kw: object) -> Mesh:
    return Mesh(US, "us", 1, 6783, random.Random(0), **kw)  # type: ignore[arg-type]


def drops(effects: list[object]) -> list[DropConnection]:
    return [e for e in effects if isinstance(e, DropConnection)]


def test_dial_and_connect_to_ourself_never_retried() -> None:
    m = mesh()
    assert m.add_targets(["10.0.0.1"], now=0.0) == [Dial("10.0.0.1:6783")]
    eff = m.connection_established(US, "us", 1, "10.0.0.1:6783", True, 0.1)
    assert drops(eff) == [DropConnection(US, 1, "10.0.0.1:6783", "cannot connect to ourself")]
    (status,) = m.connection_statuses(1.0)
    assert status["state"] == "failed" and status["info"].endswith("retry: never")
    assert not [e for e in m.tick(1e6) if isinstance(e, Dial)]


def test_peer_with_our_name_refused() -> None:
    m = mesh()
    eff = m.connection_established(US, "imposter", 2, "10.0.0.9:4000", False, 0.0)
    assert "peer has our name" in drops(eff)[0].reason
    assert m.connected_peers() == []


def test_connection_gossips_and_routes() -> None:
    m = mesh()
    eff = m.connection_established(HIGH, "high", 7, "10.0.0.2:6783", True, 0.0)
    full = [e for e in eff if isinstance(e, SendGossip)]
    assert full and full[0].to_peer == HIGH and full[0].channel == "topology"
    ours = decode_records(full[0].payload)[0]
    assert ours.name == US and ours.connections[0].peer == HIGH
    assert m.next_hop(HIGH) is None  # HIGH has not confirmed the link yet
    their = PeerRecord(HIGH, "high", 7, 3, (ConnectionRecord(US, "x", False, True),))
    eff = m.gossip_received(HIGH, "topology", encode_records([their]), 0.1)
    assert RoutesChanged() in eff
    assert m.next_hop(HIGH) == HIGH and m.broadcast_next_hops(US) == (HIGH,)
    statuses = m.connection_statuses(0.2)
    assert statuses[0]["state"] == "established" and statuses[0]["peer"]["nickname"] == "high"
    (peer_status,) = [p for p in m.peer_statuses() if p["nickname"] == "high"]
    assert peer_status["connections"][0]["nickname"] == "us"


def test_duplicate_keeps_connection_dialed_by_lower_name() -> None:
    # with LOW: LOW dials; our outbound one loses whichever came first
    m = mesh()
    m.connection_established(LOW, "low", 3, "10.0.0.3:6783", True, 0.0)
    eff = m.connection_established(LOW, "low", 3, "10.0.0.3:51000", False, 0.1)
    assert [d.address for d in drops(eff)] == ["10.0.0.3:6783"]
    assert m.connection_lost(LOW, "10.0.0.3:6783", "gone", 0.2) == []  # the dropped one
    # with HIGH: we are the lower name, so our outbound connection wins
    eff = m.connection_established(HIGH, "high", 4, "10.0.0.4:52000", False, 0.3)
    eff = m.connection_established(HIGH, "high", 4, "10.0.0.4:6783", True, 0.4)
    assert [d.address for d in drops(eff)] == ["10.0.0.4:52000"]
    assert sorted(m.connected_peers()) == [LOW, HIGH]


def test_restarted_peer_replaces_old_connection() -> None:
    m = mesh()
    m.connection_established(HIGH, "high", 4, "10.0.0.4:6783", True, 0.0)
    eff = m.connection_established(HIGH, "high", 5, "10.0.0.4:6783", True, 1.0)
    assert drops(eff) == [DropConnection(HIGH, 4, "10.0.0.4:6783", "peer restarted")]
    # a late loss report for the old incarnation is ignored
    assert m.connection_lost(HIGH, "10.0.0.4:6783", "timeout", 6.0, peer_uid=4) == []
    assert m.connected_peers() == [HIGH]


def test_conn_limit_and_malformed_gossip() -> None:
    m = mesh(conn_limit=1)
    m.connection_established(LOW, "low", 3, "10.0.0.3:6783", True, 0.0)
    eff = m.connection_established(HIGH, "high", 4, "10.0.0.4:5000", False, 0.0)
    assert drops(eff)[0].reason == "connection limit reached (1)"
    assert m.gossip_received(LOW, "topology", b"\xff\xff\x00", 0.0) == []
    assert m.malformed_gossip == 1


def test_unicast_routing_and_unroutable() -> None:
    m = mesh()
    assert m.send_unicast(HIGH, "ipam", b"x") == [] and m.unroutable == 1
