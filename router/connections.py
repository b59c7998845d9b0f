"""Connections to neighbours: dialing targets, accepting peers, liveness, links.

Theory of operation: every neighbour is reached through one TCP control connection plus
the UDP data link it sets up.  Outbound connections come from *targets* (addresses given
to `weave launch`/`weave connect`, and peers discovered through the mesh); inbound ones
from peers that dialed us.  After the handshake a connection is *pending* until the first
UDP datagram from the peer arrives (so UDP reachability is proved, as in Weave Net), then
*established*.  Heartbeats go out every HEARTBEAT_INTERVAL over UDP; a connection that
hears nothing for DEAD_AFTER seconds is dropped, and its target is redialed with backoff.

Policy lives in the mesh core (core/mesh.py): after each handshake the router asks it
whether to keep the connection (it refuses ourselves, a second router with our name,
duplicates and connections beyond the limit, each with a reason shown in `weave status
connections`), and it decides what to dial and when.  This module carries that out and
reports back: established (UDP works), lost (with the reason), dial failed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pyweave.router.core.crypto.primitives import CryptoError
from pyweave.router.core.link import Link, PlainLink, SealedLink
from pyweave.router.core.names import describe_peer
from pyweave.router.core.wire.control import (
    HELLO_FLAG_TRUSTS_YOU,
    MSG_CLOSE,
    MSG_CONFIRM,
    MSG_GOSSIP,
    MSG_REKEY_ANSWER,
    MSG_REKEY_REQUEST,
    MSG_UNICAST,
    Hello,
    MalformedControl,
    message_type,
    pull_close,
    pull_gossip,
    pull_unicast,
    push_opaque,
)
from pyweave.router.io.control import ConnectionRefused, ControlChannel, Security

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
DEAD_AFTER = 6.0  # seconds without any datagram from an established peer
PENDING_TIMEOUT = 10.0  # seconds for the first datagram after the handshake
DIAL_TIMEOUT = 5.0
MAX_DATAGRAM = 1500 - 28  # IPv4 + UDP headers on a 1500-byte underlay (the router sets its own)


@dataclass(eq=False)
class Connection:
    channel: ControlChannel
    outbound: bool
    target: str | None
    hello: Hello
    link: Link
    created: float
    state: str = "pending"
    dropped: bool = False

    @property
    def remote_address(self) -> str:
        host, port = self.channel.remote
        return f"{host}:{port}"

    @property
    def mesh_address(self) -> str:
        """How the mesh names this connection: the dialed target, or the remote ip:port."""
        return self.target if self.outbound and self.target else self.remote_address


class InboundFailures:
    """Recent failed inbound handshakes: shown in status, and a per-address rate limit.

    The dialer sees why its attempt failed; the side that was dialed would otherwise show
    nothing.  Entries are kept for SHOW_FOR seconds (at most KEEP of them); an address with
    more than LIMIT failures within WINDOW seconds is refused without a handshake, which
    bounds online password guessing.
    """

    SHOW_FOR = 60.0
    KEEP = 32
    WINDOW = 10.0
    LIMIT = 20

    def __init__(self) -> None:
        self.recent: collections.deque[tuple[str, str, float]] = collections.deque(maxlen=self.KEEP)
        self.by_host: dict[str, collections.deque[float]] = {}

    def record(self, address: str, host: str, reason: str, now: float) -> None:
        self.recent.append((address, reason, now))
        times = self.by_host.setdefault(host, collections.deque(maxlen=self.LIMIT + 1))
        times.append(now)
        if len(self.by_host) > 1024:  # bounded memory under a spray of source addresses
            self.by_host.pop(next(iter(self.by_host)))

    def limited(self, host: str, now: float) -> bool:
        times = self.by_host.get(host)
        return times is not None and len(times) > self.LIMIT and now - times[0] < self.WINDOW

    def shown(self, now: float) -> list[tuple[str, str]]:
        return [(a, r) for a, r, t in self.recent if now - t < self.SHOW_FOR]


@dataclass
class ConnectionCallbacks:
    """What the router (and through it the mesh) hears about; all synchronous."""

    handshaken: Callable[[Connection], str | None]  # returns a refusal reason, or None
    established: Callable[[Connection], None]  # the first UDP datagram arrived
    lost: Callable[[Connection, str], None]
    gossip: Callable[[Connection, str, bytes], None]
    unicast: Callable[[Connection, str, int, int, bytes], None]
    dial_failed: Callable[[str, str], None]


@dataclass
class Identity:
    name: int
    nickname: str
    uid: int
    udp_port: int
    flags: int = 0
    security_factory: Callable[[bool], Security | None] = field(default=lambda outbound: None)
    trusts: Callable[[str], bool] = field(default=lambda address: False)


class ConnectionManager:
    def __init__(
        self,
        identity: Identity,
        callbacks: ConnectionCallbacks,
        new_receiver_index: Callable[[], int],
        add_link: Callable[[Link], None],
        remove_link: Callable[[Link], None],
        send_heartbeat: Callable[[Link, float], None],
    ) -> None:
        self.identity = identity
        self.callbacks = callbacks
        self.new_receiver_index = new_receiver_index
        self.add_link = add_link
        self.remove_link = remove_link
        self.send_heartbeat = send_heartbeat
        self.connections: dict[int, Connection] = {}
        self.dialing: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.inbound_failures = InboundFailures()
        self.max_datagram = MAX_DATAGRAM  # largest unfragmented UDP payload on the underlay

    # -- lifecycle -----------------------------------------------------------------

    def spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def heartbeat_loop(self) -> None:
        while True:
            now = asyncio.get_running_loop().time()
            for conn in list(self.connections.values()):
                self._check_liveness(conn, now)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _check_liveness(self, conn: Connection, now: float) -> None:
        if conn.state == "pending" and now - conn.created > PENDING_TIMEOUT:
            self.drop(
                conn,
                f"no UDP traffic from peer within {PENDING_TIMEOUT:.0f}s (is UDP port blocked?)",
            )
            return
        if conn.state == "established" and now - conn.link.last_heard > DEAD_AFTER:
            self.drop(conn, f"peer silent: no heartbeat for {DEAD_AFTER:.0f}s")
            return
        self.send_heartbeat(conn.link, now)
        if isinstance(conn.link, SealedLink):
            self._maintain_keys(conn, conn.link, now)

    def _maintain_keys(self, conn: Connection, link: SealedLink, now: float) -> None:
        link.receiver.expire(now)
        if link.sender.expired(now):
            self.drop(conn, "data key expired before a rekey completed")
        elif link.sender.rekey_due(now):
            conn.channel.send(push_opaque(MSG_REKEY_REQUEST, link.sender.create_rekey_request(now)))

    def force_rekey(self) -> int:
        """Start a data-key rekey on every encrypted connection now; returns how many."""
        now = asyncio.get_running_loop().time()
        count = 0
        for conn in list(self.connections.values()):
            if isinstance(conn.link, SealedLink):
                conn.link.sender.force_rekey()
                self._maintain_keys(conn, conn.link, now)
                count += 1
        return count

    def _on_rekey(self, conn: Connection, kind: int, payload: bytes) -> None:
        link = conn.link
        if not isinstance(link, SealedLink):
            raise ConnectionRefused("rekey message on an unencrypted link")
        now = asyncio.get_running_loop().time()
        try:
            if kind == MSG_REKEY_REQUEST:
                answer = link.receiver.consume_rekey_request(payload, now)
                conn.channel.send(push_opaque(MSG_REKEY_ANSWER, answer))
            else:
                with link.send_lock:  # the data plane's threads seal with this key
                    link.sender.consume_rekey_answer(payload, now)
        except CryptoError as exc:
            raise ConnectionRefused(f"rekey failed: {exc.reason}") from exc

    def heard(self, link: Link, now: float) -> bool:
        """The data plane got its first authentic datagram on `link`.

        Returns False if no connection owns `link` (yet): the data plane asks again on
        the next datagram."""
        link.heard(now)
        conn = self.connections.get(link.peer)
        if conn is None or conn.link is not link:
            return False
        if conn.state == "pending":
            conn.state = "established"
            log.info(
                "connection to %s established", describe_peer(conn.hello.name, conn.hello.nickname)
            )
            self.callbacks.established(conn)
        return True

    def close_all(self, reason: str) -> None:
        for conn in list(self.connections.values()):
            self.drop(conn, reason)
        for task in list(self.tasks):
            task.cancel()

    # -- outbound ------------------------------------------------------------------

    def dial(self, target: str) -> None:
        if target in self.dialing:
            return
        self.dialing.add(target)
        self.spawn(self._dial(target))

    async def _dial(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), DIAL_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            self.dialing.discard(target)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
            self.callbacks.dial_failed(target, f"connect to {target} failed: {reason}")
            return
        channel = ControlChannel(reader, writer, True, self.identity.security_factory(True))
        await self._run(channel, target)

    # -- inbound -------------------------------------------------------------------

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = ControlChannel(reader, writer, False, self.identity.security_factory(False))
        now = asyncio.get_running_loop().time()
        if self.inbound_failures.limited(channel.remote[0], now):
            channel.close()  # too many failed handshakes from there: no work, no answer
            return
        await self._run(channel, None)

    # -- both ----------------------------------------------------------------------

    async def _run(self, channel: ControlChannel, target: str | None) -> None:
        local_index = self.new_receiver_index()
        flags = self.identity.flags
        if self.identity.trusts(channel.remote[0]):
            flags |= HELLO_FLAG_TRUSTS_YOU
        ours = Hello(
            self.identity.name,
            self.identity.uid,
            self.identity.udp_port,
            local_index,
            self.identity.nickname,
            flags,
        )
        try:
            hello = await channel.handshake(ours)
        except ConnectionRefused as exc:
            self._handshake_failed(channel, target, exc.reason)
            return
        except Exception as exc:
            self._handshake_failed(channel, target, f"handshake failed: {exc}")
            return
        now = asyncio.get_running_loop().time()
        link = self._make_link(channel, hello, local_index, now)
        conn = Connection(channel, channel.outbound, target, hello, link, now)
        refusal = self.callbacks.handshaken(conn)
        if refusal is not None:
            conn.dropped = True
            if target is not None:
                self.dialing.discard(target)
            channel.close(refusal)
            log.info("connection %s refused: %s", conn.mesh_address, refusal)
            # The dialer sees the reason; show it on this side too (not when we dialed
            # ourselves: the outbound side already says so).
            # Duplicates are routine (both ends dial at once) and not shown either.
            if (
                target is None
                and hello.uid != self.identity.uid
                and not refusal.startswith("duplicate connection")
            ):
                host, port = channel.remote
                self.inbound_failures.record(f"{host}:{port}", host, refusal, now)
            return
        self.connections[hello.name] = conn
        self.add_link(link)
        self.send_heartbeat(link, now)
        await self._read_messages(conn)

    def _handshake_failed(self, channel: ControlChannel, target: str | None, reason: str) -> None:
        channel.close(reason)
        if target is None:
            log.info("inbound connection from %s failed: %s", channel.remote[0], reason)
            now = asyncio.get_running_loop().time()
            host, port = channel.remote
            self.inbound_failures.record(f"{host}:{port}", host, reason, now)
        else:
            self.dialing.discard(target)
            self.callbacks.dial_failed(target, reason)

    def _make_link(
        self, channel: ControlChannel, hello: Hello, local_index: int, now: float
    ) -> Link:
        """Sealed with the handshake's data keys, unless both ends trust each other."""
        endpoint = (channel.remote[0], hello.udp_port)
        trusted = self.identity.trusts(channel.remote[0]) and bool(
            hello.flags & HELLO_FLAG_TRUSTS_YOU
        )
        if channel.security is None or trusted:
            return PlainLink(
                hello.name, endpoint, local_index, hello.receiver_index, self.max_datagram
            )
        sender, receiver = channel.security.data_pair(now)
        return SealedLink(
            hello.name,
            endpoint,
            local_index,
            hello.receiver_index,
            self.max_datagram,
            sender,
            receiver,
        )

    async def _read_messages(self, conn: Connection) -> None:
        reason = "connection closed by peer"
        try:
            while True:
                message = await conn.channel.recv()
                kind = message_type(message)
                if kind == MSG_GOSSIP:
                    channel_name, payload = pull_gossip(message)
                    self.callbacks.gossip(conn, channel_name, payload)
                elif kind == MSG_CONFIRM:
                    continue  # the responder's key confirmation, already implied
                elif kind == MSG_UNICAST:
                    self.callbacks.unicast(conn, *pull_unicast(message))
                elif kind in (MSG_REKEY_REQUEST, MSG_REKEY_ANSWER):
                    self._on_rekey(conn, kind, message[1:])
                elif kind == MSG_CLOSE:
                    reason = f"peer closed the connection: {pull_close(message)}"
                    break
        except asyncio.IncompleteReadError:
            pass
        except MalformedControl as exc:
            reason = f"protocol error: {exc}"
        except ConnectionRefused as exc:
            reason = exc.reason
        except OSError as exc:
            reason = f"connection error: {exc.strerror or exc}"
        except asyncio.CancelledError:
            reason = "router stopping"
        except Exception as exc:  # a bug must cost one connection, never the router
            log.exception("control message handling failed")
            reason = f"internal error: {exc}"
        self.drop(conn, reason)

    def drop(self, conn: Connection, reason: str, report: bool = True) -> None:
        """Close `conn`; tell the mesh (unless the mesh itself asked for it)."""
        if conn.dropped:
            return
        conn.dropped = True
        conn.channel.close(reason)
        self.remove_link(conn.link)
        if self.connections.get(conn.hello.name) is conn:
            del self.connections[conn.hello.name]
        if conn.target is not None:
            self.dialing.discard(conn.target)
        log.info(
            "connection to %s dropped: %s",
            describe_peer(conn.hello.name, conn.hello.nickname),
            reason,
        )
        if report:
            self.callbacks.lost(conn, reason)

    def drop_matching(self, name: int, uid: int, address: str, reason: str) -> None:
        """The mesh's DropConnection: close that exact connection if we hold it."""
        conn = self.connections.get(name)
        if conn is not None and conn.hello.uid == uid and conn.mesh_address == address:
            self.drop(conn, reason, report=False)
