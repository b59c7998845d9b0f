"""Internet checksum arithmetic shared by the software offloads (gso.py, gro.py, uso.py).

Theory of operation: IP, TCP and UDP checksums are the ones'-complement of the
ones'-complement sum of 16-bit words (RFC 1071).  `fold` reduces a plain integer sum of
words to 16 bits (adding the carries back in), so sums can be built with Python's `sum`
and folded once.  An IPv4 header checksum is the complement of the folded sum of the
header with its checksum field zeroed.  A *partial* L4 checksum, what a virtio_net_hdr
with NEEDS_CSUM promises the kernel, is the folded (not complemented) pseudo-header sum:
addresses, protocol and L4 length; the device or the kernel adds the L4 bytes and
complements later.  `fold` and `sum_words` work on any words (IPv6 pseudo-headers too);
the others on an IPv4 header at an offset of a buffer.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct("!H")
_IPV4_WORDS = struct.Struct("!10H")  # a 20-byte header, no options
_IPV4_ADDRESS_WORDS = struct.Struct("!4H")


def fold(total: int) -> int:
    """A sum of 16-bit words folded to 16 bits (carries added back in)."""
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def sum_words(data: bytes | bytearray | memoryview) -> int:
    """The plain sum of the big-endian 16-bit words of `data` (even length)."""
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def set_ipv4_checksum(header: bytearray, at: int, length: int = 20) -> None:
    """Write the header checksum of the IPv4 header of `length` bytes at `at`."""
    _U16.pack_into(header, at + 10, 0)
    if length == 20:
        total = sum(_IPV4_WORDS.unpack_from(header, at))
    else:  # with options
        total = sum_words(header[at : at + length])
    _U16.pack_into(header, at + 10, ~fold(total) & 0xFFFF)


def ipv4_pseudo_sum(header: bytes | bytearray | memoryview, at: int, protocol: int) -> int:
    """The unfolded pseudo-header sum of the IPv4 header at `at`, but the L4 length."""
    total: int = sum(_IPV4_ADDRESS_WORDS.unpack_from(header, at + 12))
    return total + protocol
