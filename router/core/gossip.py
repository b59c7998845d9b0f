"""Gossip: named channels of mergeable state, spread to direct neighbours.

Theory of operation
-------------------
A *channel* ("topology", later "ipam", "dns") owns some state that merges like a CRDT:
merging is idempotent and commutative, and `on_gossip` returns the part of the incoming
payload that changed our state (the *delta*), or None when nothing did.  The `Gossiper`
moves bytes between channels and neighbours; it never looks inside a payload.

Spreading: deltas are relayed to every direct neighbour except the one we got them from
(plain flooding, deduplicated by the merge itself: a neighbour that already knows a delta
returns None and relays nothing, so each change crosses each link a bounded number of
times).  Weave mesh instead relays along broadcast trees or to random neighbours; with
our small meshes flooding converges fastest and needs no agreement on routes, which is
exactly what gossip is there to establish.  Local changes (`broadcast`) go to all
neighbours.

Coalescing: deltas are queued per neighbour and channel and flushed at most every
`flush_interval` seconds: if the last flush is older than that, a queued delta goes out
in the same call; otherwise at the deadline reported by `next_deadline`.  A channel's
`coalesce` may fold a neighbour's queued deltas into fewer payloads.

Repair: the full state of every channel goes to a neighbour when it connects, and every
`full_state_interval` seconds to about log2(n) + 1 random neighbours (all of them when we
have at most three; as weave mesh does, an epidemic instead of n full states per node
per period).  The first period is jittered by the injected rng so peers started together
do not gossip in lock-step.  Full state supersedes queued deltas for that neighbour and
channel.  Since every peer repairs some neighbours every period and merging spreads what
they learn, lost gossip is healed within a few periods.

Effects are values: `SendGossip(to_peer, channel, payload)`.  Unicasts to a non-neighbour
(`SendUnicast`) are routed hop by hop by the mesh facade.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from random import Random

FLUSH_INTERVAL = 0.1  # seconds between coalesced flushes of deltas
FULL_STATE_INTERVAL = 30.0  # seconds between full-state gossip to every neighbour


@dataclass(frozen=True, slots=True)
class SendGossip:
    """Send a gossip payload of `channel` to the direct neighbour `to_peer`."""

    to_peer: int
    channel: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class SendUnicast:
    """Hand a unicast from `source` to `dest` to the neighbour `to_peer` (next hop)."""

    to_peer: int
    channel: str
    source: int
    dest: int
    payload: bytes


class GossipChannel(Protocol):
    """What a channel implements.  `on_gossip` may raise `MalformedGossip`."""

    def on_gossip(self, sender: int, payload: bytes) -> bytes | None: ...

    def full_state(self) -> bytes: ...

    def on_unicast(self, sender: int, payload: bytes) -> None: ...

    def coalesce(self, payloads: Sequence[bytes]) -> list[bytes]: ...


class ChannelBase:
    """Defaults for the optional parts of `GossipChannel`."""

    def on_unicast(self, sender: int, payload: bytes) -> None:
        return None

    def coalesce(self, payloads: Sequence[bytes]) -> list[bytes]:
        return list(payloads)


class Gossiper:
    """Queues and flushes gossip for the registered channels."""

    def __init__(
        self,
        rng: Random,
        flush_interval: float = FLUSH_INTERVAL,
        full_state_interval: float = FULL_STATE_INTERVAL,
    ) -> None:
        self._rng = rng
        self._channels: dict[str, GossipChannel] = {}
        self._neighbours: set[int] = set()
        self._pending: dict[int, dict[str, list[bytes]]] = {}
        self._flush_interval = flush_interval
        self._full_state_interval = full_state_interval
        self._last_flush = float("-inf")
        self._next_full: float | None = None
        self.unknown_channel = 0  # gossip for channels we have not registered

    # -- setup and queries ---------------------------------------------------------

    def register(self, name: str, channel: GossipChannel) -> None:
        if name in self._channels:
            raise ValueError(f"gossip channel {name!r} registered twice")
        self._channels[name] = channel

    def channel(self, name: str) -> GossipChannel | None:
        return self._channels.get(name)

    def neighbours(self) -> list[int]:
        return sorted(self._neighbours)

    def next_deadline(self) -> float | None:
        deadlines = []
        if self._pending:
            deadlines.append(self._last_flush + self._flush_interval)
        if self._next_full is not None and self._neighbours:
            deadlines.append(self._next_full)
        return min(deadlines) if deadlines else None

    # -- inputs --------------------------------------------------------------------

    def add_neighbour(self, peer: int, now: float) -> list[SendGossip]:
        """A new connection: send it the full state of every channel right away."""
        self._neighbours.add(peer)
        self._pending.pop(peer, None)
        if self._next_full is None:
            self._next_full = now + self._full_state_interval * (0.5 + self._rng.random() / 2)
        return self._full_state_to(peer)

    def remove_neighbour(self, peer: int) -> None:
        self._neighbours.discard(peer)
        self._pending.pop(peer, None)

    def received(self, sender: int, channel: str, payload: bytes, now: float) -> list[SendGossip]:
        """Merge gossip; relay its delta to the other neighbours.  May raise MalformedGossip."""
        target = self._channels.get(channel)
        if target is None:
            self.unknown_channel += 1
            return []
        delta = target.on_gossip(sender, payload)
        if delta is None:
            return []
        return self.broadcast(channel, delta, now, exclude=sender)

    def broadcast(
        self, channel: str, payload: bytes, now: float, exclude: int | None = None
    ) -> list[SendGossip]:
        """Queue a delta for all neighbours (but `exclude`); flush if the interval allows."""
        for peer in self._neighbours:
            if peer != exclude:
                self._pending.setdefault(peer, {}).setdefault(channel, []).append(payload)
        if now >= self._last_flush + self._flush_interval:
            return self._flush(now)
        return []

    def tick(self, now: float) -> list[SendGossip]:
        effects: list[SendGossip] = []
        if self._next_full is not None and now >= self._next_full and self._neighbours:
            self._next_full = now + self._full_state_interval
            for peer in self._repair_targets():
                self._pending.pop(peer, None)
                effects += self._full_state_to(peer)
        if self._pending and now >= self._last_flush + self._flush_interval:
            effects += self._flush(now)
        return effects

    # -- internals -----------------------------------------------------------------

    def _repair_targets(self) -> list[int]:
        """A random ~log2(n) + 1 of our neighbours (all of them when there are few)."""
        peers = sorted(self._neighbours)
        count = max(1, len(peers)).bit_length() + 1
        if len(peers) <= count:
            return peers
        return sorted(self._rng.sample(peers, count))

    def _full_state_to(self, peer: int) -> list[SendGossip]:
        return [
            SendGossip(peer, name, channel.full_state())
            for name, channel in sorted(self._channels.items())
        ]

    def _flush(self, now: float) -> list[SendGossip]:
        effects: list[SendGossip] = []
        for peer in sorted(self._pending):
            for name, payloads in sorted(self._pending[peer].items()):
                for payload in self._channels[name].coalesce(payloads):
                    effects.append(SendGossip(peer, name, payload))
        self._pending.clear()
        if effects:
            self._last_flush = now
        return effects
