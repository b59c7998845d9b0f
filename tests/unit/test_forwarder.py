from pyweave.router.core.forwarder import Forwarder
from pyweave.router.core.mac_table import LOCAL, MacTable
from pyweave.router.core.wire.data import BROADCAST_PEER

US, P1, P2 = 0x10, 0x20, 0x30
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")
MAC_LOCAL = bytes.fromhex("020000000001")
MAC_P1 = bytes.fromhex("020000000002")
MAC_P2 = bytes.fromhex("020000000003")


class Routes:
    """A line topology US - P1 - P2 as seen from US."""

    def next_hop(self, destination: int) -> int | None:
        return {P1: P1, P2: P1}.get(destination)

    def broadcast_next_hops(self, source: int) -> tuple[int, ...]:
        return (P1,) if source == US else ()


def make() -> Forwarder:
    return Forwarder(US, Routes(), MacTable(expiry=60))


def from_tap(f: Forwarder, dst_mac: bytes, src_mac: bytes, now: float) -> int | None:
    """What the data plane does per frame from the TAP: decide, then learn the source."""
    route = f.route_from_tap(dst_mac, now)
    f.learn_local(src_mac, now)
    return None if route is None else route[0]


def test_broadcast_and_multicast_from_tap_are_flooded() -> None:
    f = make()
    assert f.route_from_tap(BCAST, 0.0) == (BROADCAST_PEER, (P1,))
    assert from_tap(f, MCAST, MAC_LOCAL, 0.0) == BROADCAST_PEER
    assert f.macs.lookup(MAC_LOCAL, 0.0) == LOCAL


def test_unknown_unicast_is_flooded_then_learned_unicast() -> None:
    f = make()
    assert from_tap(f, MAC_P2, MAC_LOCAL, 0.0) == BROADCAST_PEER
    deliver, relay = f.from_peer(P2, US, MAC_P2, 1.0)
    assert deliver and relay == ()
    assert f.route_from_tap(MAC_P2, 2.0) == (P2, (P1,))


def test_frame_to_local_mac_is_dropped() -> None:
    f = make()
    from_tap(f, BCAST, MAC_LOCAL, 0.0)
    assert from_tap(f, MAC_LOCAL, bytes.fromhex("020000000009"), 0.0) is None


def test_frames_for_other_peers_are_relayed_not_delivered() -> None:
    f = make()
    deliver, relay = f.from_peer(P2, P1, MAC_P2, 0.0)
    assert not deliver
    assert relay == (P1,)
    assert f.macs.lookup(MAC_P2, 0.0) is None  # relays do not learn


def test_broadcast_from_peer_is_delivered_and_forwarded_along_tree() -> None:
    f = make()
    deliver, relay = f.from_peer(P1, BROADCAST_PEER, MAC_P1, 0.0)
    assert deliver and relay == ()
    assert f.macs.lookup(MAC_P1, 0.0) == P1


def test_own_frames_coming_back_are_dropped() -> None:
    f = make()
    assert f.from_peer(US, BROADCAST_PEER, MAC_LOCAL, 0.0) == (False, ())


def test_unroutable_destination_is_counted() -> None:
    f = make()
    assert f.next_hops(0x99, US) == ()
    assert f.dropped_no_route == 1
