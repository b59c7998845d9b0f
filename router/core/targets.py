"""Targets: the addresses we keep trying to connect to, and when to try next.

Theory of operation: a target is an address (`host:port`) given to `weave launch` or
`weave connect`.  It is *connecting* while a dial is under way, *connected* while a
connection made from it is up, *retrying* after a failure (next attempt after a capped
exponential backoff with jitter: BASE * 2**attempts, at most CAP, times a random factor in
[1 - JITTER, 1 + JITTER]) and *failed* when retrying is pointless (we dialed ourselves).
A successful connection resets the backoff.  The caller passes `now`; the caller's loop
sleeps for `sleep_for(now)` unless woken by a change.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
JITTER = 0.2
IDLE_WAKEUP = 5.0


class BadTarget(ValueError):
    pass


def normalise_target(address: str, default_port: int) -> str:
    """`host` or `host:port` -> `host:port`; raises BadTarget on nonsense."""
    address = address.strip()
    if not address or any(c.isspace() for c in address):
        raise BadTarget(f"invalid peer address {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep:
        return f"{address}:{default_port}"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadTarget(f"invalid peer address {address!r}")
    return f"{host}:{int(port)}"


@dataclass
class TargetState:
    state: str = "retrying"  # connecting | retrying | failed | connected
    reason: str = ""
    attempts: int = 0
    next_try: float = 0.0


class Targets:
    def __init__(self, rng: random.Random, default_port: int) -> None:
        self.rng = rng
        self.default_port = default_port
        self.states: dict[str, TargetState] = {}

    def add(self, addresses: list[str], replace: bool) -> list[str]:
        normalised = [normalise_target(a, self.default_port) for a in addresses]
        if replace:
            for old in list(self.states):
                if old not in normalised:
                    del self.states[old]
        for target in normalised:
            self.states.setdefault(target, TargetState())
        return normalised

    def forget(self, addresses: list[str]) -> list[str]:
        normalised = [normalise_target(a, self.default_port) for a in addresses]
        for target in normalised:
            self.states.pop(target, None)
        return normalised

    def backoff(self, attempts: int) -> float:
        delay = min(BACKOFF_CAP, BACKOFF_BASE * float(1 << min(attempts, 16)))
        return delay * self.rng.uniform(1 - JITTER, 1 + JITTER)

    def due(self, now: float, connected: set[str]) -> list[str]:
        due: list[str] = []
        for target, st in self.states.items():
            if target in connected:
                st.state = "connected"
                continue
            if st.state == "connected":  # connection went away without a failure report
                st.state = "retrying"
                st.next_try = now
            if st.state == "retrying" and st.next_try <= now:
                due.append(target)
        return due

    def connecting(self, target: str) -> None:
        if target in self.states:
            self.states[target].state = "connecting"

    def failed(self, target: str, reason: str, now: float, permanent: bool = False) -> None:
        st = self.states.get(target)
        if st is None:
            return
        st.reason = reason
        if permanent:
            st.state = "failed"
            st.next_try = float("inf")
        else:
            st.state = "retrying"
            st.next_try = now + self.backoff(st.attempts)
            st.attempts += 1

    def succeeded(self, target: str) -> None:
        st = self.states.get(target)
        if st is not None:
            st.state = "connected"
            st.attempts = 0
            st.reason = ""

    def next_deadline(self) -> float | None:
        pending = [s.next_try for s in self.states.values() if s.state == "retrying"]
        return min(pending) if pending else None

    def sleep_for(self, now: float) -> float:
        """How long the caller may sleep before something is due (unless woken)."""
        deadline = self.next_deadline()
        return IDLE_WAKEUP if deadline is None else max(0.05, min(IDLE_WAKEUP, deadline - now))
