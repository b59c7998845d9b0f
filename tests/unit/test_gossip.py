"""Gossiper: coalescing, relaying deltas, full state on connect and periodically."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pyweave.router.core.gossip import ChannelBase, Gossiper, SendGossip


class SetChannel(ChannelBase):
    """A grow-only set of bytes tokens, comma separated: the simplest CRDT."""

    def __init__(self) -> None:
        self.items: set[bytes] = set()
        self.unicasts: list[tuple[int, bytes]] = []

    def on_gossip(self, sender: int, payload: bytes) -> bytes | None:
        new = {x for x in payload.split(b",") if x} - self.items
        self.items |= new
        return b",".join(sorted(new)) if new else None

    def full_state(self) -> bytes:
        return b",".join(sorted(self.items))

    def on_unicast(self, sender: int, payload: bytes) -> None:
        self.unicasts.append((sender, payload))

    def coalesce(self, payloads: Sequence[bytes]) -> list[bytes]:
        return [b",".join(sorted({x for p in payloads for x in p.split(b",") if x}))]


def make(flush: float = 0.1, full: float = 30.0) -> tuple[Gossiper, SetChannel]:
    g = Gossiper(random.Random(1), flush_interval=flush, full_state_interval=full)
    ch = SetChannel()
    g.register("set", ch)
    return g, ch


def test_new_neighbour_gets_full_state() -> None:
    g, ch = make()
    ch.items = {b"x", b"y"}
    assert g.add_neighbour(7, now=0.0) == [SendGossip(7, "set", b"x,y")]


def test_delta_relayed_to_others_not_sender() -> None:
    g, _ = make()
    for peer in (1, 2, 3):
        g.add_neighbour(peer, 0.0)
    out = g.received(2, "set", b"a", now=1.0)
    assert sorted(e.to_peer for e in out) == [1, 3]
    assert all(e.payload == b"a" for e in out)
    assert g.received(1, "set", b"a", now=2.0) == []  # nothing new: nothing relayed


def test_coalescing_within_interval() -> None:
    g, _ = make(flush=0.5)
    g.add_neighbour(1, 0.0)
    assert g.broadcast("set", b"a", now=1.0) != []  # idle long enough: goes at once
    assert g.broadcast("set", b"b", now=1.1) == []
    assert g.broadcast("set", b"c", now=1.2) == []
    assert g.next_deadline() == 1.5
    assert g.tick(1.4) == []
    assert g.tick(1.5) == [SendGossip(1, "set", b"b,c")]
    assert g.next_deadline() is not None  # the periodic full state remains


def test_periodic_full_state_supersedes_pending() -> None:
    g, ch = make(flush=10.0, full=30.0)
    g.add_neighbour(1, 0.0)
    ch.items = {b"z"}
    first = g.next_deadline()
    assert first is not None and 15.0 <= first <= 30.0  # jittered first period
    g.broadcast("set", b"q", now=0.0)  # flushed at once
    g.broadcast("set", b"r", now=1.0)  # pending
    out = g.tick(first)
    assert out == [SendGossip(1, "set", b"z")]
    assert g.next_deadline() == first + 30.0


def test_unknown_channel_counted_and_removed_neighbour_silent() -> None:
    g, _ = make()
    g.add_neighbour(1, 0.0)
    g.add_neighbour(2, 0.0)
    assert g.received(1, "nope", b"x", 0.0) == [] and g.unknown_channel == 1
    g.remove_neighbour(2)
    assert [e.to_peer for e in g.received(1, "set", b"x", 5.0)] == []
    assert g.neighbours() == [1]
