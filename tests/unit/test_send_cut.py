"""Segment mode's cut, through `DataPlane._send_records`, against `segment_record`.

On a link in segment mode a TCP super-frame is cut straight into the UDP_SEGMENT batch
(`_send_cut`): each segment is laid out as the datagram it becomes.  These tests send
records through a socket that keeps what it is given and require exactly the datagrams
the reference cutter (`gso.segment_record`, with its own tests) implies: byte for byte on
a plain link (header, counters, frames prefix, record length, segment), body for body on
a sealed one, in order with the small frames around them."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

import pytest
from pyweave.router.core.forwarder import Forwarder
from pyweave.router.core.link import Link, PlainLink
from pyweave.router.core.mac_table import MacTable
from pyweave.router.core.wire import data
from pyweave.router.core.wire.gso import segment_record
from pyweave.router.core.wire.uso import cut_udp_record
from pyweave.router.io.datapath import (
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_SEGMENT,
    DataPlane,
    DataPlaneCounters,
    SegmentBatch,
)
from test_fuzz_control_channel import sealed_links
from test_udp_thread import NoOtherPeers
from test_wire_gso import _super_frame
from test_wire_uso import _run

US, THEM = 0x0A0000000001, 0x0B0000000002
ENDPOINT = ("192.0.2.2", 6783)
PREFIX = data.push_frames_prefix(US, THEM)
ARP = bytes(data.VNET_HDR_SIZE) + b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)


class RecordingSocket:
    """Stands in for the data socket: keeps every datagram it is asked to send."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.calls = 0

    def sendto(self, data_: bytes | memoryview, _flags: int, endpoint: tuple[str, int]) -> int:
        assert endpoint == ENDPOINT
        self.datagrams.append(bytes(data_))
        self.calls += 1
        return len(data_)

    def sendmsg(
        self,
        buffers: list[memoryview],
        cmsgs: list[tuple[int, int, bytes]],
        _flags: int,
        endpoint: tuple[str, int],
    ) -> int:
        assert endpoint == ENDPOINT
        ((level, kind, raw),) = cmsgs
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        (size,) = struct.unpack("=H", raw)
        joined = b"".join(bytes(b) for b in buffers)
        parts = [joined[i : i + size] for i in range(0, len(joined), size)]
        assert all(len(p) == size for p in parts[:-1]) and len(parts) <= GSO_MAX_SEGMENTS
        self.datagrams += parts
        self.calls += 1
        return len(joined)


@pytest.fixture
def plane() -> Iterator[tuple[DataPlane, RecordingSocket]]:
    sock = RecordingSocket()
    loop = asyncio.new_event_loop()
    forwarder = Forwarder(US, NoOtherPeers(), MacTable(expiry=60))
    dp = DataPlane(loop, -1, sock, forwarder, lambda link, now: True)  # type: ignore[arg-type]
    yield dp, sock
    dp.close()
    loop.close()


def _record(frame: bytes) -> bytes:
    """u16 frame length + vnet hdr + frame, as the data plane carries it."""
    return struct.pack("!H", len(frame) - data.VNET_HDR_SIZE) + frame


def _send(dp: DataPlane, link: Link, frames: list[bytes]) -> DataPlaneCounters:
    link.endpoint = ENDPOINT
    link.segment = True
    counters = DataPlaneCounters()
    records = [_record(f) for f in frames]
    dp._send_records(
        link, US.to_bytes(6, "big"), THEM, records, dp.batch_buf, counters, SegmentBatch()
    )
    return counters


def _expected_bodies(frames: list[bytes]) -> list[bytes]:
    """One body per segment (and per small frame), as the reference cutter implies."""
    bodies = []
    for frame in frames:
        for segment in segment_record(frame):
            bodies.append(PREFIX + _record(segment))
    return bodies


@pytest.mark.parametrize("payload_size", [65000, 20 * 1349, 20 * 1349 + 1, 1500])
def test_plain_link_sends_the_reference_segments(
    plane: tuple[DataPlane, RecordingSocket], payload_size: int
) -> None:
    dp, sock = plane
    payload = (bytes(range(256)) * (payload_size // 256 + 1))[:payload_size]
    frame = _super_frame(payload, 1349, False)
    link = PlainLink(THEM, ENDPOINT, 5, 9, 1472)
    counters = _send(dp, link, [frame])
    expected = [
        data.HEADER.pack(data.DATAGRAM_PLAIN, 0, data.HEADER_SIZE + len(body), 9, i + 1) + body
        for i, body in enumerate(_expected_bodies([frame]))
    ]
    assert len(expected) == -(-payload_size // 1349)
    assert sock.datagrams == expected
    assert counters.frames_segmented == 1
    if len(expected) > 44:  # more than one 64 KB batch: several sendmsg calls
        assert sock.calls >= 2


def test_sealed_link_sends_the_reference_bodies(plane: tuple[DataPlane, RecordingSocket]) -> None:
    dp, sock = plane
    sender, receiver = sealed_links()
    frame = _super_frame(bytes(range(256)) * 200, 1349, False)
    _send(dp, sender, [frame])
    bodies = [receiver.open(d) for d in sock.datagrams]
    assert [bytes(b) for b in bodies if b is not None] == _expected_bodies([frame])


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_small_frames_keep_their_place_around_a_cut(
    plane: tuple[DataPlane, RecordingSocket], sealed: bool
) -> None:
    dp, sock = plane
    frame = _super_frame(bytes(range(256)) * 40, 1349, False)
    if sealed:
        link, receiver = sealed_links()
        _send(dp, link, [ARP, frame, ARP, frame, ARP])
        bodies = [bytes(b) for b in map(receiver.open, sock.datagrams) if b is not None]
    else:
        _send(dp, PlainLink(THEM, ENDPOINT, 5, 9, 1472), [ARP, frame, ARP, frame, ARP])
        bodies = [d[data.HEADER_SIZE :] for d in sock.datagrams]
    assert bodies == _expected_bodies([ARP, frame, ARP, frame, ARP])


def test_without_udp_segment_the_same_datagrams_leave_one_by_one(
    plane: tuple[DataPlane, RecordingSocket],
) -> None:
    dp, sock = plane
    frame = _super_frame(bytes(range(256)) * 40, 1349, False)
    link = PlainLink(THEM, ENDPOINT, 5, 9, 1472)
    link.refuse_udp_segment()  # the kernel refused UDP_SEGMENT towards this peer
    _send(dp, link, [frame])
    assert [d[data.HEADER_SIZE :] for d in sock.datagrams] == _expected_bodies([frame])
    assert sock.calls == len(sock.datagrams)


def test_a_super_frame_that_fits_one_datagram_goes_whole(
    plane: tuple[DataPlane, RecordingSocket],
) -> None:
    dp, sock = plane
    frame = _super_frame(bytes(1300), 600, False)  # two MSS, one datagram
    counters = _send(dp, PlainLink(THEM, ENDPOINT, 5, 9, 1472), [frame])
    assert [d[data.HEADER_SIZE :] for d in sock.datagrams] == [PREFIX + _record(frame)]
    assert counters.frames_segmented == 0


@pytest.mark.parametrize("field", ["ihl", "data_offset", "ethertype"])
def test_malformed_super_frame_is_counted_and_dropped(
    plane: tuple[DataPlane, RecordingSocket], field: str
) -> None:
    dp, sock = plane
    frame = bytearray(_super_frame(bytes(5000), 1349, False))
    if field == "ihl":
        frame[10 + 14] = 0x42  # IPv4 header of 8 bytes
    elif field == "data_offset":
        frame[10 + 34 + 12] = 2 << 4  # TCP header of 8 bytes
    else:
        frame[10 + 12 : 10 + 14] = b"\x86\xdd"  # IPv6 under a TCPv4 GSO type
    counters = _send(dp, PlainLink(THEM, ENDPOINT, 5, 9, 1472), [bytes(frame), ARP])
    assert counters.drops_malformed == 1
    assert [d[data.HEADER_SIZE :] for d in sock.datagrams] == [PREFIX + _record(ARP)]


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_segment_mode_still_merges_runs_of_small_udp_datagrams(
    plane: tuple[DataPlane, RecordingSocket], sealed: bool
) -> None:
    """A run fits one datagram, so segment mode (loss) has no reason to send 64-byte
    datagrams one record each: the run leaves merged, and cuts back into the frames read."""
    dp, sock = plane
    receiver = None
    if sealed:
        link, receiver = sealed_links()
    else:
        link = PlainLink(THEM, ENDPOINT, 5, 9, 1472)
    link.endpoint = ENDPOINT
    dp.add_link(link)
    link.segment = True
    run = _run(40)  # 40 x 64 bytes: two runs, each as much as fits one datagram
    counters = DataPlaneCounters()
    dp._flush({(link.peer, THEM): list(run)}, (dp.batch_buf, counters, SegmentBatch()))
    if receiver is not None:
        bodies = [bytes(b) for b in map(receiver.open, sock.datagrams) if b is not None]
    else:
        bodies = [d[data.HEADER_SIZE :] for d in sock.datagrams]
    assert len(bodies) == 2 and counters.udp_frames_merged == 38
    frames = []
    for body in bodies:
        assert body.startswith(PREFIX)
        frames += [bytes(f) for f in cut_udp_record(body[len(PREFIX) + 2 :])]  # (record length)
    assert frames == [r[2:] for r in run]
