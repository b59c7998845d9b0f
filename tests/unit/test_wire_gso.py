"""Software GSO: segments of a TCP super-frame must be what the kernel would have sent."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyweave.router.core.wire import data
from pyweave.router.core.wire.gso import segment_record

MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(raw: bytes) -> int:
    if len(raw) % 2:
        raw += b"\0"
    return sum(struct.unpack(f"!{len(raw) // 2}H", raw))


def _super_frame(payload: bytes, mss: int, v6: bool, flags: int = 0x18) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 7, 5 << 4, flags, 512, 0, 0)
    if v6:
        src = ipaddress.IPv6Address("fd00::1").packed
        dst = ipaddress.IPv6Address("fd00::2").packed
        ip = struct.pack("!IHBB", 6 << 28, len(tcp) + len(payload), 6, 64) + src + dst
        ethertype, kind, l4 = 0x86DD, data.VNET_GSO_TCPV6, 54
    else:
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(tcp) + len(payload),
            99,
            0x4000,
            64,
            6,
            0,
            bytes([10, 128, 1, 1]),
            bytes([10, 128, 2, 1]),
        )
        ethertype, kind, l4 = 0x0800, data.VNET_GSO_TCPV4, 34
    vnet = data.VNET_HDR.pack(data.VNET_F_NEEDS_CSUM, kind, l4 + 20, mss, l4, 16)
    return vnet + MAC + struct.pack("!H", ethertype) + ip + tcp + payload


def _check_segment(record: bytes, v6: bool) -> tuple[int, int, bytes]:
    flags, kind, _, _, start, offset = data.VNET_HDR.unpack_from(record)
    assert (flags, kind, offset) == (data.VNET_F_NEEDS_CSUM, data.VNET_GSO_NONE, 16)
    frame = record[10:]
    if v6:
        (plen,) = struct.unpack_from("!H", frame, 18)
        assert plen == len(frame) - 54
        pseudo = _words(frame[22:54]) + 6 + plen
    else:
        (total,) = struct.unpack_from("!H", frame, 16)
        assert total == len(frame) - 14
        assert _fold(_words(frame[14:34])) == 0xFFFF  # IP header checksum valid
        pseudo = _words(frame[26:34]) + 6 + total - 20
    tcp = frame[start:]
    # finishing the partial sum must give the real checksum
    finished = ~_fold(_words(tcp)) & 0xFFFF
    zeroed = tcp[:16] + b"\0\0" + tcp[18:]
    assert finished == ~_fold(pseudo + _words(zeroed)) & 0xFFFF
    (seq,) = struct.unpack_from("!I", tcp, 4)
    return seq, tcp[13], tcp[20:]


@pytest.mark.parametrize("v6", [False, True])
def test_segments_rebuild_the_stream(v6: bool) -> None:
    payload = bytes(range(256)) * 40 + b"tail"
    segments = segment_record(_super_frame(payload, 1000, v6, flags=0x19 | 0x80))
    assert len(segments) == 11
    seen = b""
    for i, record in enumerate(segments):
        seq, flags, chunk = _check_segment(record, v6)
        assert seq == 1000 + len(seen)
        assert bool(flags & 0x01) == (i == len(segments) - 1)  # FIN last only
        assert bool(flags & 0x80) == (i == 0)  # CWR first only
        seen += chunk
    assert seen == payload


def test_non_gso_record_is_unchanged() -> None:
    record = data.VNET_HDR.pack(0, 0, 0, 0, 0, 0) + MAC + b"\x08\x00" + b"x" * 50
    assert segment_record(record) == [record]


@given(st.binary(min_size=1, max_size=5000), st.integers(min_value=100, max_value=1500))
def test_any_payload_and_mss(payload: bytes, mss: int) -> None:
    record = _super_frame(payload, mss, False)
    segments = segment_record(record)
    if len(payload) <= mss:
        assert segments == [record]
        return
    assert b"".join(_check_segment(r, False)[2] for r in segments) == payload
    assert all(len(r) - 10 - 54 <= mss for r in segments)


def test_smaller_super_frames_keep_gso() -> None:
    payload = bytes(range(256)) * 40
    pieces = segment_record(_super_frame(payload, 1000, False), per_record=4)
    assert len(pieces) == 3
    seen = b""
    for record in pieces:
        _flags, kind, hdr_len, mss, start, _off = data.VNET_HDR.unpack_from(record)
        chunk = record[10 + start + 20 :]
        assert kind == (data.VNET_GSO_TCPV4 if len(chunk) > 1000 else data.VNET_GSO_NONE)
        assert (hdr_len, mss) == ((start + 20, 1000) if kind else (0, 0))
        seen += chunk
    assert seen == payload
