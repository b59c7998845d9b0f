"""Address space arithmetic: half-open integer intervals [start, end) of IPv4 addresses.

Theory of operation
-------------------
Addresses are plain ints.  A peer owns a few large intervals and allocates a few hundred
addresses in them, so every query here walks the intervals and the *sorted* allocated
addresses once, never the addresses of an interval one by one: cost O(ranges + allocated),
whatever the size of the range (a /10 has four million addresses).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

Interval = tuple[int, int]


def intersect(a: Interval, b: Interval) -> Interval | None:
    start, end = max(a[0], b[0]), min(a[1], b[1])
    return (start, end) if start < end else None


def clip(ranges: Iterable[Interval], within: Interval) -> list[Interval]:
    """The parts of `ranges` inside `within`, sorted."""
    result = [part for r in ranges if (part := intersect(r, within)) is not None]
    return sorted(result)


def free_runs(ranges: Iterable[Interval], taken: Sequence[int]) -> list[Interval]:
    """Maximal runs of `ranges` (sorted, disjoint) not containing an address of `taken`.

    `taken` must be sorted.
    """
    runs: list[Interval] = []
    for start, end in sorted(ranges):
        cursor = start
        i = bisect.bisect_left(taken, start)
        while i < len(taken) and taken[i] < end:
            if taken[i] > cursor:
                runs.append((cursor, taken[i]))
            cursor = max(cursor, taken[i] + 1)
            i += 1
        if cursor < end:
            runs.append((cursor, end))
    return runs


def lowest_free(ranges: Iterable[Interval], taken: Sequence[int]) -> int | None:
    runs = free_runs(ranges, taken)
    return runs[0][0] if runs else None


def largest_run(ranges: Iterable[Interval], taken: Sequence[int]) -> Interval | None:
    """The longest free run (the lowest one among equals)."""
    best: Interval | None = None
    for run in free_runs(ranges, taken):
        if best is None or run[1] - run[0] > best[1] - best[0]:
            best = run
    return best


def count_free(ranges: Iterable[Interval], taken: Sequence[int]) -> int:
    return sum(end - start for start, end in free_runs(ranges, taken))


def usable(subnet: Interval) -> Interval:
    """A subnet without its network and broadcast address (kept for /31 and /32)."""
    start, end = subnet
    if end - start > 2:
        return (start + 1, end - 1)
    return subnet
