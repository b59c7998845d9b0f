"""Byte layouts of the TCP control connection (port 6783).

Theory of operation: both ends of a new TCP connection first send a 10-byte *preamble*:

    0  8B  magic b"pyweave\\0"
    8  u8  protocol version (CONTROL_VERSION)
    9  u8  security mode (MODE_PLAIN, or MODE_NOISE_PSK when a password is set)

A version or mode mismatch is detected here and reported in plain words, before any
secret is used.  After the preamble the stream is a sequence of *records*: a u32
big-endian length followed by that many bytes.  In plain mode a record is a message; in
encrypted mode the first record each way is a Noise handshake message (whose payload is
the HELLO) and every later record is a message sealed by the control cipher.

Messages are one type byte followed by the type's fields:

    HELLO   6B peer name, u64 uid, u16 UDP port, u32 receiver index, u8 flags,
            u8 nickname length, nickname (UTF-8)
    GOSSIP  u8 channel-name length, channel name (ASCII), payload
    REKEY_REQUEST / REKEY_ANSWER   opaque bytes of the data-key rekey exchange
    CLOSE   reason (UTF-8): why the sender is dropping the connection
    CONFIRM (no fields) first message after an encrypted handshake: key confirmation
    UNICAST u8 channel-name length, channel name, 6B source peer, 6B destination peer,
            payload: a message for one peer's channel, relayed hop by hop
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"pyweave\x00"
# 2: datagram length field, trains of pieces (2026-11-28)
# 3: UDP GSO records in frames bodies (2026-12-04): a version-2 receiver on Linux < 6.2
#    would drop them, so the two refuse each other instead of losing small UDP silently
# 4: plain trains salvaged (core/wire/salvage.py), so plain links keep super-frames under
#    loss: a version-3 receiver would lose them whole (2026-12-04)
CONTROL_VERSION = 4
MODE_PLAIN = 0
MODE_NOISE_PSK = 1
PREAMBLE = struct.Struct("!8sBB")
PREAMBLE_SIZE = PREAMBLE.size  # 10

RECORD_LEN = struct.Struct("!I")
RECORD_LEN_SIZE = RECORD_LEN.size
MAX_RECORD_SIZE = 4 * 1024 * 1024

MSG_HELLO = 1
MSG_GOSSIP = 2
MSG_REKEY_REQUEST = 3
MSG_REKEY_ANSWER = 4
MSG_CLOSE = 5
MSG_UNICAST = 6
MSG_CONFIRM = 7

HELLO_FIXED = struct.Struct("!6sQHIBB")
HELLO_FLAG_DISCOVERY = 0x01
HELLO_FLAG_TRUSTS_YOU = 0x02  # the sender's trusted subnets contain the receiver's address
MAX_NICKNAME = 255
MAX_CHANNEL = 64


class MalformedControl(ValueError):
    """Bytes on the control connection that do not follow the layout above."""


@dataclass(frozen=True, slots=True)
class Hello:
    name: int
    uid: int
    udp_port: int
    receiver_index: int
    nickname: str
    flags: int = 0


def push_preamble(mode: int) -> bytes:
    return PREAMBLE.pack(MAGIC, CONTROL_VERSION, mode)


def pull_preamble(data: bytes) -> tuple[int, int]:
    """Return (version, mode); raise MalformedControl when it is not a pyweave peer."""
    if len(data) != PREAMBLE_SIZE:
        raise MalformedControl("short preamble")
    magic, version, mode = PREAMBLE.unpack(data)
    if magic != MAGIC:
        raise MalformedControl("the remote end does not speak the pyweave protocol")
    return version, mode


def push_record(body: bytes) -> bytes:
    if len(body) > MAX_RECORD_SIZE:
        raise MalformedControl(f"record of {len(body)} bytes exceeds {MAX_RECORD_SIZE}")
    return RECORD_LEN.pack(len(body)) + body


def pull_record_length(prefix: bytes) -> int:
    (length,) = RECORD_LEN.unpack(prefix)
    if length > MAX_RECORD_SIZE:
        raise MalformedControl(f"record of {length} bytes exceeds {MAX_RECORD_SIZE}")
    return int(length)


def push_hello(hello: Hello) -> bytes:
    nick = hello.nickname.encode("utf-8")[:MAX_NICKNAME]
    fixed = HELLO_FIXED.pack(
        hello.name.to_bytes(6, "big"),
        hello.uid,
        hello.udp_port,
        hello.receiver_index,
        hello.flags,
        len(nick),
    )
    return bytes([MSG_HELLO]) + fixed + nick


def pull_hello(message: bytes) -> Hello:
    if not message or message[0] != MSG_HELLO:
        raise MalformedControl("expected a HELLO message")
    if len(message) < 1 + HELLO_FIXED.size:
        raise MalformedControl("truncated HELLO")
    name, uid, port, index, flags, nick_len = HELLO_FIXED.unpack_from(message, 1)
    nick_raw = message[1 + HELLO_FIXED.size :]
    if len(nick_raw) != nick_len:
        raise MalformedControl("HELLO nickname length mismatch")
    try:
        nickname = nick_raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedControl("HELLO nickname is not UTF-8") from exc
    return Hello(int.from_bytes(name, "big"), uid, port, index, nickname, flags)


def push_gossip(channel: str, payload: bytes) -> bytes:
    raw = channel.encode("ascii")
    if not raw or len(raw) > MAX_CHANNEL:
        raise MalformedControl(f"bad gossip channel name {channel!r}")
    return bytes([MSG_GOSSIP, len(raw)]) + raw + payload


def pull_gossip(message: bytes) -> tuple[str, bytes]:
    if len(message) < 2 or message[0] != MSG_GOSSIP:
        raise MalformedControl("expected a GOSSIP message")
    length = message[1]
    if length == 0 or 2 + length > len(message):
        raise MalformedControl("GOSSIP channel name overruns the message")
    try:
        channel = message[2 : 2 + length].decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedControl("GOSSIP channel name is not ASCII") from exc
    return channel, message[2 + length :]


def push_unicast(channel: str, source: int, dest: int, payload: bytes) -> bytes:
    raw = channel.encode("ascii")
    if not raw or len(raw) > MAX_CHANNEL:
        raise MalformedControl(f"bad unicast channel name {channel!r}")
    return (
        bytes([MSG_UNICAST, len(raw)])
        + raw
        + source.to_bytes(6, "big")
        + dest.to_bytes(6, "big")
        + payload
    )


def pull_unicast(message: bytes) -> tuple[str, int, int, bytes]:
    """Return (channel, source, dest, payload) of a UNICAST message."""
    if len(message) < 2 or message[0] != MSG_UNICAST:
        raise MalformedControl("expected a UNICAST message")
    length = message[1]
    end = 2 + length
    if length == 0 or end + 12 > len(message):
        raise MalformedControl("UNICAST header overruns the message")
    try:
        channel = message[2:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedControl("UNICAST channel name is not ASCII") from exc
    source = int.from_bytes(message[end : end + 6], "big")
    dest = int.from_bytes(message[end + 6 : end + 12], "big")
    return channel, source, dest, message[end + 12 :]


def push_confirm() -> bytes:
    return bytes([MSG_CONFIRM])


def push_opaque(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + payload


def push_close(reason: str) -> bytes:
    return bytes([MSG_CLOSE]) + reason.encode("utf-8")[:1024]


def pull_close(message: bytes) -> str:
    return message[1:].decode("utf-8", errors="replace")


def message_type(message: bytes) -> int:
    if not message:
        raise MalformedControl("empty message")
    return message[0]
