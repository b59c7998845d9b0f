"""The UDP thread itself: real threads, a real UDP socket on loopback, a TAP stand-in.

The wire modules (pieces, salvage, gro) have their own tests; these drive the receive loop
that strings them together (`DataPlane._udp_thread`), which the namespace tests otherwise
reach only end to end.  The data plane runs as in the router: both threads started, the
socket blocking in `recv_into`.  The TAP is one end of a SOCK_SEQPACKET socket pair, which
keeps message boundaries as a TAP does: every `write` of the data plane is one message the
test reads back (and the answer path's `readv` finds it empty).  Datagrams come from a
test socket on 127.0.0.1, one per read (loopback does no GRO), so each assertion is about
what the loop does with the datagrams, not the kernel's merging.

What must hold: every valid frame reaches the TAP, in order, whatever malformed, forged or
truncated datagrams and pieces arrive between them, and the thread keeps running; a plain
train that lost a piece delivers its intact parts (valid TCP frames holding the original
bytes at their sequence numbers) and its counter stays out of the loss estimate; every
answer a container gives to a busy stream leaves for the sender, also while the busy UDP
thread has taken the TAP over from the TAP thread (the hand-over), which must give it back.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from pyweave.router.core.forwarder import Forwarder
from pyweave.router.core.link import Link, PlainLink
from pyweave.router.core.mac_table import MacTable
from pyweave.router.core.wire import data
from pyweave.router.core.wire.pieces import DATAGRAM_PIECE, PIECE
from pyweave.router.io.datapath import DataPlane
from test_fuzz_control_channel import sealed_links
from test_pieces import cut
from test_wire_gso import _super_frame
from test_wire_salvage import _check_frame, _records

US, THEM = 0x0A0000000001, 0x0B0000000002
OUR_INDEX, THEIR_INDEX = 5, 9
PREFIX = data.push_frames_prefix(THEM, US)  # frames from THEM, for us
MAGIC = b"pyweave-udp-thread"
MSS = 1349
SEQ0 = 1000  # the sequence number of test_wire_gso's super-frames
DEADLINE = 10.0
SO_RCVBUFFORCE = 33
AUTHENTIC_JUNK = 10**6  # the mark of the genuine datagrams that junk is made of


class NoOtherPeers:
    """The routes of a router whose only neighbour is THEM (relaying goes nowhere)."""

    def next_hop(self, destination: int) -> int | None:
        return THEM if destination == THEM else None

    def broadcast_next_hops(self, source: int) -> tuple[int, ...]:
        return ()


class Plane:
    """A started data plane with one plain link to THEM, a sender and the TAP's far end."""

    def __init__(self, sealed: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.tap_near, self.tap_far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.tap_far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:  # room for every datagram sent between two collects, even on a slow machine
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        except PermissionError:  # not root: capped by rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.bind(("127.0.0.1", 0))
        forwarder = Forwarder(US, NoOtherPeers(), MacTable(expiry=60))
        self.dp = DataPlane(
            self.loop, self.tap_near.fileno(), self.sock, forwarder, lambda link, now: True
        )
        endpoint = self.sender.getsockname()
        self.link: Link
        self.peer_link: Link  # the far end's half, which seals what the test sends
        if sealed:
            self.peer_link, self.link = sealed_links()  # (receiver index OUR_INDEX)
            self.link.endpoint = endpoint  # (answers go to the test's socket, on loopback)
        else:
            self.link = PlainLink(THEM, endpoint, OUR_INDEX, THEIR_INDEX, 1472)
            self.peer_link = PlainLink(US, endpoint, THEIR_INDEX, OUR_INDEX, 1472)
        self.dp.add_link(self.link)
        self.dp.start()

    def close(self) -> None:
        self.dp.stop()
        self.dp.close()
        for s in (self.sock, self.sender, self.tap_near, self.tap_far):
            s.close()
        self.loop.close()

    def send(self, datagram: bytes) -> None:
        self.sender.sendto(datagram, self.sock.getsockname())

    def datagram(self, records: list[bytes]) -> bytes:
        """A frames datagram from THEM, as their TAP thread builds it."""
        body = PREFIX + b"".join(
            struct.pack("!H", len(r) - data.VNET_HDR_SIZE) + r for r in records
        )
        return self.peer_link.seal(body)

    def tap_messages(self, until: int, what: str) -> list[bytes]:
        """What the data plane wrote to the TAP, read until `until` messages arrived."""
        got: list[bytes] = []
        deadline = time.monotonic() + DEADLINE
        while len(got) < until:
            left = deadline - time.monotonic()
            assert left > 0, f"{what}: {len(got)} of {until} TAP writes after {DEADLINE} s"
            self.tap_far.settimeout(left)
            try:
                got.append(self.tap_far.recv(70000))
            except TimeoutError:
                continue
        return got


@pytest.fixture
def plane() -> Iterator[Plane]:
    p = Plane()
    yield p
    p.close()


def marked_frame(seq: int) -> bytes:
    """vnet hdr + an Ethernet frame that says which valid datagram carried it."""
    eth = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x88\xb5"
    return bytes(data.VNET_HDR_SIZE) + eth + MAGIC + struct.pack("!I", seq) + bytes(30)


def seq_of(message: bytes) -> int | None:
    at = data.VNET_HDR_SIZE + 14
    if message[at : at + len(MAGIC)] != MAGIC:
        return None
    (seq,) = struct.unpack_from("!I", message, at + len(MAGIC))
    return seq


def junk(p: Plane, rng: random.Random) -> bytes:
    """A datagram a forger or a broken peer might send: every kind, our index or not."""
    kind = rng.choice([data.DATAGRAM_PLAIN, DATAGRAM_PIECE, 0x02, rng.randrange(256)])
    shape = rng.randrange(6)
    if shape == 0:  # random bytes with a plausible first byte
        return bytes([kind]) + rng.randbytes(rng.randrange(0, 1600))
    if shape == 1:  # a genuine datagram cut short, with bytes added, or with a bit flipped
        good = bytearray(p.datagram([marked_frame(AUTHENTIC_JUNK)]))
        how = rng.randrange(3)
        if how == 0:
            return bytes(good[: rng.randrange(len(good))])
        if how == 1:
            return bytes(good + rng.randbytes(9))
        good[rng.randrange(data.HEADER_SIZE, len(good))] ^= 1 << rng.randrange(8)
        return bytes(good)
    if shape == 2:  # a header whose length field lies
        length = rng.choice([0, 1, data.HEADER_SIZE, data.HEADER_SIZE + 1, 0xFFFF])
        body = PREFIX + rng.randbytes(rng.randrange(0, 200))
        return data.HEADER.pack(data.DATAGRAM_PLAIN, 0, length, OUR_INDEX, 1) + body
    if shape == 3:  # records whose lengths overrun the datagram
        body = PREFIX + struct.pack("!H", rng.randrange(1 << 16)) + rng.randbytes(40)
        length = data.HEADER_SIZE + len(body)
        return data.HEADER.pack(data.DATAGRAM_PLAIN, 0, length, OUR_INDEX, 2) + body
    # Pieces addressed to our link: often consistent enough to be joined or salvaged
    # (a few train numbers, matching counts, sizes and totals), often not.
    size = rng.choice([256, 1000, rng.randrange(1 << 16)])
    count = rng.choice([3, rng.randrange(256)])
    total = rng.choice([size * 3 - 5, rng.randrange(1 << 16)]) & 0xFFFF
    index = rng.randrange(count + 1)
    header = PIECE.pack(DATAGRAM_PIECE, index, count, 0, OUR_INDEX, rng.randrange(4), size, total)
    if shape == 4:
        return header + rng.randbytes(min(size, rng.randrange(0, 1500)))
    return header[: rng.randrange(len(header))]


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_valid_frames_arrive_in_order_through_junk(sealed: bool) -> None:
    """On a sealed link, also: replays of valid datagrams are dropped, and nothing but the
    peer's own frames reaches the TAP (a plain link delivers what a forger writes, by
    design, as Weave's unencrypted sleeve does)."""
    plane = Plane(sealed)
    try:
        rng = random.Random(5)
        valid = 300
        seqs: list[int] = []
        others = 0

        def collect(count: int) -> None:
            nonlocal others
            while len(seqs) < count:
                (message,) = plane.tap_messages(1, f"{len(seqs)} of {count} valid frames")
                seq = seq_of(message)
                if seq is not None and seq < valid:
                    seqs.append(seq)
                elif seq != AUTHENTIC_JUNK:  # (a sealed datagram with bytes after its end)
                    others += 1

        for seq in range(valid):
            for _ in range(rng.randrange(0, 6)):
                plane.send(junk(plane, rng))
            good = plane.datagram([marked_frame(seq)])
            plane.send(good)
            if sealed and rng.random() < 0.2:
                plane.send(good)  # a replay
            if seq % 10 == 9:  # keep the queues short: loopback drops what overflows them
                collect(seq + 1)
        collect(valid)
        assert seqs == list(range(valid))
        assert all(t.is_alive() for t in plane.dp._threads)
        counters = plane.dp.counters
        assert counters.internal_errors == 0
        if sealed:
            auth, replayed, _malformed = plane.link.drop_counts()
            assert others == 0 and auth > 0 and replayed > 0
        assert counters.drops_malformed + counters.drops_unknown_link > 100
    finally:
        plane.close()


def test_a_train_that_lost_a_piece_delivers_its_intact_parts(plane: Plane) -> None:
    payload = bytes(i % 251 for i in range(40 * MSS))
    frame = _super_frame(payload, MSS, False)
    datagram = plane.datagram([frame])
    pieces = cut(datagram, train=7, receiver=OUR_INDEX)
    assert len(pieces) > 10
    lost = len(pieces) // 2
    for i, piece in enumerate(pieces):
        if i != lost:
            plane.send(piece)
    plane.send(plane.datagram([marked_frame(1)]))  # the next datagram still arrives

    covered = bytearray(len(payload))
    messages: list[bytes] = []
    while not messages or seq_of(messages[-1]) != 1:
        messages += plane.tap_messages(1, "salvaged frames")
    for message in messages[:-1]:
        seq, _flags, part = _check_frame(message, False)
        at = seq - SEQ0
        assert payload[at : at + len(part)] == part
        covered[at : at + len(part)] = b"\x01" * len(part)
    # Everything but the segments that touched the lost piece arrived, in two runs.
    assert 0 < sum(covered) < len(payload)
    assert sum(covered) >= len(payload) - 3 * MSS
    counters = plane.dp.counters
    assert counters.trains_salvaged == 1
    # Pieces count once joined; the salvaged train stays out of the loss estimate.
    assert counters.udp_datagrams_in == 1
    assert all(t.is_alive() for t in plane.dp._threads)


def answer_frame(seq: int) -> bytes:
    """What a container answers to marked_frame(seq): a small frame back to its sender."""
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5"
    return bytes(data.VNET_HDR_SIZE) + eth + MAGIC + struct.pack("!I", seq) + bytes(10)


def answered_seqs(datagram: bytes) -> list[int]:
    """The seqs of the answers in a frames datagram the data plane sent to THEM."""
    return [seq for record in _records(datagram) if (seq := seq_of(record)) is not None]


def test_every_answer_to_a_busy_stream_leaves_hand_over_or_not(plane: Plane) -> None:
    """A container answers every frame the data plane writes (as TCP answers a stream with
    ACKs); the answers must all leave for the sender, whether the TAP thread forwards them
    or the busy UDP thread took the TAP over (`tap_handovers`)."""
    total = 3000
    stop = threading.Event()

    def container() -> None:  # answers each frame written to the TAP, at once
        plane.tap_far.settimeout(0.2)
        while not stop.is_set():
            try:
                frame = plane.tap_far.recv(70000)
            except TimeoutError:
                continue
            seq = seq_of(frame)
            if seq is not None:
                plane.tap_far.send(answer_frame(seq))

    responder = threading.Thread(target=container, daemon=True)
    responder.start()
    plane.sender.settimeout(DEADLINE)
    answered: set[int] = set()
    try:
        for seq in range(total):
            plane.send(plane.datagram([marked_frame(seq)]))
            if seq % 100 == 99:  # a burst at a time: the UDP thread stays busy
                while len(answered) < seq + 1:
                    answered.update(answered_seqs(plane.sender.recv(70000)))
    finally:
        stop.set()
        responder.join()
    assert answered == set(range(total))
    counters = plane.dp.counters
    assert counters.internal_errors == 0
    assert counters.tap_handovers > 0, "the hand-over never ran"
