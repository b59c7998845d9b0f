"""Routes: deterministic breadth-first search over symmetric established links.

Theory of operation
-------------------
The graph: peers are nodes; there is a link between A and B iff A's record lists an
*established* connection to B **and** B's record lists an established connection to A.
One-sided claims (a connection still pending, or the stale record of a peer that went
away) carry no traffic.

Every BFS below visits neighbours in ascending peer-name order and gives each node the
first parent that discovers it.  That makes the result a pure function of the records,
so every peer holding the same records computes the same trees.

Unicast: one BFS rooted at us.  ``next_hop[dest]`` is the first hop of the BFS-tree path
to dest.  BFS paths are shortest paths, so whichever neighbour we hand a packet to is one
hop closer to its destination *in the same graph*; when all peers agree on the graph the
hop count strictly decreases along the way, and forwarding can never loop.

Broadcast: per-source trees (as weave mesh does).  For each source S reachable from us we
run the BFS rooted at S and keep our own children in that tree: a broadcast frame that S
originated and that reaches us is forwarded to exactly those neighbours.  Since every peer
computes the same tree for S, each peer of S's component receives S's frame exactly once
(from its tree parent) on a stable topology.  For S == ourselves the children are all our
neighbours.  While views disagree (gossip in flight) a frame may be duplicated or missed;
the data path tolerates both.

Cost: O(N * (N + E)) per recomputation, done once per topology change, not per packet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyweave.router.core.topology import PeerRecord, Topology

Links = Mapping[int, tuple[int, ...]]


def symmetric_links(records: Iterable[PeerRecord]) -> dict[int, tuple[int, ...]]:
    """Adjacency (sorted) of links that both ends report as established."""
    claims: dict[int, set[int]] = {}
    for record in records:
        claims[record.name] = {c.peer for c in record.connections if c.established}
    links: dict[int, tuple[int, ...]] = {}
    for name, peers in claims.items():
        links[name] = tuple(sorted(p for p in peers if p != name and name in claims.get(p, ())))
    return links


def bfs_parents(links: Links, root: int) -> dict[int, int]:
    """The deterministic BFS tree rooted at `root`: node -> parent (root -> root)."""
    parent = {root: root}
    queue = deque([root])
    while queue:
        node = queue.popleft()
        for neighbour in links.get(node, ()):
            if neighbour not in parent:
                parent[neighbour] = node
                queue.append(neighbour)
    return parent


def unicast_from_links(links: Links, ourselves: int) -> dict[int, int]:
    parent = bfs_parents(links, ourselves)
    first_hop: dict[int, int] = {}
    # dict order is BFS order, so a node's parent is always resolved before the node
    for node, up in parent.items():
        if node == ourselves:
            continue
        first_hop[node] = node if up == ourselves else first_hop[up]
    return first_hop


def broadcast_from_links(links: Links, ourselves: int) -> dict[int, tuple[int, ...]]:
    ours = links.get(ourselves, ())
    result: dict[int, tuple[int, ...]] = {ourselves: ours}
    for source in bfs_parents(links, ourselves):
        if source == ourselves:
            continue
        parent = bfs_parents(links, source)
        result[source] = tuple(n for n in ours if parent.get(n) == ourselves)
    return result


def unicast_next_hops(topology: Topology, ourselves: int) -> dict[int, int]:
    """dest -> the neighbour to hand a packet for dest to (ourselves excluded)."""
    return unicast_from_links(symmetric_links(topology.records()), ourselves)


def broadcast_next_hops(topology: Topology, ourselves: int) -> dict[int, tuple[int, ...]]:
    """source -> the neighbours we forward a broadcast originated by source to."""
    return broadcast_from_links(symmetric_links(topology.records()), ourselves)


@dataclass(frozen=True, slots=True)
class Routes:
    """Both route tables computed from one topology snapshot."""

    links: dict[int, tuple[int, ...]]
    unicast: dict[int, int]
    broadcast: dict[int, tuple[int, ...]]

    @classmethod
    def compute(cls, topology: Topology, ourselves: int) -> Routes:
        links = symmetric_links(topology.records())
        return cls(
            links, unicast_from_links(links, ourselves), broadcast_from_links(links, ourselves)
        )

    def same_as(self, other: Routes) -> bool:
        return self.unicast == other.unicast and self.broadcast == other.broadcast
