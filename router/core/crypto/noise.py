"""The pyweave handshake: Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s, sans I/O.

Theory of operation
-------------------
Two routers that share only the mesh password run the Noise handshake
pattern ``NNpsk0`` (noiseprotocol.org, revision 34)::

    NNpsk0:
      -> psk, e        message 1, initiator -> responder, 32 B + payload + 16 B tag
      <- e, ee         message 2, responder -> initiator, 32 B + payload + 16 B tag

* The PSK is the stretched password (``password.stretch_password``). It is
  mixed into the chaining key *before* anything else (``psk0``), so the
  payload of message 1 is already encrypted and authenticated under a key
  that depends on the password: a responder with a different password fails
  on message 1, an initiator with a different password on message 2. Both
  fail as an AEAD tag mismatch, reported as ``HandshakeFailed`` with a
  sentence a user can act on.
* ``e`` / ``ee``: fresh X25519 ephemerals on both sides; the ``ee`` DH gives
  forward secrecy: recording the traffic and later learning the password
  does not reveal the session keys (it does reveal the message 1 payload, which
  is protected by the password alone -- put nothing secret in it).
* The prologue is ``PROTOCOL_LABEL + b"\\x00" + context``: peers of another
  protocol version derive other keys and fail at message 1 like a wrong
  password does. ``context`` lets the caller bind anything else both sides
  agree on before the handshake (e.g. the Weave protocol version bytes).
* The suite uses ChaCha20-Poly1305 with BLAKE2s, the combination WireGuard
  uses and for which published test vectors exist (the unit tests check the
  cacophony vectors). Speed does not matter here: two messages per connection.

The classes follow the specification's layering: ``CipherState`` (a key and
a nonce), ``SymmetricState`` (chaining key ``ck`` and handshake hash ``h``;
``mix_key``, ``mix_hash``, ``mix_key_and_hash``, ``split``) and
``HandshakeState`` (the NNpsk0 token sequence). ``Initiator`` and
``Responder`` are the API the router uses::

    ini = Initiator(psk, context, rand)        res = Responder(psk, context, rand)
    m1 = ini.create_initiation(hello)    ->    hello = res.consume_initiation(m1)
    hello = ini.consume_response(m2)     <-    m2 = res.create_response(hello)
    ini.result()                               res.result()

After completion ``result()`` returns a ``HandshakeResult``: the Noise
``Split`` gives one key per direction; from each, HKDF with distinct labels
(salted with the handshake hash) derives the control-stream key, the
data-plane key and the data-plane rekey chain secret of that direction, and
the result is oriented for the local side (the initiator's ``*_send_*`` is the
responder's ``*_recv_*``). Every failure raises ``HandshakeFailed``; after a
failure the object refuses further use.

Message 1 is replayable (NNpsk0 carries no timestamp): a replayed message 1
makes a responder answer, but the replayer cannot derive the keys. The router
must therefore treat the peer as authenticated only after the first control
message decrypts (key confirmation), not on message 1 alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .primitives import (
    HASH_LEN,
    KEY_LEN,
    LABEL_CONTROL,
    LABEL_DATA,
    LABEL_DATA_CHAIN,
    PROTOCOL_LABEL,
    TAG_LEN,
    CryptoError,
    RandomSource,
    derive_key,
    hash_bytes,
    noise_hkdf,
)

PROTOCOL_NAME: Final = b"Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s"
DH_LEN: Final = 32
PSK_LEN: Final = 32
MAX_MESSAGE_LEN: Final = 65535  # Noise limit for any message
HANDSHAKE_OVERHEAD: Final = DH_LEN + TAG_LEN  # both messages: e + payload tag
MAX_PAYLOAD_LEN: Final = MAX_MESSAGE_LEN - HANDSHAKE_OVERHEAD
_MAX_NONCE: Final = 2**64 - 1  # reserved by Noise

REASON_AUTH: Final = "authentication failed: the peer uses a different password"
REASON_ORDER: Final = "handshake step out of order"


class HandshakeFailed(CryptoError):
    """The handshake cannot complete; ``reason`` says why in plain words."""


def _malformed(size: int, detail: str = "") -> HandshakeFailed:
    extra = f": {detail}" if detail else ""
    return HandshakeFailed(f"malformed handshake message ({size} bytes){extra}")


def make_prologue(context: bytes = b"") -> bytes:
    """The prologue both sides mix in: protocol label and version, then ``context``."""
    return PROTOCOL_LABEL + b"\x00" + context


class CipherState:
    """Noise CipherState for ChaChaPoly: key ``k`` (or none) and nonce ``n``."""

    def __init__(self) -> None:
        self._aead: ChaCha20Poly1305 | None = None
        self.n = 0

    def initialize_key(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.n = 0

    def has_key(self) -> bool:
        return self._aead is not None

    def _nonce(self) -> bytes:
        if self.n >= _MAX_NONCE:
            raise HandshakeFailed("cipher nonce exhausted")
        # ChaChaPoly in Noise: 32 bits of zeros + 64-bit little-endian counter.
        return b"\x00\x00\x00\x00" + self.n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        ciphertext = self._aead.encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt; raises ``InvalidTag`` on authentication failure (n unchanged)."""
        if self._aead is None:
            return ciphertext
        plaintext = self._aead.decrypt(self._nonce(), ciphertext, ad)
        self.n += 1
        return plaintext


class SymmetricState:
    """Noise SymmetricState: chaining key, handshake hash and a CipherState."""

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            self.h = hash_bytes(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = noise_hkdf(self.ck, ikm, 2)
        self.cipher.initialize_key(temp_k[:KEY_LEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_bytes(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = noise_hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k[:KEY_LEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """The two transport keys: (initiator->responder, responder->initiator)."""
        k1, k2 = noise_hkdf(self.ck, b"", 2)
        return k1[:KEY_LEN], k2[:KEY_LEN]


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class HandshakeState:
    """The NNpsk0 token sequence for one side, exactly as the spec runs it.

    ``write_message``/``read_message`` process the next message of the
    pattern; ``split`` is valid after both messages. Decryption failures
    surface as ``InvalidTag`` and bad public keys as ``ValueError``; the
    ``Initiator``/``Responder`` wrappers turn them into ``HandshakeFailed``.
    """

    def __init__(self, initiator: bool, prologue: bytes, psk: bytes, rand: RandomSource) -> None:
        if len(psk) != PSK_LEN:
            raise ValueError(f"the PSK must be {PSK_LEN} bytes, not {len(psk)}")
        self.initiator = initiator
        self.symmetric = SymmetricState(PROTOCOL_NAME)
        self.symmetric.mix_hash(prologue)
        self._psk = psk
        self._rand = rand
        self._e: X25519PrivateKey | None = None
        self._re: bytes | None = None
        self.message_index = 0  # how many messages were written or read

    def _generate_e(self) -> bytes:
        self._e = X25519PrivateKey.from_private_bytes(self._rand(DH_LEN))
        return _public_bytes(self._e)

    def _dh_ee(self) -> bytes:
        assert self._e is not None and self._re is not None
        # Raises ValueError for a low-order peer key (all-zero shared secret).
        return self._e.exchange(X25519PublicKey.from_public_bytes(self._re))

    def _token_e_write(self) -> bytes:
        e_pub = self._generate_e()
        self.symmetric.mix_hash(e_pub)
        self.symmetric.mix_key(e_pub)  # psk handshakes also MixKey(e.public_key)
        return e_pub

    def _token_e_read(self, re: bytes) -> None:
        self._re = re
        self.symmetric.mix_hash(re)
        self.symmetric.mix_key(re)

    def write_message(self, payload: bytes) -> bytes:
        """Write message 1 (initiator) or message 2 (responder)."""
        if self.message_index == 0:
            self.symmetric.mix_key_and_hash(self._psk)  # token "psk"
            e_pub = self._token_e_write()
        else:
            e_pub = self._token_e_write()
            self.symmetric.mix_key(self._dh_ee())  # token "ee"
        self.message_index += 1
        return e_pub + self.symmetric.encrypt_and_hash(payload)

    def read_message(self, message: bytes) -> bytes:
        """Read message 1 (responder) or message 2 (initiator); returns the payload."""
        re, body = message[:DH_LEN], message[DH_LEN:]
        if self.message_index == 0:
            self.symmetric.mix_key_and_hash(self._psk)
            self._token_e_read(re)
        else:
            self._token_e_read(re)
            self.symmetric.mix_key(self._dh_ee())
        payload = self.symmetric.decrypt_and_hash(body)
        self.message_index += 1
        return payload

    def split(self) -> tuple[bytes, bytes]:
        return self.symmetric.split()


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """Session secrets of one completed handshake, oriented for the local side.

    Keys are excluded from ``repr`` so they never end up in a log line.
    """

    initiator: bool
    handshake_hash: bytes
    control_send_key: bytes = field(repr=False)
    control_recv_key: bytes = field(repr=False)
    data_send_key: bytes = field(repr=False)
    data_recv_key: bytes = field(repr=False)
    data_send_chain: bytes = field(repr=False)
    data_recv_chain: bytes = field(repr=False)


def _direction_secrets(base: bytes, h: bytes) -> tuple[bytes, bytes, bytes]:
    return (
        derive_key(base, LABEL_CONTROL, h),
        derive_key(base, LABEL_DATA, h),
        derive_key(base, LABEL_DATA_CHAIN, h),
    )


def derive_result(initiator: bool, state: HandshakeState) -> HandshakeResult:
    """Derive the control/data keys and rekey chains from a finished handshake."""
    h = state.symmetric.h
    i2r, r2i = state.split()
    sent, received = (i2r, r2i) if initiator else (r2i, i2r)
    c_send, d_send, chain_send = _direction_secrets(sent, h)
    c_recv, d_recv, chain_recv = _direction_secrets(received, h)
    return HandshakeResult(
        initiator=initiator,
        handshake_hash=h,
        control_send_key=c_send,
        control_recv_key=c_recv,
        data_send_key=d_send,
        data_recv_key=d_recv,
        data_send_chain=chain_send,
        data_recv_chain=chain_recv,
    )


class _Side:
    """What Initiator and Responder share: state, step checks, error mapping."""

    def __init__(self, initiator: bool, psk: bytes, context: bytes, rand: RandomSource) -> None:
        self._state = HandshakeState(initiator, make_prologue(context), psk, rand)
        self._result: HandshakeResult | None = None
        self._failed: HandshakeFailed | None = None

    def _check_step(self, expected_index: int) -> None:
        if self._failed is not None:
            raise HandshakeFailed(f"handshake already failed: {self._failed.reason}")
        if self._state.message_index != expected_index:
            self._fail(HandshakeFailed(REASON_ORDER))

    def _fail(self, error: HandshakeFailed) -> NoReturn:
        self._failed = error
        raise error

    def _write(self, payload: bytes) -> bytes:
        if len(payload) > MAX_PAYLOAD_LEN:
            raise ValueError(f"handshake payload too large ({len(payload)} bytes)")
        try:
            return self._state.write_message(payload)
        except ValueError:  # the peer's ephemeral key gave an all-zero DH output
            self._fail(HandshakeFailed("malformed handshake message: invalid public key"))

    def _read(self, message: bytes) -> bytes:
        size = len(message)
        if size < HANDSHAKE_OVERHEAD or size > MAX_MESSAGE_LEN:
            self._fail(_malformed(size))
        try:
            return self._state.read_message(bytes(message))
        except InvalidTag:
            self._fail(HandshakeFailed(REASON_AUTH))
        except ValueError:
            self._fail(_malformed(size, "invalid public key"))

    def _finish(self) -> None:
        self._result = derive_result(self._state.initiator, self._state)

    @property
    def complete(self) -> bool:
        return self._result is not None

    def result(self) -> HandshakeResult:
        """The session secrets; only after the handshake completed."""
        if self._result is None:
            raise HandshakeFailed("handshake not complete")
        return self._result


class Initiator(_Side):
    """The dialling side: ``create_initiation`` then ``consume_response``."""

    def __init__(self, psk: bytes, context: bytes, rand: RandomSource) -> None:
        super().__init__(True, psk, context, rand)

    def create_initiation(self, payload: bytes) -> bytes:
        """Message 1 carrying ``payload`` (encrypted under the password)."""
        self._check_step(0)
        return self._write(payload)

    def consume_response(self, message: bytes) -> bytes:
        """Read message 2; returns the responder's payload and completes."""
        self._check_step(1)
        payload = self._read(message)
        self._finish()
        return payload


class Responder(_Side):
    """The listening side: ``consume_initiation`` then ``create_response``."""

    def __init__(self, psk: bytes, context: bytes, rand: RandomSource) -> None:
        super().__init__(False, psk, context, rand)

    def consume_initiation(self, message: bytes) -> bytes:
        """Read message 1; returns the initiator's payload."""
        self._check_step(0)
        return self._read(message)

    def create_response(self, payload: bytes) -> bytes:
        """Message 2 carrying ``payload``; completes the handshake."""
        self._check_step(1)
        message = self._write(payload)
        self._finish()
        return message
