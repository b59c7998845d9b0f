"""Property tests of the IPAM core: interval arithmetic, the ring CRDT, Paxos, the codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyweave.router.core.ipam import codec
from pyweave.router.core.ipam.paxos import Paxos
from pyweave.router.core.ipam.ring import Ring, RingConflict
from pyweave.router.core.ipam.space import (
    count_free,
    free_runs,
    largest_run,
    lowest_free,
    usable,
)
from pyweave.router.core.topology import MalformedGossip

START, END = 1000, 1064
PEERS = (1, 2, 3)

ranges_st = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 20)), max_size=5).map(
    lambda raw: _disjoint([(s, s + n) for s, n in raw])
)


def _disjoint(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    result: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if result and start <= result[-1][1]:
            continue
        result.append((start, end))
    return result


@given(ranges_st, st.sets(st.integers(0, 90)))
def test_space_matches_brute_force(ranges: list[tuple[int, int]], taken: set[int]) -> None:
    free = [a for s, e in ranges for a in range(s, e) if a not in taken]
    ordered = sorted(taken)
    assert count_free(ranges, ordered) == len(free)
    assert lowest_free(ranges, ordered) == (min(free) if free else None)
    runs = free_runs(ranges, ordered)
    assert [a for s, e in runs for a in range(s, e)] == sorted(free)
    best = largest_run(ranges, ordered)
    assert (best[1] - best[0] if best else 0) == max((e - s for s, e in runs), default=0)


def test_usable_skips_network_and_broadcast() -> None:
    assert usable((0, 256)) == (1, 255)
    assert usable((8, 10)) == (8, 10)  # a /31 has no network or broadcast address


# -- the ring ------------------------------------------------------------------------------

ops_st = st.lists(
    st.tuples(
        st.sampled_from(["give", "free", "merge"]),
        st.sampled_from(PEERS),
        st.sampled_from(PEERS),
        st.integers(0, 63),
        st.integers(1, 16),
    ),
    max_size=30,
)


def run_views(ops: list[tuple[str, int, int, int, int]]) -> dict[int, Ring]:
    """Each peer's view, changed only by legal operations of its own, merged at random."""
    views = {p: Ring.initial(START, END, PEERS) for p in PEERS}
    for kind, actor, other, offset, size in ops:
        view = views[actor]
        if kind == "merge":
            view.merge(views[other])
        elif kind == "free":
            view.report_free(actor, {t: size for t in view.tokens()})
        else:
            owned = view.owned_by(actor)
            if not owned or other == actor:
                continue
            start, end = owned[offset % len(owned)]
            lo = start + offset % (end - start)
            view.transfer(actor, other, lo, min(end, lo + size))
        check_nobody_owns_twice(views)
    return views


def check_nobody_owns_twice(views: dict[int, Ring]) -> None:
    for addr in range(START, END):
        owners = [p for p, view in views.items() if view.owner(addr) == p]
        assert len(owners) <= 1, f"{addr} owned by {owners}"


@settings(max_examples=80)
@given(ops_st)
def test_legal_changes_never_make_two_owners(ops: list[tuple[str, int, int, int, int]]) -> None:
    views = run_views(ops)
    merged = Ring(START, END)
    for view in views.values():
        merged.merge(view)
    assert sum(merged.shares().values()) == END - START


@settings(max_examples=60)
@given(ops_st, st.permutations(PEERS))
def test_merge_is_commutative_associative_idempotent(
    ops: list[tuple[str, int, int, int, int]], order: list[int]
) -> None:
    views = run_views(ops)
    left = Ring(START, END)
    for p in PEERS:
        left.merge(views[p])
    right = Ring(START, END)
    for p in order:
        right.merge(views[p])
        right.merge(views[p])
    assert left.same_as(right)
    again = left.copy()
    assert not again.merge(right)
    assert again.same_as(left)


def test_rings_of_different_initialisations_do_not_merge() -> None:
    a = Ring.initial(START, END, (1, 2))
    with pytest.raises(RingConflict):
        a.merge(Ring.initial(START, END, (1, 3)))
    with pytest.raises(RingConflict):
        a.merge(Ring.initial(START, END + 1, (1, 2)))


def test_transfer_only_by_the_owner() -> None:
    ring = Ring.initial(START, END, (1, 2))
    with pytest.raises(ValueError):
        ring.transfer(2, 3, START, START + 4)


def test_take_over() -> None:
    ring = Ring.initial(START, END, (1, 2))
    assert ring.take_over(2, 1) == 32
    assert ring.shares() == {1: 64}


# -- paxos ---------------------------------------------------------------------------------

schedule_st = st.lists(
    st.tuples(st.booleans(), st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=80
)


@settings(max_examples=200)
@given(schedule_st, st.integers(1, 5))
def test_paxos_never_decides_two_values(schedule: list[tuple[bool, int, int]], n: int) -> None:
    nodes = [Paxos(i + 1, n // 2 + 1) for i in range(n)]
    decided: set[tuple[int, ...]] = set()
    for propose, i, j in schedule:
        a, b = nodes[i % n], nodes[j % n]
        if propose:
            a.propose()
        else:
            b.merge(dict(a.knows))
            b.think()
        for node in nodes:
            value = node.consensus()
            if value is not None:
                decided.add(value)
    assert len(decided) <= 1, decided


def test_paxos_decides_with_a_quorum() -> None:
    nodes = [Paxos(i, 2) for i in (1, 2, 3)]
    nodes[0].propose()
    for _ in range(3):
        for a in nodes:
            for b in nodes:
                b.merge(dict(a.knows))
                b.think()
    values = {node.consensus() for node in nodes}
    assert values == {(1, 2, 3)} or values == {(1, 2)}


# -- codec ---------------------------------------------------------------------------------


@given(ops_st)
def test_ring_codec_round_trip(ops: list[tuple[str, int, int, int, int]]) -> None:
    ring = run_views(ops)[1]
    payload = codec.push({"ring": codec.ring_to_json(ring)})
    back = codec.ring_from_json(codec.pull(payload)["ring"])
    assert back.same_as(ring)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"t": "nonsense"}',
        b'{"t": "space", "start": 1}',
        b'{"t": "claim", "addr": -1}',
        b'{"t": "ring", "ring": {"start": 5, "end": 1}}',
    ],
)
def test_malformed_unicasts_are_rejected(payload: bytes) -> None:
    with pytest.raises(MalformedGossip):
        doc = codec.pull_unicast(payload)
        codec.ring_from_json(doc.get("ring"))


def test_malformed_rings_are_rejected() -> None:
    good = codec.ring_to_json(Ring.initial(START, END, (1,)))
    for bad in (
        {**good, "entries": [[START, 1, 1]]},
        {**good, "entries": [[END, 1, 1, 0]]},
        {**good, "entries": [[START + 1, 1, 1, 0]]},
        {**good, "origin": "x"},
    ):
        with pytest.raises(MalformedGossip):
            codec.ring_from_json(bad)
