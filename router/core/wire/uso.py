"""Runs of small UDP frames as one UDP GSO super-frame, and cutting one in software.

Theory of operation: a container that sends many small UDP datagrams (DNS, games, VoIP,
metrics, `iperf3 -u -l 64`) costs the receiving router one TAP `write` per frame, and its
kernel one trip per frame through the TAP, the bridge and the container's veth — the
largest share of a router's time under such a load.  Linux (>= 6.2) accepts a frame with a
virtio_net_hdr of type GSO_UDP_L4 on a TAP write, like the TCP super-frames the router
already writes: one skb crosses the bridge and the veth, and is cut into the original
datagrams only at the receiving UDP socket (or at a device that cannot carry it).

`merge_udp_runs` makes such super-frames on the *sending* router, from the records it has
coalesced for one (next hop, destination) in one wake-up: consecutive records of one IPv4
UDP flow whose datagrams have the same size become one record — the first frame's
headers, then all payloads.  So the wire carries 64 payload bytes per 64-byte datagram
instead of ~110, and the receiver writes one record per run instead of one per datagram.

A record is a candidate when it is what the TAP hands us for a datagram sent by a local
socket: a virtio_net_hdr asking for a partial checksum at the UDP checksum (NEEDS_CSUM,
csum_start 34, csum_offset 6, no GSO), untagged IPv4 without options, not a fragment, no
Ethernet padding, a non-empty payload.  Later records join while everything but the IP ID
and checksum is byte-for-byte the first one's (MACs, TOS, total length, DF, TTL,
addresses, ports, UDP length), so a run never mixes flows or sizes; order is kept.  (The
UDP checksum field is not compared: for partial-checksum frames of one flow and size it
holds the same pseudo-header sum.)

The super-frame follows the kernel's contract for UDP GSO packets: IPv4 total length and
header checksum for the whole, the UDP length of the whole, the UDP checksum field holding
the folded pseudo-header sum for that length (the kernel adjusts it per segment), and
vnet hdr_len 42 / gso_size = the datagram payload.  Cutting gives each datagram the IP ID
of the first plus its index, as the kernel does.  At most MAX_SEGMENTS datagrams and
`max_frame` frame bytes per super-frame (the data plane passes what fits one path-MTU
datagram; never more than GRO_MAX_BYTES, the gso_max_size of the TAP and the containers'
veths).

`cut_udp_record` is the software fallback: the receiving kernel refused the write
(EINVAL: Linux < 6.2 knows no GSO_UDP_L4), or a relay's next link has a smaller path MTU
than the run was made for.  (A sender merges in segment mode too: a run fits one
datagram, so it is no more exposed to loss than a datagram of coalesced frames.)  Records here
are `virtio_net_hdr + frame`; the merge works on the TAP thread's batch records, which
carry the u16 frame length in front (core/wire/data.py).
"""

from __future__ import annotations

import struct

from pyweave.router.core.wire.checksum import fold, ipv4_pseudo_sum, set_ipv4_checksum
from pyweave.router.core.wire.data import (
    IPPROTO_UDP,
    UDP_CHECKSUM_OFFSET,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_NONE,
    VNET_GSO_UDP_L4,
    VNET_HDR,
    VNET_HDR_SIZE,
    MalformedDatagram,
)
from pyweave.router.core.wire.gro import GRO_MAX_BYTES  # the TAP's and veths' gso_max_size

MAX_SEGMENTS = 64  # per merge: UDP_MAX_SEGMENTS of Linux before 6.9 (128 since)
MAX_CUT_SEGMENTS = 128  # a record cutting into more is malformed (one datagram, 64 K writes)
IP_AT = VNET_HDR_SIZE + 14  # in a record without the length prefix: untagged Ethernet
UDP_AT = IP_AT + 20  # IPv4 without options
PAYLOAD_AT = UDP_AT + 8
CSUM_START = UDP_AT - VNET_HDR_SIZE  # 34: offsets in the vnet header count from the frame
LEN = 2  # the u16 frame length in front of a batch record
# What a local socket's datagram carries (a candidate), and what a cut datagram gets back.
PARTIAL_UDP_VNET = VNET_HDR.pack(
    VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, CSUM_START, UDP_CHECKSUM_OFFSET
)
IPV4_UDP = b"\x08\x00\x45"  # ethertype, version 4 + IHL 5
_U16 = struct.Struct("!H")


def _payload_if_candidate(record: bytes) -> int:
    """The UDP payload size of a batch record that may start a run, else 0."""
    at = LEN + IP_AT
    if (
        record[LEN : LEN + VNET_HDR_SIZE] != PARTIAL_UDP_VNET
        or record[at - 2 : at + 1] != IPV4_UDP
        or record[at + 9] != IPPROTO_UDP
        or _U16.unpack_from(record, at + 6)[0] & 0x3FFF  # MF or a fragment offset
    ):
        return 0
    total: int = _U16.unpack_from(record, at + 2)[0]
    udp_length: int = _U16.unpack_from(record, at + 24)[0]
    if total != len(record) - at or udp_length != total - 20:
        return 0  # Ethernet padding or inconsistent lengths: leave it alone
    return udp_length - 8


def merge_udp_runs(records: list[bytes], max_frame: int = GRO_MAX_BYTES) -> list[bytes]:
    """Batch records (u16 length + vnet hdr + frame) with runs of one UDP flow merged.

    A super-frame holds at most `max_frame` frame bytes: the data plane passes what fits
    one path-MTU datagram, so a lost packet on the underlay costs no more datagrams than a
    coalesced datagram of small frames does.  Returns `records` itself when nothing merged
    (the common case for TCP ACKs)."""
    count = len(records)
    if count < 2:
        return records
    out: list[bytes] = []
    i = 0
    merged_any = False
    limit = min(max_frame, GRO_MAX_BYTES) - (PAYLOAD_AT - VNET_HDR_SIZE)  # payload bytes
    while i < count:
        head = records[i]
        j = i + 1
        payload = _payload_if_candidate(head) if j < count else 0
        if payload:
            size = len(head)
            # Everything but the IP ID (30-31) and IP checksum (36-37) must be equal.
            same_a, same_b, same_c = head[2:30], head[32:36], head[38:52]
            stop = min(count, i + MAX_SEGMENTS, i + limit // payload)
            while j < stop:
                record = records[j]
                if (
                    len(record) != size
                    or record[2:30] != same_a
                    or record[32:36] != same_b
                    or record[38:52] != same_c
                ):
                    break
                j += 1
        if j - i > 1:
            out.append(_super_frame(records, i, j, payload))
            merged_any = True
        else:
            out.append(head)
        i = j
    return out if merged_any else records


def _super_frame(records: list[bytes], start: int, stop: int, payload: int) -> bytes:
    """One batch record for records[start:stop] (a run checked by merge_udp_runs)."""
    head = records[start]
    header = bytearray(head[: LEN + PAYLOAD_AT])
    udp_length = 8 + payload * (stop - start)
    ip_at = LEN + IP_AT
    udp_at = LEN + UDP_AT
    _U16.pack_into(header, 0, PAYLOAD_AT - VNET_HDR_SIZE + udp_length - 8)
    VNET_HDR.pack_into(
        header,
        LEN,
        VNET_F_NEEDS_CSUM,
        VNET_GSO_UDP_L4,
        PAYLOAD_AT - VNET_HDR_SIZE,
        payload,
        CSUM_START,
        UDP_CHECKSUM_OFFSET,
    )
    _U16.pack_into(header, ip_at + 2, 20 + udp_length)
    set_ipv4_checksum(header, ip_at)
    _U16.pack_into(header, udp_at + 4, udp_length)
    pseudo = ipv4_pseudo_sum(header, ip_at, IPPROTO_UDP)
    _U16.pack_into(header, udp_at + 6, fold(pseudo + udp_length))
    body = LEN + PAYLOAD_AT
    return b"".join([header, *(record[body:] for record in records[start:stop])])


def cut_udp_record(record: bytes | memoryview) -> list[bytes]:
    """Cut a GSO_UDP_L4 record (vnet hdr + IPv4 frame) into one record per datagram.

    Each gets NEEDS_CSUM with the folded pseudo-header sum for its own length, like a frame
    from a local socket; see the module docstring.  Raises MalformedDatagram for anything
    this router would not have made (IPv6, IP options, inconsistent lengths)."""
    view = memoryview(record)
    if len(view) <= PAYLOAD_AT:  # (no payload: no datagram to cut)
        raise MalformedDatagram("UDP GSO record too short for its headers")
    _flags, _kind, _hdr_len, gso_size, _start, _offset = VNET_HDR.unpack_from(view)
    if (
        view[IP_AT - 2 : IP_AT + 1] != IPV4_UDP
        or view[IP_AT + 9] != IPPROTO_UDP
        or _U16.unpack_from(view, IP_AT + 6)[0] & 0x3FFF
    ):
        raise MalformedDatagram("UDP GSO record is not an unfragmented IPv4 UDP frame")
    (total,) = _U16.unpack_from(view, IP_AT + 2)
    if total != len(view) - IP_AT or gso_size == 0:
        raise MalformedDatagram("UDP GSO record with inconsistent lengths")
    if len(view) - PAYLOAD_AT > gso_size * MAX_CUT_SEGMENTS:
        raise MalformedDatagram("UDP GSO record with more datagrams than Linux takes")
    header = bytearray(view[:PAYLOAD_AT])
    header[:VNET_HDR_SIZE] = PARTIAL_UDP_VNET
    (ip_id,) = _U16.unpack_from(header, IP_AT + 4)
    pseudo = ipv4_pseudo_sum(header, IP_AT, IPPROTO_UDP)
    out: list[bytes] = []
    end = len(view)
    for index, start in enumerate(range(PAYLOAD_AT, end, gso_size)):
        chunk = min(gso_size, end - start)
        _U16.pack_into(header, IP_AT + 2, 28 + chunk)
        _U16.pack_into(header, IP_AT + 4, (ip_id + index) & 0xFFFF)
        set_ipv4_checksum(header, IP_AT)
        _U16.pack_into(header, UDP_AT + 4, 8 + chunk)
        _U16.pack_into(header, UDP_AT + 6, fold(pseudo + 8 + chunk))
        out.append(bytes(header) + view[start : start + chunk])
    return out
