"""Software GRO: segments cut by gso.py merge back into the super-frame they came from."""

from __future__ import annotations

import struct

import pytest
from pyweave.router.core.wire import data
from pyweave.router.core.wire.gro import TcpCoalescer
from pyweave.router.core.wire.gso import segment_record
from test_wire_gso import _fold, _super_frame, _words


def _check_super_frame(record: bytes, mss: int) -> tuple[int, bytes]:
    """A valid merged record: GSO header, IPv4 length/checksum, partial TCP checksum."""
    flags, kind, hdr_len, gso_size, start, offset = data.VNET_HDR.unpack_from(record)
    assert (flags, kind, hdr_len, gso_size, start, offset) == (1, 1, 54, mss, 34, 16)
    frame = record[10:]
    (total,) = struct.unpack_from("!H", frame, 16)
    assert total == len(frame) - 14
    assert _fold(_words(frame[14:34])) == 0xFFFF
    tcp = frame[34:]
    pseudo = _words(frame[26:34]) + 6 + len(tcp)
    zeroed = tcp[:16] + b"\0\0" + tcp[18:]
    assert ~_fold(_words(tcp)) & 0xFFFF == ~_fold(pseudo + _words(zeroed)) & 0xFFFF
    (seq,) = struct.unpack_from("!I", tcp, 4)
    return seq, tcp[20:]


def _coalesce(records: list[bytes]) -> list[bytes]:
    gro, out = TcpCoalescer(), []
    for record in records:
        done, taken = gro.add(record)
        if done is not None:
            out.append(done)
        if not taken:
            out.append(record)
    last = gro.flush()
    return out + ([last] if last is not None else [])


def test_segments_merge_back_into_one_super_frame() -> None:
    payload = bytes(range(256)) * 160  # 40960 bytes, 41 segments of 1000
    segments = segment_record(_super_frame(payload, 1000, v6=False))
    (merged,) = _coalesce(segments)
    seq, got = _check_super_frame(merged, 1000)
    assert (seq, got) == (1000, payload)
    assert merged[10 + 34 + 13] & 0x08  # the PSH of the last segment is kept


@pytest.mark.parametrize("lost", range(41))  # every segment, the first and last included
def test_a_lost_segment_splits_the_run_and_nothing_else_changes(lost: int) -> None:
    payload = bytes(range(256)) * 160
    segments = segment_record(_super_frame(payload, 1000, v6=False))
    del segments[lost]
    stream = bytearray(b"?" * len(payload))
    out = _coalesce(segments)
    assert len(out) == (2 if 0 < lost < 40 else 1)  # the runs before and after the gap
    for record in out:
        if data.VNET_HDR.unpack_from(record)[1] == data.VNET_GSO_TCPV4:
            seq, got = _check_super_frame(record, 1000)
        else:  # a run of one stays a plain segment
            (seq,) = struct.unpack_from("!I", record, 10 + 34 + 4)
            got = record[10 + 54 :]
        stream[seq - 1000 : seq - 1000 + len(got)] = got
    expected = bytearray(payload)
    gap = slice(lost * 1000, lost * 1000 + 1000)
    expected[gap] = b"?" * len(expected[gap])  # the last segment is shorter
    assert stream == expected


def test_other_frames_pass_unchanged_and_in_order() -> None:
    payload = bytes(200) * 20
    segments = segment_record(_super_frame(payload, 1000, v6=False, flags=0x10))
    arp = bytes(data.VNET_HDR_SIZE) + b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    v6 = segment_record(_super_frame(payload, 1000, v6=True))
    out = _coalesce([*segments[:2], arp, *v6, segments[2]])
    assert _check_super_frame(out[0], 1000) == (1000, payload[:2000])
    assert out[1:] == [arp, *v6, segments[2]]


def test_flows_and_limits_are_respected() -> None:
    payload = bytes(range(250)) * 40  # 10000 bytes
    a = segment_record(_super_frame(payload, 1000, v6=False, flags=0x10))
    b = [bytearray(r) for r in a]
    for record in b:
        record[10 + 34 : 10 + 36] = struct.pack("!H", 40001)  # another source port
    interleaved = [r for pair in zip(a, b, strict=True) for r in pair]
    assert _coalesce([bytes(r) for r in interleaved]) == [bytes(r) for r in interleaved]
    gro = TcpCoalescer(limit=54 + 3000)
    out = []
    for record in a:
        done, taken = gro.add(record)
        assert taken
        if done is not None:
            out.append(done)
    out.append(gro.flush())
    assert [len(r) - 10 - 54 for r in out] == [3000, 3000, 3000, 1000]
    merged = [_check_super_frame(r, 1000) for r in out[:3]]
    assert [seq for seq, _ in merged] == [1000, 4000, 7000]
    assert b"".join(got for _, got in merged) + out[3][10 + 54 :] == payload


def test_a_flushed_super_frame_is_not_touched_by_later_segments() -> None:
    """flush() hands its buffer over (no copy): what comes next must build a new one."""
    segments = segment_record(_super_frame(bytes(range(256)) * 40, 1349, False))
    coalescer = TcpCoalescer()
    for segment in segments[:3]:
        coalescer.add(memoryview(segment))
    done = coalescer.flush()
    assert done is not None
    snapshot = bytes(done)
    for segment in segments[3:]:
        coalescer.add(memoryview(segment))
    coalescer.flush()
    assert done == snapshot


# Offsets in a record (vnet hdr 10, Ethernet 14, IPv4 20, TCP) of the fields that must be
# equal for two segments to merge, besides the flow's addresses and ports.
KEY_FIELDS = {
    "destination MAC": 10,
    "source MAC": 16,
    "TOS": 10 + 14 + 1,
    "DF flag": 10 + 14 + 6,  # (toggled with 0x40 below: DF, not a fragment bit)
    "TTL": 10 + 14 + 8,
    "source address": 10 + 14 + 12,
    "destination address": 10 + 14 + 19,
    "source port": 10 + 34,
    "destination port": 10 + 34 + 3,
    "ACK number": 10 + 34 + 11,
    "window": 10 + 34 + 15,
}


@pytest.mark.parametrize("offset", KEY_FIELDS.values(), ids=KEY_FIELDS.keys())
def test_a_segment_whose_headers_differ_is_not_merged(offset: int) -> None:
    original = segment_record(_super_frame(bytes(5000), 1000, False))
    assert len(_coalesce(original)) == 1  # unchanged, they merge
    segments = [bytearray(r) for r in original]
    segments[1][offset] ^= 0x40 if offset == KEY_FIELDS["DF flag"] else 0x01
    out = _coalesce([bytes(r) for r in segments])
    assert out[0] == bytes(segments[0]) and out[1] == bytes(segments[1])


def _with_timestamps(segment: bytes, tsval: int) -> bytes:
    """The segment with a TCP timestamp option (NOP NOP TS), lengths adjusted."""
    record = bytearray(segment)
    tcp_at = 10 + 34
    record[tcp_at + 12] = 8 << 4  # 32-byte TCP header
    record[tcp_at + 20 : tcp_at + 20] = b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, 7)
    (total,) = struct.unpack_from("!H", record, 10 + 14 + 2)
    struct.pack_into("!H", record, 10 + 14 + 2, total + 12)
    return bytes(record)


def test_tcp_options_must_be_equal_to_merge() -> None:
    segments = segment_record(_super_frame(bytes(5000), 1000, False))
    same = [_with_timestamps(r, 1234) for r in segments]
    assert len(_coalesce(same)) == 1
    differ = [*same[:2], _with_timestamps(segments[2], 1235), *same[3:]]
    out = _coalesce(differ)  # 0-1 merged, 2 alone (other timestamp), 3-4 merged
    assert len(out) == 3 and out[1] == differ[2]
