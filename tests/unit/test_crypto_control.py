"""ControlCipher: in-order AEAD stream with implicit counters."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyweave.router.core.crypto import control_cipher
from pyweave.router.core.crypto.control_cipher import ControlCipher, ControlCipherError

K1, K2 = b"\x01" * 32, b"\x02" * 32


def pair() -> tuple[ControlCipher, ControlCipher]:
    return ControlCipher(K1, K2), ControlCipher(K2, K1)


def test_round_trip_both_directions() -> None:
    a, b = pair()
    for i in range(5):
        assert b.open(a.seal(b"ping %d" % i)) == b"ping %d" % i
        assert a.open(b.seal(b"pong %d" % i)) == b"pong %d" % i
    assert len(a.seal(b"")) == 16
    assert a.send_counter == 6 and b.recv_counter == 5


def test_same_plaintext_gives_different_ciphertexts() -> None:
    a, _ = pair()
    assert a.seal(b"x") != a.seal(b"x")


def test_wrong_key_fails_and_breaks_the_stream() -> None:
    a, _ = pair()
    wrong = ControlCipher(K2, b"\x03" * 32)
    with pytest.raises(ControlCipherError, match="authentication"):
        wrong.open(a.seal(b"hello"))
    with pytest.raises(ControlCipherError):
        wrong.open(a.seal(b"again"))


def test_tamper_truncate_reorder_drop_duplicate() -> None:
    a, b = pair()
    m0 = a.seal(b"zero")
    tampered = bytearray(m0)
    tampered[0] ^= 1
    with pytest.raises(ControlCipherError):
        ControlCipher(K2, K1).open(bytes(tampered))
    with pytest.raises(ControlCipherError, match="too short"):
        ControlCipher(K2, K1).open(m0[:15])
    m1 = a.seal(b"one")
    with pytest.raises(ControlCipherError):  # reordered (or m0 dropped)
        ControlCipher(K2, K1).open(m1)
    assert b.open(m0) == b"zero"
    with pytest.raises(ControlCipherError):  # duplicated
        b.open(m0)


def test_counter_exhaustion(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair()
    a.send_counter = control_cipher.MAX_MESSAGES
    with pytest.raises(ControlCipherError, match="exhausted"):
        a.seal(b"x")
    b.recv_counter = control_cipher.MAX_MESSAGES
    with pytest.raises(ControlCipherError, match="exhausted"):
        b.open(b"\x00" * 20)


def test_keys_must_differ_and_have_the_right_size() -> None:
    with pytest.raises(ValueError):
        ControlCipher(K1, K1)
    with pytest.raises(ValueError):
        ControlCipher(b"short", K1)


@settings(max_examples=300)
@given(st.binary(max_size=100))
def test_fuzz_open(data: bytes) -> None:
    _, b = pair()
    with contextlib.suppress(ControlCipherError):
        b.open(data)
