"""Routes: BFS unicast next hops and per-source broadcast trees, checked as properties."""

from __future__ import annotations

from collections import Counter, deque

from hypothesis import given, settings
from hypothesis import strategies as st
from pyweave.router.core.routes import (
    Routes,
    broadcast_next_hops,
    symmetric_links,
    unicast_next_hops,
)
from pyweave.router.core.topology import ConnectionRecord, PeerRecord, Topology

Edge = tuple[int, int]


def records_for(
    nodes: list[int], edges: set[Edge], one_sided: set[Edge] | None = None
) -> list[PeerRecord]:
    claims: dict[int, list[ConnectionRecord]] = {n: [] for n in nodes}
    for a, b in edges:
        claims[a].append(ConnectionRecord(b, f"h{b}:6783", True, True))
        claims[b].append(ConnectionRecord(a, f"h{a}:6783", False, True))
    for a, b in one_sided or ():  # a claims b, b does not (or not established)
        claims[a].append(ConnectionRecord(b, f"h{b}:6783", True, True))
        claims[b].append(ConnectionRecord(a, f"h{a}:6783", False, False))
    return [PeerRecord(n, str(n), 1, 5, tuple(claims[n])) for n in nodes]


def topology_for(us: int, records: list[PeerRecord]) -> Topology:
    topo = Topology(us, str(us), 1)
    ours = next(r for r in records if r.name == us)
    topo.set_connections(ours.connections)
    topo.merge([r for r in records if r.name != us])
    return topo


@st.composite
def connected_graphs(draw: st.DrawFn) -> tuple[list[int], set[Edge], set[Edge]]:
    size = draw(st.integers(1, 12))
    nodes = draw(st.lists(st.integers(1, 1000), min_size=size, max_size=size, unique=True))
    edges: set[Edge] = set()
    for i in range(1, size):  # random spanning tree keeps it connected
        edges.add((nodes[draw(st.integers(0, i - 1))], nodes[i]))
    extra = draw(st.lists(st.tuples(st.sampled_from(nodes), st.sampled_from(nodes)), max_size=15))
    for a, b in extra:
        if a != b and (b, a) not in edges:
            edges.add((a, b))
    pairs = [(a, b) for a in nodes for b in nodes if a != b]
    candidates = [p for p in pairs if p not in edges and (p[1], p[0]) not in edges]
    one_sided = (
        set(draw(st.lists(st.sampled_from(candidates), max_size=3))) if candidates else set()
    )
    one_sided = {(a, b) for a, b in one_sided if (b, a) not in one_sided}
    return nodes, edges, one_sided


def distances(links: dict[int, tuple[int, ...]], root: int) -> dict[int, int]:
    dist = {root: 0}
    queue = deque([root])
    while queue:
        node = queue.popleft()
        for n in links.get(node, ()):
            if n not in dist:
                dist[n] = dist[node] + 1
                queue.append(n)
    return dist


@settings(max_examples=60, deadline=None)
@given(connected_graphs())
def test_broadcast_reaches_everyone_exactly_once(
    graph: tuple[list[int], set[Edge], set[Edge]],
) -> None:
    nodes, edges, one_sided = graph
    records = records_for(nodes, edges, one_sided)
    tables = {n: broadcast_next_hops(topology_for(n, records), n) for n in nodes}
    for source in nodes:
        received: Counter[int] = Counter()
        queue = deque([source])
        while queue:
            node = queue.popleft()
            for hop in tables[node].get(source, ()):
                received[hop] += 1
                queue.append(hop)
        assert set(received) == set(nodes) - {source}
        assert all(count == 1 for count in received.values())


@settings(max_examples=60, deadline=None)
@given(connected_graphs())
def test_unicast_follows_shortest_paths(graph: tuple[list[int], set[Edge], set[Edge]]) -> None:
    nodes, edges, one_sided = graph
    records = records_for(nodes, edges, one_sided)
    links = symmetric_links(records)
    tables = {n: unicast_next_hops(topology_for(n, records), n) for n in nodes}
    for src in nodes:
        dist = distances(links, src)
        assert set(tables[src]) == set(nodes) - {src}
        for dest in nodes:
            node, hops = src, 0
            while node != dest:
                nxt = tables[node][dest]
                assert nxt in links[node]  # only over symmetric established links
                node, hops = nxt, hops + 1
                assert hops <= len(nodes)  # never loops
            assert hops == distances(links, dest)[src] == dist[dest]


@given(connected_graphs())
def test_routes_independent_of_record_order(graph: tuple[list[int], set[Edge], set[Edge]]) -> None:
    nodes, edges, one_sided = graph
    records = records_for(nodes, edges, one_sided)
    shuffled = list(reversed(records))
    us = nodes[0]
    a = Routes.compute(topology_for(us, records), us)
    b = Routes.compute(topology_for(us, shuffled), us)
    assert a.same_as(b)


def test_one_sided_and_unestablished_links_carry_nothing() -> None:
    records = records_for([1, 2, 3], {(1, 2)}, {(2, 3)})
    topo = topology_for(1, records)
    assert unicast_next_hops(topo, 1) == {2: 2}
    assert broadcast_next_hops(topo, 1) == {1: (2,), 2: ()}


def test_ties_broken_by_lowest_name() -> None:
    # square 1-2-4, 1-3-4: 4 is reached via 2 (lower) from 1
    records = records_for([1, 2, 3, 4], {(1, 2), (1, 3), (2, 4), (3, 4)})
    assert unicast_next_hops(topology_for(1, records), 1)[4] == 2
    # broadcast from 1: 4 is 2's child, not 3's
    assert broadcast_next_hops(topology_for(2, records), 2)[1] == (4,)
    assert broadcast_next_hops(topology_for(3, records), 3)[1] == ()
