"""Peer names: 48-bit identifiers written like MAC addresses.

Theory of operation: every router has a *name* that is stable across restarts (derived
from --name, or generated once and persisted in the state directory) and a *UID* that is
new for every incarnation of the process.  The name says *who* a peer is; the UID tells
a restarted peer apart from its previous life, so stale records and connections of the
old incarnation can be superseded.  Names travel on the wire as 6 big-endian bytes and
are shown to people as ``aa:bb:cc:dd:ee:ff``, optionally followed by ``(nickname)``.
"""

from __future__ import annotations

import re

PEER_NAME_BITS = 48
PEER_NAME_SIZE = 6
PEER_NAME_MAX = (1 << PEER_NAME_BITS) - 1
UNKNOWN_PEER = 0

_NAME_RE = re.compile(r"^([0-9a-fA-F]{1,2})(:[0-9a-fA-F]{1,2}){5}$")


class BadPeerName(ValueError):
    """A peer name that is not six colon-separated hex bytes."""


def parse_peer_name(text: str) -> int:
    """Parse ``aa:bb:cc:dd:ee:ff`` (or 12 hex digits) into an int."""
    text = text.strip()
    if _NAME_RE.match(text):
        value = 0
        for part in text.split(":"):
            value = (value << 8) | int(part, 16)
        return value
    if re.fullmatch(r"[0-9a-fA-F]{12}", text):
        return int(text, 16)
    raise BadPeerName(f"invalid peer name {text!r}: expected six hex bytes like 7a:12:9c:00:4e:01")


def format_peer_name(name: int) -> str:
    """Format a 48-bit peer name as ``aa:bb:cc:dd:ee:ff``."""
    raw = name.to_bytes(PEER_NAME_SIZE, "big")
    return ":".join(f"{b:02x}" for b in raw)


def describe_peer(name: int, nickname: str) -> str:
    """Weave Net's way of showing a peer: ``aa:bb:cc:dd:ee:ff(nickname)``."""
    return f"{format_peer_name(name)}({nickname})"


def peer_name_from_mac(mac: bytes) -> int:
    """Use a 6-byte MAC address as a peer name."""
    if len(mac) != PEER_NAME_SIZE:
        raise BadPeerName(f"a MAC address has 6 bytes, not {len(mac)}")
    return int.from_bytes(mac, "big")


def random_peer_name(random_bytes: bytes) -> int:
    """A locally administered unicast name from 6 random bytes (caller supplies them)."""
    if len(random_bytes) != PEER_NAME_SIZE:
        raise BadPeerName("need 6 random bytes")
    first = (random_bytes[0] & 0xFC) | 0x02  # locally administered, unicast
    return int.from_bytes(bytes([first]) + random_bytes[1:], "big")
