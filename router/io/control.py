"""TCP control connections: preamble, handshake, then a stream of messages.

Theory of operation: a `ControlChannel` wraps one asyncio stream pair.  Both ends send
the preamble at once; a mismatch of version or security mode ends the connection with a
reason a person can act on ("the peer has no password but we do").  Then the handshake
exchanges HELLOs — in the clear (plain mode) or inside the two Noise handshake messages
(encrypted mode, see `security`).  Afterwards `recv` returns one message at a time and
`send` queues one; in encrypted mode the `Security` layer seals and opens every record.
All byte layouts live in core/wire/control.py; this module only moves them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from pyweave.router.core.crypto.data_keys import DataReceiver, DataSender
from pyweave.router.core.wire.control import (
    CONTROL_VERSION,
    MODE_NOISE_PSK,
    MODE_PLAIN,
    PREAMBLE_SIZE,
    RECORD_LEN_SIZE,
    Hello,
    MalformedControl,
    pull_hello,
    pull_preamble,
    pull_record_length,
    push_close,
    push_confirm,
    push_hello,
    push_preamble,
    push_record,
)

HANDSHAKE_TIMEOUT = 10.0
# Encrypted-mode handshake records start with one of these: a Noise message follows, or
# the responder's reason for refusing (so the dialer can show why, e.g. a wrong password).
HANDSHAKE_MESSAGE = b"\x01"
HANDSHAKE_REJECTED = b"\x00"


class ConnectionRefused(Exception):
    """The connection cannot go on; `reason` is shown in `weave status connections`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Security(Protocol):
    """The encrypted-mode hooks; plain mode has none."""

    def create_initiation(self, hello: bytes) -> bytes: ...

    def consume_initiation(self, message: bytes) -> bytes: ...

    def create_response(self, hello: bytes) -> bytes: ...

    def consume_response(self, message: bytes) -> bytes: ...

    def seal(self, message: bytes) -> bytes: ...

    def open(self, record: bytes) -> bytes: ...

    def data_pair(self, now: float) -> tuple[DataSender, DataReceiver]: ...


def _handshake_body(record: bytes) -> bytes:
    if record[:1] == HANDSHAKE_REJECTED:
        reason = record[1:].decode("utf-8", errors="replace")
        raise ConnectionRefused(f"peer refused the handshake: {reason}")
    if record[:1] != HANDSHAKE_MESSAGE:
        raise MalformedControl("malformed handshake record")
    return record[1:]


def _mode_mismatch(ours: int, theirs: int) -> str:
    if ours == MODE_NOISE_PSK and theirs == MODE_PLAIN:
        return "encryption mismatch: we have a password but the peer has none"
    if ours == MODE_PLAIN and theirs == MODE_NOISE_PSK:
        return "encryption mismatch: the peer has a password but we have none"
    return f"unknown security mode {theirs}"


class ControlChannel:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        outbound: bool,
        security: Security | None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.outbound = outbound
        self.security = security
        self.mode = MODE_NOISE_PSK if security is not None else MODE_PLAIN
        peer = writer.get_extra_info("peername")
        self.remote = (str(peer[0]), int(peer[1])) if peer else ("?", 0)
        self.closed = False
        self.ready = False  # the handshake completed: messages may flow

    async def _read_record(self) -> bytes:
        prefix = await self.reader.readexactly(RECORD_LEN_SIZE)
        return await self.reader.readexactly(pull_record_length(prefix))

    def _write_record(self, body: bytes) -> None:
        self.writer.write(push_record(body))

    async def handshake(self, hello: Hello) -> Hello:
        """Exchange preambles and HELLOs; return the peer's HELLO."""
        try:
            theirs = await asyncio.wait_for(self._handshake(hello), HANDSHAKE_TIMEOUT)
        except TimeoutError as exc:
            raise ConnectionRefused("handshake timed out") from exc
        except asyncio.IncompleteReadError as exc:
            raise ConnectionRefused("connection closed during handshake") from exc
        except MalformedControl as exc:
            raise ConnectionRefused(f"protocol error: {exc}") from exc
        except OSError as exc:
            raise ConnectionRefused(f"connection error: {exc.strerror or exc}") from exc
        self.ready = True
        return theirs

    async def _handshake(self, hello: Hello) -> Hello:
        self.writer.write(push_preamble(self.mode))
        version, mode = pull_preamble(await self.reader.readexactly(PREAMBLE_SIZE))
        if version != CONTROL_VERSION:
            raise ConnectionRefused(
                f"protocol version mismatch: ours {CONTROL_VERSION}, theirs {version}"
            )
        if mode != self.mode:
            raise ConnectionRefused(_mode_mismatch(self.mode, mode))
        ours = push_hello(hello)
        if self.security is None:
            self._write_record(ours)
            return pull_hello(await self._read_record())
        theirs = await self._secure_handshake(ours)
        await self._confirm_keys()
        return theirs

    async def _confirm_keys(self) -> None:
        """Key confirmation: NNpsk0's first message can be replayed by an eavesdropper, so
        the responder accepts the peer only once a record sealed with the new control key
        arrives; both ends send one right after the handshake."""
        assert self.security is not None
        self._write_record(self.security.seal(push_confirm()))
        if not self.outbound:
            record = await self._read_record()
            if self.security.open(record) != push_confirm():
                raise ConnectionRefused("key confirmation failed")

    async def _secure_handshake(self, ours: bytes) -> Hello:
        security = self.security
        assert security is not None
        if self.outbound:
            self._write_record(HANDSHAKE_MESSAGE + security.create_initiation(ours))
            theirs = security.consume_response(_handshake_body(await self._read_record()))
        else:
            try:
                theirs = security.consume_initiation(_handshake_body(await self._read_record()))
            except ConnectionRefused as exc:  # tell the dialer why, then give up
                self._write_record(HANDSHAKE_REJECTED + exc.reason.encode()[:512])
                raise
            self._write_record(HANDSHAKE_MESSAGE + security.create_response(ours))
        return pull_hello(theirs)

    async def recv(self) -> bytes:
        record = await self._read_record()
        if self.security is not None:
            return self.security.open(record)
        return record

    def send(self, message: bytes) -> None:
        if self.closed:
            return
        if self.security is not None:
            message = self.security.seal(message)
        self._write_record(message)

    def close(self, reason: str | None = None) -> None:
        if self.closed:
            return
        if reason is not None and self.ready:  # before that the peer expects a handshake
            with contextlib.suppress(Exception):
                self.send(push_close(reason))
        self.closed = True
        self.writer.close()
