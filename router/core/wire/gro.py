"""Coalescing received TCP segments into super-frames in userspace (software GRO).

Theory of operation: in segment mode (a lossy underlay) the sender cuts every TCP
super-frame into MSS-sized segments (core/wire/gso.py), one per datagram.  Written to the
TAP one by one, each segment crosses the bridge and the container's TCP stack alone — on
the receiving router that was half of its time.  The kernel's GRO would merge them, but a
TAP `write` is never GRO'd with the next one.  `TcpCoalescer` does it here, before the
write: consecutive records of one TCPv4 flow whose sequence numbers follow each other are
merged back into one super-frame (virtio_net_hdr with GSO_TCPV4 and gso_size = the first
segment's payload), so the receiving kernel handles one skb instead of ~45.

A record is a candidate when it is what gso.py (or a kernel without TSO) produces: a
virtio_net_hdr asking for a partial checksum (NEEDS_CSUM at the TCP checksum, no GSO),
untagged IPv4 without options or fragmentation, TCP with ACK set and none of
SYN/FIN/RST/URG/ECE/CWR, a non-empty payload and no Ethernet padding.  A candidate joins
the pending super-frame when its headers match (the same addresses, ports, ACK number,
window, TTL/TOS and TCP options, as Linux's GRO requires) and its sequence number is the
next expected one; a shorter segment or PSH ends the super-frame.  Everything else — a
gap after a loss, another flow, a non-candidate — first flushes what is pending, so the
order of frames on the TAP never changes.

The merged super-frame follows the same contract as the ones the TAP hands us: IPv4 total
length and header checksum fixed, TCP checksum left partial (the folded pseudo-header sum
for the whole TCP length), and the IP ID of the first segment.  Sizes stay below
GRO_MAX_BYTES (the TAP's gso_max_size), and only whole frames are ever written.
"""

from __future__ import annotations

import struct

from pyweave.router.core.wire.checksum import fold, ipv4_pseudo_sum, set_ipv4_checksum
from pyweave.router.core.wire.data import (
    ETH_P_IPV4,
    IPPROTO_TCP,
    TCP_CHECKSUM_OFFSET,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_NONE,
    VNET_GSO_TCPV4,
    VNET_HDR,
    VNET_HDR_SIZE,
)

GRO_MAX_BYTES = 64000  # frame bytes of a merged super-frame (the TAP's gso_max_size)
IP_AT = VNET_HDR_SIZE + 14  # untagged Ethernet
TCP_AT = IP_AT + 20  # IPv4 without options
PAYLOAD_MIN_AT = TCP_AT + 20
CSUM_START = TCP_AT - VNET_HDR_SIZE  # offsets in the vnet header count from the frame
ACK, PSH = 0x10, 0x08
NOT_MERGEABLE = 0x01 | 0x02 | 0x04 | 0x20 | 0x40 | 0x80  # FIN SYN RST URG ECE CWR
CANDIDATE_VNET = bytes((VNET_F_NEEDS_CSUM, VNET_GSO_NONE))
CSUM_FIELDS = struct.pack("<HH", CSUM_START, TCP_CHECKSUM_OFFSET)
# From the vnet hdr to the TCP window, the fields a candidate is checked and keyed by (the
# vnet hdr's own fields as raw bytes, so its byte order does not matter).
_HEADERS = struct.Struct("!2s4x4s12sHBBH2xHBB2x12sI4sBBH")
_U16 = struct.Struct("!H")


class TcpCoalescer:
    """Merge consecutive TCP segments of one flow; see the module docstring."""

    __slots__ = ("_key", "_mss", "_next_seq", "_pending", "count", "limit", "merged")

    def __init__(self, limit: int = GRO_MAX_BYTES) -> None:
        self.limit = limit + VNET_HDR_SIZE  # in record bytes
        self._pending = bytearray()
        self._key: tuple[object, ...] = ()
        self._next_seq = 0
        self._mss = 0
        self.count = 0  # segments pending in the super-frame being built (0: none)
        self.merged = 0  # segments merged into an earlier one (for status)

    def add(self, record: bytes | memoryview) -> tuple[bytearray | None, bool]:
        """Offer one record (vnet hdr + frame).

        Returns (a finished super-frame or segment to write first, or None; whether
        `record` was taken — if not, the caller writes it itself, after the first)."""
        if len(record) < PAYLOAD_MIN_AT:
            return self.flush(), False
        (
            vnet_kind,
            vnet_csum,
            macs,
            ethertype,
            version_ihl,
            tos,
            total,
            fragment,
            ttl,
            protocol,
            addresses_ports,
            seq,
            ack,
            data_offset,
            flags,
            window,
        ) = _HEADERS.unpack_from(record)
        payload_at = TCP_AT + (data_offset >> 4) * 4
        payload = IP_AT + total - payload_at
        if (
            vnet_kind != CANDIDATE_VNET
            or vnet_csum != CSUM_FIELDS
            or version_ihl != 0x45
            or protocol != IPPROTO_TCP
            or ethertype != ETH_P_IPV4
            or flags & NOT_MERGEABLE
            or not flags & ACK
            or payload <= 0
            or payload_at < PAYLOAD_MIN_AT
            or len(record) != IP_AT + total
            or fragment & 0x3FFF  # MF or a fragment offset
        ):
            return self.flush(), False
        # What must be equal for two segments to merge (besides the sequence number).
        options = bytes(record[PAYLOAD_MIN_AT:payload_at]) if payload_at > PAYLOAD_MIN_AT else b""
        key = (macs, tos, fragment, ttl, addresses_ports, ack, data_offset, window, options)
        pending = self._pending
        if (
            self.count
            and key == self._key
            and seq == self._next_seq
            and payload <= self._mss
            and len(pending) + payload <= self.limit
        ):
            pending += record[payload_at:]
            self._next_seq = (seq + payload) & 0xFFFFFFFF
            self.count += 1
            self.merged += 1
            if flags & PSH or payload < self._mss:  # the end of a burst: deliver it now
                pending[TCP_AT + 13] |= flags & PSH
                return self.flush(), True
            return None, True
        done = self.flush()
        if flags & PSH:  # alone anyway
            return done, False
        self._pending = bytearray(record)
        self._key = key
        self._next_seq = (seq + payload) & 0xFFFFFFFF
        self._mss = payload
        self.count = 1
        return done, True

    def flush(self) -> bytearray | None:
        """The pending super-frame (or lone segment), finished; None if nothing pends.

        It is handed over, not copied (up to 64 KB): the coalescer starts a new buffer."""
        count = self.count
        if not count:
            return None
        pending = self._pending
        self.count = 0
        self._pending = bytearray()
        if count == 1:
            return pending
        total = len(pending) - IP_AT
        _U16.pack_into(pending, IP_AT + 2, total)
        set_ipv4_checksum(pending, IP_AT)
        pseudo = ipv4_pseudo_sum(pending, IP_AT, IPPROTO_TCP) + total - 20
        _U16.pack_into(pending, TCP_AT + TCP_CHECKSUM_OFFSET, fold(pseudo))
        headers = TCP_AT + (pending[TCP_AT + 12] >> 4) * 4 - VNET_HDR_SIZE
        VNET_HDR.pack_into(
            pending,
            0,
            VNET_F_NEEDS_CSUM,
            VNET_GSO_TCPV4,
            headers,
            self._mss,
            CSUM_START,
            TCP_CHECKSUM_OFFSET,
        )
        return pending
