"""Salvage (core/wire/salvage.py): a plain train that lost pieces still delivers the bytes
that arrived, as valid TCP frames at the right sequence numbers; nothing else is salvaged.

The oracle is the original super-frame: every salvaged record must be a frame with a true
IP length and header checksum and a partial TCP checksum that finishes to the real one,
and its payload must be the original's bytes at its sequence number."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyweave.router.core.link import PlainLink
from pyweave.router.core.wire import data
from pyweave.router.core.wire.gso import segment_record
from pyweave.router.core.wire.pieces import PIECE_HEADER_SIZE, PieceJoiner
from pyweave.router.core.wire.salvage import present_runs, salvage_train
from test_pieces import SIZE, cut
from test_wire_gso import _fold, _super_frame, _words

MSS = 1349
SOURCE, DESTINATION = b"\x0a" * 6, b"\x0b" * 6
SEQ0 = 1000  # the super-frame's sequence number (test_wire_gso._super_frame)


def _datagram(record: bytes, kind: int = data.DATAGRAM_PLAIN) -> bytes:
    """A plain frames datagram holding one record, as a sender's TAP thread builds it."""
    body = bytes([data.BODY_FRAMES]) + SOURCE + DESTINATION
    body += struct.pack("!H", len(record) - data.VNET_HDR_SIZE) + record
    return data.HEADER.pack(kind, 0, data.HEADER_SIZE + len(body), 77, 5) + body


def _records(datagram: bytes | bytearray) -> list[bytes]:
    at, out = data.HEADER_SIZE + data.FRAMES_PREFIX_SIZE, []
    while at < len(datagram):
        (length,) = struct.unpack_from("!H", datagram, at)
        out.append(bytes(datagram[at + 2 : at + data.FRAME_RECORD_OVERHEAD + length]))
        at += data.FRAME_RECORD_OVERHEAD + length
    assert at == len(datagram)
    return out


def _check_frame(record: bytes, v6: bool) -> tuple[int, int, bytes]:
    """A valid record: lengths, IPv4 header checksum, a partial TCP checksum that finishes
    to the real one, GSO only above one MSS.  Returns (seq, TCP flags, payload)."""
    flags, kind, _, gso_size, start, offset = data.VNET_HDR.unpack_from(record)
    frame = record[10:]
    l4 = 54 if v6 else 34
    tcp = frame[l4:]
    payload = tcp[20:]
    assert (flags, start, offset) == (data.VNET_F_NEEDS_CSUM, l4, 16)
    if len(payload) > MSS:
        assert (kind, gso_size) == (data.VNET_GSO_TCPV6 if v6 else data.VNET_GSO_TCPV4, MSS)
    else:
        assert kind == data.VNET_GSO_NONE
    if v6:
        assert struct.unpack_from("!H", frame, 18)[0] == len(tcp)
        pseudo = _words(frame[22:54]) + 6 + len(tcp)
    else:
        assert struct.unpack_from("!H", frame, 16)[0] == len(frame) - 14
        assert _fold(_words(frame[14:34])) == 0xFFFF
        pseudo = _words(frame[26:34]) + 6 + len(tcp)
    zeroed = tcp[:16] + b"\0\0" + tcp[18:]
    assert ~_fold(_words(tcp)) & 0xFFFF == ~_fold(pseudo + _words(zeroed)) & 0xFFFF
    return struct.unpack_from("!I", tcp, 4)[0], tcp[13], payload


def _lose(datagram: bytes, lost: set[int]) -> list[bytearray]:
    """Feed the pieces but `lost` to a joiner: the salvaged datagrams.  The train ends at
    its last piece, or, if that one is lost, at a piece of the train after the next."""
    joiner = PieceJoiner()
    pieces = cut(datagram, train=7, receiver=77)
    last = len(pieces) - 1
    for index, piece in enumerate(pieces):
        if index not in lost:
            assert joiner.add(memoryview(piece)) is None
            assert bool(joiner.salvaged) == (index == last)
    if last in lost:
        assert joiner.open_trains == 1 and not joiner.salvaged
        assert joiner.add(memoryview(cut(os.urandom(3000), train=9, receiver=77)[1])) is None
    assert joiner.given_up == 1 and joiner.open_trains == (1 if last in lost else 0)
    return joiner.salvaged


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize(
    "lost", [{5}, {1}, {43}, {2, 3}, {4, 9, 30}, set(range(1, 44, 2))], ids=str
)
def test_the_intact_bytes_arrive_at_their_sequence_numbers(v6: bool, lost: set[int]) -> None:
    payload = os.urandom(63000)
    record = _super_frame(payload, MSS, v6, flags=0x18 | 0x80)  # PSH, CWR
    datagram = _datagram(record)
    (saved,) = _lose(datagram, lost)
    assert struct.unpack_from("!H", saved, 2)[0] == len(saved) < len(datagram)
    assert (
        saved[: data.HEADER_SIZE + data.FRAMES_PREFIX_SIZE]
        == bytearray(data.HEADER.pack(data.DATAGRAM_PLAIN, 0, len(saved), 77, 5))
        + bytes([data.BODY_FRAMES])
        + SOURCE
        + DESTINATION
    )
    assert PlainLink(1, ("192.0.2.1", 6783), 77, 9, 1472).open(saved) is not None
    headers_at = data.HEADER_SIZE + data.FRAMES_PREFIX_SIZE + data.FRAME_RECORD_OVERHEAD
    payload_at = headers_at + (74 if v6 else 54)
    expected = [
        (max(start, payload_at) - payload_at, stop - payload_at)
        for start, stop in present_runs(
            sum(1 << i for i in range(44) if i not in lost), 44, SIZE, len(datagram)
        )
    ]
    records = _records(saved)
    assert len(records) == len(expected)
    for (start, stop), piece in zip(expected, records, strict=True):
        seq, flags, got = _check_frame(piece, v6)
        assert seq == SEQ0 + start
        assert got == payload[start:stop]
        assert flags & 0x08 == (0x08 if stop == len(payload) else 0)  # PSH on the last only
        assert flags & 0x80 == (0x80 if start == 0 else 0)  # CWR on the first only
        assert piece[:10] == record[:10] or len(got) <= MSS  # the rest of the vnet hdr kept


def test_each_part_gets_the_ip_id_of_the_kernel_segment_it_starts_in() -> None:
    payload = os.urandom(20000)
    record = _super_frame(payload, MSS, False)
    kernel_ids = [struct.unpack_from("!H", r, 10 + 18)[0] for r in segment_record(record)]
    (saved,) = _lose(_datagram(record), {3})
    parts = _records(saved)
    assert len(parts) == 2
    for piece in parts:
        seq, _flags, _payload = _check_frame(piece, False)
        (ip_id,) = struct.unpack_from("!H", piece, 10 + 18)
        assert ip_id == kernel_ids[(seq - SEQ0) // MSS]


def test_fin_stays_on_the_part_that_ends_the_super_frame_only() -> None:
    payload = os.urandom(9000)
    (saved,) = _lose(_datagram(_super_frame(payload, MSS, False, flags=0x19)), {2})
    flags = [_check_frame(r, False)[1] for r in _records(saved)]
    assert flags == [0x10, 0x19]


@pytest.mark.parametrize(
    "why",
    ["first piece lost", "sealed", "two records", "not TCP GSO", "headers past the first piece"],
)
def test_nothing_is_salvaged_that_cannot_be_trusted(why: str) -> None:
    record = _super_frame(os.urandom(30000), MSS, False)
    datagram, size = _datagram(record), SIZE
    if why == "sealed":
        datagram = _datagram(record, kind=data.DATAGRAM_SEALED)
    elif why == "two records":
        small = _super_frame(b"x" * 100, MSS, False)
        body = datagram[data.HEADER_SIZE :] + struct.pack("!H", len(small) - 10) + small
        datagram = data.HEADER.pack(2, 0, data.HEADER_SIZE + len(body), 77, 5) + body
    elif why == "not TCP GSO":
        datagram = _datagram(record[:1] + bytes([data.VNET_GSO_NONE]) + record[2:])
    elif why == "headers past the first piece":
        size = 64  # the Ethernet/IP/TCP headers end in the second piece
    count = -(-len(datagram) // size)
    have = ((1 << count) - 1) & ~(1 << 4)
    if why == "first piece lost":
        have &= ~1
    assert salvage_train(bytearray(datagram), have, count, size) is None


def test_a_sealed_train_is_given_up_and_nothing_salvaged() -> None:
    datagram = _datagram(_super_frame(os.urandom(30000), MSS, False), data.DATAGRAM_SEALED)
    joiner = PieceJoiner()
    pieces = cut(datagram, receiver=77)
    for piece in pieces[:3] + pieces[4:]:
        joiner.add(memoryview(piece))
    assert joiner.open_trains == 1  # a sealed train waits for a reordered piece ...
    assert joiner.supersede(77, 9) and joiner.salvaged == [] and joiner.given_up == 1
    assert joiner.salvaged_trains == 0


def test_salvage_off_gives_up_as_before() -> None:
    joiner = PieceJoiner(salvage=False)
    pieces = cut(_datagram(_super_frame(os.urandom(30000), MSS, False)), receiver=77)
    for piece in pieces[:3] + pieces[4:]:
        joiner.add(memoryview(piece))
    assert joiner.open_trains == 1 and joiner.salvaged == []  # not given up at its end
    assert joiner.supersede(77, 9) and joiner.salvaged == [] and joiner.given_up == 1


def test_runs_of_present_pieces() -> None:
    assert present_runs(0b1011, 4, 100, 350) == [(0, 200), (300, 350)]
    assert present_runs(0b0110, 4, 100, 350) == [(100, 300)]
    assert present_runs(0, 4, 100, 350) == []
    assert PIECE_HEADER_SIZE == 16


def test_a_piece_reordered_behind_the_last_of_a_plain_train_is_dropped_as_late() -> None:
    payload = os.urandom(6000)
    pieces = cut(_datagram(_super_frame(payload, MSS, False)), receiver=77)
    assert len(pieces) == 5
    joiner = PieceJoiner()
    for index in (0, 1, 3, 4):
        assert joiner.add(memoryview(pieces[index])) is None
    (saved,) = joiner.salvaged
    assert [_check_frame(r, False)[0] - SEQ0 for r in _records(saved)] == [0, 3 * SIZE - 95]
    assert joiner.add(memoryview(pieces[2])) is None  # late: its train is over
    assert (joiner.open_trains, joiner.late, joiner.given_up) == (0, 1, 1)


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    lost=st.sets(st.integers(1, 21), max_size=5),
    v6=st.booleans(),
)
def test_damaged_headers_never_raise_and_never_grow(
    flips: list[tuple[int, int]], lost: set[int], v6: bool
) -> None:
    """Whatever the bytes of the first piece say (plain pieces are not authenticated),
    the joiner salvages without an exception, and never more bytes than arrived."""
    datagram = bytearray(_datagram(_super_frame(os.urandom(30000), MSS, v6)))
    for at, value in flips:
        datagram[at] = value
    joiner = PieceJoiner()
    for index, piece in enumerate(cut(bytes(datagram), receiver=77)):
        if index not in lost:
            joiner.add(memoryview(piece))
    joiner.supersede(77, 9)
    assert joiner.open_trains == 0
    for saved in joiner.salvaged:
        assert len(saved) < len(datagram)
        _records(saved)  # the records fill the datagram exactly
