"""Byte layouts of UDP data-plane datagrams.

Theory of operation: every datagram starts with a fixed 16-byte header that is sent in the
clear (and, when encrypted, authenticated as AEAD associated data):

    0  u8   message type      (DATAGRAM_PLAIN or DATAGRAM_SEALED)
    1  u8   key epoch         (which data key sealed it; 0 when plain)
    2  u16  length            (of the whole datagram; 0: up to the end of the read)
    4  u32  receiver index    (chosen by the receiving router for this connection)
    8  u64  counter           (per-connection sender counter; the AEAD nonce)

The receiver index lets the receiver find the connection in one dict lookup, whatever the
source address.  The length lets a receiver split one read into datagrams when the host's
GRO merged several of the same flow (the data socket has UDP_GRO on, for pieces:
core/wire/pieces.py) without asking the kernel where they begin.  After the header comes
the *body* (sealed or plain):

    0  u8   body kind         (BODY_FRAMES, BODY_HEARTBEAT, BODY_HEARTBEAT_ACK)
    frames body:
    1  6B   source peer       (the router whose TAP the frames came from)
    7  6B   destination peer  (0 = broadcast along the source's broadcast tree)
    13 ...  frame records: u16 frame length, 10-byte virtio_net_hdr, Ethernet frame

Frame records are packed back to back, so several small frames share one datagram.  The
virtio_net_hdr travels with each frame so that offloaded super-frames (partial checksums,
GSO) are written back to the far TAP with the metadata that makes them valid.  It is
carried in little-endian order (the TAP's legacy order on every little-endian host).

Heartbeats carry, besides the sender's timestamp, the *underlay loss* the sender measured
on the datagrams it received from us over the last interval (parts per million, or
LOSS_UNKNOWN); the data plane uses it to choose between super-frame datagrams and
path-MTU-sized segments (see docs/protocol.md, "Loss-aware segmentation").
"""

from __future__ import annotations

import struct

DATAGRAM_PLAIN = 0x02
DATAGRAM_SEALED = 0x01

HEADER = struct.Struct("!BBHIQ")
HEADER_SIZE = HEADER.size  # 16

BODY_FRAMES = 1
BODY_HEARTBEAT = 2
BODY_HEARTBEAT_ACK = 3

PEER_FIELD_SIZE = 6
FRAMES_PREFIX_SIZE = 1 + 2 * PEER_FIELD_SIZE  # kind + source + destination = 13
VNET_HDR_SIZE = 10
FRAME_LEN = struct.Struct("!H")
FRAME_RECORD_OVERHEAD = FRAME_LEN.size + VNET_HDR_SIZE  # 12
AEAD_TAG_SIZE = 16
ETHERNET_HEADER_SIZE = 14
# What the wire modules (gso, gro, uso) read inside the frames they cut and merge.
ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_CHECKSUM_OFFSET = 16  # where the checksum sits in a TCP header ...
UDP_CHECKSUM_OFFSET = 6  # ... and in a UDP header (vnet hdr csum_offset)
BROADCAST_PEER = 0

MAX_UDP_PAYLOAD = 65507
MAX_FRAME_LEN = 0xFFFF

HEARTBEAT = struct.Struct("!BdI")  # kind, sender's timestamp (echoed in the ack), loss ppm
HEARTBEAT_V1 = struct.Struct("!Bd")  # older routers: no loss report
LOSS_UNKNOWN = 0xFFFFFFFF

# virtio_net_hdr (struct virtio_net_hdr, legacy little-endian layout)
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_off
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_TCPV6 = 4
VNET_GSO_UDP_L4 = 5  # Linux >= 6.2 accepts it on a TAP write (core/wire/uso.py)
VNET_GSO_ECN = 0x80


class MalformedDatagram(ValueError):
    """A datagram or body that does not follow the layout above."""


def push_header(kind: int, epoch: int, receiver_index: int, counter: int, length: int = 0) -> bytes:
    return HEADER.pack(kind, epoch, length, receiver_index, counter)


def pull_header(datagram: bytes | memoryview) -> tuple[int, int, int, int]:
    """Return (kind, epoch, receiver_index, counter)."""
    if len(datagram) < HEADER_SIZE:
        raise MalformedDatagram(f"datagram of {len(datagram)} bytes is shorter than a header")
    kind, epoch, _length, receiver_index, counter = HEADER.unpack_from(datagram)
    return kind, epoch, receiver_index, counter


FRAMES_PREFIX = struct.Struct("!B6s6s")


def push_frames_prefix_into(buf: bytearray, offset: int, source: bytes, destination: int) -> None:
    """Write a frames prefix into buf (source already as 6 bytes: the hot path reuses it)."""
    FRAMES_PREFIX.pack_into(buf, offset, BODY_FRAMES, source, destination.to_bytes(6, "big"))


def push_frames_prefix(source: int, destination: int) -> bytes:
    return (
        bytes([BODY_FRAMES])
        + source.to_bytes(PEER_FIELD_SIZE, "big")
        + destination.to_bytes(PEER_FIELD_SIZE, "big")
    )


def pull_frames_prefix(body: bytes | memoryview) -> tuple[int, int]:
    """Return (source peer, destination peer) of a frames body."""
    if len(body) < FRAMES_PREFIX_SIZE or body[0] != BODY_FRAMES:
        raise MalformedDatagram("not a frames body")
    source = int.from_bytes(body[1:7], "big")
    destination = int.from_bytes(body[7:13], "big")
    return source, destination


def push_frame_record(frame_with_vnet_hdr: bytes | memoryview) -> bytes:
    """One record: u16 length of the Ethernet frame, then vnet header + frame."""
    frame_len = len(frame_with_vnet_hdr) - VNET_HDR_SIZE
    if frame_len < ETHERNET_HEADER_SIZE or frame_len > MAX_FRAME_LEN:
        raise MalformedDatagram(f"frame of {frame_len} bytes cannot be carried")
    return FRAME_LEN.pack(frame_len) + bytes(frame_with_vnet_hdr)


def pull_frame_records(body: memoryview, offset: int = FRAMES_PREFIX_SIZE) -> list[memoryview]:
    """Split the records of a frames body into (vnet header + frame) views."""
    records: list[memoryview] = []
    end = len(body)
    while offset < end:
        if offset + FRAME_RECORD_OVERHEAD > end:
            raise MalformedDatagram("truncated frame record header")
        (frame_len,) = FRAME_LEN.unpack_from(body, offset)
        start = offset + FRAME_LEN.size
        stop = start + VNET_HDR_SIZE + frame_len
        if frame_len < ETHERNET_HEADER_SIZE or stop > end:
            raise MalformedDatagram(f"frame record of {frame_len} bytes overruns the datagram")
        records.append(body[start:stop])
        offset = stop
    return records


def push_heartbeat(kind: int, timestamp: float, loss_ppm: int = LOSS_UNKNOWN) -> bytes:
    return HEARTBEAT.pack(kind, timestamp, loss_ppm)


def pull_heartbeat(body: bytes | memoryview) -> tuple[int, float, int]:
    """Return (kind, timestamp, loss ppm); a v1 heartbeat reports LOSS_UNKNOWN."""
    if len(body) not in (HEARTBEAT.size, HEARTBEAT_V1.size) or body[0] not in (
        BODY_HEARTBEAT,
        BODY_HEARTBEAT_ACK,
    ):
        raise MalformedDatagram("malformed heartbeat")
    if len(body) == HEARTBEAT_V1.size:
        kind, timestamp = HEARTBEAT_V1.unpack_from(body)
        return kind, timestamp, LOSS_UNKNOWN
    kind, timestamp, loss = HEARTBEAT.unpack_from(body)
    return kind, timestamp, loss


UDP_IP_HEADERS = 20 + 8  # IPv4 + UDP: what the underlay adds to every datagram
MIN_OVERLAY_MTU = 576


def overlay_mtu(configured: int | None, underlay_mtu: int) -> int:
    """The container MTU: `configured` (WEAVE_MTU / --mtu) when given, else the largest
    whose frames fit one unfragmented underlay datagram, sealed (1401 on a 1500 underlay)."""
    if configured is not None:
        return configured
    return max(MIN_OVERLAY_MTU, max_overlay_mtu(underlay_mtu))


def max_overlay_mtu(underlay_mtu: int, ipv6_underlay: bool = False) -> int:
    """The largest container MTU whose frames fit one unfragmented underlay datagram."""
    outer = (40 if ipv6_underlay else 20) + 8
    overhead = (
        outer
        + HEADER_SIZE
        + AEAD_TAG_SIZE
        + FRAMES_PREFIX_SIZE
        + FRAME_RECORD_OVERHEAD
        + ETHERNET_HEADER_SIZE
    )
    return underlay_mtu - overhead
