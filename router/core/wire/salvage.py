"""Salvage: the intact parts of a plain train that lost pieces, as TCP super-frames.

Theory of operation: a TCP super-frame crosses the underlay as one datagram cut into a
train of ~45 pieces (pieces.py).  When one piece is lost the datagram cannot be joined,
and before salvage the whole ~64 KB was lost: at 1 % packet loss a third of all
super-frames, so links fell back to cutting every super-frame into MSS segments in
software (segment mode), which costs the routers ~45 times the Python per super-frame.

A *plain* datagram needs no authentication, so what arrived can still be used.  A plain
super-frame's datagram is laid out as

    header (16) | frames prefix (13) | u16 frame length | virtio_net_hdr (10) | frame

and its first piece holds every header, the Ethernet/IP/TCP headers included.  When a
train is given up with its first piece present, `salvage_train` cuts the bytes that did
arrive — the runs of consecutive pieces — into records of their own, each with the
headers the kernel would have given that part of the stream (sequence number, IP length,
ID and checksum, partial TCP checksum; gso.tcp_slices), and returns one datagram with
the same header and frames prefix that carries those records.  The receiving TCP sees a
hole of about one piece (~1.4 KB) instead of 64 KB, acknowledges around it (SACK) and
gets it retransmitted: the loss a segment-mode link would have shown, at super-frame
cost.

Salvage applies to nothing else: a sealed datagram's tag covers all its bytes (the link
keeps segment mode), and a train that is not one plain frames datagram holding one TCP
super-frame — several records, a relayed body of small frames, a piece header that lies —
is given up as before.  A salvaged datagram is handed to the link's `open` like any other,
so the link still checks its kind and length.
"""

from __future__ import annotations

from pyweave.router.core.wire.data import (
    BODY_FRAMES,
    DATAGRAM_PLAIN,
    ETHERNET_HEADER_SIZE,
    FRAME_LEN,
    FRAME_RECORD_OVERHEAD,
    FRAMES_PREFIX_SIZE,
    HEADER_SIZE,
    VNET_HDR_SIZE,
    MalformedDatagram,
)
from pyweave.router.core.wire.gso import TCP_GSO_TYPES, gso_type, tcp_headers_size, tcp_slices

RECORD_AT = HEADER_SIZE + FRAMES_PREFIX_SIZE  # the u16 frame length of the first record
FRAME_AT = RECORD_AT + FRAME_LEN.size  # the record proper: virtio_net_hdr + frame


def present_runs(have: int, count: int, size: int, total: int) -> list[tuple[int, int]]:
    """The byte ranges [start, stop) of the datagram covered by runs of received pieces."""
    runs = []
    index = 0
    while index < count:
        if not have >> index & 1:
            index += 1
            continue
        first = index
        while index < count and have >> index & 1:
            index += 1
        runs.append((first * size, min(index * size, total)))
    return runs


def salvage_train(data: bytearray, have: int, count: int, size: int) -> bytearray | None:
    """The intact parts of an incomplete plain train as one datagram, or None.

    `data` is the train's datagram as far as it arrived (`len(data)` is its total
    size), `have` the bitmask of its pieces that did.  None when nothing can be
    salvaged: the first piece is missing, the datagram is not a plain frames datagram
    holding exactly one TCP super-frame, or no payload byte arrived."""
    total = len(data)
    if not have & 1 or total < RECORD_AT + FRAME_RECORD_OVERHEAD + ETHERNET_HEADER_SIZE:
        return None
    if data[0] != DATAGRAM_PLAIN or data[HEADER_SIZE] != BODY_FRAMES:
        return None
    (frame_len,) = FRAME_LEN.unpack_from(data, RECORD_AT)
    if RECORD_AT + FRAME_RECORD_OVERHEAD + frame_len != total:
        return None  # not one record filling the datagram
    record = memoryview(data)[FRAME_AT:]
    if gso_type(record) not in TCP_GSO_TYPES:
        return None
    try:
        payload_at = FRAME_AT + VNET_HDR_SIZE + tcp_headers_size(record)
    except MalformedDatagram:
        return None
    if payload_at > min(size, total):
        return None  # the headers outrun the first piece: nothing is known for sure
    ranges = [
        (max(start, payload_at) - payload_at, stop - payload_at)
        for start, stop in present_runs(have, count, size, total)
        if stop > payload_at
    ]
    if not ranges:
        return None
    try:
        records = tcp_slices(record, ranges)
    except MalformedDatagram:
        return None
    out = bytearray(data[:RECORD_AT])
    for piece in records:
        out += FRAME_LEN.pack(len(piece) - VNET_HDR_SIZE)
        out += piece
    # Shorter than the original: every run but the first costs a lost piece (>= 256
    # bytes) and adds one record header and copy of the headers (< 200 bytes).
    out[2:4] = len(out).to_bytes(2, "big")
    return out
