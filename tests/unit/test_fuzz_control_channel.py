"""The control channel and the data links against hostile input: only the documented outcome.

Theory of operation: a `ControlChannel` runs over in-memory streams (a StreamReader fed by
the test, a writer that records or feeds the other end), so the real handshake code meets
real peers and arbitrary bytes without sockets.  Whatever arrives, the handshake must end
in a Hello or in `ConnectionRefused` with a reason (never another exception, never a hang),
a wrong password must be named on both sides, and a stream that passed the handshake must
refuse garbage records.  `SealedLink.open`/`PlainLink.open` get arbitrary datagrams of the
sizes the data plane hands them (more than a header) and must count, not raise.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyweave.router.core.crypto.data_keys import RekeyPolicy
from pyweave.router.core.link import PlainLink, SealedLink
from pyweave.router.core.wire.control import (
    MODE_NOISE_PSK,
    MODE_PLAIN,
    Hello,
    push_hello,
    push_preamble,
    push_record,
)
from pyweave.router.io.control import ConnectionRefused, ControlChannel
from pyweave.router.security import NoiseSecurity

PSK = bytes(range(32))
OTHER_PSK = bytes(range(1, 33))
HELLO = Hello(name=0x0A0B0C0D0E0F, uid=7, udp_port=6783, receiver_index=99, nickname="fuzz")


class MemoryWriter:
    """The writer half of an in-memory stream: records bytes, or feeds a peer's reader."""

    def __init__(self, peer: asyncio.StreamReader | None = None) -> None:
        self.peer = peer
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data
        if self.peer is not None and not self.closed:
            self.peer.feed_data(data)

    def close(self) -> None:
        if not self.closed and self.peer is not None:
            self.peer.feed_eof()
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("192.0.2.99", 40000) if name == "peername" else None


def channel(
    reader: asyncio.StreamReader, writer: MemoryWriter, outbound: bool, psk: bytes | None
) -> ControlChannel:
    security = None if psk is None else NoiseSecurity(psk, outbound, RekeyPolicy())
    return ControlChannel(reader, writer, outbound, security)  # type: ignore[arg-type]


async def handshake_with_bytes(data: bytes, outbound: bool, psk: bytes | None) -> object:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    chan = channel(reader, MemoryWriter(), outbound, psk)
    try:
        return await chan.handshake(HELLO)
    except ConnectionRefused as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return exc


def stream(mode: int) -> st.SearchStrategy[bytes]:
    """Garbage of every depth: raw bytes, after a preamble, inside length-prefixed records."""
    preamble = push_preamble(mode)
    record = st.binary(max_size=200).map(lambda b: push_record(b"\x01" + b))
    huge = st.integers(0, 2**32 - 1).map(lambda n: struct.pack("!I", n))
    return st.one_of(
        st.binary(max_size=120),
        st.binary(max_size=120).map(lambda b: preamble + b),
        st.tuples(record, st.binary(max_size=50)).map(lambda t: preamble + t[0] + t[1]),
        st.tuples(huge, st.binary(max_size=50)).map(lambda t: preamble + t[0] + t[1]),
    )


@settings(max_examples=300, deadline=None)
@given(data=stream(MODE_NOISE_PSK), outbound=st.booleans())
def test_fuzz_encrypted_handshake_only_refuses(data: bytes, outbound: bool) -> None:
    outcome = asyncio.run(handshake_with_bytes(data, outbound, PSK))
    assert isinstance(outcome, ConnectionRefused), f"garbage completed a handshake: {outcome}"


@settings(max_examples=200, deadline=None)
@given(data=stream(MODE_PLAIN), outbound=st.booleans())
def test_fuzz_plain_handshake_refuses_or_reads_a_hello(data: bytes, outbound: bool) -> None:
    outcome = asyncio.run(handshake_with_bytes(data, outbound, None))
    assert isinstance(outcome, ConnectionRefused | Hello)


async def pair(psk_dialer: bytes | None, psk_listener: bytes | None) -> tuple[object, object]:
    """Handshake a dialer and a listener over in-memory pipes; each side's outcome."""
    to_listener, to_dialer = asyncio.StreamReader(), asyncio.StreamReader()
    dialer = channel(to_dialer, MemoryWriter(to_listener), True, psk_dialer)
    listener = channel(to_listener, MemoryWriter(to_dialer), False, psk_listener)

    async def run(chan: ControlChannel) -> object:
        try:
            return await chan.handshake(HELLO)
        except ConnectionRefused as exc:
            chan.close(exc.reason)
            return exc

    outcomes = await asyncio.gather(run(dialer), run(listener))
    return outcomes[0], outcomes[1]


def reason(outcome: object) -> str:
    assert isinstance(outcome, ConnectionRefused), f"expected a refusal, got {outcome}"
    return outcome.reason


def test_same_password_connects() -> None:
    dialer, listener = asyncio.run(pair(PSK, PSK))
    assert dialer == HELLO and listener == HELLO


def test_wrong_password_is_named_on_both_sides() -> None:
    dialer, listener = asyncio.run(pair(PSK, OTHER_PSK))
    wrong = "authentication failed: the peer uses a different password"
    assert reason(listener) == wrong
    assert reason(dialer) == f"peer refused the handshake: {wrong}"


@pytest.mark.parametrize("dialer_has_password", [True, False])
def test_password_on_one_side_is_a_mismatch_on_both(dialer_has_password: bool) -> None:
    psks = (PSK, None) if dialer_has_password else (None, PSK)
    outcomes = asyncio.run(pair(*psks))
    with_pw, without_pw = outcomes if dialer_has_password else outcomes[::-1]
    assert reason(with_pw) == "encryption mismatch: we have a password but the peer has none"
    assert reason(without_pw) == "encryption mismatch: the peer has a password but we have none"


@settings(max_examples=100, deadline=None)
@given(records=st.lists(st.binary(max_size=100), min_size=1, max_size=3))
def test_fuzz_records_after_the_handshake_are_refused(records: list[bytes]) -> None:
    async def scenario() -> None:
        to_listener, to_dialer = asyncio.StreamReader(), asyncio.StreamReader()
        dialer = channel(to_dialer, MemoryWriter(to_listener), True, PSK)
        listener = channel(to_listener, MemoryWriter(to_dialer), False, PSK)
        await asyncio.gather(dialer.handshake(HELLO), listener.handshake(HELLO))
        dialer.send(b"\x02genuine")
        assert await listener.recv() == b"\x02genuine"
        for record in records:  # an attacker's records spliced into the stream
            to_listener.feed_data(push_record(record))
        with pytest.raises(ConnectionRefused, match="control stream authentication failed"):
            await listener.recv()

    asyncio.run(scenario())


def sealed_links() -> tuple[SealedLink, SealedLink]:
    async def handshake() -> tuple[ControlChannel, ControlChannel]:
        to_listener, to_dialer = asyncio.StreamReader(), asyncio.StreamReader()
        dialer = channel(to_dialer, MemoryWriter(to_listener), True, PSK)
        listener = channel(to_listener, MemoryWriter(to_dialer), False, PSK)
        await asyncio.gather(dialer.handshake(HELLO), listener.handshake(HELLO))
        return dialer, listener

    dialer, listener = asyncio.run(handshake())
    links = []
    for chan in (dialer, listener):
        assert chan.security is not None
        sender, receiver = chan.security.data_pair(0.0)
        links.append(SealedLink(1, ("192.0.2.1", 6783), 5, 5, 1472, sender, receiver))
    return links[0], links[1]


SENDER, RECEIVER = sealed_links()


@settings(max_examples=300)
@given(datagram=st.binary(min_size=17, max_size=200), keep_header=st.booleans())
def test_fuzz_sealed_link_open_counts_never_raises(datagram: bytes, keep_header: bool) -> None:
    if keep_header:  # a genuine header (fresh counter), forged rest
        datagram = SENDER.seal(b"x")[:16] + datagram[16:]
    before = RECEIVER.receiver.drops_malformed + RECEIVER.receiver.drops_unknown_epoch
    before += RECEIVER.receiver.drops_auth + RECEIVER.receiver.drops_replay
    assert RECEIVER.open(datagram) is None
    after = sum(RECEIVER.drop_counts())
    assert after == before + 1
    body = os.urandom(20)  # the link still works
    opened = RECEIVER.open(SENDER.seal(body))
    assert opened is not None and bytes(opened) == body


@settings(max_examples=200)
@given(datagram=st.binary(min_size=17, max_size=200))
def test_fuzz_plain_link_open_never_raises(datagram: bytes) -> None:
    link = PlainLink(1, ("192.0.2.1", 6783), 5, 5, 1472)
    opened = link.open(datagram)
    length = int.from_bytes(datagram[2:4], "big")  # 0: up to the end of the read
    assert (opened is None) == (datagram[0] != 0x02 or length not in (0, len(datagram)))
    assert link.drops_malformed == (opened is None)


def test_plain_link_rejects_tiny_datagrams_without_raising() -> None:
    link = PlainLink(1, ("192.0.2.1", 6783), 5, 5, 1472)
    for size in range(17):
        assert link.open(b"\x02" * size) is None
    assert link.drops_malformed == 17


def test_hello_survives_the_noise_handshake_round_trip() -> None:
    dialer, _listener = asyncio.run(pair(PSK, PSK))
    assert isinstance(dialer, Hello)
    assert push_hello(dialer) == push_hello(HELLO)
