"""Byte layouts of the "ipam" channel: compact JSON, validated on the way in.

Theory of operation
-------------------
Gossip payloads are ``{"ring": RING}`` once a ring exists, ``{"paxos": PAXOS}`` before.
Unicast payloads carry a type ``t``:

* ``{"t": "space", "start": A, "end": B}`` -- please give me free space inside [A, B);
* ``{"t": "claim", "addr": A, "container": ID}`` -- please give me address A (a claim);
* ``{"t": "ring", "ring": RING}`` -- my ring (the answer to both, and to paxos gossip
  from a peer that has no ring yet);
* ``{"t": "refused", "addr": A, "reason": TEXT}`` -- a claim the owner cannot grant.

RING is ``{"start", "end", "origin": [peer...], "entries": [[token, owner, version,
free], ...]}``; PAXOS is ``[[peer, round, proposer, round, proposer, [peer...]], ...]``
(promise, accepted, value).  Anything else raises `MalformedGossip`.  Persistence
(`ipam.json`) uses the same encodings.
"""

from __future__ import annotations

import json
from typing import Any

from pyweave.router.core.ipam.paxos import Claims
from pyweave.router.core.ipam.ring import Entry, Ring
from pyweave.router.core.topology import MalformedGossip

UNICAST_TYPES = ("space", "claim", "ring", "refused")


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedGossip(f"expected a non-negative integer, got {value!r}")
    return value


def _ints(value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise MalformedGossip("expected a list of integers")
    return tuple(_int(v) for v in value)


def ring_to_json(ring: Ring) -> dict[str, Any]:
    entries = [[t, e.owner, e.version, e.free] for t, e in sorted(ring.entries.items())]
    return {"start": ring.start, "end": ring.end, "origin": list(ring.origin), "entries": entries}


def ring_from_json(doc: object) -> Ring:
    if not isinstance(doc, dict):
        raise MalformedGossip("ring is not an object")
    start, end = _int(doc.get("start")), _int(doc.get("end"))
    if not start < end:
        raise MalformedGossip("ring range is empty")
    ring = Ring(start, end, _ints(doc.get("origin")))
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise MalformedGossip("ring entries are not a list")
    for raw in entries:
        if not isinstance(raw, list) or len(raw) != 4:
            raise MalformedGossip("bad ring entry")
        token, owner, version, free = _ints(raw)
        if not start <= token < end:
            raise MalformedGossip("ring token outside the range")
        ring.put(token, Entry(owner, version, free))
    if not ring.empty() and ring.tokens()[0] != start:
        raise MalformedGossip("ring does not start at the range start")
    return ring


def paxos_to_json(knows: dict[int, Claims]) -> list[list[Any]]:
    return [[peer, *c.promise, *c.accepted, list(c.value)] for peer, c in sorted(knows.items())]


def paxos_from_json(doc: object) -> dict[int, Claims]:
    if not isinstance(doc, list):
        raise MalformedGossip("paxos state is not a list")
    knows: dict[int, Claims] = {}
    for raw in doc:
        if not isinstance(raw, list) or len(raw) != 6:
            raise MalformedGossip("bad paxos claims")
        peer, p_round, p_peer, a_round, a_peer = (_int(v) for v in raw[:5])
        knows[peer] = Claims((p_round, p_peer), (a_round, a_peer), _ints(raw[5]))
    return knows


def push(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def pull(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedGossip(f"ipam payload is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedGossip("ipam payload is not an object")
    return doc


def pull_unicast(payload: bytes) -> dict[str, Any]:
    doc = pull(payload)
    kind = doc.get("t")
    if kind not in UNICAST_TYPES:
        raise MalformedGossip(f"unknown ipam message {kind!r}")
    for key in ("start", "end", "addr"):
        if key in doc:
            _int(doc[key])
    if kind == "space" and not ("start" in doc and "end" in doc):
        raise MalformedGossip("space request without a range")
    if kind in ("claim", "refused") and "addr" not in doc:
        raise MalformedGossip(f"{kind} without an address")
    return doc
