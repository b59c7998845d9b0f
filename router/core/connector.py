"""Connector: which addresses to dial, and when.

Theory of operation
-------------------
Targets come from two places:

* *direct* targets: addresses given to ``weave launch PEER...`` or ``weave connect``.
  They stay until ``weave forget`` (or a replacing ``add_targets``).  An address without
  a port gets our own control port; `targets()` lists them as the user wrote them, as
  Weave Net's ``status targets`` does.
* *discovered* targets (unless discovery is off): for every connection that some other
  peer reports to a peer we are not connected to, the address it used -- the remote's
  listening address when that peer dialed out, else the remote IP with our control port
  (the remote port of an inbound connection is ephemeral).  The mesh facade recomputes
  them from the topology (`discover_addresses`) and hands them over with `update`.

A target is *valid* while it is direct or discovered, is not the remote address of one of
our connections, and the peer it last led to is not connected to us by some other
connection.  A direct target given without a port is also skipped while we have an inbound
connection from its IP (both sides of ``launch A`` / ``launch B`` dial each other; one
connection is enough).  Direct targets keep their backoff state until forgotten; when the
peer a target led to loses its last connection, the target is tried again at once.
Discovered targets that become invalid are forgotten, backoff and all.

Each target is ``waiting`` (due at `try_after`; None = never), ``connecting`` (dial in
flight: `due` returned it) or ``connected``.  Outcomes come back through
`connection_failed` and `connection_succeeded`.  Status shows a target as ``connecting``
(in flight or due), ``failed`` (dials or handshakes failed and it never got connected) or
``retrying`` (it was connected once and we are trying to get it back: this stays while the
peer is down, with the latest reason, so a broken link is told apart from one that never
worked).

Backoff after a failure: the delay is the current interval times a uniform factor in
[1 - jitter, 1 + jitter]; the interval starts at 1 s and doubles per failure up to a cap
of 3 minutes.  A connection that stayed up for
`reset_after` seconds before it failed retries at once with the interval reset.  A refusal
marked ``retry=False`` ("cannot connect to ourself") is never retried, until the address is
added again by hand.

At the connection limit (``--conn-limit``, default 100, 0 for none) nothing is dialed:
`due` returns [] and `next_deadline` None until the mesh reports fewer connections.

No clocks here: every time is the caller's `now`; the randomness is an injected rng.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pyweave.router.core.topology import PeerRecord

if TYPE_CHECKING:
    from random import Random

INITIAL_INTERVAL = 1.0
MAX_INTERVAL = 180.0
JITTER = 0.25
RESET_AFTER = 60.0
DEFAULT_CONN_LIMIT = 100

TargetState = Literal["waiting", "connecting", "connected"]
StatusState = Literal["connecting", "retrying", "failed"]


def split_address(address: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 as ``[addr]:port`` or bare); ValueError if invalid."""
    text = address.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid address {address!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        host, port_text = text, None  # a bare IPv6 address
        ipaddress.IPv6Address(host)
    else:
        host, sep, after = text.partition(":")
        port_text = after if sep else None
    if not host:
        raise ValueError(f"invalid address {address!r}: no host")
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"invalid address {address!r}")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid port in address {address!r}")
    return host, int(port_text)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_host(address: str) -> str:
    try:
        return split_address(address)[0]
    except ValueError:
        return address


def discover_addresses(
    records: Iterable[PeerRecord], ourselves: int, connected: Collection[int], port: int
) -> set[str]:
    """Addresses of peers that others are connected to and we are not."""
    found: set[str] = set()
    for record in records:
        if record.name == ourselves:
            continue
        for conn in record.connections:
            if conn.peer == ourselves or conn.peer in connected:
                continue
            if conn.outbound:
                found.add(conn.address)
            else:
                found.add(join_address(address_host(conn.address), port))
    return found


@dataclass(slots=True)
class Target:
    address: str
    state: TargetState = "waiting"
    try_after: float | None = float("-inf")
    interval: float = INITIAL_INTERVAL
    last_error: str | None = None
    attempts: int = 0
    peer: int | None = None
    connected_at: float | None = None
    was_connected: bool = False  # it was connected once: failures show as retrying
    own_loss: bool = False  # its own connection just failed: keep the backoff (see update)


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """A target we are not connected to, for ``weave status connections``."""

    address: str
    state: StatusState
    reason: str  # "" when there is none
    retry_at: float | None  # None: never (only meaningful for "failed"/"retrying")
    attempts: int


class Connector:
    def __init__(
        self,
        port: int,
        rng: Random,
        discovery: bool = True,
        conn_limit: int = DEFAULT_CONN_LIMIT,
        initial_interval: float = INITIAL_INTERVAL,
        max_interval: float = MAX_INTERVAL,
        jitter: float = JITTER,
        reset_after: float = RESET_AFTER,
    ) -> None:
        self.port = port
        self.discovery = discovery
        self.conn_limit = conn_limit
        self._rng = rng
        self._initial = initial_interval
        self._max = max_interval
        self._jitter = jitter
        self._reset_after = reset_after
        self._direct: dict[str, bool] = {}  # address -> had an explicit port
        self._given: dict[str, str] = {}  # address -> as the user wrote it
        self._discovered: set[str] = set()
        self._connected_peers: frozenset[int] = frozenset()
        self._connected_addrs: frozenset[str] = frozenset()
        self._inbound_hosts: frozenset[str] = frozenset()
        self._connection_count = 0
        self._targets: dict[str, Target] = {}

    # -- target lists --------------------------------------------------------------

    def normalise(self, address: str) -> tuple[str, bool]:
        host, port = split_address(address)
        return join_address(host, port if port is not None else self.port), port is not None

    def add_targets(self, addrs: Iterable[str], replace: bool = False) -> list[str]:
        """Add direct targets (ValueError, adding none, if any is invalid); dial them now."""
        given = list(addrs)
        parsed = [self.normalise(a) for a in given]
        if replace:
            self._direct.clear()
            self._given.clear()
        for (address, had_port), text in zip(parsed, given, strict=True):
            self._direct[address] = had_port
            self._given[address] = text.strip()
            target = self._targets.get(address)
            if target is not None and target.state == "waiting":
                target.try_after = float("-inf")
                target.interval = self._initial
        self._refresh()
        return [address for address, _ in parsed]

    def forget_targets(self, addrs: Iterable[str]) -> None:
        for addr in addrs:
            try:
                address, _ = self.normalise(addr)
            except ValueError:
                continue
            self._direct.pop(address, None)
            self._given.pop(address, None)
        self._refresh()

    def targets(self) -> list[str]:
        """The direct targets as the user gave them (port or not), as Weave Net lists them."""
        return sorted(self._given[address] for address in self._direct)

    def update(
        self,
        discovered: Iterable[str],
        connected_peers: Collection[int],
        connected_addrs: Collection[str],
        inbound_addrs: Collection[str],
    ) -> None:
        """The mesh's current picture: discovered addresses and our connections."""
        self._discovered = set(discovered) if self.discovery else set()
        lost = self._connected_peers - frozenset(connected_peers)
        for target in self._targets.values():
            own_loss, target.own_loss = target.own_loss, False
            if own_loss:
                continue  # the lost connection was this target's: its backoff stands
            if target.state == "waiting" and target.peer in lost and target.try_after is not None:
                target.try_after = float("-inf")  # its peer just went: try it again now
        self._connected_peers = frozenset(connected_peers)
        self._connected_addrs = frozenset(connected_addrs)
        self._inbound_hosts = frozenset(address_host(a) for a in inbound_addrs)
        self._connection_count = len(self._connected_peers)
        self._refresh()

    # -- outcomes ------------------------------------------------------------------

    def connection_succeeded(self, addr: str, peer_name: int, now: float = 0.0) -> None:
        target = self._targets.get(addr)
        if target is None:
            target = self._targets[addr] = Target(addr)
        target.state = "connected"
        target.peer = peer_name
        target.connected_at = now
        target.last_error = None

    def connection_failed(self, addr: str, reason: str, now: float, retry: bool = True) -> None:
        """A dial, handshake or established outbound connection to `addr` failed."""
        target = self._targets.get(addr)
        if target is None:
            return
        lasted = now - target.connected_at if target.connected_at is not None else 0.0
        target.own_loss = target.connected_at is not None
        target.was_connected = target.was_connected or target.connected_at is not None
        target.state = "waiting"
        target.last_error = reason
        target.connected_at = None
        if not retry:
            target.try_after = None
            target.interval = self._max
        elif lasted >= self._reset_after:
            target.interval = self._initial
            target.try_after = now
        else:
            target.try_after = now + self.backoff_delay(target.interval)
            target.interval = min(target.interval * 2, self._max)
        self._refresh()

    def backoff_delay(self, interval: float) -> float:
        factor = 1.0 + self._jitter * (2.0 * self._rng.random() - 1.0)
        return interval * factor

    # -- timers --------------------------------------------------------------------

    def at_limit(self) -> bool:
        return 0 < self.conn_limit <= self._connection_count

    def due(self, now: float) -> list[str]:
        """Addresses to dial now; they become ``connecting``."""
        if self.at_limit():
            return []
        result = []
        for address in sorted(self._targets):
            target = self._targets[address]
            if (
                target.state == "waiting"
                and target.try_after is not None
                and target.try_after <= now
                and self._valid(address)
            ):
                target.state = "connecting"
                target.attempts += 1
                result.append(address)
        return result

    def next_deadline(self) -> float | None:
        if self.at_limit():
            return None
        times = [
            t.try_after
            for a, t in self._targets.items()
            if t.state == "waiting" and t.try_after is not None and self._valid(a)
        ]
        return min(times) if times else None

    # -- status --------------------------------------------------------------------

    def status(self, now: float) -> list[TargetStatus]:
        result = []
        for address in sorted(self._targets):
            target = self._targets[address]
            if target.state == "connected" or not self._valid(address):
                continue
            due = target.try_after is not None and target.try_after <= now
            state: StatusState
            if target.state == "connecting" or (due and target.last_error is None):
                state = "connecting"
            elif target.last_error is not None and not target.was_connected:
                state = "failed"
            else:
                state = "retrying"
            reason = target.last_error or ""
            result.append(TargetStatus(address, state, reason, target.try_after, target.attempts))
        return result

    # -- internals -----------------------------------------------------------------

    def _valid(self, address: str) -> bool:
        if address in self._connected_addrs:
            return False
        target = self._targets.get(address)
        if (
            target is not None
            and target.state != "connected"
            and target.peer in self._connected_peers
        ):
            return False
        had_port = self._direct.get(address)
        if had_port is False and address_host(address) in self._inbound_hosts:
            return False
        return address in self._direct or address in self._discovered

    def _refresh(self) -> None:
        for address in list(self._targets):
            target = self._targets[address]
            if target.state != "waiting" or address in self._direct:
                continue  # direct targets keep their backoff until forgotten
            if address not in self._discovered or not self._valid(address):
                del self._targets[address]
        for address in sorted(set(self._direct) | self._discovered):
            if address not in self._targets and self._valid(address):
                self._targets[address] = Target(address)
