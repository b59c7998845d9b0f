"""The switch's decisions: where a frame goes, as a value.

Theory of operation: the I/O shell reads frames from the TAP and from peers and asks this
module what to do; the answer is data (a peer, a list of peers, deliver-locally or not),
never an action.  Routing across the mesh is delegated to a `RouteSource` — the mesh core
answers "next hop towards peer X" and "where to forward a broadcast that originated at
peer S" — so the forwarder only knows MACs.

Frames from the TAP (sent by our containers):
  * learn source MAC as LOCAL;
  * destination known at peer P -> unicast towards P (header destination = P);
  * destination known as LOCAL -> drop (the bridge already delivered it);
  * otherwise (broadcast, multicast, unknown) -> flood: header destination = broadcast,
    sent to our own broadcast next hops.
Frames from the mesh (source peer S, destination peer D, in the datagram header):
  * learn source MAC as owned by S (the originating router, not the relay);
  * D == us -> deliver to TAP; D == broadcast -> deliver and forward along S's tree;
  * D == another peer -> relay to the next hop towards D (never back into the TAP).
"""

from __future__ import annotations

from typing import Protocol

from pyweave.router.core.mac_table import LOCAL, MacTable
from pyweave.router.core.wire.data import BROADCAST_PEER

NO_PEERS: tuple[int, ...] = ()


class RouteSource(Protocol):
    def next_hop(self, destination: int) -> int | None: ...

    def broadcast_next_hops(self, source: int) -> tuple[int, ...]: ...


class Forwarder:
    """Frame decisions for one router named `ourselves`."""

    def __init__(self, ourselves: int, routes: RouteSource, macs: MacTable) -> None:
        self.ourselves = ourselves
        self.routes = routes
        self.macs = macs
        self.dropped_no_route = 0

    def learn_local(self, src_mac: bytes, now: float) -> None:
        """A frame from our containers came from `src_mac`: it lives on our bridge."""
        self.macs.learn(src_mac, LOCAL, now)

    def learn_from_peer(self, src_mac: bytes, source: int, now: float) -> None:
        """A frame addressed to us came from `src_mac` behind peer `source` (not us)."""
        self.macs.learn(src_mac, source, now)

    def route_from_tap(self, dst_mac: bytes, now: float) -> tuple[int, tuple[int, ...]] | None:
        """Decide for a frame our containers sent to `dst_mac`.

        Returns (the destination *peer* for the datagram header, BROADCAST_PEER to flood;
        the neighbours to send it to), or None to drop.  The data plane learns the source
        (`learn_local`) after the frame has left."""
        if dst_mac[0] & 1:  # group bit: broadcast or multicast
            destination = BROADCAST_PEER
        else:
            owner = self.macs.lookup(dst_mac, now)
            if owner == LOCAL:
                return None
            destination = BROADCAST_PEER if owner is None else owner
        return destination, self.next_hops(destination, self.ourselves)

    def next_hops(self, destination: int, source: int) -> tuple[int, ...]:
        """The neighbours to send a frame to, for a datagram header (source, destination)."""
        if destination == BROADCAST_PEER:
            return self.routes.broadcast_next_hops(source)
        hop = self.routes.next_hop(destination)
        if hop is None:
            self.dropped_no_route += 1
            return NO_PEERS
        return (hop,)

    def from_peer(
        self, source: int, destination: int, src_mac: bytes, now: float
    ) -> tuple[bool, tuple[int, ...]]:
        """Decide for a frame that arrived from the mesh.

        Returns (deliver to our TAP?, neighbours to relay it to).
        """
        if source == self.ourselves:  # our own frame came back: a loop; never re-inject
            return False, NO_PEERS
        if destination == self.ourselves:
            self.macs.learn(src_mac, source, now)
            return True, NO_PEERS
        if destination == BROADCAST_PEER:
            self.macs.learn(src_mac, source, now)
            return True, self.routes.broadcast_next_hops(source)
        return False, self.next_hops(destination, source)
