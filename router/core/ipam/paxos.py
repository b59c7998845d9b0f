"""Single-decree Paxos over gossip: which peers share the range at first (Weave Net's way).

Theory of operation
-------------------
With `--ipalloc-init consensus[=N]` (the default, N = the peers named at launch + 1) no
peer owns anything until a quorum (N // 2 + 1) agrees on the list of initial owners; then
every peer builds the same ring from that list (`Ring.initial`).

The state is a map peer -> `Claims(promise, accepted, value)`, gossiped as a CRDT: each peer
writes only its own claims, and a merge keeps, per peer, the greater promise and the greater
accepted proposal (with its value), so our copy of another peer's claims is a lower bound of
its real ones.  A proposal id is `(round, proposer)`, ordered lexicographically.

* `propose`: take a round above every promise we know.
* `think` (after every merge or proposal): promise the greatest proposal we know (an
  acceptor never goes back); if our own promise is our own proposal and a quorum has
  promised it, accept it with the value of the greatest accepted proposal among those
  promisers, or, if none, our value (the peers we know of); if we promised another peer's
  proposal and it has accepted it, accept it too.
* `consensus`: a quorum accepted the same proposal: its value is decided.

These are Paxos's phases 1 and 2 with gossip as the message layer; safety (a single value is
ever decided) needs only that acceptors never lower their promise and accept only what they
promised, which the merge and `think` preserve.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

Proposal = tuple[int, int]  # (round, proposer); (0, 0) = none
NONE: Proposal = (0, 0)


@dataclass(frozen=True, slots=True)
class Claims:
    promise: Proposal = NONE
    accepted: Proposal = NONE
    value: tuple[int, ...] = ()


class Paxos:
    def __init__(self, name: int, quorum: int) -> None:
        self.name = name
        self.quorum = max(1, quorum)
        self.knows: dict[int, Claims] = {name: Claims()}

    def merge(self, other: dict[int, Claims]) -> bool:
        changed = False
        for peer, theirs in other.items():
            mine = self.knows.get(peer, Claims())
            merged = mine
            if merged.promise < theirs.promise:
                merged = replace(merged, promise=theirs.promise)
            if merged.accepted < theirs.accepted:
                merged = replace(merged, accepted=theirs.accepted, value=theirs.value)
            if merged != mine or peer not in self.knows:
                self.knows[peer] = merged
                changed = True
        return changed

    def propose(self) -> None:
        top = max(c.promise[0] for c in self.knows.values())
        ours = self.knows[self.name]
        self.knows[self.name] = replace(ours, promise=(top + 1, self.name))
        self.think()

    def think(self) -> None:
        ours = self.knows[self.name]
        greatest = max(c.promise for c in self.knows.values())
        if ours.promise < greatest:
            ours = replace(ours, promise=greatest)
        if ours.promise[1] == self.name and ours.accepted != ours.promise:
            ours = self._try_accept_own(ours)
        leader = self.knows.get(ours.promise[1])
        follow = leader is not None and leader.accepted == ours.promise
        if ours.accepted != ours.promise and follow and leader is not None:
            ours = replace(ours, accepted=leader.accepted, value=leader.value)
        self.knows[self.name] = ours

    def _try_accept_own(self, ours: Claims) -> Claims:
        promisers = [c for p, c in self.knows.items() if p != self.name]
        promisers = [c for c in promisers if c.promise == ours.promise] + [ours]
        if len(promisers) < self.quorum:
            return ours
        best = max(promisers, key=lambda c: c.accepted)
        value = best.value if best.accepted != NONE else tuple(sorted(self.knows))
        return replace(ours, accepted=ours.promise, value=value)

    def consensus(self) -> tuple[int, ...] | None:
        counts: dict[Proposal, int] = {}
        for claims in self.knows.values():
            if claims.accepted != NONE:
                counts[claims.accepted] = counts.get(claims.accepted, 0) + 1
                if counts[claims.accepted] >= self.quorum:
                    return claims.value
        return None

    def known(self) -> int:
        return len(self.knows)
