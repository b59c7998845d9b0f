"""Noise NNpsk0 handshake: published vectors, primitives, round trips, failures, fuzz."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from pyweave.router.core.crypto.noise import (
    MAX_PAYLOAD_LEN,
    PROTOCOL_NAME,
    REASON_AUTH,
    HandshakeFailed,
    HandshakeResult,
    HandshakeState,
    Initiator,
    Responder,
    make_prologue,
)
from pyweave.router.core.crypto.primitives import (
    derive_key,
    hash_bytes,
    hmac_hash,
    noise_hkdf,
)

PSK = bytes(range(32))
OTHER_PSK = bytes(range(1, 33))

# cacophony test vectors (haskell-cryptography/cacophony, vectors/cacophony.txt),
# entry "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".
VEC_PROLOGUE = bytes.fromhex("4a6f686e2047616c74")
VEC_PSK = bytes.fromhex("54686973206973206d7920417573747269616e20706572737065637469766521")
VEC_INIT_EPHEMERAL = bytes.fromhex(
    "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a"
)
VEC_RESP_EPHEMERAL = bytes.fromhex(
    "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b"
)
VEC_MESSAGES = [
    (
        "4c756477696720766f6e204d69736573",
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
        "fda936bec35a8adfdff198386f7d5475880897edaaf7495314c99095a2e4d66a",
    ),
    (
        "4d757272617920526f746862617264",
        "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
        "4cd2a371993ba41ea11448024fca32766b169183c9e691a7a433279da7e729",
    ),
    ("462e20412e20486179656b", "bc44da303ae0beb08075fc4eb4e58235c67c2d1f53a4f2fff0bca7"),
    ("4361726c204d656e676572", "416d1af83e9fa6966ce4e871156b131aa9bd7e9a1d6f8794f4872a"),
    (
        "4a65616e2d426170746973746520536179",
        "8a7d81b77bcc6c072f2b807da066efba6b5fab9edf71a7faceb2c8454b0cfef608",
    ),
    (
        "457567656e2042f6686d20766f6e2042617765726b",
        "1e2ee010f72894824a25a867664ff298f2548a145dc4e9d27b1cad83f32fa7c54d69dc3279",
    ),
]


def _transport_encrypt(key: bytes, n: int, plaintext: bytes) -> bytes:
    nonce = b"\x00" * 4 + n.to_bytes(8, "little")
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, b"")


def test_cacophony_vector_nnpsk0_chachapoly_blake2s() -> None:
    ini = HandshakeState(True, VEC_PROLOGUE, VEC_PSK, lambda n: VEC_INIT_EPHEMERAL)
    res = HandshakeState(False, VEC_PROLOGUE, VEC_PSK, lambda n: VEC_RESP_EPHEMERAL)
    (p1, c1), (p2, c2) = VEC_MESSAGES[:2]
    m1 = ini.write_message(bytes.fromhex(p1))
    assert m1.hex() == c1
    assert res.read_message(m1) == bytes.fromhex(p1)
    m2 = res.write_message(bytes.fromhex(p2))
    assert m2.hex() == c2
    assert ini.read_message(m2) == bytes.fromhex(p2)
    i2r, r2i = ini.split()
    assert (i2r, r2i) == res.split()
    # Transport messages alternate initiator -> responder, responder -> initiator.
    for index, (payload, ciphertext) in enumerate(VEC_MESSAGES[2:]):
        key = i2r if index % 2 == 0 else r2i
        assert _transport_encrypt(key, index // 2, bytes.fromhex(payload)).hex() == ciphertext


def _reference_hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


@pytest.mark.parametrize("key_len", [0, 16, 32, 64, 65, 200])
def test_hmac_blake2s_matches_stdlib(key_len: int) -> None:
    key = bytes(range(key_len % 256)) * (key_len // 256 + 1)
    key = key[:key_len]
    assert hmac_hash(key, b"message") == _reference_hmac(key, b"message")
    assert hash_bytes(b"abc") == hashlib.blake2s(b"abc").digest()


def test_noise_hkdf_is_rfc5869_with_empty_info() -> None:
    ck, ikm = b"c" * 32, b"input key material"
    temp = _reference_hmac(ck, ikm)
    o1 = _reference_hmac(temp, b"\x01")
    o2 = _reference_hmac(temp, o1 + b"\x02")
    o3 = _reference_hmac(temp, o2 + b"\x03")
    assert noise_hkdf(ck, ikm, 2) == (o1, o2)
    assert noise_hkdf(ck, ikm, 3) == (o1, o2, o3)
    # derive_key is RFC 5869 with a label as info: T(1) = HMAC(PRK, info | 0x01).
    prk = _reference_hmac(b"salt", b"secret")
    assert derive_key(b"secret", b"label", b"salt") == _reference_hmac(prk, b"label\x01")


def test_protocol_name_and_prologue() -> None:
    assert PROTOCOL_NAME == b"Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s"
    assert make_prologue(b"x").startswith(b"pyweave/1\x00")


def handshake(
    psk_i: bytes = PSK, psk_r: bytes = PSK, ctx_i: bytes = b"", ctx_r: bytes = b""
) -> tuple[Initiator, Responder]:
    ini = Initiator(psk_i, ctx_i, os.urandom)
    res = Responder(psk_r, ctx_r, os.urandom)
    assert res.consume_initiation(ini.create_initiation(b"hello from A")) == b"hello from A"
    assert ini.consume_response(res.create_response(b"hello from B")) == b"hello from B"
    return ini, res


def test_round_trip_keys_are_oriented_and_distinct() -> None:
    ini, res = handshake()
    a, b = ini.result(), res.result()
    assert a.initiator and not b.initiator
    assert a.handshake_hash == b.handshake_hash
    assert a.control_send_key == b.control_recv_key
    assert a.control_recv_key == b.control_send_key
    assert a.data_send_key == b.data_recv_key
    assert a.data_recv_key == b.data_send_key
    assert a.data_send_chain == b.data_recv_chain
    assert a.data_recv_chain == b.data_send_chain
    secrets = {
        a.control_send_key,
        a.control_recv_key,
        a.data_send_key,
        a.data_recv_key,
        a.data_send_chain,
        a.data_recv_chain,
    }
    assert len(secrets) == 6 and all(len(s) == 32 for s in secrets)
    assert a.control_send_key.hex() not in repr(a)


def test_sessions_differ() -> None:
    first, _ = handshake()
    second, _ = handshake()
    assert first.result().data_send_key != second.result().data_send_key


def test_wrong_password_detected_by_responder_at_message_1() -> None:
    ini = Initiator(PSK, b"", os.urandom)
    res = Responder(OTHER_PSK, b"", os.urandom)
    with pytest.raises(HandshakeFailed) as info:
        res.consume_initiation(ini.create_initiation(b"hi"))
    assert info.value.reason == REASON_AUTH
    assert "different password" in info.value.reason
    with pytest.raises(HandshakeFailed):  # a failed handshake stays failed
        res.create_response(b"")


def test_wrong_password_detected_by_initiator_at_message_2() -> None:
    # A responder that does not know our password can only answer with a
    # message 2 from another session; the initiator rejects it.
    ini = Initiator(PSK, b"", os.urandom)
    ini.create_initiation(b"hi")
    other_ini = Initiator(OTHER_PSK, b"", os.urandom)
    impostor = Responder(OTHER_PSK, b"", os.urandom)
    impostor.consume_initiation(other_ini.create_initiation(b"x"))
    with pytest.raises(HandshakeFailed) as info:
        ini.consume_response(impostor.create_response(b"y"))
    assert info.value.reason == REASON_AUTH
    assert not ini.complete
    with pytest.raises(HandshakeFailed):
        ini.result()


def test_different_protocol_context_fails_like_a_password() -> None:
    with pytest.raises(HandshakeFailed, match="authentication failed"):
        handshake(ctx_i=b"weave 1", ctx_r=b"weave 2")


@pytest.mark.parametrize("which", [0, 1])
def test_every_bit_flip_is_detected(which: int) -> None:
    ini = Initiator(PSK, b"", os.urandom)
    res = Responder(PSK, b"", os.urandom)
    m1 = ini.create_initiation(b"payload one")
    if which == 0:
        for i in range(len(m1)):
            tampered = bytearray(m1)
            tampered[i] ^= 0x01
            with pytest.raises(HandshakeFailed):
                Responder(PSK, b"", os.urandom).consume_initiation(bytes(tampered))
        return
    res.consume_initiation(m1)
    m2 = res.create_response(b"payload two")
    for i in range(len(m2)):
        tampered = bytearray(m2)
        tampered[i] ^= 0x80
        probe = Initiator(PSK, b"", os.urandom)
        probe.create_initiation(b"payload one")
        with pytest.raises(HandshakeFailed):
            probe.consume_response(bytes(tampered))
    assert ini.consume_response(m2) == b"payload two"


@pytest.mark.parametrize("size", [0, 1, 31, 47])
def test_truncated_message_is_malformed(size: int) -> None:
    ini = Initiator(PSK, b"", os.urandom)
    m1 = ini.create_initiation(b"")
    with pytest.raises(HandshakeFailed, match=rf"malformed handshake message \({size} bytes\)"):
        Responder(PSK, b"", os.urandom).consume_initiation(m1[:size])


def test_oversized_message_is_malformed() -> None:
    with pytest.raises(HandshakeFailed, match="malformed"):
        Responder(PSK, b"", os.urandom).consume_initiation(b"\x00" * 65536)
    with pytest.raises(ValueError):
        Initiator(PSK, b"", os.urandom).create_initiation(b"\x00" * (MAX_PAYLOAD_LEN + 1))


def test_low_order_public_key_is_rejected() -> None:
    # An initiator that knows the password but sends the all-zero point: the
    # responder's ee DH would be all zeros, which must fail cleanly.
    state = HandshakeState(True, make_prologue(b""), PSK, os.urandom)
    state.symmetric.mix_key_and_hash(PSK)
    zero = b"\x00" * 32
    state.symmetric.mix_hash(zero)
    state.symmetric.mix_key(zero)
    m1 = zero + state.symmetric.encrypt_and_hash(b"")
    res = Responder(PSK, b"", os.urandom)
    assert res.consume_initiation(m1) == b""
    with pytest.raises(HandshakeFailed, match="invalid public key"):
        res.create_response(b"")


def test_steps_out_of_order() -> None:
    ini = Initiator(PSK, b"", os.urandom)
    with pytest.raises(HandshakeFailed, match="out of order"):
        ini.consume_response(b"\x00" * 48)
    res = Responder(PSK, b"", os.urandom)
    with pytest.raises(HandshakeFailed, match="out of order"):
        res.create_response(b"")


def test_psk_length_is_checked() -> None:
    with pytest.raises(ValueError):
        Initiator(b"short", b"", os.urandom)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_consume_initiation(message: bytes) -> None:
    with contextlib.suppress(HandshakeFailed):
        Responder(PSK, b"", os.urandom).consume_initiation(message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_consume_response(message: bytes) -> None:
    ini = Initiator(PSK, b"", os.urandom)
    ini.create_initiation(b"hello")
    with contextlib.suppress(HandshakeFailed):
        ini.consume_response(message)


def test_result_type() -> None:
    ini, _ = handshake()
    assert isinstance(ini.result(), HandshakeResult)
