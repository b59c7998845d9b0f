"""Pieces (core/wire/pieces.py): a datagram cut into a train, found whole in a GRO read,
joined back byte for byte; out-of-order, duplicate, forged and crowded-out pieces."""

from __future__ import annotations

import os
import random

import pytest
from pyweave.router.core.wire.data import DATAGRAM_SEALED
from pyweave.router.core.wire.pieces import (
    DATAGRAM_PIECE,
    MAX_PIECES,
    OPEN_TRAINS,
    PIECE,
    PIECE_HEADER_SIZE,
    PieceHeaders,
    PieceJoiner,
    TrainCopier,
    piece_end,
    pieces_fit,
    train_in_read,
)

MAX_DATAGRAM = 1472  # a 1500-byte underlay
SIZE = MAX_DATAGRAM - PIECE_HEADER_SIZE


def cut(datagram: bytes, train: int = 7, receiver: int = 0x1234, size: int = SIZE) -> list[bytes]:
    """The pieces a sender puts on the wire for `datagram` (header + payload each)."""
    buf = bytearray(65536)
    buf[: len(datagram)] = datagram
    view = memoryview(buf)[: len(datagram)]
    headers = PieceHeaders()
    count = headers.fill(receiver, train, size, len(datagram))
    payloads = headers.payloads(view, size, count)
    return [bytes(headers.views[i]) + bytes(payloads[i]) for i in range(count)]


def as_read(pieces: list[bytes]) -> tuple[bytearray, int]:
    """What one recvmsg returns when GRO merged these datagrams: their concatenation."""
    data = b"".join(pieces)
    buf = bytearray(65536)
    buf[: len(data)] = data
    return buf, len(data)


@pytest.mark.parametrize("total", [SIZE + 1, 2 * SIZE, 20000, 60000, 64057, 64700])
def test_a_whole_train_in_one_read_joins_to_the_datagram(total: int) -> None:
    datagram = os.urandom(total)
    pieces = cut(datagram)
    assert len(pieces) == -(-total // SIZE)
    assert all(len(p) == MAX_DATAGRAM for p in pieces[:-1])
    buf, n = as_read(pieces)
    found = train_in_read(buf, 0, n)
    assert found == (len(pieces), SIZE, total)
    joined = TrainCopier(buf, bytearray(65536)).copy(0, *found)
    assert bytes(joined) == datagram


def test_a_train_after_another_datagram_in_the_same_read() -> None:
    other = os.urandom(MAX_DATAGRAM)  # a full-size ordinary datagram merged before it
    datagram = os.urandom(30000)
    buf, n = as_read([other, *cut(datagram)])
    copier = TrainCopier(buf, bytearray(65536))
    found = train_in_read(buf, MAX_DATAGRAM, n)
    assert found is not None
    assert bytes(copier.copy(MAX_DATAGRAM, *found)) == datagram
    # The same copier for the next read, a train at its start (the slices are made anew).
    buf[:] = bytes(len(buf))
    again, n2 = as_read(cut(datagram[:9000]))
    buf[:n2] = again[:n2]
    found2 = train_in_read(buf, 0, n2)
    assert found2 is not None
    assert bytes(copier.copy(0, *found2)) == datagram[:9000]


def test_train_in_read_refuses_what_is_not_one_whole_train() -> None:
    datagram = os.urandom(20000)
    pieces = cut(datagram)
    # The last piece is missing (GRO flushed early): not whole.
    buf, n = as_read(pieces[:-1])
    assert train_in_read(buf, 0, n) is None
    # Two pieces swapped.
    buf, n = as_read([pieces[0], pieces[2], pieces[1], *pieces[3:]])
    assert train_in_read(buf, 0, n) is None
    # A piece of another train in the middle.
    stranger = cut(datagram, train=8)
    buf, n = as_read([*pieces[:3], stranger[3], *pieces[4:]])
    assert train_in_read(buf, 0, n) is None
    # Starting at piece 1.
    buf, n = as_read(pieces[1:])
    assert train_in_read(buf, 0, n) is None
    # Not at the start of a piece.
    buf, n = as_read(pieces)
    assert train_in_read(buf, 1, n) is None


def test_the_joiner_takes_pieces_in_any_order_and_ignores_duplicates() -> None:
    datagram = bytes([DATAGRAM_SEALED]) + os.urandom(49999)  # not salvageable: it waits
    pieces = cut(datagram)
    order = list(range(len(pieces)))
    random.Random(5).shuffle(order)
    joiner = PieceJoiner()
    results = [joiner.add(memoryview(pieces[i])) for i in order[:-1]]
    assert results == [None] * (len(pieces) - 1)
    assert joiner.add(memoryview(pieces[order[0]])) is None  # a duplicate changes nothing
    joined = joiner.add(memoryview(pieces[order[-1]]))
    assert joined is not None and bytes(joined) == datagram
    assert (joiner.joined, joiner.open_trains, joiner.malformed) == (1, 0, 0)


def test_trains_of_two_receivers_with_the_same_number_stay_apart() -> None:
    a, b = os.urandom(5000), os.urandom(5000)
    pa, pb = cut(a, train=1, receiver=1), cut(b, train=1, receiver=2)
    joiner = PieceJoiner()
    out = [joiner.add(memoryview(p)) for pair in zip(pa, pb, strict=True) for p in pair]
    done = [bytes(x) for x in out if x is not None]
    assert done == [a, b]


def _forge(piece: bytes, **fields: int) -> bytes:
    names = ["kind", "index", "count", "reserved", "receiver", "train", "size", "total"]
    values = dict(zip(names, PIECE.unpack_from(piece), strict=True))
    values.update(fields)
    return PIECE.pack(*(values[name] for name in names)) + piece[PIECE_HEADER_SIZE:]


@pytest.mark.parametrize(
    "forgery",
    [
        {"count": 1},
        {"count": MAX_PIECES + 1},
        {"index": 9},  # beyond count
        {"reserved": 1},
        {"size": 100},  # below the minimum piece size
        {"total": 100},  # smaller than the pieces announce
        {"total": 60000},  # larger than count pieces can carry
    ],
)
def test_the_joiner_counts_and_drops_malformed_pieces(forgery: dict[str, int]) -> None:
    pieces = cut(os.urandom(5000))  # 4 pieces
    joiner = PieceJoiner()
    assert joiner.add(memoryview(_forge(pieces[0], **forgery))) is None
    assert joiner.malformed == 1 and joiner.open_trains == 0


def test_the_joiner_drops_a_piece_of_the_wrong_length_or_layout() -> None:
    pieces = cut(os.urandom(5000))
    joiner = PieceJoiner()
    assert joiner.add(memoryview(pieces[0][:-1])) is None  # truncated
    assert joiner.add(memoryview(pieces[0][:PIECE_HEADER_SIZE])) is None  # header only
    assert joiner.malformed == 2
    assert joiner.add(memoryview(pieces[0])) is None
    # Same train, another piece size: refused, the train stays as it was.
    other = cut(os.urandom(5000), size=1000)
    assert joiner.add(memoryview(other[1])) is None
    assert joiner.malformed == 3
    for piece in pieces[1:-1]:
        assert joiner.add(memoryview(piece)) is None
    assert joiner.add(memoryview(pieces[-1])) is not None


def test_lost_pieces_hold_bounded_memory() -> None:
    """Trains of many senders that never complete are given up once OPEN_TRAINS newer
    ones started."""
    joiner = PieceJoiner()
    datagrams = [os.urandom(3000) for _ in range(3 * OPEN_TRAINS)]
    for sender, datagram in enumerate(datagrams):
        assert joiner.add(memoryview(cut(datagram, receiver=sender)[0])) is None
        assert joiner.open_trains <= OPEN_TRAINS
    assert joiner.given_up == 2 * OPEN_TRAINS
    # The newest train still completes; one given up does not come back from a late piece.
    newest = len(datagrams) - 1
    rest = cut(datagrams[newest], receiver=newest)[1:]
    assert joiner.add(memoryview(rest[0])) is None
    joined = joiner.add(memoryview(rest[1]))
    assert joined is not None and bytes(joined) == datagrams[newest]
    late = cut(datagrams[0], receiver=0)
    assert joiner.add(memoryview(late[1])) is None and joiner.add(memoryview(late[2])) is None


@pytest.mark.parametrize("first", [7, 0xFFFFFFFE], ids=["train 7", "wrapping"])
def test_a_train_two_later_of_the_same_sender_ends_the_older_ones(first: int) -> None:
    """A train's pieces arrive in order, but two trains of one sender may interleave (two
    of its threads, a multi-queue card): a piece of the next train leaves an open train
    alone, a piece of the one after ends it.  Other senders' trains stay; a late piece
    of an older train does not end a newer one; a datagram that is no piece ends none."""
    trains = [(first + k) & 0xFFFFFFFF for k in range(3)]
    cuts = [cut(os.urandom(5000), train=t, receiver=5) for t in trains]
    other = cut(os.urandom(5000), train=first, receiver=6)
    joiner = PieceJoiner()
    assert joiner.add(memoryview(cuts[0][0])) is None
    assert joiner.add(memoryview(other[0])) is None
    assert joiner.add(memoryview(cuts[1][0])) is None  # interleaved: both stay
    assert joiner.open_trains == 3 and joiner.given_up == 0
    assert not joiner.supersede(5, trains[1])
    assert joiner.add(memoryview(cuts[0][1])) is None
    assert joiner.add(memoryview(cuts[2][0])) is None  # two later: the first goes
    assert joiner.given_up == 1 and joiner.open_trains == 3
    assert joiner.add(memoryview(cuts[0][2])) is None  # late: a train of its own again ...
    assert joiner.open_trains == 4
    assert not joiner.supersede(5, trains[0])  # ... which a piece of its own number keeps
    for piece in cuts[2][1:]:
        joined = joiner.add(memoryview(piece))
    assert joined is not None
    assert joiner.supersede(5, (trains[2] + 2) & 0xFFFFFFFF)  # the rest of 5's trains
    assert joiner.open_trains == 1 and joiner.given_up == 3
    assert not joiner.supersede(6, first)


def test_one_senders_trains_crowd_each_other_out_too() -> None:
    """Trains of one sender that no later piece ends (numbers counting down: a forger's,
    or late pieces): at most OPEN_TRAINS of them are kept."""
    joiner = PieceJoiner()
    for train in range(1000, 1000 - 3 * OPEN_TRAINS, -1):
        joiner.add(memoryview(cut(os.urandom(3000), train=train, receiver=5)[0]))
        assert joiner.open_trains <= OPEN_TRAINS
    assert joiner.open_trains == OPEN_TRAINS and joiner.given_up == 2 * OPEN_TRAINS


def test_pieces_fit_the_udp_segment_limits() -> None:
    assert pieces_fit(64057, MAX_DATAGRAM)  # the largest super-frame (gso_max_size 64000)
    assert not pieces_fit(65507, MAX_DATAGRAM)  # its train would outgrow one GRO skb
    assert pieces_fit(64057, 9000 - 28)
    assert not pieces_fit(65507, 576 - 28)  # more than MAX_PIECES pieces
    assert not pieces_fit(70000, MAX_DATAGRAM)
    assert not pieces_fit(2000, 200)  # pieces too small to be worth it


def test_headers_are_the_documented_layout() -> None:
    pieces = cut(os.urandom(3000), train=0xDEADBEEF, receiver=0xABCD)
    kinds = [PIECE.unpack_from(p) for p in pieces]
    assert kinds == [(DATAGRAM_PIECE, i, 3, 0, 0xABCD, 0xDEADBEEF, SIZE, 3000) for i in range(3)]


def test_piece_end_follows_the_header_and_stays_in_the_read() -> None:
    pieces = cut(os.urandom(3000))  # 1456 + 1456 + 88
    buf, n = as_read(pieces[1:])
    assert piece_end(buf, 0, n) == MAX_DATAGRAM
    assert piece_end(buf, MAX_DATAGRAM, n) == n == MAX_DATAGRAM + PIECE_HEADER_SIZE + 88
    assert piece_end(buf, 0, 100) == 100  # a truncated read: no further than its end
    assert piece_end(buf, n - 4, n) == n  # not even a whole header


def test_a_train_of_more_than_max_pieces_is_never_taken_whole() -> None:
    """The count byte allows 255 pieces; more than MAX_PIECES are refused whole (the copier
    has slices for MAX_PIECES) and piece by piece (counted as malformed)."""
    size, count = 256, MAX_PIECES + 1
    datagram = os.urandom(count * size)
    pieces = [
        PIECE.pack(DATAGRAM_PIECE, i, count, 0, 1, 1, size, len(datagram))
        + datagram[i * size : (i + 1) * size]
        for i in range(count)
    ]
    buf, n = as_read(pieces)
    assert train_in_read(buf, 0, n) is None
    joiner = PieceJoiner()
    assert joiner.add(memoryview(pieces[0])) is None and joiner.malformed == 1
