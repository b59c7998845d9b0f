"""Segmenting TCP super-frames in userspace (software GSO).

Theory of operation: with TAP offloads on, the kernel hands the router TCP "super-frames"
of up to ~64 KB together with a virtio_net_hdr that says how to cut them (gso_type,
gso_size = MSS) and where the partial checksum lives (csum_start, csum_offset).  Normally
the router ships a super-frame whole and the far kernel cuts it.  When that is not
possible — the link loses packets, so one lost IP fragment would cost the whole super-frame
(see docs/protocol.md, "Loss-aware segmentation"), or the super-frame does not fit one UDP
datagram — `segment_record` does the kernel's job here:

  * every segment gets a copy of the Ethernet + IP + TCP headers;
  * IPv4: total length and (incrementing) identification set, header checksum recomputed;
    IPv6: payload length set;
  * TCP: sequence number advanced by the MSS per segment, FIN/PSH only on the last, CWR
    only on the first segment;
  * the TCP checksum is left *partial*, as the kernel does for offloaded frames: the
    checksum field holds the folded pseudo-header sum for the segment's length and the
    segment's virtio_net_hdr says NEEDS_CSUM at (csum_start, csum_offset = 16).  The far
    TAP turns that into CHECKSUM_PARTIAL, so its kernel (or nobody, for local delivery)
    finishes the sum — the same contract as an unsegmented offloaded frame.

The TAP is opened without UFO/USO, so TCPv4/TCPv6 are the GSO types it hands us; a
GSO_UDP_L4 record (a run of small datagrams merged by the sender, core/wire/uso.py) is cut
into one frame per datagram by `uso.cut_udp_record`; any other record is returned unchanged.
Input and output records are `virtio_net_hdr + frame`.  `tcp_segments` is the same cut for
a caller that lays the segments out itself (the data plane writes each straight into the
datagram it becomes); `segment_record` builds the records from it.  A super-frame whose
headers do not hold together (lengths, IHL or data offset under 20 bytes, an ethertype
that does not match the GSO type) raises MalformedDatagram.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from itertools import chain

from pyweave.router.core.wire.checksum import fold, ipv4_pseudo_sum, set_ipv4_checksum, sum_words
from pyweave.router.core.wire.data import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    IPPROTO_TCP,
    TCP_CHECKSUM_OFFSET,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_ECN,
    VNET_GSO_NONE,
    VNET_GSO_TCPV4,
    VNET_GSO_TCPV6,
    VNET_GSO_UDP_L4,
    VNET_HDR,
    VNET_HDR_SIZE,
    MalformedDatagram,
)
from pyweave.router.core.wire.uso import cut_udp_record

ETH_P_8021Q = 0x8100
TCP_FIN_PSH = 0x01 | 0x08
TCP_CWR = 0x80
TCP_GSO_TYPES = (VNET_GSO_TCPV4, VNET_GSO_TCPV6)
ETHERNET_AND_TAG = 18  # enough of the frame to read a VLAN-tagged ethertype
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def gso_type(record: bytes | memoryview) -> int:
    """The record's GSO type without the ECN bit (VNET_GSO_NONE for ordinary frames)."""
    return record[1] & ~VNET_GSO_ECN


def _l3_offset(frame: memoryview) -> tuple[int, int]:
    """(offset of the IP header, ethertype) of an Ethernet frame, one VLAN tag allowed."""
    (ethertype,) = _U16.unpack_from(frame, 12)
    if ethertype == ETH_P_8021Q:
        (ethertype,) = _U16.unpack_from(frame, 16)
        return 18, ethertype
    return 14, ethertype


def segment_record(record: bytes | memoryview, per_record: int = 1) -> list[bytes]:
    """Cut a TCP GSO record (vnet hdr + frame) into records of `per_record` MSS segments.

    With per_record > 1 the pieces are smaller super-frames (still GSO, the far kernel
    cuts them further); with 1 they are plain MSS-sized frames.  See the module doc."""
    view = memoryview(record)
    kind = gso_type(view) if len(view) > 1 else VNET_GSO_NONE
    if kind == VNET_GSO_UDP_L4:  # a run of small datagrams (uso.py): one frame each
        return cut_udp_record(view)
    cuts = tcp_segments(view, per_record)
    if cuts is None:
        return [bytes(view)]
    return [vnet + header + view[start:stop] for vnet, header, start, stop in cuts]


Segments = Iterator[tuple[bytes, bytearray, int, int]]


def tcp_segments(record: bytes | memoryview, per_record: int = 1) -> Segments | None:
    """The segments of a TCP GSO record, for a caller that lays them out itself.

    None if the record is not a TCP super-frame with more than `per_record` MSS of
    payload.  Otherwise an iterator of (vnet hdr, headers, start, stop): each segment is
    `vnet hdr + headers + record[start:stop]`.  `headers` (Ethernet, IP, TCP) is one
    bytearray patched in place for each segment: copy it before the next step."""
    layout = _tcp_layout(memoryview(record))
    if layout is None:
        return None
    frame, offsets, mss, v4, gso_byte = layout
    headers_end = offsets[2]
    total = len(frame)
    if total <= headers_end + mss * per_record:  # nothing to cut
        return None
    step = mss * per_record
    cuts = zip(
        range(headers_end, total, step),
        chain(range(headers_end + step, total, step), (total,)),
        strict=True,
    )
    return _segments(frame, offsets, mss, v4, cuts, gso_byte)


def tcp_slices(record: bytes | memoryview, ranges: Iterable[tuple[int, int]]) -> list[bytes]:
    """Records for the given byte ranges of a TCP GSO record's payload, headers patched.

    `ranges` are (start, stop) offsets into the payload (after the TCP header), in order
    and not overlapping.  Each slice becomes a record of its own, with the headers the
    kernel gives the segment of the stream that starts there (sequence number, IP ID of
    the MSS segment it starts in, lengths, checksums, FIN/PSH only on a slice that ends
    the super-frame, CWR only on the one that starts it): a smaller super-frame (GSO,
    `gso_size` kept) or, up to one MSS, one plain segment.
    This is how the receiver delivers the intact parts of a super-frame that lost some of
    its bytes on the way (core/wire/salvage.py).  Raises MalformedDatagram for a record
    that is not a TCP super-frame or a range outside its payload."""
    view = memoryview(record)
    layout = _tcp_layout(view)
    if layout is None:
        raise MalformedDatagram("not a TCP super-frame")
    frame, offsets, mss, v4, gso_byte = layout
    headers_end = offsets[2]
    payload = len(frame) - headers_end
    cuts = []
    for start, stop in ranges:
        if not 0 <= start < stop <= payload:
            raise MalformedDatagram("slice outside the super-frame's payload")
        cuts.append((headers_end + start, headers_end + stop))
    return [
        vnet + header + view[start:stop]
        for vnet, header, start, stop in _segments(frame, offsets, mss, v4, iter(cuts), gso_byte)
    ]


def tcp_headers_size(record: bytes | memoryview) -> int:
    """The length of a TCP GSO record's Ethernet/IP/TCP headers (where its payload starts
    in the frame).  Raises MalformedDatagram for any other record or broken headers."""
    layout = _tcp_layout(memoryview(record))
    if layout is None:
        raise MalformedDatagram("not a TCP super-frame")
    return layout[1][2]


_Layout = tuple[memoryview, tuple[int, int, int], int, bool, int]


def _tcp_layout(view: memoryview) -> _Layout | None:
    """(frame, (l3, l4, headers end), mss, v4, gso byte) of a TCP GSO record; None if the
    record is not one.  Raises MalformedDatagram for headers that do not hold together."""
    if len(view) < VNET_HDR_SIZE:
        raise MalformedDatagram("record shorter than its virtio_net_hdr")
    _flags, kind, _hdr_len, mss, _csum_start, _csum_off = VNET_HDR.unpack_from(view)
    kind &= ~VNET_GSO_ECN
    if kind not in TCP_GSO_TYPES:
        return None
    frame = view[VNET_HDR_SIZE:]
    if len(frame) < ETHERNET_AND_TAG:
        raise MalformedDatagram("GSO frame too short for its headers")
    l3, ethertype = _l3_offset(frame)
    v4 = kind == VNET_GSO_TCPV4
    if (ethertype != ETH_P_IPV4) if v4 else (ethertype != ETH_P_IPV6):
        raise MalformedDatagram("GSO type does not match the frame's ethertype")
    if len(frame) <= l3:
        raise MalformedDatagram("GSO frame too short for its headers")
    if v4 and frame[l3] & 0x0F < 5:
        raise MalformedDatagram("IPv4 header shorter than 20 bytes")
    l4 = l3 + ((frame[l3] & 0x0F) * 4 if v4 else 40)
    if len(frame) < l4 + 20 or mss == 0:
        raise MalformedDatagram("GSO frame too short for its headers")
    if frame[l4 + 12] >> 4 < 5:
        raise MalformedDatagram("TCP header shorter than 20 bytes")
    headers_end = l4 + (frame[l4 + 12] >> 4) * 4
    if len(frame) < headers_end:
        raise MalformedDatagram("GSO frame too short for its TCP options")
    return frame, (l3, l4, headers_end), mss, v4, view[1]


def _segments(
    frame: memoryview,
    offsets: tuple[int, int, int],
    mss: int,
    v4: bool,
    cuts: Iterator[tuple[int, int]],
    gso_byte: int,
) -> Segments:
    """The segmentation loop proper: one segment per (start, stop) of the frame, in order,
    headers patched in place (what the kernel gives the segment that starts there)."""
    l3, l4, headers_end = offsets
    header = bytearray(frame[:headers_end])
    tcp_header_len = headers_end - l4
    if v4:
        pseudo = ipv4_pseudo_sum(header, l3, IPPROTO_TCP)
        (ip_id,) = _U16.unpack_from(header, l3 + 4)
    else:
        pseudo = sum_words(header[l3 + 8 : l3 + 40]) + IPPROTO_TCP
        ip_id = 0
    (seq,) = _U32.unpack_from(header, l4 + 4)
    tcp_flags = header[l4 + 13]
    vnet = VNET_HDR.pack(VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, l4, TCP_CHECKSUM_OFFSET)
    gso_vnet = VNET_HDR.pack(VNET_F_NEEDS_CSUM, gso_byte, headers_end, mss, l4, 16)
    total = len(frame)
    for start, stop in cuts:
        segment_len = tcp_header_len + stop - start
        if v4:
            _U16.pack_into(header, l3 + 2, l4 - l3 + segment_len)
            _U16.pack_into(header, l3 + 4, (ip_id + (start - headers_end) // mss) & 0xFFFF)
            set_ipv4_checksum(header, l3, l4 - l3)
        else:
            _U16.pack_into(header, l3 + 4, segment_len)
        _U32.pack_into(header, l4 + 4, (seq + start - headers_end) & 0xFFFFFFFF)
        flags = tcp_flags if stop == total else tcp_flags & ~TCP_FIN_PSH
        header[l4 + 13] = flags if start == headers_end else flags & ~TCP_CWR
        _U16.pack_into(header, l4 + TCP_CHECKSUM_OFFSET, fold(pseudo + segment_len))
        yield (
            (gso_vnet if stop - start > mss else vnet),
            header,
            VNET_HDR_SIZE + start,
            (VNET_HDR_SIZE + stop),
        )
