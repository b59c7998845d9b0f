"""Encrypted mode for a control connection: the Noise handshake, then sealed records.

Theory of operation: with a password, each control connection runs the NNpsk0 handshake
of core/crypto/noise.py (the dialer initiates), carrying the HELLOs as handshake payloads.
When it completes, `NoiseSecurity` holds the control cipher for the rest of the stream and
hands out the data-plane sender/receiver pair for the connection's `SealedLink`.  Crypto
failures become `ConnectionRefused` with the core's plain-words reason, which
`weave status connections` shows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from pyweave.router.core.crypto.control_cipher import ControlCipher, ControlCipherError
from pyweave.router.core.crypto.data_keys import (
    DataReceiver,
    DataSender,
    RekeyPolicy,
    create_data_pair,
)
from pyweave.router.core.crypto.noise import HandshakeFailed, Initiator, Responder
from pyweave.router.io.control import ConnectionRefused

HANDSHAKE_CONTEXT = b"pyweave control v1"


@contextlib.contextmanager
def _refusing() -> Iterator[None]:
    """Turn a handshake failure into a refused connection with the core's reason."""
    try:
        yield
    except HandshakeFailed as exc:
        raise ConnectionRefused(exc.reason) from exc


class NoiseSecurity:
    def __init__(self, psk: bytes, outbound: bool, policy: RekeyPolicy) -> None:
        self.side: Initiator | Responder = (
            Initiator(psk, HANDSHAKE_CONTEXT, os.urandom)
            if outbound
            else Responder(psk, HANDSHAKE_CONTEXT, os.urandom)
        )
        self.policy = policy
        self.cipher: ControlCipher | None = None

    def _finish(self) -> None:
        result = self.side.result()
        self.cipher = ControlCipher(result.control_send_key, result.control_recv_key)

    def _initiator(self) -> Initiator:
        if not isinstance(self.side, Initiator):
            raise ConnectionRefused("handshake role confusion: we are the responder")
        return self.side

    def _responder(self) -> Responder:
        if not isinstance(self.side, Responder):
            raise ConnectionRefused("handshake role confusion: we are the initiator")
        return self.side

    def create_initiation(self, hello: bytes) -> bytes:
        with _refusing():
            return self._initiator().create_initiation(hello)

    def consume_response(self, message: bytes) -> bytes:
        with _refusing():
            payload = self._initiator().consume_response(message)
        self._finish()
        return payload

    def consume_initiation(self, message: bytes) -> bytes:
        with _refusing():
            return self._responder().consume_initiation(message)

    def create_response(self, hello: bytes) -> bytes:
        with _refusing():
            message = self._responder().create_response(hello)
        self._finish()
        return message

    def seal(self, message: bytes) -> bytes:
        if self.cipher is None:
            raise ConnectionRefused("control message before the handshake completed")
        return self.cipher.seal(message)

    def open(self, record: bytes) -> bytes:
        if self.cipher is None:
            raise ConnectionRefused("control message before the handshake completed")
        try:
            return self.cipher.open(record)
        except ControlCipherError as exc:
            raise ConnectionRefused(f"control stream authentication failed: {exc}") from exc

    def data_pair(self, now: float) -> tuple[DataSender, DataReceiver]:
        return create_data_pair(self.side.result(), now, os.urandom, self.policy)
