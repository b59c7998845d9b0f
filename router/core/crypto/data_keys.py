"""Data-plane keys: sealing and opening UDP datagrams, epochs and rekeying.

Theory of operation
-------------------
Each direction of a peer connection has its own key, owned by the side that
*sends* in that direction (``DataSender``) and mirrored by the side that
receives (``DataReceiver``). The initial keys and per-direction *chain
secrets* come from the handshake (``noise.HandshakeResult``).

**Datagram layout** (all integers big endian; the 16-byte header is the AEAD
associated data, so every field is authenticated)::

    0  u8   message type (0x01 = data)
    1  u8   key epoch (wraps around)
    2  u16  length of the whole datagram (0: up to the end of the read)
    4  u32  receiver index (chosen by the receiver at connection set-up)
    8  u64  counter; AEAD nonce = 4 zero bytes + counter
    16 ...  ciphertext + 16-byte tag

The AEAD is AES-256-GCM (measured about 3x faster than ChaCha20-Poly1305 on
64 KB super-frames here; see docs/security.md). Sealing is one AEAD call per
datagram. ``seal_datagram_into`` writes header and ciphertext straight into
a caller's buffer (the nonce lives in a reused buffer);
``seal_datagram`` returns new bytes. ``open_datagram`` slices the datagram
with memoryviews, so the only copy is the plaintext itself.

**Receiving** checks, in this order: size and type (``drops_malformed``),
epoch known (``drops_unknown_epoch``), counter fresh in that epoch's replay
window (``drops_replay``), AEAD (``drops_auth``); only an authenticated
datagram updates the window. Drops return None and count; nothing raises on
the hot path.

**Rekeying** (forward secrecy, no loss). The sender of a direction decides
when: ``rekey_due(now)`` becomes true after ``rekey_after_time`` seconds or
``rekey_after_messages`` datagrams in the current epoch, or after
``force_rekey()``. Over the (already encrypted, reliable, ordered) control
stream::

    sender                                       receiver
    create_rekey_request(now)
      fresh X25519 ephemeral es
      REKEY_REQUEST(epoch+1, es_pub)   ----->    consume_rekey_request(msg, now)
                                                   fresh ephemeral er
                                                   derive key(epoch+1), INSTALL it
                                                   (old key kept as "previous")
                                       <-----    REKEY_ANSWER(epoch+1, er_pub)
    consume_rekey_answer(msg, now)
      derive key(epoch+1), SWITCH: new datagrams use epoch+1, counter 0

Both sides compute ``HKDF(salt=chain, ikm=X25519(es, er), info=label | epoch
| es_pub | er_pub)`` -> 64 bytes = new chain secret + new key, then forget
the ephemerals and the old chain. The receiver installs the new key before the
sender uses it, and keeps the previous epoch's key (with its replay window)
until the next rekey or ``previous_key_grace`` seconds after the install
(``expire(now)``), so datagrams still in flight under the old epoch open
fine. An attacker who later steals the current keys and chain learns nothing
about earlier epochs: HKDF is one-way and the ephemerals are gone.

**Hard limits.** If a rekey does not complete, the sender stops: after
``reject_after_messages`` datagrams ``seal_datagram`` raises ``KeyExpired``,
and ``expired(now)`` turns true after ``reject_after_time``; the router then
closes the connection and handshakes anew. Rekey protocol violations raise
``RekeyFailed``; the router closes the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .noise import HandshakeResult
from .primitives import (
    KEY_LEN,
    LABEL_DATA_REKEY,
    NONCE_LEN,
    TAG_LEN,
    CryptoError,
    RandomSource,
    derive_key,
    transport_aead,
)
from .replay import COUNTER_LIMIT, ReplayWindow

BytesLike = bytes | bytearray | memoryview

# Datagram layout (sizes and offsets).
MSG_TYPE_DATA: Final = 0x01
HEADER: Final = struct.Struct(">BBHIQ")  # type, epoch, length, receiver index, counter
HEADER_LEN: Final = HEADER.size  # 16
COUNTER_OFFSET: Final = 8
OVERHEAD: Final = HEADER_LEN + TAG_LEN  # 32 bytes added to every payload
MAX_DATAGRAM_LEN: Final = 65507  # largest UDP payload over IPv4
MAX_PAYLOAD_LEN: Final = MAX_DATAGRAM_LEN - OVERHEAD
EPOCH_MASK: Final = 0xFF

# Rekey messages (carried inside the encrypted control stream).
REKEY_REQUEST: Final = 0x01
REKEY_ANSWER: Final = 0x02
REKEY_MSG: Final = struct.Struct(">BB32s")  # kind, new epoch, X25519 public key
REKEY_MSG_LEN: Final = REKEY_MSG.size  # 34

_NONCE_COUNTER: Final = struct.Struct(">Q")
_ZERO4: Final = b"\x00\x00\x00\x00"


class RekeyFailed(CryptoError):
    """A rekey message was malformed or unexpected; close the connection."""


class KeyExpired(CryptoError):
    """The sending key reached its hard limit without a rekey; reconnect."""


@dataclass(frozen=True, slots=True)
class RekeyPolicy:
    """When to rekey and when to give up. Tests shrink these numbers.

    ``rekey_after_messages`` keeps AES-GCM well inside its safety bound even
    for 64 KB datagrams (2**24 x 2**12 blocks = 2**36 blocks per key).
    """

    rekey_after_time: float = 120.0
    rekey_after_messages: int = 2**24
    reject_after_time: float = 180.0
    reject_after_messages: int = 2**25
    previous_key_grace: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.rekey_after_messages <= self.reject_after_messages <= COUNTER_LIMIT:
            raise ValueError("need 0 < rekey_after_messages <= reject_after_messages <= 2**64-1")
        if not 0 < self.rekey_after_time <= self.reject_after_time:
            raise ValueError("need 0 < rekey_after_time <= reject_after_time")


DEFAULT_POLICY: Final = RekeyPolicy()


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def rekey_derive(
    chain: bytes, dh: bytes, epoch: int, sender_pub: bytes, receiver_pub: bytes
) -> tuple[bytes, bytes]:
    """(new chain secret, new key) for ``epoch`` from the DH output and old chain."""
    info = LABEL_DATA_REKEY + bytes((epoch,)) + sender_pub + receiver_pub
    okm = derive_key(dh, info, chain, 2 * KEY_LEN)
    return okm[:KEY_LEN], okm[KEY_LEN:]


def _pull_rekey(message: BytesLike, kind: int) -> tuple[int, bytes]:
    """Parse a rekey message of ``kind``; returns (epoch, public key)."""
    if len(message) != REKEY_MSG_LEN:
        raise RekeyFailed(f"malformed rekey message ({len(message)} bytes)")
    got_kind, epoch, public = REKEY_MSG.unpack(message)
    if got_kind != kind:
        raise RekeyFailed(f"unexpected rekey message kind {got_kind}")
    return epoch, public


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise RekeyFailed("rekey message carries an invalid public key") from None


class DataSender:
    """Seals datagrams for one direction and drives that direction's rekeys."""

    __slots__ = (
        "_aead",
        "_chain",
        "_epoch_started",
        "_forced",
        "_nonce",
        "_pending",
        "_policy",
        "_rand",
        "counter",
        "epoch",
    )

    def __init__(
        self,
        key: bytes,
        chain: bytes,
        now: float,
        rand: RandomSource,
        policy: RekeyPolicy = DEFAULT_POLICY,
    ) -> None:
        self._aead: AESGCM = transport_aead(key)
        self._chain = chain
        self._policy = policy
        self._rand = rand
        self._nonce = bytearray(NONCE_LEN)  # 4 zero bytes + counter, reused
        self._pending: tuple[int, X25519PrivateKey, bytes] | None = None
        self._forced = False
        self._epoch_started = now
        self.epoch = 0
        self.counter = 0  # the next counter to use in this epoch

    def _take_counter(self) -> int:
        counter = self.counter
        if counter >= self._policy.reject_after_messages:
            raise KeyExpired("data key used up and the rekey did not complete")
        self.counter = counter + 1
        return counter

    def seal_datagram(self, receiver_index: int, payload: BytesLike) -> bytes:
        """Header + ciphertext for ``payload``, as new bytes (one AEAD call)."""
        counter = self._take_counter()
        total = len(payload) + OVERHEAD
        header = HEADER.pack(MSG_TYPE_DATA, self.epoch, total, receiver_index, counter)
        return header + self._aead.encrypt(_ZERO4 + header[COUNTER_OFFSET:], payload, header)

    def seal_datagram_into(
        self, buf: bytearray | memoryview, receiver_index: int, payload: BytesLike
    ) -> int:
        """Write header + ciphertext into ``buf``; returns the datagram length.

        ``buf`` needs ``len(payload) + OVERHEAD`` bytes and must not overlap
        ``payload``. Nothing is allocated but the AEAD call's own state.
        """
        total = len(payload) + OVERHEAD
        if len(buf) < total:
            raise ValueError(f"buffer too small: {len(buf)} < {total}")
        counter = self._take_counter()
        HEADER.pack_into(buf, 0, MSG_TYPE_DATA, self.epoch, total, receiver_index, counter)
        _NONCE_COUNTER.pack_into(self._nonce, 4, counter)
        view = memoryview(buf)
        self._aead.encrypt_into(self._nonce, payload, view[:HEADER_LEN], view[HEADER_LEN:total])
        return total

    def force_rekey(self) -> None:
        """Make ``rekey_due`` true at the next check (unless one is in flight)."""
        self._forced = True

    @property
    def rekey_pending(self) -> bool:
        return self._pending is not None

    def rekey_due(self, now: float) -> bool:
        """True when a rekey should start now (none in flight and a limit hit)."""
        if self._pending is not None:
            return False
        policy = self._policy
        return (
            self._forced
            or now - self._epoch_started >= policy.rekey_after_time
            or self.counter >= policy.rekey_after_messages
        )

    def expired(self, now: float) -> bool:
        """True when the current key must not be used any more (close and reconnect)."""
        policy = self._policy
        return (
            now - self._epoch_started >= policy.reject_after_time
            or self.counter >= policy.reject_after_messages
        )

    def create_rekey_request(self, now: float) -> bytes:
        """Start a rekey: the REKEY_REQUEST message to send on the control stream."""
        if self._pending is not None:
            raise RekeyFailed("a rekey is already in progress")
        epoch = (self.epoch + 1) & EPOCH_MASK
        private = X25519PrivateKey.from_private_bytes(self._rand(KEY_LEN))
        public = _public_bytes(private)
        self._pending = (epoch, private, public)
        return REKEY_MSG.pack(REKEY_REQUEST, epoch, public)

    def consume_rekey_answer(self, message: BytesLike, now: float) -> None:
        """Finish the rekey: derive the new key and switch to the new epoch."""
        pending = self._pending
        if pending is None:
            raise RekeyFailed("rekey answer without a request")
        epoch, private, public = pending
        answer_epoch, peer_public = _pull_rekey(message, REKEY_ANSWER)
        if answer_epoch != epoch:
            raise RekeyFailed(f"rekey answer for epoch {answer_epoch}, expected {epoch}")
        dh = _exchange(private, peer_public)
        self._chain, key = rekey_derive(self._chain, dh, epoch, public, peer_public)
        self._aead = transport_aead(key)
        self._pending = None
        self._forced = False
        self.epoch = epoch
        self.counter = 0
        self._epoch_started = now


class DataReceiver:
    """Opens datagrams for one direction; answers that direction's rekeys.

    Drop counters are plain ints, read them for ``weave status``.
    """

    __slots__ = (
        "_chain",
        "_keys",
        "_policy",
        "_previous_deadline",
        "_rand",
        "drops_auth",
        "drops_malformed",
        "drops_replay",
        "drops_unknown_epoch",
        "epoch",
        "received",
    )

    def __init__(
        self,
        key: bytes,
        chain: bytes,
        now: float,
        rand: RandomSource,
        policy: RekeyPolicy = DEFAULT_POLICY,
    ) -> None:
        self._chain = chain
        self._rand = rand
        self._policy = policy
        # epoch -> (AEAD, replay window); the current epoch and at most one previous.
        self._keys: dict[int, tuple[AESGCM, ReplayWindow]] = {
            0: (transport_aead(key), ReplayWindow())
        }
        self._previous_deadline: float | None = None
        self.epoch = 0
        self.received = 0
        self.drops_malformed = 0
        self.drops_unknown_epoch = 0
        self.drops_replay = 0
        self.drops_auth = 0

    def open_datagram(self, datagram: BytesLike) -> bytes | None:
        """The plaintext of an authentic, fresh datagram; None (counted) otherwise."""
        size = len(datagram)
        if size < OVERHEAD or size > MAX_DATAGRAM_LEN:
            self.drops_malformed += 1
            return None
        msg_type, epoch, length, _index, counter = HEADER.unpack_from(datagram)
        if msg_type != MSG_TYPE_DATA or (length and length != size):
            self.drops_malformed += 1
            return None
        entry = self._keys.get(epoch)
        if entry is None:
            self.drops_unknown_epoch += 1
            return None
        aead, window = entry
        if not window.check(counter):  # before decrypting: cheap and DoS-safe
            self.drops_replay += 1
            return None
        view = memoryview(datagram)
        try:
            plaintext = aead.decrypt(
                _ZERO4 + view[COUNTER_OFFSET:HEADER_LEN],
                view[HEADER_LEN:],
                view[:HEADER_LEN],
            )
        except InvalidTag:
            self.drops_auth += 1
            return None
        window.update(counter)  # only after authentication
        self.received += 1
        return plaintext

    def consume_rekey_request(self, message: BytesLike, now: float) -> bytes:
        """Install the next epoch's key; returns the REKEY_ANSWER to send back."""
        epoch, peer_public = _pull_rekey(message, REKEY_REQUEST)
        expected = (self.epoch + 1) & EPOCH_MASK
        if epoch != expected:
            raise RekeyFailed(f"rekey request for epoch {epoch}, expected {expected}")
        private = X25519PrivateKey.from_private_bytes(self._rand(KEY_LEN))
        public = _public_bytes(private)
        dh = _exchange(private, peer_public)
        self._chain, key = rekey_derive(self._chain, dh, epoch, peer_public, public)
        self._keys = {
            epoch: (transport_aead(key), ReplayWindow()),
            self.epoch: self._keys[self.epoch],
        }
        self._previous_deadline = now + self._policy.previous_key_grace
        self.epoch = epoch
        return REKEY_MSG.pack(REKEY_ANSWER, epoch, public)

    def expire(self, now: float) -> None:
        """Forget the previous epoch's key once its grace period is over."""
        deadline = self._previous_deadline
        if deadline is not None and now >= deadline:
            self._keys = {self.epoch: self._keys[self.epoch]}
            self._previous_deadline = None

    @property
    def epochs(self) -> tuple[int, ...]:
        """The epochs whose datagrams are currently accepted (newest first)."""
        return tuple(self._keys)


def create_data_pair(
    result: HandshakeResult,
    now: float,
    rand: RandomSource,
    policy: RekeyPolicy = DEFAULT_POLICY,
) -> tuple[DataSender, DataReceiver]:
    """The local side's sender and receiver for a completed handshake."""
    sender = DataSender(result.data_send_key, result.data_send_chain, now, rand, policy)
    receiver = DataReceiver(result.data_recv_key, result.data_recv_chain, now, rand, policy)
    return sender, receiver
