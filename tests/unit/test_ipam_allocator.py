"""The allocator alone: lowest-first, idempotence, claims, persistence, status strings."""

from __future__ import annotations

import random

from pyweave.router.core.ipam.allocator import (
    Allocated,
    Allocator,
    Gossip,
    Init,
    Refused,
    Waiting,
)

BASE = 10 << 24
UNIVERSE = (BASE, BASE + 256)


def solo(init: Init | None = None) -> Allocator:
    return Allocator(7, UNIVERSE, UNIVERSE, init or Init("consensus"), random.Random(0))


def test_single_peer_reaches_consensus_alone_and_allocates_lowest_first() -> None:
    alloc = solo()
    assert alloc.status(0.0) == "idle"
    assert alloc.allocate("a", "netns:a", UNIVERSE, 0.0) == Allocated(BASE + 1)
    assert alloc.allocate("b", "netns:b", UNIVERSE, 0.0) == Allocated(BASE + 2)
    assert alloc.allocate("a", "netns:a", UNIVERSE, 0.0) == Allocated(BASE + 1)  # idempotent
    assert alloc.free("a") == [BASE + 1]
    assert alloc.allocate("c", "netns:c", UNIVERSE, 0.0) == Allocated(BASE + 1)
    assert alloc.status(0.0) == "ready"
    assert any(isinstance(out, Gossip) for out in alloc.outbox)


def test_claims() -> None:
    alloc = solo()
    assert alloc.claim("a", "netns:a", BASE + 9, 0.0) == Allocated(BASE + 9)
    refused = alloc.claim("b", "netns:b", BASE + 9, 0.0)
    assert isinstance(refused, Refused) and "in use by container a" in refused.reason
    assert alloc.claim("b", "netns:b", 1234, 0.0) == Allocated(1234)  # outside: unmanaged
    assert alloc.allocate("b", "netns:b", UNIVERSE, 0.0) == Allocated(BASE + 1)


def test_quorum_of_two_waits_and_says_so() -> None:
    alloc = solo(Init("consensus", peers=3))
    outcome = alloc.allocate("a", "netns:a", UNIVERSE, 0.0)
    assert outcome == Waiting("awaiting consensus (quorum: 2, known: 1)")


def test_observer_waits_for_a_ring() -> None:
    outcome = solo(Init("observer")).allocate("a", "netns:a", UNIVERSE, 0.0)
    assert outcome == Waiting("priming")


def test_subnet_outside_the_range_is_refused() -> None:
    outcome = solo().allocate("a", "netns:a", (BASE + 256, BASE + 512), 0.0)
    assert isinstance(outcome, Refused)


def test_snapshot_restores_ring_and_holders() -> None:
    alloc = solo()
    alloc.allocate("a", "netns:a", UNIVERSE, 0.0)
    again = solo()
    again.restore(alloc.snapshot())
    assert again.ring.same_as(alloc.ring)
    assert again.allocate("a", "netns:a", UNIVERSE, 0.0) == Allocated(BASE + 1)
    assert again.allocate("b", "netns:b", UNIVERSE, 0.0) == Allocated(BASE + 2)


def test_rmpeer_refuses_ourselves_and_reachable_peers() -> None:
    alloc = Allocator(7, UNIVERSE, UNIVERSE, Init("seed", seeds=(7, 8)), random.Random(0))
    alloc.update_peers({7, 8})
    for peers in ([7], [8]):
        try:
            alloc.rmpeer(peers)
        except ValueError:
            continue
        raise AssertionError(f"rmpeer {peers} was accepted")
    alloc.update_peers({7})
    assert alloc.rmpeer([8]) == 128


def test_a_ring_of_another_initialisation_is_shown_in_status() -> None:
    from pyweave.router.core.ipam import codec
    from pyweave.router.core.ipam.ring import Ring

    alloc = solo()  # consensus among 1: decides [7] alone
    assert alloc.allocate("a", "netns:a", UNIVERSE, 0.0) == Allocated(BASE + 1)
    theirs = Ring.initial(*UNIVERSE, (8, 9))
    payload = codec.push({"ring": codec.ring_to_json(theirs)})
    assert alloc.on_gossip(8, payload) is None
    assert alloc.conflicts == 1
    assert alloc.ring.origin == (7,)
    status = alloc.status(0.0)
    assert status.startswith("IP allocation was seeded by different peers (received: ["), status
    assert "00:00:00:00:00:08, 00:00:00:00:00:09], ours: [00:00:00:00:00:07]" in status
