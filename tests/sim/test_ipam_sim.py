"""N allocators in memory on a fake clock: merges, concurrent allocation, restarts, partitions.

The simulated network delivers gossip and unicasts between live peers of the same
partition after a random delay, loses some, and repairs with full-state gossip as the
real gossiper does.  Clients keep asking (as the CLI does) until they are served.  After
every event the invariant is checked: no address is owned by two peers (each peer judged
by its own view), no address is held by two containers, every held address is owned by
its holder.  At the end the network heals and everything must converge and be served.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import pytest
from pyweave.router.core.ipam.allocator import (
    Allocated,
    Allocator,
    Gossip,
    Init,
    Refused,
    Unicast,
    Waiting,
)
from pyweave.router.core.ipam.space import Interval, usable

BASE = 10 << 24
UNIVERSE: Interval = (BASE, BASE + 1024)
SUBNETS: list[Interval] = [
    UNIVERSE,
    (BASE + 256, BASE + 512),  # a /24
    (BASE + 768, BASE + 832),  # a /26
    (BASE + 512, BASE + 520),  # a /29: its edges are hit soon; it may fill up
]
TINY = SUBNETS[-1]


def full(sim: IpamSim, subnet: Interval) -> bool:
    """Every usable address of `subnet` is held by a live peer's container."""
    low, high = usable(subnet)
    held = {a for n in sim.nodes.values() if n.up for a in n.alloc.holders if low <= a < high}
    return len(held) == high - low


@dataclass
class Want:
    node: int
    container: str
    subnet: Interval | None = None  # allocate in it, or
    addr: int | None = None  # claim it
    got: int | None = None
    refused: str | None = None


@dataclass
class Node:
    name: int
    alloc: Allocator
    up: bool = True
    removed: bool = False  # dead for good, taken over by rmpeer
    seen: set[int] = field(default_factory=set)


class IpamSim:
    def __init__(
        self,
        n: int,
        seed: int,
        loss: float = 0.05,
        init: Init | None = None,
        inits: dict[int, Init] | None = None,
        default_subnet: Interval = UNIVERSE,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.now = 0.0
        self.init = init or Init("consensus", peers=n)
        self.inits = inits or {}  # per-node --ipalloc-init, overriding `init`
        self.default_subnet = default_subnet
        self.events: list[tuple[float, int, int, int, str, bytes]] = []
        self.seq = itertools.count()
        self.nodes = {i: Node(i, self._allocator(i)) for i in range(1, n + 1)}
        self.group = dict.fromkeys(self.nodes, 0)
        self.wants: list[Want] = []
        self.names = itertools.count()

    def _allocator(self, name: int) -> Allocator:
        init = self.inits.get(name, self.init)
        seed = self.rng.random()
        return Allocator(name, UNIVERSE, self.default_subnet, init, random.Random(seed))

    # -- network -------------------------------------------------------------------

    def linked(self, a: int, b: int) -> bool:
        na, nb = self.nodes[a], self.nodes[b]
        return a != b and na.up and nb.up and self.group[a] == self.group[b]

    def neighbours(self, a: int) -> list[int]:
        return [b for b in self.nodes if self.linked(a, b)]

    def send(self, src: int, dest: int, kind: str, payload: bytes) -> None:
        if self.rng.random() < self.loss:
            return
        when = self.now + self.rng.uniform(0.001, 0.05)
        heapq.heappush(self.events, (when, next(self.seq), src, dest, kind, payload))

    def drain(self, name: int) -> None:
        node = self.nodes[name]
        outbox, node.alloc.outbox = node.alloc.outbox, []
        for out in outbox:
            if isinstance(out, Gossip):
                for peer in self.neighbours(name):
                    self.send(name, peer, "gossip", out.payload)
            elif isinstance(out, Unicast) and self.linked(name, out.dest):
                self.send(name, out.dest, "unicast", out.payload)

    def deliver(self, src: int, dest: int, kind: str, payload: bytes) -> None:
        if not self.linked(src, dest):
            return
        alloc = self.nodes[dest].alloc
        if kind == "gossip":
            delta = alloc.on_gossip(src, payload)
            if delta is not None:
                for peer in self.neighbours(dest):
                    if peer != src:
                        self.send(dest, peer, "gossip", delta)
        else:
            alloc.on_unicast(src, payload)
        self.drain(dest)

    def refresh_peers(self) -> None:
        for name, node in self.nodes.items():
            if not node.up:
                continue
            now_seen = set(self.neighbours(name))
            for peer in now_seen - node.seen:  # a new neighbour gets our full state
                self.send(name, peer, "gossip", node.alloc.full_state())
            node.seen = now_seen
            node.alloc.update_peers(now_seen | {name})

    def run(self, duration: float) -> None:
        end = self.now + duration
        next_repair = self.now
        while True:
            if self.now >= next_repair:
                self.repair()
                self.serve_wants()
                next_repair = self.now + 0.5
            if not self.events or self.events[0][0] > min(end, next_repair):
                self.now = min(end, next_repair)
                if self.now >= end:
                    return
                continue
            when, _, src, dest, kind, payload = heapq.heappop(self.events)
            self.now = when
            self.deliver(src, dest, kind, payload)
            self.check()

    def repair(self) -> None:
        self.refresh_peers()
        for name in self.nodes:
            if self.nodes[name].up and self.rng.random() < 0.2:
                for peer in self.neighbours(name):
                    self.send(name, peer, "gossip", self.nodes[name].alloc.full_state())

    # -- clients -------------------------------------------------------------------

    def want(self, node: int, subnet: Interval | None = None, addr: int | None = None) -> Want:
        wanted = Want(node, f"c{next(self.names)}", subnet, addr)
        self.wants.append(wanted)
        self.serve(wanted)
        return wanted

    def serve(self, want: Want) -> None:
        node = self.nodes[want.node]
        if not node.up or want.got is not None or want.refused is not None:
            return
        if want.addr is not None:
            outcome = node.alloc.claim(want.container, "netns:x", want.addr, self.now)
        else:
            assert want.subnet is not None
            outcome = node.alloc.allocate(want.container, "netns:x", want.subnet, self.now)
        if isinstance(outcome, Allocated):
            want.got = outcome.addr
        elif isinstance(outcome, Refused):
            want.refused = outcome.reason
        else:
            assert isinstance(outcome, Waiting) and outcome.reason
        self.drain(want.node)
        self.check()

    def serve_wants(self) -> None:
        for want in self.wants:
            self.serve(want)

    def free(self, want: Want) -> None:
        node = self.nodes[want.node]
        if want.got is not None and node.up:
            node.alloc.free(want.container)
            want.got = None
            want.refused = "freed"
            self.drain(want.node)

    # -- faults --------------------------------------------------------------------

    def partition(self) -> None:
        for name in self.nodes:
            self.group[name] = self.rng.randrange(2)
        self.refresh_peers()

    def heal(self) -> None:
        self.group = dict.fromkeys(self.nodes, 0)
        self.refresh_peers()

    def restart(self, name: int) -> None:
        """Crash and start again from the persisted snapshot (written before any send)."""
        node = self.nodes[name]
        snapshot = node.alloc.snapshot()
        node.alloc = self._allocator(name)
        node.alloc.restore(snapshot)
        node.seen = set()
        self.refresh_peers()

    def kill_and_remove(self, name: int) -> None:
        """A peer dies for good; one survivor runs rmpeer once it cannot reach it."""
        node = self.nodes[name]
        node.up, node.removed = False, True
        for want in self.wants:
            if want.node == name:
                want.refused = "died"
        self.heal()  # rmpeer needs every survivor reachable (it refuses otherwise)
        self.run(3.0)
        heir = self.rng.choice([n for n in self.nodes.values() if n.up])
        heir.alloc.rmpeer([name])
        self.drain(heir.name)

    # -- invariants ----------------------------------------------------------------

    def check(self) -> None:
        owned: dict[int, list[Interval]] = {}
        for name, node in self.nodes.items():
            if not node.removed:
                owned[name] = node.alloc.ring.owned_by(name)
        marks = sorted((start, end, name) for name, rs in owned.items() for start, end in rs)
        for (_s1, e1, n1), (s2, _e2, n2) in itertools.pairwise(marks):
            assert e1 <= s2, f"{s2:#x} owned by {n1} and {n2} at t={self.now:.3f}"
        held: dict[int, str] = {}
        wants = {w.container: w for w in self.wants}
        for name, node in self.nodes.items():
            if node.removed:
                continue
            for addr, holder in node.alloc.holders.items():
                assert addr not in held, f"{addr:#x} held twice: {held[addr]} and {holder}"
                held[addr] = holder.container
                assert node.alloc.ring.owner(addr) == name, f"{addr:#x} held, not owned"
                assert addr != UNIVERSE[0] and addr != UNIVERSE[1] - 1
                want = wants.get(holder.container)
                if want is not None and want.subnet is not None:
                    # inside the requested subnet, never its network or broadcast address
                    low, high = usable(want.subnet)
                    assert low <= addr < high, f"{addr:#x} outside usable {want.subnet}"
                elif want is not None:
                    assert addr == want.addr, f"claim of {want.addr} holds {addr:#x}"


def random_story(seed: int, n: int, steps: int) -> IpamSim:
    sim = IpamSim(n, seed)
    rng = sim.rng
    for _ in range(steps):
        action = rng.random()
        live = [name for name, node in sim.nodes.items() if node.up]
        if action < 0.55:
            node = rng.choice(live)
            if rng.random() < 0.2:
                sim.want(node, addr=rng.randrange(UNIVERSE[0] + 1, UNIVERSE[1] - 1))
            else:
                sim.want(node, subnet=rng.choice(SUBNETS))
        elif action < 0.7:
            served = [w for w in sim.wants if w.got is not None]
            if served:
                sim.free(rng.choice(served))
        elif action < 0.8:
            sim.partition()
        elif action < 0.88:
            sim.heal()
        elif action < 0.97:
            sim.restart(rng.choice(live))
        elif len(live) > 2 and not any(n.removed for n in sim.nodes.values()):
            sim.kill_and_remove(rng.choice(live))
        sim.run(rng.uniform(0.1, 3.0))
    return sim


def settle(sim: IpamSim) -> None:
    sim.heal()
    sim.loss = 0.0
    sim.run(30.0)


@pytest.mark.parametrize("seed", range(12))
def test_random_faults_never_own_an_address_twice(seed: int) -> None:
    sim = random_story(seed, n=3 + seed % 4, steps=60)
    settle(sim)
    live = [n for n in sim.nodes.values() if n.up]
    rings = [n.alloc.ring for n in live]
    assert all(r.same_as(rings[0]) for r in rings), "rings did not converge"
    assert not rings[0].empty()
    for want in sim.wants:
        if sim.nodes[want.node].up and want.refused is None:
            assert want.got is not None or (want.subnet == TINY and full(sim, TINY)), want
    claims = [w for w in sim.wants if w.addr is not None and w.got is not None]
    assert all(w.got == w.addr for w in claims)
    assert all(n.alloc.conflicts == 0 for n in live)


def test_concurrent_allocations_are_distinct_and_lowest_first() -> None:
    sim = IpamSim(3, seed=1, loss=0.0)
    wants = [sim.want(node, subnet=UNIVERSE) for _ in range(40) for node in (1, 2, 3)]
    sim.run(20.0)
    got = [w.got for w in wants]
    assert None not in got and len(set(got)) == len(got)
    first = next(w.got for w in wants if w.node == 1)
    assert first == UNIVERSE[0] + 1  # the lowest usable address of the range


def test_exhausted_subnet_waits_and_says_why() -> None:
    sim = IpamSim(2, seed=2, loss=0.0)
    small = (BASE + 768, BASE + 772)  # a /30: two usable addresses
    wants = [sim.want(1 + i % 2, subnet=small) for i in range(3)]
    sim.run(10.0)
    assert sorted(w.got for w in wants if w.got is not None) == [BASE + 769, BASE + 770]
    waiting = next(w for w in wants if w.got is None)
    outcome = sim.nodes[waiting.node].alloc.allocate(waiting.container, "netns:x", small, sim.now)
    assert outcome == Waiting("waiting for IP(s) to become available")


def test_minority_partition_before_consensus_reports_it() -> None:
    sim = IpamSim(3, seed=3, loss=0.0)
    sim.group = {1: 0, 2: 0, 3: 1}
    sim.refresh_peers()
    lone = sim.want(3, subnet=UNIVERSE)
    pair = sim.want(1, subnet=UNIVERSE)
    sim.run(10.0)
    assert pair.got is not None and lone.got is None
    assert sim.nodes[3].alloc.status(sim.now) == "awaiting consensus (quorum: 2, known: 1)"
    sim.heal()
    sim.run(10.0)
    assert lone.got is not None and lone.got != pair.got


def test_space_owned_by_unreachable_peer_is_reported_then_rmpeer_frees_it() -> None:
    sim = IpamSim(2, seed=4, loss=0.0)
    first = sim.want(1, subnet=UNIVERSE)
    sim.run(5.0)
    assert first.got is not None
    high = (BASE + 768, BASE + 832)  # owned by peer 2 after the even split
    sim.nodes[2].up = False
    sim.refresh_peers()
    stuck = sim.want(1, subnet=high)
    sim.run(5.0)
    assert stuck.got is None
    assert sim.nodes[1].alloc.status(sim.now).startswith("all IP ranges owned by unreachable")
    sim.nodes[2].removed = True
    assert sim.nodes[1].alloc.rmpeer([2]) == 512
    sim.run(2.0)
    assert stuck.got == BASE + 769


def test_seed_rings_agree_without_talking() -> None:
    sim = IpamSim(3, seed=5, init=Init("seed", seeds=(1, 2, 3)))
    rings = [node.alloc.ring for node in sim.nodes.values()]
    assert all(r.same_as(rings[0]) for r in rings)
    assert sorted(rings[0].shares().values()) == [341, 341, 342]


def test_observer_gets_space_from_others() -> None:
    sim = IpamSim(3, seed=6, loss=0.0)
    sim.nodes[3].alloc = Allocator(3, UNIVERSE, UNIVERSE, Init("observer"), random.Random(1))
    for node in sim.nodes.values():
        node.alloc.paxos = node.alloc.paxos if node.name != 3 else None
    watcher = sim.want(3, subnet=UNIVERSE)
    assert sim.nodes[3].alloc.status(sim.now) == "priming"
    sim.want(1, subnet=UNIVERSE)
    sim.run(10.0)
    assert watcher.got is not None
    assert 3 not in sim.nodes[1].alloc.ring.origin


def test_handoff_gives_everything_to_a_peer() -> None:
    sim = IpamSim(2, seed=7, loss=0.0)
    sim.want(1, subnet=UNIVERSE)
    sim.run(5.0)
    assert sim.nodes[2].alloc.handoff() == 1
    sim.drain(2)
    sim.run(2.0)
    assert sim.nodes[1].alloc.ring.shares() == {1: 1024}


def test_allocations_in_a_subnet_never_take_its_edges() -> None:
    """A /29 filled from both peers: the six usable addresses, never .0 or .7 of it."""
    sim = IpamSim(2, seed=8, loss=0.0)
    small = (BASE + 512, BASE + 520)
    wants = [sim.want(1 + i % 2, subnet=small) for i in range(8)]
    sim.run(15.0)
    got = sorted(w.got for w in wants if w.got is not None)
    assert got == list(range(BASE + 513, BASE + 519))


# -- the lab's mixed quorums -----------------------------------------------------------
# `weave lab up` (and a user starting hosts one by one) launches the first router without
# peers (consensus among 1: quorum 1) and the others naming it (consensus among 2:
# quorum 2).  A quorum of {1} and one of {2, 3} do not intersect, so Paxos cannot keep
# them from deciding twice; docs/ipam.md ("Mixed quorums") has the failure case.


def lab_inits() -> dict[int, Init]:
    return {
        1: Init("consensus", peers=1),
        2: Init("consensus", peers=2),
        3: Init("consensus", peers=2),
    }


def first_requests(sim: IpamSim, order: list[int]) -> None:
    """First allocation requests on `order`, each a few milliseconds after the previous."""
    for node in order:
        sim.want(node, subnet=UNIVERSE)
        sim.run(sim.rng.uniform(0.0, 0.05))


def origins(sim: IpamSim) -> set[tuple[int, ...]]:
    return {n.alloc.ring.origin for n in sim.nodes.values() if not n.alloc.ring.empty()}


@pytest.mark.parametrize("seed", range(10))
def test_mixed_quorums_are_safe_when_the_first_host_allocates_first(seed: int) -> None:
    """The lab's own order: h1 (quorum 1) is served before anyone else asks; its ring
    reaches the others, who then ask it for space.  Invariants checked at every step."""
    sim = IpamSim(3, seed, loss=0.05, inits=lab_inits())
    first = sim.want(1, subnet=UNIVERSE)
    assert first.got == UNIVERSE[0] + 1  # quorum 1: decided alone, at once
    sim.run(2.0)
    first_requests(sim, [3, 2, 3, 2, 1])
    if seed % 2:
        sim.partition()  # a random partition afterwards changes nothing
        sim.run(5.0)
    settle(sim)
    assert origins(sim) == {(1,)}
    assert all(w.got is not None for w in sim.wants)
    assert all(n.alloc.conflicts == 0 for n in sim.nodes.values())


def _mixed_story(seed: int, partitioned: bool, order: list[int]) -> IpamSim:
    sim = IpamSim(3, seed, loss=0.0, inits=lab_inits())
    sim.check = lambda: None  # type: ignore[method-assign]  # we look for the failure
    if partitioned:
        sim.group = {1: 0, 2: 1, 3: 1}  # 2 and 3 met each other, then lost 1
    sim.refresh_peers()
    first_requests(sim, order)
    sim.run(10.0)
    sim.heal()
    sim.run(20.0)
    return sim


def test_mixed_quorums_with_a_partition_at_start_build_two_rings() -> None:
    """{1} | {2, 3}: 1 decides alone (quorum 1), 2 and 3 decide together (quorum 2):
    two rings that each give the whole range away; after healing they conflict, and
    `weave status` says so."""
    sim = _mixed_story(seed=0, partitioned=True, order=[1, 2])
    assert len(origins(sim)) == 2
    assert sim.nodes[1].alloc.ring.owned_by(1) == [UNIVERSE]
    assert sim.nodes[2].alloc.ring.owned_by(2) != []  # the same addresses, owned twice
    assert all(n.alloc.conflicts > 0 for n in sim.nodes.values())
    status = sim.nodes[1].alloc.status(sim.now)
    assert status.startswith("IP allocation was seeded by different peers"), status


def test_mixed_quorums_without_partition_can_race_into_two_rings() -> None:
    """No partition: first requests on 2 and 1 within 50 ms.  If 1 decides alone before
    2's proposal reaches it while 3 promises to 2, there are two rings (3 seeds of 40)."""
    bad = [s for s in range(40) if len(origins(_mixed_story(s, False, [2, 1]))) > 1]
    assert bad, "the race did not happen: update docs/ipam.md"
    assert len(bad) < 40


@pytest.mark.parametrize("partitioned", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_an_explicit_consensus_count_is_safe_in_the_same_stories(
    seed: int, partitioned: bool
) -> None:
    """The documented fix: `--ipalloc-init consensus=3` on every host (quorum 2 of 3)."""
    sim = IpamSim(3, seed, loss=0.05)  # Init("consensus", peers=3) everywhere
    if partitioned:
        sim.group = {1: 0, 2: 1, 3: 1}
    sim.refresh_peers()
    first_requests(sim, [1, 2, 3, 2, 1])
    sim.run(10.0)
    if partitioned:
        assert sim.nodes[1].alloc.ring.empty()  # the minority waits
        assert sim.nodes[1].alloc.status(sim.now).startswith("awaiting consensus")
    settle(sim)
    assert len(origins(sim)) == 1
    assert all(w.got is not None for w in sim.wants)
    assert all(n.alloc.conflicts == 0 for n in sim.nodes.values())
