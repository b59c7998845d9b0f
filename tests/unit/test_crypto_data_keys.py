"""Data-plane sealing/opening, drops, epochs, rekeying without loss, fuzz."""

from __future__ import annotations

import contextlib
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyweave.router.core.crypto.data_keys import (
    DEFAULT_POLICY,
    HEADER,
    OVERHEAD,
    REKEY_ANSWER,
    REKEY_MSG,
    REKEY_REQUEST,
    DataReceiver,
    DataSender,
    KeyExpired,
    RekeyFailed,
    RekeyPolicy,
    create_data_pair,
)
from pyweave.router.core.crypto.noise import Initiator, Responder

SMALL = RekeyPolicy(
    rekey_after_time=10.0,
    rekey_after_messages=5,
    reject_after_time=15.0,
    reject_after_messages=8,
    previous_key_grace=3.0,
)


def connect(
    policy: RekeyPolicy = DEFAULT_POLICY,
) -> tuple[DataSender, DataReceiver, DataSender, DataReceiver]:
    """A's sender/receiver and B's sender/receiver after a real handshake."""
    psk = os.urandom(32)
    ini, res = Initiator(psk, b"", os.urandom), Responder(psk, b"", os.urandom)
    res.consume_initiation(ini.create_initiation(b""))
    ini.consume_response(res.create_response(b""))
    a_send, a_recv = create_data_pair(ini.result(), 0.0, os.urandom, policy)
    b_send, b_recv = create_data_pair(res.result(), 0.0, os.urandom, policy)
    return a_send, a_recv, b_send, b_recv


def rekey(sender: DataSender, receiver: DataReceiver, now: float) -> None:
    sender.consume_rekey_answer(
        receiver.consume_rekey_request(sender.create_rekey_request(now), now), now
    )


def test_the_length_field_is_authenticated_and_checked() -> None:
    a_send, _a_recv, _b_send, b_recv = connect()
    dgram = bytearray(a_send.seal_datagram(7, b"frame"))
    unspecified = bytearray(dgram)
    unspecified[2:4] = b"\x00\x00"  # 0 = "to the end of the read": allowed, but authenticated
    assert b_recv.open_datagram(unspecified) is None and b_recv.drops_auth == 1
    wrong = bytearray(dgram)
    wrong[2:4] = (len(dgram) + 1).to_bytes(2, "big")
    assert b_recv.open_datagram(wrong) is None and b_recv.drops_malformed == 1
    assert b_recv.open_datagram(dgram) == b"frame"


def test_round_trip_both_directions_and_layout() -> None:
    a_send, a_recv, b_send, b_recv = connect()
    dgram = a_send.seal_datagram(0xDEADBEEF, b"frame")
    assert len(dgram) == len(b"frame") + OVERHEAD
    assert HEADER.unpack_from(dgram) == (1, 0, len(dgram), 0xDEADBEEF, 0)
    assert b_recv.open_datagram(dgram) == b"frame"
    assert a_recv.open_datagram(b_send.seal_datagram(1, memoryview(b"back"))) == b"back"
    # A's own datagram (counter 1, fresh for A's receiver) fails: other direction's key.
    assert a_recv.open_datagram(a_send.seal_datagram(0xDEADBEEF, b"frame")) is None
    assert a_recv.drops_auth == 1


def test_seal_into_matches_and_checks_buffer() -> None:
    a_send, _, _, b_recv = connect()
    payload = os.urandom(1400)
    buf = bytearray(2000)
    n = a_send.seal_datagram_into(buf, 7, payload)
    assert n == 1400 + OVERHEAD
    assert b_recv.open_datagram(memoryview(buf)[:n]) == payload
    with pytest.raises(ValueError):
        a_send.seal_datagram_into(bytearray(10), 7, payload)


def test_large_super_frame() -> None:
    a_send, _, _, b_recv = connect()
    payload = os.urandom(65507 - OVERHEAD)
    assert b_recv.open_datagram(a_send.seal_datagram(3, payload)) == payload


def test_drop_reasons() -> None:
    a_send, _, _, b_recv = connect()
    dgram = a_send.seal_datagram(9, b"payload")
    assert b_recv.open_datagram(dgram) == b"payload"
    assert b_recv.open_datagram(dgram) is None
    assert b_recv.drops_replay == 1
    assert b_recv.open_datagram(dgram[:31]) is None
    assert b_recv.open_datagram(b"\x02" + dgram[1:]) is None
    assert b_recv.open_datagram(dgram[:2] + b"\x00\x01" + dgram[4:]) is None
    assert b_recv.drops_malformed == 3
    assert b_recv.open_datagram(dgram[:1] + b"\x05" + dgram[2:]) is None
    assert b_recv.drops_unknown_epoch == 1
    fresh = bytearray(a_send.seal_datagram(9, b"payload"))
    fresh[4] ^= 1  # receiver index is authenticated
    assert b_recv.open_datagram(bytes(fresh)) is None
    fresh[4] ^= 1
    fresh[-1] ^= 1
    assert b_recv.open_datagram(bytes(fresh)) is None
    assert b_recv.drops_auth == 2
    # The forged datagrams did not burn counter 1: the genuine one still opens.
    fresh[-1] ^= 1
    assert b_recv.open_datagram(bytes(fresh)) == b"payload"
    assert b_recv.received == 2


def test_forged_high_counter_does_not_move_the_window() -> None:
    a_send, _, _, b_recv = connect()
    forged = HEADER.pack(1, 0, 0, 9, 2**40) + b"\x00" * 20
    assert b_recv.open_datagram(forged) is None
    assert b_recv.open_datagram(a_send.seal_datagram(9, b"ok")) == b"ok"


def test_reordering_inside_the_window_is_accepted() -> None:
    a_send, _, _, b_recv = connect()
    dgrams = [a_send.seal_datagram(1, b"%d" % i) for i in range(50)]
    for i in [*range(49, -1, -2), *range(0, 50, 2)]:
        assert b_recv.open_datagram(dgrams[i]) == b"%d" % i


def test_rekey_switches_epoch_without_loss() -> None:
    a_send, _, _, b_recv = connect()
    old = [a_send.seal_datagram(1, b"old %d" % i) for i in range(3)]
    request = a_send.create_rekey_request(1.0)
    assert a_send.rekey_pending and not a_send.rekey_due(1.0)
    answer = b_recv.consume_rekey_request(request, 1.0)
    in_between = a_send.seal_datagram(1, b"still old")  # sender not switched yet
    a_send.consume_rekey_answer(answer, 1.0)
    assert a_send.epoch == 1 and a_send.counter == 0 and not a_send.rekey_pending
    new = a_send.seal_datagram(1, b"new")
    assert new[1] == 1
    assert b_recv.open_datagram(new) == b"new"
    # Datagrams sealed under epoch 0 that arrive late still open (grace).
    assert b_recv.open_datagram(in_between) == b"still old"
    for i, dgram in enumerate(old):
        assert b_recv.open_datagram(dgram) == b"old %d" % i
    assert b_recv.open_datagram(old[0]) is None  # and replays are still caught
    assert b_recv.epochs == (1, 0)


def test_previous_epoch_expires_after_grace() -> None:
    a_send, _, _, b_recv = connect(SMALL)
    old = a_send.seal_datagram(1, b"old")
    rekey(a_send, b_recv, 1.0)
    b_recv.expire(3.9)
    assert b_recv.epochs == (1, 0)
    b_recv.expire(4.0)
    assert list(b_recv.epochs) == [1]
    assert b_recv.open_datagram(old) is None
    assert b_recv.drops_unknown_epoch == 1


def test_ping_through_many_forced_rekeys_with_epoch_wrap() -> None:
    a_send, a_recv, b_send, b_recv = connect()
    now = 0.0
    keys_seen = set()
    for round_no in range(300):  # > 256: the u8 epoch wraps around
        now += 0.5
        ping = a_send.seal_datagram(2, b"ping %d" % round_no)
        assert b_recv.open_datagram(ping) == b"ping %d" % round_no
        pong = b_send.seal_datagram(1, b"pong %d" % round_no)
        assert a_recv.open_datagram(pong) == b"pong %d" % round_no
        a_send.force_rekey()
        assert a_send.rekey_due(now)
        rekey(a_send, b_recv, now)
        if round_no % 3 == 0:
            b_send.force_rekey()
            rekey(b_send, a_recv, now)
        keys_seen.add(a_send.seal_datagram(2, b"probe")[16:])
        b_recv.open_datagram(a_send.seal_datagram(2, b""))
    assert a_send.epoch == 300 % 256
    assert len(keys_seen) == 300  # every epoch has its own key (counter 1 each time)
    assert b_recv.drops_auth == 0 and b_recv.drops_unknown_epoch == 0


def test_rekey_due_by_time_and_count_and_hard_limits() -> None:
    a_send, _, _, b_recv = connect(SMALL)
    assert not a_send.rekey_due(9.9)
    assert a_send.rekey_due(10.0)
    assert not a_send.expired(14.9) and a_send.expired(15.0)
    for _ in range(5):
        a_send.seal_datagram(1, b"x")
    assert a_send.rekey_due(0.0)
    for _ in range(3):
        a_send.seal_datagram(1, b"x")
    assert a_send.expired(0.0)
    with pytest.raises(KeyExpired):
        a_send.seal_datagram(1, b"x")
    with pytest.raises(KeyExpired):
        a_send.seal_datagram_into(bytearray(64), 1, b"x")
    rekey(a_send, b_recv, 20.0)
    assert not a_send.expired(20.0) and not a_send.rekey_due(20.0)
    assert b_recv.open_datagram(a_send.seal_datagram(1, b"y")) == b"y"


def test_rekey_protocol_violations() -> None:
    a_send, _, _, b_recv = connect()
    with pytest.raises(RekeyFailed, match="without a request"):
        a_send.consume_rekey_answer(REKEY_MSG.pack(REKEY_ANSWER, 1, b"\x09" * 32), 0.0)
    request = a_send.create_rekey_request(0.0)
    with pytest.raises(RekeyFailed, match="already in progress"):
        a_send.create_rekey_request(0.0)
    with pytest.raises(RekeyFailed, match="kind"):
        b_recv.consume_rekey_request(REKEY_MSG.pack(REKEY_ANSWER, 1, request[2:]), 0.0)
    with pytest.raises(RekeyFailed, match="epoch"):
        b_recv.consume_rekey_request(REKEY_MSG.pack(REKEY_REQUEST, 2, request[2:]), 0.0)
    with pytest.raises(RekeyFailed, match="invalid public key"):
        b_recv.consume_rekey_request(REKEY_MSG.pack(REKEY_REQUEST, 1, b"\x00" * 32), 0.0)
    with pytest.raises(RekeyFailed, match="malformed"):
        b_recv.consume_rekey_request(request[:-1], 0.0)
    answer = b_recv.consume_rekey_request(request, 0.0)
    with pytest.raises(RekeyFailed, match="epoch"):
        b_recv.consume_rekey_request(request, 0.0)  # duplicate request
    with pytest.raises(RekeyFailed, match="expected 1"):
        a_send.consume_rekey_answer(answer[:1] + b"\x02" + answer[2:], 0.0)
    a_send.consume_rekey_answer(answer, 0.0)
    assert b_recv.open_datagram(a_send.seal_datagram(1, b"z")) == b"z"


def test_mismatched_rekey_exchange_cannot_decrypt() -> None:
    # An answer from someone else's receiver gives a different key: datagrams
    # of the new epoch are dropped as unauthentic, never accepted.
    a_send, _, _, b_recv = connect()
    _, _, _, stranger = connect()
    request = a_send.create_rekey_request(0.0)
    b_recv.consume_rekey_request(request, 0.0)
    a_send.consume_rekey_answer(stranger.consume_rekey_request(request, 0.0), 0.0)
    assert b_recv.open_datagram(a_send.seal_datagram(1, b"?")) is None
    assert b_recv.drops_auth == 1


@settings(max_examples=400)
@given(st.binary(max_size=120))
def test_fuzz_open_datagram(data: bytes) -> None:
    _, _, _, b_recv = connect()
    assert b_recv.open_datagram(data) is None


@settings(max_examples=200)
@given(st.binary(min_size=16, max_size=80), st.integers(min_value=0, max_value=2**64 - 1))
def test_fuzz_open_datagram_with_valid_header(body: bytes, counter: int) -> None:
    _, _, _, b_recv = connect()
    datagram = struct.pack(">BBHIQ", 1, 0, 0, 1, counter) + body
    assert b_recv.open_datagram(datagram) is None
    drops = b_recv.drops_auth + b_recv.drops_replay
    assert drops == 1


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_fuzz_rekey_messages(data: bytes) -> None:
    a_send, _, _, b_recv = connect()
    with contextlib.suppress(RekeyFailed):
        b_recv.consume_rekey_request(data, 0.0)
    a_send.create_rekey_request(0.0)
    with contextlib.suppress(RekeyFailed):
        a_send.consume_rekey_answer(data, 0.0)


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError):
        RekeyPolicy(rekey_after_messages=10, reject_after_messages=5)
    with pytest.raises(ValueError):
        RekeyPolicy(reject_after_messages=2**64)
    with pytest.raises(ValueError):
        RekeyPolicy(rekey_after_time=200.0)
