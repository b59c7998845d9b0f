"""Topology: every peer's self-description, merged by version, garbage-collected by reach.

Theory of operation
-------------------
Each peer publishes one `PeerRecord` about itself: name, nickname, uid (a random u64 that
is new for every process start: the *incarnation*), a version, and the list of its own
connections (`ConnectionRecord`: remote name, remote address, who dialed, established).
A peer is the only author of its record; it bumps the version whenever the record changes.
Everybody else only stores and relays what they are told.

Merge rule (the same pure rule on every peer, so all views converge):

* Records are ordered by ``(version, uid)``.  An incoming record replaces ours when it is
  strictly greater; otherwise it is ignored.  `merge` returns the *delta*: the records that
  changed our view (new peers and replaced records) -- gossip relays just those.
* A restarted peer has a new uid and starts again from version 1, so its old incarnation
  may still look newer.  Whoever is told about a record for its *own* name that is not
  its own record and not older than it (a past life, or a second process with our name)
  bumps its own version past it and puts its own record in the delta.  The live
  incarnation therefore always ends up with the greatest version, and the old one is
  superseded everywhere in one gossip round trip.  (Two live processes with one name would
  keep out-bumping each other; the connection layer refuses such peers -- "peer has our
  name" -- so that only happens across a network that never connects them directly.)
* Records of peer name 0 (unknown) are ignored.

Garbage collection: a record is kept iff it is ours, or its peer is *pinned* (we hold a
local connection to it, even one not yet in our record), or it is reachable from us by
following the connection lists of the records we hold -- in any state, established or
not, as weave mesh does.  So a peer stays while anyone reachable still mentions it, and
is dropped once every reachable peer has dropped its connection to it.  GC runs after
every merge and after every change of our own connections; removals are not gossiped
(each peer reaches the same conclusion from the same records).  A peer GC'd and then told
again about an old record of it simply learns it again; it is GC'd again unless someone
reachable mentions it.

Records are immutable values; the `Topology` is the only mutable thing, and it has a
`generation` counter that changes on every change so routes can be cached.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from pyweave.router.core.names import UNKNOWN_PEER
from pyweave.router.core.wire.gossip import (
    ConnectionRecord,
    MalformedGossip,
    PeerRecord,
    pull_records,
    push_records,
)

__all__ = [
    "ConnectionRecord",
    "MalformedGossip",
    "MergeResult",
    "PeerRecord",
    "Topology",
    "decode_records",
    "encode_records",
    "is_newer",
]


def encode_records(records: Iterable[PeerRecord]) -> bytes:
    """Encode records for the wire (layout in wire/gossip.py)."""
    return push_records(list(records))


def decode_records(data: bytes) -> list[PeerRecord]:
    """Decode records; raises `MalformedGossip` (only) on anything malformed."""
    return pull_records(data)


def is_newer(candidate: PeerRecord, existing: PeerRecord) -> bool:
    """The total order of records of one peer name: ``(version, uid)``."""
    return (candidate.version, candidate.uid) > (existing.version, existing.uid)


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a merge did: `delta` to relay (sorted by name), names GC'd."""

    delta: tuple[PeerRecord, ...]
    removed: tuple[int, ...]

    @property
    def changed(self) -> bool:
        return bool(self.delta or self.removed)


class Topology:
    """Our view of the mesh: one record per known peer, ours included."""

    def __init__(self, name: int, nickname: str, uid: int) -> None:
        self._name = name
        self._records: dict[int, PeerRecord] = {name: PeerRecord(name, nickname, uid, 1, ())}
        self.generation = 0
        self._encoded: tuple[int, bytes] | None = None

    # -- queries -------------------------------------------------------------------

    @property
    def name(self) -> int:
        return self._name

    @property
    def ourself(self) -> PeerRecord:
        return self._records[self._name]

    def get(self, name: int) -> PeerRecord | None:
        return self._records.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __len__(self) -> int:
        return len(self._records)

    def names(self) -> list[int]:
        return sorted(self._records)

    def records(self) -> list[PeerRecord]:
        """All records, sorted by peer name."""
        return [self._records[name] for name in sorted(self._records)]

    def encode_full(self) -> bytes:
        """All records encoded; cached until the next change."""
        if self._encoded is None or self._encoded[0] != self.generation:
            self._encoded = (self.generation, encode_records(self.records()))
        return self._encoded[1]

    # -- our own record ------------------------------------------------------------

    def set_connections(
        self, connections: Iterable[ConnectionRecord], pinned: Collection[int] = ()
    ) -> MergeResult:
        """Replace our own connection list; bumps our version if it differs."""
        conns = tuple(sorted(connections, key=lambda c: (c.peer, c.address, c.outbound)))
        ours = self.ourself
        if conns == ours.connections:
            return MergeResult((), ())
        self._store(PeerRecord(ours.name, ours.nickname, ours.uid, ours.version + 1, conns))
        removed = self.garbage_collect(pinned)
        return MergeResult((self.ourself,), tuple(removed))

    def _bump_beyond(self, version: int) -> bool:
        ours = self.ourself
        if ours.version > version:
            return False
        self._store(PeerRecord(ours.name, ours.nickname, ours.uid, version + 1, ours.connections))
        return True

    def _store(self, record: PeerRecord) -> None:
        self._records[record.name] = record
        self.generation += 1

    # -- merging -------------------------------------------------------------------

    def merge(self, records: Iterable[PeerRecord], pinned: Collection[int] = ()) -> MergeResult:
        """Merge records from gossip; returns the delta to relay and the names GC'd."""
        changed: set[int] = set()
        for record in records:
            if record.name == UNKNOWN_PEER:
                continue
            if record.name == self._name:
                if record != self.ourself and self._bump_beyond(record.version):
                    changed.add(self._name)
                continue
            existing = self._records.get(record.name)
            if existing is None or is_newer(record, existing):
                self._store(record)
                changed.add(record.name)
        removed = self.garbage_collect(pinned) if changed else []
        delta = tuple(self._records[n] for n in sorted(changed) if n in self._records)
        return MergeResult(delta, tuple(removed))

    def garbage_collect(self, pinned: Collection[int] = ()) -> list[int]:
        """Drop records neither pinned nor reachable from us; returns their names."""
        reached = self.reachable()
        removed = [n for n in self._records if n not in reached and n not in pinned]
        for name in removed:
            del self._records[name]
        if removed:
            self.generation += 1
        return sorted(removed)

    def reachable(self) -> set[int]:
        """Names reachable from us following every record's connection list."""
        seen = {self._name}
        queue = deque([self._name])
        while queue:
            record = self._records.get(queue.popleft())
            if record is None:
                continue
            for conn in record.connections:
                if conn.peer not in seen:
                    seen.add(conn.peer)
                    queue.append(conn.peer)
        return seen
