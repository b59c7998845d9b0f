"""Pieces: one large datagram carried as a train of path-MTU-sized UDP datagrams.

Theory of operation: a sealed TCP super-frame is one datagram of up to 64 KB.  Sent as it
is, the kernel cuts it into ~45 IP fragments, and the receiving host runs each fragment
through IP input, a route lookup and the reassembly queue; fragments are never merged by
GRO, and a lost one leaves a half-built datagram in the host's fragment memory.  Instead,
the sender cuts the datagram into *pieces* that are ordinary UDP datagrams of one flow: all
of them go to the kernel in one `sendmsg` with UDP_SEGMENT, and the receiving host's GRO
merges them back into one read of the socket (UDP_GRO), where the receiver joins them into
the original datagram, which is then opened (authenticated) like any other.  Measured in
the lab: the kernel work per byte is about 40 % lower than with IP fragments.

Every piece starts with a 16-byte header, in the clear and not authenticated (the joined
datagram is; a forged piece can only make its train fail to open):

    0  u8   DATAGRAM_PIECE
    1  u8   index          (0 .. count-1)
    2  u8   count          (2 .. MAX_PIECES)
    3  u8   reserved       (0)
    4  u32  receiver index (as in every datagram: which link)
    8  u32  train          (the sender's number of the split datagram, per link)
    12 u16  piece size     (payload bytes of every piece but the last)
    14 u16  total          (bytes of the joined datagram)

Piece `index` carries bytes [index * size, min((index + 1) * size, total)) of the
datagram.  `PieceJoiner` keeps the trains that arrive out of one read (a GRO merge cut
short, pieces one by one on a host without GRO, reordering): a few per receiver, the
oldest given up when more start, so a lossy or hostile sender can hold only bounded memory.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from itertools import repeat
from operator import setitem
from typing import cast

from pyweave.router.core.wire.data import DATAGRAM_PLAIN
from pyweave.router.core.wire.salvage import salvage_train

DATAGRAM_PIECE = 0x03
PIECE = struct.Struct("!BBBBIIHH")
PIECE_HEADER_SIZE = PIECE.size  # 16
MAX_PIECES = 64  # UDP_SEGMENT's limit on older kernels (UDP_MAX_SEGMENTS)
MIN_PIECE_SIZE = 256
MAX_TOTAL = 0xFFFF
TRAIN_MAX = 0xFFFF - 20 - 8  # the largest IPv4 UDP payload: one UDP_SEGMENT send, one GRO skb
OPEN_TRAINS = 8  # trains being joined at once (all receivers together)
TRAIN_MASK = 0xFFFFFFFF
TRAIN_HALF = 1 << 31  # train numbers wrap: a is before b when 0 < b - a < 2**31
INDEXES = bytes(range(256))
CUT_CACHE = 64  # buffers whose piece views are kept (one per sealed link, one per thread)
_WHOLE = slice(None)
_ASSIGN = cast(Callable[[memoryview, slice, memoryview], None], setitem)  # target[:] = source


def piece_count(total: int, size: int) -> int:
    return -(-total // size)


def pieces_fit(total: int, max_datagram: int) -> bool:
    """True if a datagram of `total` bytes can travel as pieces of max_datagram bytes.

    The whole train must also fit one UDP_SEGMENT send and one GRO skb (TRAIN_MAX bytes of
    UDP payload): a train that GRO must cut in two arrives in two reads and is joined
    piece by piece, far slower (the TAP's gso_max_size is chosen to stay below)."""
    size = max_datagram - PIECE_HEADER_SIZE
    if size < MIN_PIECE_SIZE or total > MAX_TOTAL:
        return False
    count = piece_count(total, size)
    return count <= MAX_PIECES and total + count * PIECE_HEADER_SIZE <= TRAIN_MAX


class PieceHeaders:
    """The headers of one train, written with a handful of C-level operations.

    `fill` packs the first header, repeats it and patches the index bytes; `views[i]` is
    piece i's 16 bytes, ready for a scatter-gather `sendmsg`.  `payloads` cuts a datagram
    into its pieces' payloads from views made once per (buffer, piece size): the sender's
    datagrams always start at the beginning of one of a few long-lived buffers."""

    def __init__(self) -> None:
        self.block = bytearray(PIECE_HEADER_SIZE * MAX_PIECES)
        view = memoryview(self.block)
        self.views = [
            view[i * PIECE_HEADER_SIZE : (i + 1) * PIECE_HEADER_SIZE] for i in range(MAX_PIECES)
        ]
        self._cuts: dict[tuple[int, int], tuple[object, list[memoryview]]] = {}

    def payloads(self, datagram: memoryview, size: int, count: int) -> list[memoryview]:
        """The payloads of a train: datagram (which starts its buffer) cut every `size`."""
        base = datagram.obj
        key = (id(base), size)
        cut = self._cuts.get(key)
        if cut is None or cut[0] is not base:
            if len(self._cuts) >= CUT_CACHE:
                self._cuts.clear()
            whole = memoryview(base).cast("B")
            full = [whole[at : at + size] for at in range(0, len(whole) - size + 1, size)]
            cut = self._cuts[key] = (base, full[: MAX_PIECES - 1])
        last_at = (count - 1) * size
        return [*cut[1][: count - 1], datagram[last_at:]]

    def fill(self, receiver_index: int, train: int, size: int, total: int) -> int:
        """Write the headers of a train; returns its piece count."""
        count = piece_count(total, size)
        block = self.block
        PIECE.pack_into(block, 0, DATAGRAM_PIECE, 0, count, 0, receiver_index, train, size, total)
        end = count * PIECE_HEADER_SIZE
        block[PIECE_HEADER_SIZE:end] = block[:PIECE_HEADER_SIZE] * (count - 1)
        block[1:end:PIECE_HEADER_SIZE] = INDEXES[:count]
        return count


def piece_end(buf: bytearray, start: int, end: int) -> int:
    """Where the piece at buf[start:] ends, from its header (clamped to the read's end)."""
    if start + PIECE_HEADER_SIZE > end:
        return end
    fields: tuple[int, ...] = PIECE.unpack_from(buf, start)
    index, count, size, total = fields[1], fields[2], fields[6], fields[7]
    payload = size if index + 1 < count else total - (count - 1) * size
    return min(end, start + PIECE_HEADER_SIZE + max(payload, 1))


def train_in_read(buf: bytearray, start: int, end: int) -> tuple[int, int, int] | None:
    """Whether the read buf[start:end] holds a whole train from `start`, piece 0 first.

    Returns (count, piece size, total) when pieces 0..count-1 of one train follow each
    other from `start` with exactly the layout their headers announce (each piece but the
    last `PIECE_HEADER_SIZE + size` bytes long); None otherwise."""
    if start + PIECE_HEADER_SIZE > end:
        return None
    index, count, reserved, _receiver, _train, size, total = PIECE.unpack_from(buf, start)[1:]
    if index or reserved or not 2 <= count <= MAX_PIECES or size < MIN_PIECE_SIZE:
        return None
    stride = PIECE_HEADER_SIZE + size
    last_at = start + (count - 1) * stride
    if last_at + PIECE_HEADER_SIZE + total - (count - 1) * size > end:
        return None
    if not (count - 1) * size < total <= count * size:
        return None
    headers_end = last_at + PIECE_HEADER_SIZE
    # The same kind and train in every header (the datagrams of one GRO read come from one
    # sender), and indexes 0..count-1: one C-level comparison per column of bytes.
    for field in (0, 8, 9, 10, 11):
        at = start + field
        if buf[at:headers_end:stride] != buf[at : at + 1] * count:
            return None
    if buf[start + 1 : headers_end : stride] != INDEXES[:count]:
        return None
    return count, size, total


class TrainCopier:
    """Copies the payloads of a whole train from a read buffer into one contiguous buffer.

    The slices for a given (start, stride, piece size) are made once; copying a train is
    then one `map` over them, with no Python bytecode per piece."""

    def __init__(self, source: bytearray, target: bytearray) -> None:
        self.source = memoryview(source)
        self.target = memoryview(target)
        self._plan: tuple[int, int, int] = (-1, -1, -1)
        self._sources: list[memoryview] = []
        self._targets: list[memoryview] = []

    def copy(self, start: int, count: int, size: int, total: int) -> memoryview:
        """Join the train at source[start:] (see train_in_read); returns target[:total]."""
        stride = PIECE_HEADER_SIZE + size
        if self._plan != (start, stride, size):
            self._plan = (start, stride, size)
            first = start + PIECE_HEADER_SIZE
            last = min(MAX_PIECES - 1, (len(self.source) - first - size) // stride + 1)
            self._sources = [
                self.source[first + k * stride : first + k * stride + size] for k in range(last)
            ]
            self._targets = [
                self.target[k * size : (k + 1) * size]
                for k in range(min(last, len(self.target) // size))
            ]
        full = count - 1
        deque(map(_ASSIGN, self._targets[:full], repeat(_WHOLE), self._sources[:full]), 0)
        last_at = full * size
        src = start + PIECE_HEADER_SIZE + full * stride
        self.target[last_at:total] = self.source[src : src + total - last_at]
        return self.target[:total]


class _Train:
    __slots__ = ("count", "data", "have", "missing", "size")

    def __init__(self, size: int, total: int, count: int) -> None:
        self.data = bytearray(total)
        self.size = size
        self.count = count
        self.have = 0  # bitmask of the pieces received
        self.missing = count


class PieceJoiner:
    """Joins pieces that did not arrive as one whole train in one read.

    A train's pieces leave in one `sendmsg` and arrive in order, but two trains of one
    sender (from two of its threads) may interleave on a multi-queue card.  So a train is
    given up when a piece of a train at least two numbers later arrives from the same
    sender (`supersede`), or when a ninth train starts (the oldest goes).  A train that
    can be salvaged — plain, its first piece here — is also given up when its last piece
    arrives with others missing: they were lost (or reordered behind it: then they are
    dropped as late, and TCP sends them again).  With `salvage` on, the intact parts of a
    given-up plain train are kept (salvage.py) and queued in `salvaged`, for the caller
    to take before the piece that superseded them."""

    def __init__(self, salvage: bool = True) -> None:
        self._trains: dict[tuple[int, int], _Train] = {}
        self.trains = self._trains  # read-only for callers: truthy while any train is open
        self._ended: dict[int, int] = {}  # receiver -> the train last given up at its end
        self.salvage = salvage
        self.salvaged: list[bytearray] = []
        self.joined = 0
        self.given_up = 0  # trains dropped unfinished (a piece lost, or crowded out)
        self.salvaged_trains = 0  # of those, trains whose intact parts were delivered
        self.late = 0  # pieces of a train given up at its last piece (reordered)
        self.malformed = 0

    def add(self, piece: memoryview) -> bytearray | None:
        """Take one piece (header + payload); returns the joined datagram when complete."""
        if len(piece) <= PIECE_HEADER_SIZE:
            self.malformed += 1
            return None
        _kind, index, count, reserved, receiver, train, size, total = PIECE.unpack_from(piece)
        payload = len(piece) - PIECE_HEADER_SIZE
        expected = size if index < count - 1 else total - (count - 1) * size
        if (
            reserved
            or not 2 <= count <= MAX_PIECES
            or index >= count
            or size < MIN_PIECE_SIZE
            or not (count - 1) * size < total <= count * size
            or payload != expected
        ):
            self.malformed += 1
            return None
        key = (receiver, train)
        entry = self._trains.get(key)
        if entry is None:
            if self._ended.get(receiver) == train:
                self.late += 1
                return None
            self.supersede(receiver, train)
            if len(self._trains) >= OPEN_TRAINS:
                oldest = next(iter(self._trains))
                self._give_up(self._trains.pop(oldest))
            entry = self._trains[key] = _Train(size, total, count)
        elif entry.size != size or len(entry.data) != total:
            self.malformed += 1
            return None
        bit = 1 << index
        if entry.have & bit:
            return None  # a duplicate
        entry.have |= bit
        at = index * size
        entry.data[at : at + payload] = piece[PIECE_HEADER_SIZE:]
        entry.missing -= 1
        if entry.missing:
            if index == count - 1 and self._salvageable(entry):
                del self._trains[key]  # the last piece, and some before it lost: ends here
                self._ended[receiver] = train
                self._give_up(entry)
            return None
        del self._trains[key]
        self.joined += 1
        return entry.data

    def supersede(self, receiver: int, train: int) -> bool:
        """A piece of train `train` arrived from `receiver`'s sender: give up its trains at
        least two numbers older (modulo 2**32; one older may still be interleaved with
        it).  Returns True if any was given up (its salvage, if any, is in `salvaged`)."""
        stale = [
            key
            for key in self._trains
            if key[0] == receiver and 1 < (train - key[1]) & TRAIN_MASK < TRAIN_HALF
        ]
        for key in stale:
            self._give_up(self._trains.pop(key))
        return bool(stale)

    def _salvageable(self, entry: _Train) -> bool:
        """Worth ending at its last piece: a plain train whose first piece is here (any
        other waits for pieces reordered on the way until it is superseded)."""
        return self.salvage and entry.have & 1 == 1 and entry.data[0] == DATAGRAM_PLAIN

    def _give_up(self, entry: _Train) -> None:
        self.given_up += 1
        if self.salvage:
            saved = salvage_train(entry.data, entry.have, entry.count, entry.size)
            if saved is not None:
                self.salvaged.append(saved)
                self.salvaged_trains += 1

    @property
    def open_trains(self) -> int:
        return len(self._trains)
