"""AEAD for the TCP control stream, with implicit per-direction counters.

Theory of operation
-------------------
After the handshake each side holds a control key per direction
(``HandshakeResult.control_send_key`` / ``control_recv_key``). The control
stream is TCP, so messages arrive complete and in order; both ends therefore
count messages instead of sending nonces:

* ``seal(plaintext)`` encrypts with nonce ``transport_nonce(send_counter)``
  (4 zero bytes + 64-bit big-endian counter) and increments the counter. The
  result is ``len(plaintext) + 16`` bytes; framing (a length prefix) is the
  caller's job. A tampered length prefix makes the next ``open`` fail, which
  is the right outcome on a stream.
* ``open(ciphertext)`` decrypts with the next receive counter. Any failure --
  wrong key, tampering, truncation, a dropped, duplicated or reordered
  message -- raises ``ControlCipherError`` and *breaks* the receive side for
  good: a stream cannot resynchronise, so the connection must be closed.
* A counter never reaches 2**64 - 1: sealing or opening past
  ``MAX_MESSAGES`` raises ``ControlCipherError`` (the connection then
  re-handshakes; at any realistic rate this never happens).

Keys are AES-256-GCM (``primitives.transport_aead``), distinct from the data
keys, so control and data nonces never share a key.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidTag

from .primitives import TAG_LEN, CryptoError, transport_aead, transport_nonce

MAX_MESSAGES: Final = 2**64 - 1  # counters 0 .. MAX_MESSAGES - 1 are usable
CONTROL_AD: Final = b"pyweave/1 control stream"


class ControlCipherError(CryptoError):
    """The control stream cannot be sealed or opened any more; close it."""


class ControlCipher:
    """Seal outgoing and open incoming control messages of one connection."""

    __slots__ = ("_broken", "_recv", "_send", "recv_counter", "send_counter")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        if send_key == recv_key:
            raise ValueError("send and receive keys must differ")
        self._send = transport_aead(send_key)
        self._recv = transport_aead(recv_key)
        self.send_counter = 0
        self.recv_counter = 0
        self._broken: str | None = None

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt the next outgoing message."""
        counter = self.send_counter
        if counter >= MAX_MESSAGES:
            raise ControlCipherError("control stream exhausted its message counter")
        self.send_counter = counter + 1
        return self._send.encrypt(transport_nonce(counter), plaintext, CONTROL_AD)

    def open(self, ciphertext: bytes) -> bytes:
        """Decrypt the next incoming message or raise ``ControlCipherError``."""
        if self._broken is not None:
            raise ControlCipherError(self._broken)
        counter = self.recv_counter
        if counter >= MAX_MESSAGES:
            self._broken = "control stream exhausted its message counter"
            raise ControlCipherError(self._broken)
        if len(ciphertext) < TAG_LEN:
            self._broken = f"control message too short ({len(ciphertext)} bytes)"
            raise ControlCipherError(self._broken)
        try:
            plaintext = self._recv.decrypt(transport_nonce(counter), ciphertext, CONTROL_AD)
        except InvalidTag:
            self._broken = "control message failed authentication (tampered or out of sync)"
            raise ControlCipherError(self._broken) from None
        self.recv_counter = counter + 1
        return plaintext
