"""UDP runs as GSO super-frames: merged as the kernel expects them, cut back exactly."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyweave.router.core.wire import data
from pyweave.router.core.wire.gso import segment_record
from pyweave.router.core.wire.uso import MAX_SEGMENTS, cut_udp_record, merge_udp_runs
from test_wire_gso import _fold, _words  # the tests' own checksum arithmetic

MAC = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"
SRC, DST = bytes([10, 128, 1, 1]), bytes([10, 128, 2, 1])


def _udp_record(
    payload: bytes,
    ip_id: int,
    sport: int = 40000,
    frag: int = 0x4000,
    vnet_flags: int = data.VNET_F_NEEDS_CSUM,
    padding: bytes = b"",
) -> bytes:
    """A batch record as the TAP thread holds one: u16 frame length, vnet hdr, frame."""
    ulen = 8 + len(payload)
    ip = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, ip_id, frag, 64, 17, 0, SRC, DST)
    )
    struct.pack_into("!H", ip, 10, ~_fold(_words(bytes(ip))) & 0xFFFF)
    check = _fold(_words(SRC + DST) + 17 + ulen)
    udp = struct.pack("!HHHH", sport, 5201, ulen, check)
    vnet = data.VNET_HDR.pack(vnet_flags, data.VNET_GSO_NONE, 0, 0, 34, 6)
    frame = MAC + b"\x08\x00" + bytes(ip) + udp + payload + padding
    return struct.pack("!H", len(frame)) + vnet + frame


def _tcp_ack_record() -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, SRC, DST)
    tcp = struct.pack("!HHIIBBHHH", 5201, 40000, 1, 2, 5 << 4, 0x10, 512, 0, 0)
    vnet = data.VNET_HDR.pack(data.VNET_F_NEEDS_CSUM, data.VNET_GSO_NONE, 0, 0, 34, 16)
    frame = MAC + b"\x08\x00" + ip + tcp
    return struct.pack("!H", len(frame)) + vnet + frame


def _run(count: int, size: int = 64, first_id: int = 100, sport: int = 40000) -> list[bytes]:
    return [_udp_record(bytes([i % 256]) * size, first_id + i, sport=sport) for i in range(count)]


def test_a_run_becomes_one_super_frame_the_kernel_accepts() -> None:
    records = _run(10)
    (merged,) = merge_udp_runs(records)
    (frame_len,) = struct.unpack_from("!H", merged)
    assert frame_len == len(merged) - 12 == 42 + 640
    flags, kind, hdr_len, gso_size, start, offset = data.VNET_HDR.unpack_from(merged, 2)
    assert (flags, kind, hdr_len, gso_size, start, offset) == (
        1,
        data.VNET_GSO_UDP_L4,
        42,
        64,
        34,
        6,
    )
    frame = merged[12:]
    (total, ip_id) = struct.unpack_from("!HH", frame, 16)
    assert (total, ip_id) == (20 + 8 + 640, 100)
    assert _fold(_words(frame[14:34])) == 0xFFFF  # IP header checksum valid
    (udp_len, udp_check) = struct.unpack_from("!HH", frame, 38)
    assert udp_len == 8 + 640
    # The folded pseudo-header sum for the whole length: what the kernel's UDP GSO expects.
    assert udp_check == _fold(_words(SRC + DST) + 17 + udp_len)
    assert frame[42:] == b"".join(bytes([i]) * 64 for i in range(10))


def test_cutting_gives_back_the_original_frames() -> None:
    records = _run(10)
    (merged,) = merge_udp_runs(records)
    assert cut_udp_record(merged[2:]) == [r[2:] for r in records]
    assert segment_record(merged[2:]) == [r[2:] for r in records]


def test_a_lone_record_and_non_candidates_come_back_as_the_same_list() -> None:
    lone = _run(1)
    assert merge_udp_runs(lone) is lone
    acks = [_tcp_ack_record() for _ in range(5)]
    assert merge_udp_runs(acks) is acks
    different = [_udp_record(b"x" * 64, 1, sport=1000 + i) for i in range(5)]
    assert merge_udp_runs(different) is different


@pytest.mark.parametrize(
    "odd",
    [
        _udp_record(b"y" * 64, 7, sport=1),  # another flow
        _udp_record(b"y" * 63, 7),  # another size
        _udp_record(b"y" * 64, 7, frag=0x2000),  # more fragments follow
        _udp_record(b"y" * 64, 7, vnet_flags=0),  # checksum complete, not partial
        _udp_record(b"y" * 10, 7, padding=bytes(8)),  # Ethernet padding
        _tcp_ack_record(),
    ],
)
def test_anything_else_ends_a_run_and_keeps_its_place(odd: bytes) -> None:
    records = [*_run(3), odd, *_run(3, first_id=200)]
    out = merge_udp_runs(records)
    assert len(out) == 3
    assert out[1] == odd
    assert cut_udp_record(out[0][2:]) == [r[2:] for r in records[:3]]
    assert cut_udp_record(out[2][2:]) == [r[2:] for r in records[4:]]


def test_a_candidate_that_does_not_merge_is_left_as_it_was() -> None:
    for record in (_udp_record(b"z" * 10, 1, padding=bytes(8)), _udp_record(b"z", 1, frag=0x2001)):
        records = [record, record]
        assert merge_udp_runs(records) is records


def test_runs_stop_at_the_segment_and_byte_limits() -> None:
    out = merge_udp_runs(_run(MAX_SEGMENTS + 36))
    counts = [len(cut_udp_record(r[2:])) for r in out]
    assert counts == [MAX_SEGMENTS, 36]
    out = merge_udp_runs(_run(50, size=1400))
    assert [len(cut_udp_record(r[2:])) for r in out] == [45, 5]
    assert all(len(r) - 12 <= 64000 for r in out)


@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([1, 64, 500]), st.booleans()),
        max_size=150,
    )
)
def test_merging_then_cutting_is_the_identity(spec: list[tuple[int, int, bool]]) -> None:
    records = []
    for ip_id, (flow, size, tcp) in enumerate(spec):
        if tcp:
            records.append(_tcp_ack_record())
        else:
            records.append(_udp_record(bytes([ip_id % 251]) * size, ip_id, sport=flow))
    out: list[bytes] = []
    for record in merge_udp_runs(records):
        if record[3] == data.VNET_GSO_UDP_L4:
            out += [struct.pack("!H", len(r) - 10) + r for r in cut_udp_record(record[2:])]
        else:
            out.append(record)
    assert out == records


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: r[:30],  # too short
        lambda r: r[:22] + b"\x86\xdd" + r[24:],  # claims IPv6
        lambda r: r[:26] + b"\xff\xff" + r[28:],  # IP total length beyond the frame
        lambda r: r[:4] + b"\0\0" + r[6:],  # gso_size 0
    ],
)
def test_cutting_refuses_what_the_merge_never_makes(mangle: object) -> None:
    (merged,) = merge_udp_runs(_run(4))
    with pytest.raises(data.MalformedDatagram):
        cut_udp_record(mangle(merged[2:]))  # type: ignore[operator]


def test_a_run_is_cut_to_fit_the_frame_limit() -> None:
    # What fits one path-MTU datagram of a 1500-byte underlay: 42 header bytes + 21 x 64.
    out = merge_udp_runs(_run(50), max_frame=42 + 21 * 64)
    assert [len(cut_udp_record(r[2:])) for r in out] == [21, 21, 8]
    assert all(len(r) - 12 <= 42 + 21 * 64 for r in out)
    records = _run(5)
    assert merge_udp_runs(records, max_frame=42 + 64) is records  # one per record: no merge


def _with_gso_size(record: bytes, gso_size: int) -> bytes:
    changed = bytearray(record[2:])
    struct.pack_into("<H", changed, 4, gso_size)
    return bytes(changed)


def test_a_record_of_more_datagrams_than_linux_takes_is_refused() -> None:
    (merged,) = merge_udp_runs(_run(4))  # 256 payload bytes
    assert len(cut_udp_record(_with_gso_size(merged, 2))) == 128  # the most Linux takes
    with pytest.raises(data.MalformedDatagram):
        cut_udp_record(_with_gso_size(merged, 1))  # 256 datagrams of one byte
    (merged,) = merge_udp_runs(_run(3, size=86))  # 258 payload bytes
    with pytest.raises(data.MalformedDatagram):
        cut_udp_record(_with_gso_size(merged, 2))  # 129 datagrams


def test_a_record_without_payload_is_refused() -> None:
    (merged,) = merge_udp_runs(_run(2))
    header_only = bytearray(merged[2 : 2 + 10 + 42])
    struct.pack_into("!H", header_only, 10 + 14 + 2, 28)  # IPv4 total: headers only
    with pytest.raises(data.MalformedDatagram):
        cut_udp_record(bytes(header_only))


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_cutting_any_bytes_returns_frames_or_refuses(noise: bytes, at: int) -> None:
    """What a peer sends may be anything: cut or refused, never another exception."""
    (merged,) = merge_udp_runs(_run(3))
    record = bytearray(merged[2:])
    record[at : at + len(noise)] = noise
    try:
        frames = cut_udp_record(bytes(record))
    except data.MalformedDatagram:
        return
    assert all(len(frame) >= 10 + 42 for frame in frames)
