"""Segment mode's direct cut (`DataPlane._send_cut`) against the general path.

A TCP super-frame read from the TAP on a link in segment mode is cut straight into the
UDP_SEGMENT batch.  These tests run both that path and the general one
(`_send_records`, which cuts with `segment_record` and seals segment by segment) on the
same super-frame through a socket that records what it is given, and require the same
datagrams: byte for byte on a plain link, the same bodies on a sealed one."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

import pytest
from pyweave.router.core.forwarder import Forwarder
from pyweave.router.core.link import Link, PlainLink
from pyweave.router.core.mac_table import MacTable
from pyweave.router.core.routes import Routes
from pyweave.router.core.wire import data
from pyweave.router.io.datapath import (
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_SEGMENT,
    DataPlane,
    DataPlaneCounters,
    SegmentBatch,
)
from test_fuzz_control_channel import sealed_links
from test_wire_gso import _super_frame

US, THEM = 0x0A0000000001, 0x0B0000000002
ENDPOINT = ("192.0.2.2", 6783)


class RecordingSocket:
    """Stands in for the data socket: keeps every datagram it is asked to send."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.batches: list[int] = []  # datagrams per call

    def sendto(self, data_: bytes | memoryview, _flags: int, endpoint: tuple[str, int]) -> int:
        assert endpoint == ENDPOINT
        self.datagrams.append(bytes(data_))
        self.batches.append(1)
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
        self.batches.append(len(parts))
        return len(joined)


@pytest.fixture
def plane() -> Iterator[tuple[DataPlane, RecordingSocket]]:
    sock = RecordingSocket()
    loop = asyncio.new_event_loop()
    forwarder = Forwarder(US, Routes({}, {}, {}), MacTable(expiry=60))
    dp = DataPlane(loop, -1, sock, forwarder, lambda link, now: True)  # type: ignore[arg-type]
    yield dp, sock
    dp.close()
    loop.close()


def _both_paths(
    dp: DataPlane, sock: RecordingSocket, link: Link, record: bytes
) -> tuple[bool, list[bytes], list[bytes], DataPlaneCounters]:
    """(cut taken, datagrams of the direct cut, datagrams of the general path, counters)."""
    link.endpoint = ENDPOINT
    link.segment = True
    counters = DataPlaneCounters()
    prefix = data.push_frames_prefix(US, THEM)
    taken = dp._send_cut(link, prefix, memoryview(record), dp.batch_buf, counters, SegmentBatch())
    direct, sock.datagrams = sock.datagrams, []
    length = struct.pack("!H", len(record) - data.VNET_HDR_SIZE)
    dp._send_records(
        link, US.to_bytes(6, "big"), THEM, [length + record], dp.batch_buf, counters, SegmentBatch()
    )
    general, sock.datagrams = sock.datagrams, []
    return taken, direct, general, counters


@pytest.mark.parametrize("payload_size", [65000, 20 * 1349, 20 * 1349 + 1, 1500])
def test_plain_link_sends_the_same_bytes(
    plane: tuple[DataPlane, RecordingSocket], payload_size: int
) -> None:
    dp, sock = plane
    payload = (bytes(range(256)) * (payload_size // 256 + 1))[:payload_size]
    record = _super_frame(payload, 1349, False)
    link = PlainLink(THEM, ENDPOINT, 5, 9, 1472)
    sent_before = link.send_counter
    taken, direct, general, counters = _both_paths(dp, sock, link, record)
    assert taken
    segments = -(-payload_size // 1349)
    assert len(direct) == segments and counters.frames_segmented == 2
    # The general path ran second: its counters continue where the direct cut's ended.
    renumbered = []
    for i, datagram in enumerate(general):
        header = bytearray(datagram[: data.HEADER_SIZE])
        struct.pack_into("!Q", header, 8, sent_before + 1 + i)
        renumbered.append(bytes(header) + datagram[data.HEADER_SIZE :])
    assert direct == renumbered
    if segments > 44:  # more than a 64 KB batch holds: sent in two calls
        assert len(sock.batches) >= 2


def test_sealed_link_sends_the_same_bodies(plane: tuple[DataPlane, RecordingSocket]) -> None:
    dp, sock = plane
    sender, receiver = sealed_links()
    record = _super_frame(bytes(range(256)) * 200, 1349, False)
    taken, direct, general, _ = _both_paths(dp, sock, sender, record)
    assert taken and len(direct) == len(general) == -(-(256 * 200) // 1349)
    bodies = []
    for datagram in direct + general:
        body = receiver.open(datagram)
        assert body is not None
        bodies.append(bytes(body))
    assert bodies[: len(direct)] == bodies[len(direct) :]


def test_what_is_not_cut_here_is_left_to_the_general_path(
    plane: tuple[DataPlane, RecordingSocket],
) -> None:
    dp, sock = plane
    link = PlainLink(THEM, ENDPOINT, 5, 9, 1472)
    link.segment = True
    prefix = data.push_frames_prefix(US, THEM)
    counters = DataPlaneCounters()

    def cut(record: bytes) -> bool:
        return dp._send_cut(
            link, prefix, memoryview(record), dp.batch_buf, counters, SegmentBatch()
        )

    fits = _super_frame(bytes(1300), 600, False)  # two MSS, but one datagram: sent whole
    assert not cut(fits)
    not_gso = bytearray(_super_frame(bytes(5000), 1349, False))
    not_gso[1] = data.VNET_GSO_NONE
    assert not cut(bytes(not_gso))
    dp.udp_gso = False  # the kernel refused UDP_SEGMENT: one sendto each, elsewhere
    assert not cut(_super_frame(bytes(5000), 1349, False))
    assert sock.datagrams == [] and counters.frames_segmented == 0


@pytest.mark.parametrize("field", ["ihl", "data_offset", "ethertype"])
def test_malformed_super_frame_is_counted_and_dropped(
    plane: tuple[DataPlane, RecordingSocket], field: str
) -> None:
    dp, sock = plane
    link = PlainLink(THEM, ENDPOINT, 5, 9, 1472)
    link.segment = True
    record = bytearray(_super_frame(bytes(5000), 1349, False))
    if field == "ihl":
        record[10 + 14] = 0x42  # IPv4 header of 8 bytes
    elif field == "data_offset":
        record[10 + 34 + 12] = 2 << 4  # TCP header of 8 bytes
    else:
        record[10 + 12 : 10 + 14] = b"\x86\xdd"  # IPv6 under a TCPv4 GSO type
    counters = DataPlaneCounters()
    prefix = data.push_frames_prefix(US, THEM)
    batch = SegmentBatch()
    assert dp._send_cut(link, prefix, memoryview(record), dp.batch_buf, counters, batch)
    assert counters.drops_malformed == 1 and sock.datagrams == []
    assert (batch.count, batch.used) == (0, 0)
