"""Sliding-window replay protection for data-plane counters (RFC 6479 style).

Theory of operation
-------------------
Every data datagram carries a 64-bit counter that is also its AEAD nonce.
UDP may reorder and duplicate datagrams and an attacker may replay recorded
ones, so the receiver remembers which counters it has accepted:

* ``top`` is the highest counter accepted so far; counters above it are new.
* A ring of ``RING_BLOCKS`` 64-bit blocks (2048 bits, as in WireGuard) holds
  one bit per counter near ``top``. Moving ``top`` forward clears the blocks
  it passes over, so the cost per datagram is O(1) and never a big shift.
* Because the block that holds ``top`` is only partly "behind" it, the usable
  window is ``WINDOW = (RING_BLOCKS - 1) * 64 = 1984`` counters: a counter is
  acceptable when it is not older than ``top - WINDOW`` and its bit is clear.
* Counters at or above ``COUNTER_LIMIT`` (2**64 - 1, which no sender may use)
  and negative numbers are always rejected.

**Ordering matters.** The receiver must call ``check(counter)`` *before*
decrypting (cheap rejection of replays and stale datagrams) and
``update(counter)`` *only after* the AEAD authenticated the datagram.
Updating on unauthenticated input would let anyone who can send a forged
datagram with a huge counter slide the window forward and make the peer drop
all genuine traffic. ``update`` of a counter that ``check`` rejects is a no-op
returning False, so a caller cannot corrupt the window by mistake.
"""

from __future__ import annotations

from typing import Final

BLOCK_BITS: Final = 64
BLOCK_SHIFT: Final = 6  # log2(BLOCK_BITS)
BIT_MASK: Final = BLOCK_BITS - 1
RING_BLOCKS: Final = 32  # 2048 bits of history
BLOCK_MASK: Final = RING_BLOCKS - 1
WINDOW: Final = (RING_BLOCKS - 1) * BLOCK_BITS  # 1984 counters behind top
COUNTER_LIMIT: Final = 2**64 - 1  # counters must be strictly below this


class ReplayWindow:
    """Which counters were accepted; see the module docstring for the protocol."""

    __slots__ = ("_ring", "top")

    def __init__(self) -> None:
        self._ring = [0] * RING_BLOCKS
        self.top = 0  # highest accepted counter (0 before any)

    def check(self, counter: int) -> bool:
        """True if ``counter`` is fresh: in range, inside the window, not seen."""
        if counter < 0 or counter >= COUNTER_LIMIT:
            return False
        if counter > self.top:
            return True
        if self.top - counter > WINDOW:
            return False
        block = self._ring[(counter >> BLOCK_SHIFT) & BLOCK_MASK]
        return not (block >> (counter & BIT_MASK)) & 1

    def update(self, counter: int) -> bool:
        """Record an authenticated ``counter``; False (and no change) if not fresh."""
        if not self.check(counter):
            return False
        index = counter >> BLOCK_SHIFT
        if counter > self.top:
            current = self.top >> BLOCK_SHIFT
            diff = min(index - current, RING_BLOCKS)
            ring = self._ring
            for i in range(current + 1, current + diff + 1):
                ring[i & BLOCK_MASK] = 0
            self.top = counter
        self._ring[index & BLOCK_MASK] |= 1 << (counter & BIT_MASK)
        return True
