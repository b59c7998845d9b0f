"""The ring: who owns which part of the allocation range, as a state-based CRDT.

Theory of operation
-------------------
As in Weave Net, the range [start, end) is cut at *tokens*; the entry of a token says who
owns the addresses from it up to the next token (the last one up to `end`).  An entry is
`(owner, version, free)`; `free` is the owner's hint of how many of those addresses it has
not handed out, for choosing whom to ask for space.

Merging takes the union of tokens and, per token, the greater entry by `(version, owner,
free)`.  That is idempotent, commutative and associative, so rings converge whatever the
order of gossip.  Safety comes from one rule about *who writes*: an entry is changed (its
version raised) or a token inserted only by the peer that owns it in its own view, and a
peer gives a range away in its own view before anyone can learn of the gift.  Ownership of
an address therefore moves along a chain of hand-overs, and at no moment do two peers each
believe they own it (docs/ipam.md has the argument).  Tokens are never removed, and
gossip always carries whole rings, so whoever owns a range knows every token inside it.

The one exception is `take_over` (`weave rmpeer`): it rewrites the entries of a peer that
is declared dead.  It is safe only if that peer is really gone and only one peer does it;
two concurrent take-overs of one peer end in the same version, the higher owner name wins.

`origin` names the initial owners (consensus value or seed list); two rings of different
origins never merge (`RingConflict`): they were made by two separate initialisations.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, replace

from pyweave.router.core.ipam.space import Interval


class RingConflict(ValueError):
    """Rings of a different range or a different initialisation."""


@dataclass(frozen=True, slots=True)
class Entry:
    owner: int
    version: int
    free: int

    def key(self) -> tuple[int, int, int]:
        return (self.version, self.owner, self.free)


class Ring:
    def __init__(self, start: int, end: int, origin: tuple[int, ...] = ()) -> None:
        if not start < end:
            raise ValueError("empty range")
        self.start = start
        self.end = end
        self.origin = origin
        self.entries: dict[int, Entry] = {}
        self._tokens: list[int] = []

    @classmethod
    def initial(cls, start: int, end: int, peers: tuple[int, ...]) -> Ring:
        """The ring every peer builds from the same list: the range split evenly."""
        ring = cls(start, end, origin=tuple(sorted(set(peers))))
        size = end - start
        count = len(ring.origin)
        for i, peer in enumerate(ring.origin):
            token = start + size * i // count
            next_token = start + size * (i + 1) // count
            ring.put(token, Entry(peer, 1, next_token - token))
        return ring

    # -- queries -------------------------------------------------------------------

    def empty(self) -> bool:
        return not self.entries

    def tokens(self) -> list[int]:
        return list(self._tokens)

    def segments(self) -> Iterator[tuple[int, int, Entry]]:
        """(start, end, entry) for every token, in address order."""
        bounds = [*self._tokens[1:], self.end] if self._tokens else []
        for token, stop in zip(self._tokens, bounds, strict=True):
            yield token, stop, self.entries[token]

    def owner(self, addr: int) -> int | None:
        i = bisect.bisect_right(self._tokens, addr) - 1
        if i < 0 or not self.start <= addr < self.end:
            return None
        return self.entries[self._tokens[i]].owner

    def owned_by(self, peer: int) -> list[Interval]:
        """`peer`'s ranges, adjacent ones joined."""
        result: list[Interval] = []
        for start, stop, entry in self.segments():
            if entry.owner != peer:
                continue
            if result and result[-1][1] == start:
                result[-1] = (result[-1][0], stop)
            else:
                result.append((start, stop))
        return result

    def shares(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for start, stop, entry in self.segments():
            counts[entry.owner] = counts.get(entry.owner, 0) + stop - start
        return counts

    def free_hints(self, within: Interval) -> dict[int, int]:
        """Per owner of a segment overlapping `within`: its reported free addresses."""
        hints: dict[int, int] = {}
        for start, stop, entry in self.segments():
            if start < within[1] and within[0] < stop:
                hints[entry.owner] = hints.get(entry.owner, 0) + entry.free
        return hints

    def copy(self) -> Ring:
        ring = Ring(self.start, self.end, self.origin)
        ring.entries = dict(self.entries)
        ring._tokens = list(self._tokens)
        return ring

    def same_as(self, other: Ring) -> bool:
        return (self.start, self.end, self.origin, self.entries) == (
            other.start,
            other.end,
            other.origin,
            other.entries,
        )

    # -- merging -------------------------------------------------------------------

    def merge(self, other: Ring) -> bool:
        """Merge `other` into us; True if we changed.  RingConflict if incompatible."""
        if (other.start, other.end) != (self.start, self.end):
            raise RingConflict(f"range {other.start}-{other.end} is not ours")
        if other.empty():
            return False
        if self.empty():
            self.origin = other.origin
        elif other.origin != self.origin:
            raise RingConflict("ring of another initialisation")
        changed = False
        for token, entry in other.entries.items():
            mine = self.entries.get(token)
            if mine is None or mine.key() < entry.key():
                self.put(token, entry)
                changed = True
        return changed

    # -- changes by the owner ------------------------------------------------------

    def transfer(self, giver: int, taker: int, start: int, end: int) -> None:
        """`giver` hands [start, end) to `taker`; `giver` must own all of it."""
        if not (self.start <= start < end <= self.end):
            raise ValueError("transfer outside the range")
        if any(self.owner(a) != giver for a in (start, end - 1)) or any(
            e.owner != giver for t, e in self.entries.items() if start <= t < end
        ):
            raise ValueError("transfer of addresses the giver does not own")
        if end < self.end and end not in self.entries:
            self.put(end, Entry(giver, 1, 0))
        if start not in self.entries:
            self.put(start, Entry(taker, 1, 0))
        for token in self._tokens[bisect.bisect_left(self._tokens, start) :]:
            if token >= end:
                break
            entry = self.entries[token]
            self.put(token, Entry(taker, entry.version + 1, 0))

    def take_over(self, dead: int, heir: int) -> int:
        """`weave rmpeer`: every entry of `dead` goes to `heir`.  Returns the addresses."""
        taken = 0
        for start, stop, entry in list(self.segments()):
            if entry.owner == dead:
                self.put(start, Entry(heir, entry.version + 1, 0))
                taken += stop - start
        return taken

    def report_free(self, owner: int, free: dict[int, int]) -> bool:
        """Set the free hints of `owner`'s own tokens; True if any changed."""
        changed = False
        for token, count in free.items():
            entry = self.entries[token]
            if entry.owner == owner and entry.free != count:
                self.put(token, replace(entry, version=entry.version + 1, free=count))
                changed = True
        return changed

    def put(self, token: int, entry: Entry) -> None:
        """Set one entry as is (decoding, restoring); not a merge."""
        if token not in self.entries:
            bisect.insort(self._tokens, token)
        self.entries[token] = entry
