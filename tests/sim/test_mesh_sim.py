"""N meshes in memory on a fake clock: loss, delays, partitions, restarts, convergence.

The simulated shell does what the real one must: dials on `Dial`, reports both ends of a
connection with `connection_established`, delivers gossip with a delay (or loses it),
closes connections on `DropConnection` without reporting their loss, and reports
`connection_lost` after a heartbeat timeout when a peer dies or a partition cuts a link.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from pyweave.router.core.gossip import SendGossip, SendUnicast
from pyweave.router.core.mesh import Dial, DropConnection, Effect, Mesh, RoutesChanged
from pyweave.router.core.routes import symmetric_links

PORT = 6783
HEARTBEAT_TIMEOUT = 6.0


@dataclass
class Conn:
    a: int  # dialer
    b: int  # acceptor
    a_sees: str  # b's address as a knows it
    b_sees: str
    uids: dict[int, int]  # endpoint -> uid of the *remote* end
    holders: set[int] = field(default_factory=set)  # ends that still hold it
    open: bool = True

    def other(self, node: int) -> int:
        return self.b if node == self.a else self.a

    def view(self, node: int) -> str:
        return self.a_sees if node == self.a else self.b_sees


@dataclass
class Node:
    name: int
    ip: str
    mesh: Mesh
    uid: int
    up: bool = True
    targets: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.ip}:{PORT}"


class Sim:
    def __init__(self, n: int, seed: int, loss: float = 0.0, discovery: bool = True) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.discovery = discovery
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._ports = itertools.count(40000)
        self.nodes: dict[int, Node] = {}
        self.by_addr: dict[str, int] = {}
        self.conns: list[Conn] = []
        self.group: dict[int, int] = {}
        for i in range(n):
            name = 0x0200_0000_0000 + (i + 1) * 0x0101
            ip = f"10.0.{i // 200}.{i % 200 + 1}"
            self.nodes[name] = Node(name, ip, self._new_mesh(name, 1000 + i), 1000 + i)
            self.by_addr[f"{ip}:{PORT}"] = name
            self.group[name] = 0

    def _new_mesh(self, name: int, uid: int) -> Mesh:
        rng = random.Random(self.rng.random())
        return Mesh(name, f"host{name & 0xFFFF:x}", uid, PORT, rng, discovery=self.discovery)

    # -- plumbing ------------------------------------------------------------------

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now + delay, next(self._seq), fn))

    def delay(self) -> float:
        return self.rng.uniform(0.001, 0.05)

    def linked(self, a: int, b: int) -> bool:
        na, nb = self.nodes[a], self.nodes[b]
        return na.up and nb.up and self.group[a] == self.group[b]

    def apply(self, node: Node, effects: list[Effect]) -> None:
        for effect in effects:
            if not node.up:
                return
            if isinstance(effect, SendGossip):
                self._send(node.name, effect)
            elif isinstance(effect, Dial):
                self._dial(node.name, effect.address)
            elif isinstance(effect, DropConnection):
                self._drop(node.name, effect)
            elif isinstance(effect, SendUnicast):
                raise AssertionError("no unicasts expected")
            else:
                assert isinstance(effect, RoutesChanged)

    def _send(self, sender: int, effect: SendGossip) -> None:
        conn = self._open_conn(sender, effect.to_peer)
        if conn is None or self.rng.random() < self.loss:
            return

        def deliver() -> None:
            if conn.open and self.linked(sender, effect.to_peer):
                node = self.nodes[effect.to_peer]
                eff = node.mesh.gossip_received(sender, effect.channel, effect.payload, self.now)
                self.apply(node, eff)

        self.at(self.delay(), deliver)

    def _open_conn(self, a: int, b: int) -> Conn | None:
        for conn in reversed(self.conns):
            if conn.open and {conn.a, conn.b} == {a, b} and a in conn.holders:
                return conn
        return None

    def _dial(self, dialer: int, address: str) -> None:
        def attempt() -> None:
            target = self.by_addr.get(address)
            node = self.nodes[dialer]
            if not node.up:
                return
            if target is None or not self.linked(dialer, target) or self.rng.random() < self.loss:
                self.apply(node, node.mesh.dial_failed(address, "connection refused", self.now))
                return
            other = self.nodes[target]
            seen_from = f"{node.ip}:{next(self._ports)}"
            conn = Conn(dialer, target, address, seen_from, {dialer: other.uid, target: node.uid})
            conn.holders = {dialer, target}
            self.conns.append(conn)
            self.apply(other, self._established(other, node, seen_from, False))
            self.apply(node, self._established(node, other, address, True))

        self.at(self.delay(), attempt)

    def _established(self, node: Node, other: Node, addr: str, outbound: bool) -> list[Effect]:
        nick = f"host{other.name & 0xFFFF:x}"
        return node.mesh.connection_established(
            other.name, nick, other.uid, addr, outbound, self.now
        )

    def _drop(self, node: int, effect: DropConnection) -> None:
        for conn in self.conns:
            if (
                node in conn.holders
                and conn.other(node) == effect.peer_name
                and conn.view(node) == effect.address
                and conn.uids[node] == effect.peer_uid
            ):
                conn.holders.discard(node)
                conn.open = False
                other = conn.other(node)
                self.at(self.delay(), lambda c=conn, o=other: self._lost(c, o, "closed by peer"))
                return

    def _lost(self, conn: Conn, node: int, reason: str) -> None:
        conn.open = False
        if node not in conn.holders or not self.nodes[node].up:
            return
        conn.holders.discard(node)
        n = self.nodes[node]
        eff = n.mesh.connection_lost(conn.other(node), conn.view(node), reason, self.now)
        self.apply(n, eff)

    def _cut(self, conn: Conn) -> None:
        """The link died silently: both ends notice after the heartbeat timeout."""
        conn.open = False
        for end in (conn.a, conn.b):
            self.at(HEARTBEAT_TIMEOUT, lambda c=conn, e=end: self._lost(c, e, "timeout"))

    # -- scenario controls ---------------------------------------------------------

    def launch(self, name: int, targets: list[str]) -> None:
        node = self.nodes[name]
        node.targets = targets
        self.apply(node, node.mesh.add_targets(targets, self.now))

    def crash(self, name: int) -> None:
        node = self.nodes[name]
        node.up = False
        for conn in self.conns:
            if conn.open and name in (conn.a, conn.b):
                conn.holders.discard(name)
                self._cut(conn)

    def restart(self, name: int, uid: int) -> None:
        node = self.nodes[name]
        node.uid, node.up = uid, True
        node.mesh = self._new_mesh(name, uid)
        self.launch(name, node.targets)

    def partition(self, groups: dict[int, int]) -> None:
        self.group.update(groups)
        for conn in self.conns:
            if conn.open and self.group[conn.a] != self.group[conn.b]:
                self._cut(conn)

    def heal(self) -> None:
        for name in self.group:
            self.group[name] = 0

    def run(self, duration: float) -> None:
        end = self.now + duration
        for _ in range(2_000_000):
            ev_time = self._events[0][0] if self._events else float("inf")
            due = [
                (d, n.name)
                for n in self.nodes.values()
                if n.up and (d := n.mesh.next_deadline()) is not None
            ]
            tick_time = min((d for d, _ in due), default=float("inf"))
            when = min(ev_time, tick_time)
            if when > end:
                self.now = end
                return
            self.now = max(self.now, when)
            if ev_time <= tick_time:
                heapq.heappop(self._events)[2]()
                continue
            for deadline, name in due:
                node = self.nodes[name]
                if deadline <= self.now and node.up:
                    self.apply(node, node.mesh.tick(self.now))
        raise AssertionError("simulation did not settle")

    # -- checks --------------------------------------------------------------------

    def live(self, group: int | None = None) -> list[Node]:
        return [
            n
            for n in self.nodes.values()
            if n.up and (group is None or self.group[n.name] == group)
        ]

    def assert_converged(self, members: list[Node]) -> None:
        names = sorted(n.name for n in members)
        views = [n.mesh.peers() for n in members]
        for node, view in zip(members, views, strict=True):
            assert [r.name for r in view] == names, f"{node.name:x} sees {len(view)} peers"
            assert view == views[0], f"{node.name:x} disagrees"
            uids = {r.name: r.uid for r in view}
            assert all(uids[n.name] == n.uid for n in members)
        links = symmetric_links(views[0])
        assert all(links[n] for n in names) or len(names) == 1
        for node in members:
            assert sorted(node.mesh.routes.unicast) == [x for x in names if x != node.name]
        self.assert_broadcast_exactly_once(members)

    def assert_broadcast_exactly_once(self, members: list[Node]) -> None:
        nodes = {n.name: n for n in members}
        for source in nodes:
            received: Counter[int] = Counter()
            queue = deque([source])
            while queue:
                hops = nodes[queue.popleft()].mesh.broadcast_next_hops(source)
                received.update(hops)
                queue.extend(hops)
            assert set(received) == set(nodes) - {source}
            assert set(received.values()) <= {1}

    def assert_unicast_paths(self, members: list[Node]) -> None:
        nodes = {n.name: n for n in members}
        for src in nodes:
            for dest in nodes:
                node, hops = src, 0
                while node != dest:
                    hop = nodes[node].mesh.next_hop(dest)
                    assert hop is not None
                    node, hops = hop, hops + 1
                    assert hops < len(nodes)


@pytest.mark.parametrize(("n", "seed"), [(5, 1), (12, 2), (25, 3)])
def test_full_mesh_by_discovery_under_loss(n: int, seed: int) -> None:
    sim = Sim(n, seed, loss=0.05)
    first = next(iter(sim.nodes.values()))
    for node in sim.nodes.values():
        if node is not first:
            sim.launch(node.name, [first.ip])
    sim.run(90.0)
    members = sim.live()
    sim.assert_converged(members)
    for node in members:  # discovery: everybody ends up connected to everybody
        assert len(node.mesh.connected_peers()) == n - 1
    sim.assert_unicast_paths(members)


def test_tree_without_discovery_routes_multi_hop() -> None:
    sim = Sim(15, seed=4, loss=0.05, discovery=False)
    nodes = list(sim.nodes.values())
    for i, node in enumerate(nodes[1:], start=1):
        sim.launch(node.name, [nodes[sim.rng.randrange(i)].address])
    sim.run(60.0)
    sim.assert_converged(nodes)
    sim.assert_unicast_paths(nodes)
    assert sum(len(n.mesh.connected_peers()) for n in nodes) == 2 * 14  # still a tree
    assert all(n.mesh.targets() for n in nodes[1:])


def test_partition_then_heal() -> None:
    sim = Sim(10, seed=5, loss=0.02)
    nodes = list(sim.nodes.values())
    for node in nodes[1:]:
        sim.launch(node.name, [nodes[0].ip])
    sim.run(40.0)
    sim.assert_converged(nodes)
    sim.partition({n.name: (1 if i < 4 else 2) for i, n in enumerate(nodes)})
    sim.run(30.0)
    left, right = sim.live(1), sim.live(2)
    sim.assert_converged(left)  # each side GC'd the other
    sim.assert_converged(right)
    sim.heal()
    sim.run(420.0)  # backoff is capped at 3 min (+25 %)
    sim.assert_converged(sim.live())


def test_departed_peer_gc_and_restart_relearned() -> None:
    sim = Sim(8, seed=6, loss=0.02)
    nodes = list(sim.nodes.values())
    for node in nodes[1:]:
        sim.launch(node.name, [nodes[0].ip])
    sim.run(40.0)
    victim = nodes[3]
    old_version = nodes[0].mesh.topology.get(victim.name)
    assert old_version is not None
    sim.crash(victim.name)
    sim.run(20.0)
    sim.assert_converged(sim.live())  # the departed peer is GC'd everywhere
    sim.restart(victim.name, uid=7777)
    sim.run(60.0)
    sim.assert_converged(sim.live())
    record = nodes[0].mesh.topology.get(victim.name)
    assert record is not None and record.uid == 7777


def test_quick_restart_supersedes_old_incarnation() -> None:
    sim = Sim(6, seed=7)
    nodes = list(sim.nodes.values())
    for node in nodes[1:]:
        sim.launch(node.name, [nodes[0].ip])
    sim.run(30.0)
    victim = nodes[1]  # redials the hub while the hub still holds its old connection
    old = nodes[2].mesh.topology.get(victim.name)
    assert old is not None and old.version > 1
    sim.crash(victim.name)
    sim.run(1.0)  # others still believe in the old connections
    sim.restart(victim.name, uid=4242)
    sim.run(60.0)
    sim.assert_converged(sim.live())
    new = nodes[2].mesh.topology.get(victim.name)
    assert new is not None and new.uid == 4242 and new.version > old.version
