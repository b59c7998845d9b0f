"""The learning switch's memory: which peer owns which MAC address.

Theory of operation: every frame that enters the router teaches us where its *source* MAC
lives — on our own bridge (LOCAL) when it came from the TAP, or on the peer that injected
it when it came over the mesh.  Unicast frames to a known MAC go to its owner; everything
else is flooded.  Entries expire after `expiry` seconds without traffic, so a container
that moved or vanished stops attracting frames.  A MAC seen from a different owner moves
at once (containers migrate, routers restart).

Time is passed in as `now`; the table never reads a clock.  The hot path calls `learn`
and `lookup` once per frame, so both are a dict operation and a comparison.

Threads: the data plane's two threads learn and look up while the control thread expires
and forgets.  Each of those is a single dict operation (atomic under the GIL); the sweeps
iterate over a snapshot (`list(...)`, taken in one C call) and remove with `pop`, so a
concurrent insert or removal never breaks them.

`changes` counts every new, moved, expired or forgotten entry: a cache of decisions built
on this table (the data plane's flow cache) is valid while `changes` stays the same.
"""

from __future__ import annotations

LOCAL = -1  # owner value for MACs that live on our own bridge
DEFAULT_EXPIRY = 300.0  # seconds; Weave Net's router uses 10 min, bridges 5 min


class MacTable:
    def __init__(self, expiry: float = DEFAULT_EXPIRY) -> None:
        self.expiry = expiry
        # mac -> [owner, last_seen]; lists so the hot path updates in place
        self._entries: dict[bytes, list[float]] = {}
        self.changes = 0  # bumped whenever an owner appears, moves or goes

    def learn(self, mac: bytes, owner: int, now: float) -> bool:
        """Record that `mac` was seen at `owner`. Returns True if it is new or moved."""
        entry = self._entries.get(mac)
        if entry is None:
            self._entries[mac] = [owner, now]
            self.changes += 1
            return True
        entry[1] = now
        if entry[0] != owner:
            entry[0] = owner
            self.changes += 1
            return True
        return False

    def lookup(self, mac: bytes, now: float) -> int | None:
        """The owner of `mac`, or None if unknown or expired."""
        entry = self._entries.get(mac)
        if entry is None:
            return None
        if now - entry[1] > self.expiry:
            self._entries.pop(mac, None)
            self.changes += 1
            return None
        return int(entry[0])

    def expire(self, now: float) -> int:
        """Drop every expired entry; returns how many were dropped."""
        snapshot = list(self._entries.items())
        stale = [mac for mac, (_, seen) in snapshot if now - seen > self.expiry]
        for mac in stale:
            self._entries.pop(mac, None)
        if stale:
            self.changes += 1
        return len(stale)

    def forget_owner(self, owner: int) -> int:
        """Drop all entries of a peer that went away."""
        gone = [mac for mac, (who, _) in list(self._entries.items()) if who == owner]
        for mac in gone:
            self._entries.pop(mac, None)
        if gone:
            self.changes += 1
        return len(gone)

    def entries(self) -> list[tuple[bytes, int, float]]:
        return [(mac, int(owner), seen) for mac, (owner, seen) in list(self._entries.items())]

    def __len__(self) -> int:
        return len(self._entries)
