"""Mesh: the one facade over topology, routes, gossip and the connector.

Theory of operation
-------------------
The shell (TCP control connections, UDP heartbeats, timers) feeds *events* in and gets
*effects* back as values; nothing here does I/O or reads a clock.

Events (all take ``now``, a monotonic time in seconds):

* `connection_established` -- a control connection finished its handshake.  We refuse
  (`DropConnection`) a connection to ourself (same name and uid: "cannot connect to
  ourself", never retried), to another process with our name ("peer has our name"),
  beyond the connection limit, and duplicates: with two connections to one peer we keep
  the one dialed by the peer with the lower name (both ends agree without talking); two
  dialed by the same side: the older stays.  A connection from a new uid of a peer we are
  connected to means it restarted: the old connection is dropped and the new one kept.
  Otherwise the peer becomes a gossip neighbour (it gets our full state), our record gains
  the connection (version bump, gossiped), routes are recomputed.
* `connection_confirmed` -- the data path works (heartbeats answered): the connection is
  marked established in our record.  Only links both ends report established carry
  traffic, so `connection_established(..., established=False)` followed by this lets the
  shell keep a connection "pending" until UDP works, as weave does.
* `connection_lost` / `dial_failed` -- a connection ended / a dial failed before the
  handshake.  The connector schedules a retry with backoff.  The liveness timeout is the
  shell's: we assume a heartbeat every 1 s over UDP and a connection declared dead after
  6 s without any traffic; a TCP error is reported at once.
* `gossip_received` / `unicast_received` -- bytes from a neighbour.  Malformed gossip is
  counted in `malformed_gossip` and dropped; it never raises.
* `tick` -- timers: coalesced gossip flush, periodic full state, dials that are due.

Effects: `SendGossip`, `SendUnicast` (to the next hop), `Dial`, `DropConnection`,
`RoutesChanged` (query `next_hop` / `broadcast_next_hops` again).  Ask `next_deadline()`
when to call `tick` next.

Invariant: at most one connection per peer name is held; it is keyed by name and
remembered with its remote address, so events for a connection we refused or replaced
(same name, other address) are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyweave.router.api_types import ConnectionStatus, PeerConnection, PeerStatus
from pyweave.router.core.connector import Connector, discover_addresses
from pyweave.router.core.gossip import ChannelBase, Gossiper, SendGossip, SendUnicast
from pyweave.router.core.names import describe_peer, format_peer_name
from pyweave.router.core.routes import Routes
from pyweave.router.core.topology import (
    ConnectionRecord,
    MalformedGossip,
    MergeResult,
    PeerRecord,
    Topology,
    decode_records,
    encode_records,
)

if TYPE_CHECKING:
    from random import Random

TOPOLOGY_CHANNEL = "topology"


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a control connection to `address` (``host:port``)."""

    address: str


@dataclass(frozen=True, slots=True)
class DropConnection:
    """Close the connection to `peer_name` (incarnation `peer_uid`) at `address`.

    The shell must not report `connection_lost` for a connection it closed this way.
    """

    peer_name: int
    peer_uid: int
    address: str
    reason: str


@dataclass(frozen=True, slots=True)
class RoutesChanged:
    """Unicast or broadcast routes changed; re-query them."""


Effect = SendGossip | SendUnicast | Dial | DropConnection | RoutesChanged


@dataclass(slots=True)
class LocalConnection:
    peer: int
    nickname: str
    uid: int
    address: str
    outbound: bool
    established: bool
    since: float

    def record(self) -> ConnectionRecord:
        return ConnectionRecord(self.peer, self.address, self.outbound, self.established)


class TopologyChannel(ChannelBase):
    """The "topology" gossip channel: peer records, merged by `Topology.merge`.

    Coalescing sends, for the union of peer names in the queued deltas, the records we
    hold *now* (never older than the deltas).  Deltas are our own encodings, so we
    remember which names each one carries instead of decoding it again per neighbour.
    """

    _MEMO_LIMIT = 1024

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh
        self._names: dict[bytes, tuple[int, ...]] = {}
        self._coalesced: dict[tuple[bytes, ...], list[bytes]] = {}
        self._coalesced_generation = -1

    def encode_delta(self, records: Sequence[PeerRecord]) -> bytes:
        payload = encode_records(records)
        if len(self._names) >= self._MEMO_LIMIT:
            self._names.clear()
        self._names[payload] = tuple(r.name for r in records)
        return payload

    def on_gossip(self, sender: int, payload: bytes) -> bytes | None:
        result = self._mesh.merge_records(decode_records(payload))
        return self.encode_delta(result.delta) if result.delta else None

    def full_state(self) -> bytes:
        return self._mesh.topology.encode_full()

    def coalesce(self, payloads: Sequence[bytes]) -> list[bytes]:
        if len(payloads) == 1:
            return list(payloads)
        topology = self._mesh.topology
        if self._coalesced_generation != topology.generation:
            self._coalesced.clear()  # results are only valid for one topology state
            self._coalesced_generation = topology.generation
        key = tuple(payloads)
        cached = self._coalesced.get(key)
        if cached is not None:
            return cached
        names: set[int] = set()
        for payload in payloads:
            known = self._names.get(payload)
            names.update(known if known is not None else (r.name for r in decode_records(payload)))
        records = [r for r in map(topology.get, sorted(names)) if r is not None]
        result = [encode_records(records)] if records else []
        if len(self._coalesced) >= self._MEMO_LIMIT:
            self._coalesced.clear()
        self._coalesced[key] = result
        return result


class Mesh:
    def __init__(
        self,
        name: int,
        nickname: str,
        uid: int,
        port: int,
        rng: Random,
        discovery: bool = True,
        conn_limit: int = 100,
        gossiper: Gossiper | None = None,
    ) -> None:
        self.name = name
        self.uid = uid
        self.topology = Topology(name, nickname, uid)
        self.gossiper = gossiper if gossiper is not None else Gossiper(rng)
        self._channel = TopologyChannel(self)
        self.gossiper.register(TOPOLOGY_CHANNEL, self._channel)
        self.connector = Connector(port, rng, discovery=discovery, conn_limit=conn_limit)
        self.routes = Routes.compute(self.topology, name)
        self.malformed_gossip = 0
        self.unroutable = 0
        self._connections: dict[int, LocalConnection] = {}
        self._seen_generation = self.topology.generation

    # -- inputs: targets -----------------------------------------------------------

    def add_targets(self, addrs: Sequence[str], now: float, replace: bool = False) -> list[Effect]:
        """``weave launch PEER...`` / ``weave connect``; ValueError on a bad address."""
        self.connector.add_targets(addrs, replace=replace)
        return self._dials(now)

    def forget_targets(self, addrs: Sequence[str]) -> None:
        self.connector.forget_targets(addrs)

    # -- inputs: connections -------------------------------------------------------

    def connection_established(
        self,
        peer_name: int,
        peer_nickname: str,
        peer_uid: int,
        remote_address: str,
        outbound: bool,
        now: float,
        established: bool = True,
    ) -> list[Effect]:
        conn = LocalConnection(
            peer_name, peer_nickname, peer_uid, remote_address, outbound, established, now
        )
        effects: list[Effect] = []
        refusal = self._refusal(conn, effects, now)
        if refusal is not None:
            reason, retry = refusal
            if outbound:
                self.connector.connection_failed(remote_address, reason, now, retry=retry)
            effects.append(DropConnection(peer_name, peer_uid, remote_address, reason))
            return effects + self._after_change(now)
        self._connections[peer_name] = conn
        if outbound:
            self.connector.connection_succeeded(remote_address, peer_name, now)
        effects += self._publish_connections(now, exclude=peer_name)
        effects += self.gossiper.add_neighbour(peer_name, now)
        return effects + self._after_change(now)

    def connection_confirmed(self, peer_name: int, remote_address: str, now: float) -> list[Effect]:
        conn = self._current(peer_name, remote_address)
        if conn is None or conn.established:
            return []
        conn.established = True
        return self._publish_connections(now) + self._after_change(now)

    def connection_lost(
        self,
        peer_name: int,
        remote_address: str,
        reason: str,
        now: float,
        peer_uid: int | None = None,
    ) -> list[Effect]:
        """A connection we accepted ended (error, EOF, heartbeat timeout)."""
        conn = self._current(peer_name, remote_address)
        if conn is None or (peer_uid is not None and peer_uid != conn.uid):
            return []
        effects = self._remove(peer_name, reason, now)
        return effects + self._publish_connections(now) + self._after_change(now)

    def dial_failed(self, address: str, reason: str, now: float) -> list[Effect]:
        """A `Dial` failed before `connection_established` (refused, timeout, handshake)."""
        self.connector.connection_failed(address, reason, now)
        return self._dials(now)

    # -- inputs: gossip and timers -------------------------------------------------

    def gossip_received(
        self, sender: int, channel: str, payload: bytes, now: float
    ) -> list[Effect]:
        effects: list[Effect] = []
        try:
            effects += self.gossiper.received(sender, channel, payload, now)
        except MalformedGossip:
            self.malformed_gossip += 1
        return effects + self._after_change(now)

    def send_unicast(self, dest: int, channel: str, payload: bytes) -> list[Effect]:
        """Send `payload` to `dest`'s channel, hop by hop along unicast routes."""
        return self._route_unicast(self.name, dest, channel, payload)

    def unicast_received(
        self, sender: int, channel: str, source: int, dest: int, payload: bytes, now: float
    ) -> list[Effect]:
        if dest != self.name:
            return self._route_unicast(source, dest, channel, payload)
        target = self.gossiper.channel(channel)
        if target is None:
            self.gossiper.unknown_channel += 1
            return []
        try:
            target.on_unicast(source, payload)
        except MalformedGossip:
            self.malformed_gossip += 1
        return self._after_change(now)

    def tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = list(self.gossiper.tick(now))
        return effects + self._dials(now)

    def next_deadline(self) -> float | None:
        """When to call `tick` next; a time in the past (even -inf) means now."""
        deadlines = (self.gossiper.next_deadline(), self.connector.next_deadline())
        times = [t for t in deadlines if t is not None]
        return min(times) if times else None

    # -- queries -------------------------------------------------------------------

    def next_hop(self, dest: int) -> int | None:
        return self.routes.unicast.get(dest)

    def broadcast_next_hops(self, source: int) -> tuple[int, ...]:
        return self.routes.broadcast.get(source, ())

    def peers(self) -> list[PeerRecord]:
        return self.topology.records()

    def connected_peers(self) -> list[int]:
        return sorted(self._connections)

    def targets(self) -> list[str]:
        return self.connector.targets()

    def peer_statuses(self) -> list[PeerStatus]:
        return [self._peer_status(record) for record in self.topology.records()]

    def connection_statuses(
        self, now: float, format_time: Callable[[float], str] = lambda t: f"{t:.0f}"
    ) -> list[ConnectionStatus]:
        """Our connections, then targets we are not connected to, as the API shows them."""
        result: list[ConnectionStatus] = []
        for conn in sorted(self._connections.values(), key=lambda c: c.address):
            result.append(
                ConnectionStatus(
                    address=conn.address,
                    outbound=conn.outbound,
                    state="established" if conn.established else "pending",
                    info="",
                    peer={"name": format_peer_name(conn.peer), "nickname": conn.nickname},
                )
            )
        for target in self.connector.status(now):
            info = target.reason
            if target.state != "connecting":
                when = "never" if target.retry_at is None else format_time(target.retry_at)
                info = f"{info}, retry: {when}" if info else f"retry: {when}"
            result.append(
                ConnectionStatus(
                    address=target.address, outbound=True, state=target.state, info=info
                )
            )
        return result

    # -- used by TopologyChannel ---------------------------------------------------

    def merge_records(self, records: Sequence[PeerRecord]) -> MergeResult:
        return self.topology.merge(records, pinned=self._connections.keys())

    # -- internals -----------------------------------------------------------------

    def _current(self, peer_name: int, address: str) -> LocalConnection | None:
        conn = self._connections.get(peer_name)
        return conn if conn is not None and conn.address == address else None

    def _refusal(
        self, conn: LocalConnection, effects: list[Effect], now: float
    ) -> tuple[str, bool] | None:
        """Why `conn` must be dropped (reason, retry?), or None; may replace the old one."""
        if conn.peer == self.name:
            if conn.uid == self.uid:
                return "cannot connect to ourself", False
            return f"peer has our name {describe_peer(conn.peer, conn.nickname)}", True
        old = self._connections.get(conn.peer)
        if old is None:
            limit = self.connector.conn_limit
            if 0 < limit <= len(self._connections):
                return f"connection limit reached ({limit})", True
            return None
        if old.uid != conn.uid:
            effects += self._remove(old.peer, "peer restarted", now)
            return None
        if self._keep_new(old, conn):
            effects += self._remove(old.peer, "duplicate connection", now)
            return None
        return f"duplicate connection to {describe_peer(conn.peer, conn.nickname)}", True

    def _keep_new(self, old: LocalConnection, new: LocalConnection) -> bool:
        """Of two connections to one peer keep the one dialed by the lower name."""
        if old.outbound == new.outbound:
            return False
        lower_dials = min(self.name, new.peer)
        new_dialer = self.name if new.outbound else new.peer
        return new_dialer == lower_dials

    def _remove(self, peer_name: int, reason: str, now: float) -> list[Effect]:
        conn = self._connections.pop(peer_name)
        self.gossiper.remove_neighbour(peer_name)
        if conn.outbound:
            self.connector.connection_failed(conn.address, reason, now)
        return [DropConnection(peer_name, conn.uid, conn.address, reason)]

    def _publish_connections(self, now: float, exclude: int | None = None) -> list[Effect]:
        records = [c.record() for c in self._connections.values()]
        result = self.topology.set_connections(records, pinned=self._connections.keys())
        if not result.delta:
            return []
        payload = self._channel.encode_delta(result.delta)
        return list(self.gossiper.broadcast(TOPOLOGY_CHANNEL, payload, now, exclude=exclude))

    def _after_change(self, now: float) -> list[Effect]:
        """Recompute routes and targets if the topology moved; dial what is due."""
        effects: list[Effect] = []
        if self.topology.generation != self._seen_generation:
            self._seen_generation = self.topology.generation
            routes = Routes.compute(self.topology, self.name)
            if not routes.same_as(self.routes):
                effects.append(RoutesChanged())
            self.routes = routes
        return effects + self._dials(now)

    def _dials(self, now: float) -> list[Effect]:
        connected = set(self._connections)
        discovered = discover_addresses(
            self.topology.records(), self.name, connected, self.connector.port
        )
        inbound = [c.address for c in self._connections.values() if not c.outbound]
        addrs = [c.address for c in self._connections.values()]
        self.connector.update(discovered, connected, addrs, inbound)
        return [Dial(address) for address in self.connector.due(now)]

    def _route_unicast(self, source: int, dest: int, channel: str, payload: bytes) -> list[Effect]:
        hop = self.next_hop(dest)
        if hop is None:
            self.unroutable += 1
            return []
        return [SendUnicast(hop, channel, source, dest, payload)]

    def _peer_status(self, record: PeerRecord) -> PeerStatus:
        conns: list[PeerConnection] = []
        for c in record.connections:
            remote = self.topology.get(c.peer)
            conns.append(
                PeerConnection(
                    name=format_peer_name(c.peer),
                    nickname=remote.nickname if remote is not None else "",
                    address=c.address,
                    outbound=c.outbound,
                    established=c.established,
                )
            )
        return PeerStatus(
            name=format_peer_name(record.name),
            nickname=record.nickname,
            uid=str(record.uid),
            version=record.version,
            connections=conns,
        )
