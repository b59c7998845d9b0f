"""The allocator: one peer's IPAM state machine, and its "ipam" gossip channel.

Theory of operation
-------------------
The allocator hands out addresses only from ranges the ring says *we* own, lowest free
address first, never a subnet's network or broadcast address.  It talks to other peers
only through the "ipam" channel: gossip of the whole ring (or, before there is one, of
the Paxos claims), and unicasts (space and claim requests, answers).  It never waits:
`allocate` and `claim` answer at once with `Allocated`, `Refused` (never will) or
`Waiting(reason)` (not yet; a request to another peer may have gone out), and the shell
asks again when the ring changed or a moment later.  Outgoing messages collect in
`outbox` (`Gossip` to all neighbours, `Unicast` to one peer) and `notify` is called so
the shell drains it; `generation` grows with every change worth persisting.

* No ring yet: with consensus, the first request starts a proposal (`paxos.py`) and later
  requests repeat it after a randomised pause until a ring exists; a seed ring is built at
  once; an observer waits for the ring to arrive.
* Out of space in a subnet: ask the reachable peer whose ring entries report the most free
  addresses there; it gives the upper half of its largest free run in that subnet and
  answers with its ring.  Asking again happens after `REQUEST_RETRY`, the next candidate
  first.  If only unreachable peers own space there, the reason says so (use rmpeer).
* A claim of an address another peer owns asks that owner to give us just that address;
  it refuses if one of its containers holds it.
* `rmpeer` takes over the ranges of a peer that is gone (refused while it is reachable);
  `handoff` (`weave reset`) gives all our ranges to a reachable peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyweave.router.core.gossip import ChannelBase
from pyweave.router.core.ipam import codec
from pyweave.router.core.ipam.paxos import Paxos
from pyweave.router.core.ipam.ring import Ring, RingConflict
from pyweave.router.core.ipam.space import (
    Interval,
    clip,
    count_free,
    largest_run,
    lowest_free,
    usable,
)
from pyweave.router.core.names import format_peer_name

if TYPE_CHECKING:
    from random import Random

REQUEST_RETRY = 2.0  # seconds before asking (another peer) again
PROPOSE_RETRY = 2.0  # seconds (x1..2, randomised) before proposing again
WAITING = "waiting for IP(s) to become available"
UNREACHABLE = "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"


@dataclass(frozen=True, slots=True)
class Init:
    """`--ipalloc-init`: consensus among `peers` initial peers, a seed list, or observer."""

    mode: str  # "consensus" | "seed" | "observer"
    peers: int = 1
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Allocated:
    addr: int


@dataclass(frozen=True, slots=True)
class Waiting:
    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


Outcome = Allocated | Waiting | Refused


@dataclass(frozen=True, slots=True)
class Gossip:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Unicast:
    dest: int
    payload: bytes


Outgoing = Gossip | Unicast


@dataclass(frozen=True, slots=True)
class Holder:
    container: str
    spec: str  # how to check the container is alive ("netns:NAME", "pid:N", ...)


def ip(addr: int) -> str:
    return str(ipaddress.IPv4Address(addr))


class Allocator(ChannelBase):
    def __init__(
        self, name: int, universe: Interval, default_subnet: Interval, init: Init, rng: Random
    ) -> None:
        self.name = name
        self.universe = universe
        self.default_subnet = default_subnet
        self.init = init
        self.rng = rng
        self.ring = Ring(*universe)
        self.paxos = Paxos(name, init.peers // 2 + 1) if init.mode == "consensus" else None
        self.holders: dict[int, Holder] = {}
        self.reachable: frozenset[int] = frozenset()
        self.outbox: list[Outgoing] = []
        self.notify: Callable[[], None] = lambda: None
        self.generation = 0
        self.conflicts = 0  # rings of another initialisation, addresses we lost
        self.foreign_seeds: tuple[int, ...] | None = None  # origin of a conflicting ring
        self._asked: dict[tuple[str, int, int], tuple[int, float]] = {}
        self._refused: dict[int, str] = {}
        self._next_proposal: float | None = None
        self._waiting: tuple[str, float] | None = None
        if init.mode == "seed":
            self.ring = Ring.initial(*universe, init.seeds)

    # -- requests from the shell ---------------------------------------------------

    def allocate(self, container: str, spec: str, subnet: Interval, now: float) -> Outcome:
        """An address for `container` in `subnet` (the one it has there, if any)."""
        if clip([subnet], self.universe) != [subnet]:
            return Refused(f"subnet is not inside the allocation range {self._range_text()}")
        mine = [a for a, h in self.holders.items() if h.container == container]
        existing = [a for a in mine if subnet[0] <= a < subnet[1]]
        if existing:
            return Allocated(min(existing))
        if not self._ring_ready(now):
            return self._note_waiting(self.status(now), now)
        ranges = clip(self.ring.owned_by(self.name), usable(subnet))
        addr = lowest_free(ranges, sorted(self.holders))
        if addr is None:
            return self._ask_for_space(usable(subnet), now)
        self._hold(addr, Holder(container, spec))
        return Allocated(addr)

    def claim(self, container: str, spec: str, addr: int, now: float) -> Outcome:
        """Exactly `addr` for `container`; addresses outside the range are not ours to manage."""
        if not self.universe[0] <= addr < self.universe[1]:
            return Allocated(addr)
        holder = self.holders.get(addr)
        if holder is not None:
            if holder.container == container:
                return Allocated(addr)
            return Refused(f"address {ip(addr)} is already in use by container {holder.container}")
        if not self._ring_ready(now):
            return self._note_waiting(self.status(now), now)
        owner = self.ring.owner(addr)
        if owner == self.name:
            self._hold(addr, Holder(container, spec))
            return Allocated(addr)
        refusal = self._refused.pop(addr, None)
        if refusal is not None:
            self._asked.pop(("claim", addr, addr + 1), None)
            return Refused(refusal)
        if owner is None or owner not in self.reachable:
            who = format_peer_name(owner) if owner is not None else "nobody"
            return self._note_waiting(
                f"address {ip(addr)} is owned by unreachable peer {who} - use 'rmpeer' "
                "if it is dead",
                now,
            )
        msg = {"t": "claim", "addr": addr, "container": container}
        self._ask(("claim", addr, addr + 1), [owner], msg, now)
        return self._note_waiting(f"asking peer {format_peer_name(owner)} for {ip(addr)}", now)

    def free(self, container: str, addrs: Sequence[int] | None = None) -> list[int]:
        """Release `container`'s addresses (all of them without `addrs`)."""
        released = [
            a
            for a, h in self.holders.items()
            if h.container == container and (addrs is None or a in addrs)
        ]
        for addr in released:
            del self.holders[addr]
        if released:
            self._changed(gossip=self._report_free())
        return sorted(released)

    def containers(self) -> dict[str, Holder]:
        return {h.container: h for h in self.holders.values()}

    def prime(self, now: float) -> str:
        """`weave prime`: start consensus if needed; the status to show meanwhile."""
        self._ring_ready(now)
        return self.status(now)

    def update_peers(self, reachable: set[int]) -> None:
        self.reachable = frozenset(reachable - {self.name})

    def rmpeer(self, peers: Sequence[int]) -> int:
        """Take over the ranges of `peers`, which must be gone; returns the addresses.

        Refused while any of them is reachable, and while another owner is unreachable:
        it might know of hand-overs the dead peers made that we have not heard of.
        """
        dead = set(peers)
        if self.name in dead:
            raise ValueError("cannot remove ourselves: use 'weave reset' to leave")
        for peer in sorted(dead & self.reachable):
            raise ValueError(
                f"peer {format_peer_name(peer)} is reachable: stop it first "
                "('weave reset' there hands its ranges over by itself)"
            )
        others = set(self.ring.shares()) - dead - self.reachable - {self.name}
        if others:
            names = ", ".join(format_peer_name(p) for p in sorted(others))
            raise ValueError(
                f"peer(s) {names} are unreachable too: they may know newer state of the "
                "peer(s) to remove; remove them together or wait until they are back"
            )
        taken = sum(self.ring.take_over(peer, self.name) for peer in sorted(dead))
        if taken:
            self._report_free()
            self._changed(gossip=True)
        return taken

    def handoff(self) -> int | None:
        """`weave reset`: give every range of ours to a reachable peer; forget containers."""
        self.holders.clear()
        heirs = sorted(self.reachable)
        mine = self.ring.owned_by(self.name)
        if not heirs or not mine:
            return None
        for start, end in mine:
            self.ring.transfer(self.name, heirs[0], start, end)
        self.outbox.append(Unicast(heirs[0], self._ring_message()))
        self._changed(gossip=True)
        return heirs[0]

    # -- status --------------------------------------------------------------------

    def status(self, now: float) -> str:
        if self.foreign_seeds is not None and not self.ring.empty():
            theirs = ", ".join(format_peer_name(p) for p in self.foreign_seeds)
            ours = ", ".join(format_peer_name(p) for p in self.ring.origin)
            return (
                f"IP allocation was seeded by different peers (received: [{theirs}], "
                f"ours: [{ours}]) - 'weave reset' one side; use --ipalloc-init (docs/ipam.md)"
            )
        if self.ring.empty():
            if self.paxos is not None and self._next_proposal is not None:
                quorum, known = self.paxos.quorum, self.paxos.known()
                return f"awaiting consensus (quorum: {quorum}, known: {known})"
            return "idle" if self.paxos is not None else "priming"
        if self._waiting is not None and now - self._waiting[1] < REQUEST_RETRY * 2:
            return self._waiting[0]
        return "ready"

    def active(self) -> int:
        return len(self.holders)

    # -- the gossip channel --------------------------------------------------------

    def on_gossip(self, sender: int, payload: bytes) -> bytes | None:
        doc = codec.pull(payload)
        if "ring" in doc:
            return self._merge_ring(codec.ring_from_json(doc["ring"]))
        if "paxos" in doc:
            return self._merge_paxos(sender, codec.paxos_from_json(doc["paxos"]))
        return None

    def full_state(self) -> bytes:
        if not self.ring.empty():
            return self._gossip_ring()
        if self.paxos is not None and self._next_proposal is not None:
            return codec.push({"paxos": codec.paxos_to_json(self.paxos.knows)})
        return codec.push({})

    def coalesce(self, payloads: Sequence[bytes]) -> list[bytes]:
        """Our payloads are whole states that only grow: the last one says it all."""
        return list(payloads[-1:])

    def on_unicast(self, sender: int, payload: bytes) -> None:
        doc = codec.pull_unicast(payload)
        kind = doc["t"]
        if kind == "ring":
            if self._merge_ring(codec.ring_from_json(doc.get("ring"))) is not None:
                self.outbox.append(Gossip(self._gossip_ring()))
        elif kind == "space":
            self._donate(sender, (doc["start"], doc["end"]))
        elif kind == "claim":
            self._grant(sender, doc["addr"])
        elif kind == "refused":
            self._refused[doc["addr"]] = str(doc.get("reason", "refused"))
        self.notify()

    # -- persistence ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        holders = [[a, h.container, h.spec] for a, h in sorted(self.holders.items())]
        ring = None if self.ring.empty() else codec.ring_to_json(self.ring)
        return {"version": 1, "range": list(self.universe), "ring": ring, "holders": holders}

    def restore(self, doc: dict[str, Any]) -> None:
        """Load a snapshot; RingConflict if it was made for another range."""
        if doc.get("range") != list(self.universe):
            raise RingConflict("the persisted IPAM data is for another --ipalloc-range")
        if doc.get("ring") is not None:
            ring = codec.ring_from_json(doc["ring"])
            if self.ring.empty():
                self.ring = ring
            else:
                self.ring.merge(ring)
        for addr, container, spec in doc.get("holders", []):
            self.holders[int(addr)] = Holder(str(container), str(spec))

    # -- internals: consensus ------------------------------------------------------

    def _ring_ready(self, now: float) -> bool:
        due = self._next_proposal is None or now >= self._next_proposal
        if self.ring.empty() and self.paxos is not None and due:
            self._next_proposal = now + PROPOSE_RETRY * (1 + self.rng.random())
            self.paxos.propose()
            if not self._consensus_reached():
                self.outbox.append(Gossip(self._gossip_paxos()))
            self.notify()
        return not self.ring.empty()

    def _consensus_reached(self) -> bool:
        assert self.paxos is not None
        value = self.paxos.consensus()
        if value is None or not self.ring.empty():
            return False
        self.ring = Ring.initial(*self.universe, value)
        self._report_free()
        self._changed(gossip=True)
        return True

    def _merge_paxos(self, sender: int, knows: dict[int, Any]) -> bytes | None:
        if not self.ring.empty():
            self.outbox.append(Unicast(sender, self._ring_message()))
            self.notify()
            return None
        if self.paxos is None:
            return None
        before = dict(self.paxos.knows)
        self.paxos.merge(knows)
        self.paxos.think()
        if self._next_proposal is None:
            self._next_proposal = float("-inf")  # we take part now: show it in status
        if self._consensus_reached():
            return None  # the ring is in the outbox, for every neighbour
        if self.paxos.knows.get(self.name) != before.get(self.name):
            self.outbox.append(Gossip(self._gossip_paxos()))  # the sender must see it too
            self.notify()
            return None
        return self._gossip_paxos() if self.paxos.knows != before else None

    def _gossip_paxos(self) -> bytes:
        assert self.paxos is not None
        return codec.push({"paxos": codec.paxos_to_json(self.paxos.knows)})

    # -- internals: the ring -------------------------------------------------------

    def _gossip_ring(self) -> bytes:
        return codec.push({"ring": codec.ring_to_json(self.ring)})

    def _ring_message(self) -> bytes:
        return codec.push({"t": "ring", "ring": codec.ring_to_json(self.ring)})

    def _merge_ring(self, ring: Ring) -> bytes | None:
        try:
            changed = self.ring.merge(ring)
        except RingConflict:
            self.conflicts += 1
            if (ring.start, ring.end) == (self.ring.start, self.ring.end):
                self.foreign_seeds = ring.origin
            return None
        if not changed:
            return None
        lost = [a for a in self.holders if self.ring.owner(a) != self.name]
        self.conflicts += len(lost)
        self._changed(gossip=self._report_free())
        return self._gossip_ring()

    def _report_free(self) -> bool:
        taken = sorted(self.holders)
        free = {
            start: count_free([(start, stop)], taken)
            for start, stop, entry in self.ring.segments()
            if entry.owner == self.name
        }
        return self.ring.report_free(self.name, free)

    def _hold(self, addr: int, holder: Holder) -> None:
        self.holders[addr] = holder
        self._waiting = None
        self._changed(gossip=self._report_free())

    def _changed(self, gossip: bool) -> None:
        self.generation += 1
        if gossip:
            self.outbox.append(Gossip(self._gossip_ring()))
        self.notify()

    def _note_waiting(self, reason: str, now: float) -> Waiting:
        self._waiting = (reason, now)
        return Waiting(reason)

    # -- internals: asking and giving ----------------------------------------------

    def _ask_for_space(self, subnet: Interval, now: float) -> Waiting:
        hints = self.ring.free_hints(subnet)
        hints.pop(self.name, None)
        candidates = sorted(
            (p for p, free in hints.items() if free > 0 and p in self.reachable),
            key=lambda p: (-hints[p], p),
        )
        if not candidates:
            alive = [p for p in hints if p in self.reachable]
            return self._note_waiting(UNREACHABLE if hints and not alive else WAITING, now)
        msg = {"t": "space", "start": subnet[0], "end": subnet[1]}
        self._ask(("space", *subnet), candidates, msg, now)
        return self._note_waiting(WAITING, now)

    def _ask(
        self, key: tuple[str, int, int], candidates: list[int], msg: dict[str, Any], now: float
    ) -> None:
        asked = self._asked.get(key)
        if asked is not None and now - asked[1] < REQUEST_RETRY:
            return
        peer = candidates[0]
        if asked is not None and asked[0] in candidates and len(candidates) > 1:
            peer = candidates[(candidates.index(asked[0]) + 1) % len(candidates)]
        self._asked[key] = (peer, now)
        self.outbox.append(Unicast(peer, codec.push(msg)))
        self.notify()

    def _donate(self, requester: int, subnet: Interval) -> None:
        run = largest_run(clip(self.ring.owned_by(self.name), subnet), sorted(self.holders))
        if run is not None and requester != self.name:
            size = (run[1] - run[0] + 1) // 2
            self.ring.transfer(self.name, requester, run[1] - size, run[1])
            self._report_free()
            self._changed(gossip=True)
        self.outbox.append(Unicast(requester, self._ring_message()))

    def _grant(self, requester: int, addr: int) -> None:
        holder = self.holders.get(addr)
        if holder is not None:
            reason = (
                f"address {ip(addr)} is already in use by container {holder.container} "
                f"on peer {format_peer_name(self.name)}"
            )
            msg = {"t": "refused", "addr": addr, "reason": reason}
            self.outbox.append(Unicast(requester, codec.push(msg)))
            return
        if self.ring.owner(addr) == self.name and requester != self.name:
            self.ring.transfer(self.name, requester, addr, addr + 1)
            self._report_free()
            self._changed(gossip=True)
        self.outbox.append(Unicast(requester, self._ring_message()))

    def _range_text(self) -> str:
        return f"{ip(self.universe[0])}-{ip(self.universe[1] - 1)}"
