import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyweave.router.core.wire import control, data

FRAME = b"\x00" * 10 + bytes.fromhex("ffffffffffff020000000001") + b"\x08\x06" + b"x" * 28


def test_header_round_trip() -> None:
    raw = data.push_header(data.DATAGRAM_SEALED, 3, 0xDEADBEEF, 2**64 - 2)
    assert data.pull_header(raw) == (data.DATAGRAM_SEALED, 3, 0xDEADBEEF, 2**64 - 2)


def test_frames_body_round_trip() -> None:
    body = data.push_frames_prefix(0x0A0B0C0D0E0F, data.BROADCAST_PEER)
    body += data.push_frame_record(FRAME) + data.push_frame_record(FRAME)
    view = memoryview(body)
    assert data.pull_frames_prefix(view) == (0x0A0B0C0D0E0F, 0)
    records = data.pull_frame_records(view)
    assert [bytes(r) for r in records] == [FRAME, FRAME]


def test_truncated_record_is_malformed() -> None:
    body = data.push_frames_prefix(1, 2) + data.push_frame_record(FRAME)[:-1]
    with pytest.raises(data.MalformedDatagram):
        data.pull_frame_records(memoryview(body))


def test_heartbeat_round_trip() -> None:
    raw = data.push_heartbeat(data.BODY_HEARTBEAT_ACK, 12.5, 1234)
    assert data.pull_heartbeat(raw) == (data.BODY_HEARTBEAT_ACK, 12.5, 1234)


def test_heartbeat_without_loss_report_still_parses() -> None:
    raw = data.HEARTBEAT_V1.pack(data.BODY_HEARTBEAT, 3.0)
    assert data.pull_heartbeat(raw) == (data.BODY_HEARTBEAT, 3.0, data.LOSS_UNKNOWN)


def test_overlay_mtu_fits_1500_byte_underlay() -> None:
    assert data.max_overlay_mtu(1500) >= 1376


@given(st.binary(max_size=200))
def test_fuzz_frame_records_only_raise_malformed(raw: bytes) -> None:
    # each parser on its own: one raising must not keep the others from running
    for parse in (
        data.pull_frames_prefix,
        lambda r: data.pull_frame_records(memoryview(r)),
        data.pull_heartbeat,
    ):
        with contextlib.suppress(data.MalformedDatagram):
            parse(raw)


def test_hello_round_trip() -> None:
    hello = control.Hello(0x0200000000AB, 2**63 + 5, 6783, 77, "höst-1", flags=1)
    assert control.pull_hello(control.push_hello(hello)) == hello


def test_gossip_round_trip() -> None:
    assert control.pull_gossip(control.push_gossip("topology", b"\x01\x02")) == (
        "topology",
        b"\x01\x02",
    )


def test_preamble_rejects_strangers() -> None:
    with pytest.raises(control.MalformedControl):
        control.pull_preamble(b"GET / HTTP")
    assert control.pull_preamble(control.push_preamble(control.MODE_PLAIN)) == (
        control.CONTROL_VERSION,
        control.MODE_PLAIN,
    )


def test_oversized_record_is_refused() -> None:
    with pytest.raises(control.MalformedControl):
        control.pull_record_length((control.MAX_RECORD_SIZE + 1).to_bytes(4, "big"))


@given(st.binary(max_size=300))
def test_fuzz_control_decoders_only_raise_malformed(raw: bytes) -> None:
    for decode in (control.pull_hello, control.pull_gossip):
        with contextlib.suppress(control.MalformedControl):
            decode(raw)


def test_unicast_round_trip() -> None:
    raw = control.push_unicast("ipam", 0x0A0000000001, 0x0A0000000002, b"req")
    assert control.pull_unicast(raw) == ("ipam", 0x0A0000000001, 0x0A0000000002, b"req")


@given(st.binary(max_size=100))
def test_fuzz_unicast_only_raises_malformed(raw: bytes) -> None:
    with contextlib.suppress(control.MalformedControl):
        control.pull_unicast(bytes([control.MSG_UNICAST]) + raw)
