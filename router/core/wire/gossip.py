"""Byte layouts of gossip: topology records and the gossip envelope.

Theory of operation: these are pure pull_*/push_* pairs over bytes, no state.  Every
pull_* checks bounds before it reads and raises `MalformedGossip` -- and nothing else --
on any input it cannot parse: truncation, trailing bytes, counts over the limits below,
unknown flag bits, text that is not UTF-8.  The router counts such messages and drops
them; a peer must never be able to crash us with bytes.

All integers are big-endian.  Peer names are 6 bytes (see `names.py`).

Topology records (the payload of the "topology" gossip channel)::

    records    := count:u16  record{count}
    record     := name:6  uid:u64  version:u64  nick_len:u8  nickname:nick_len
                  conn_count:u16  connection{conn_count}
    connection := peer:6  flags:u8  addr_len:u8  address:addr_len
    flags      := bit 0 outbound, bit 1 established, other bits must be zero

Gossip envelope (what one control-connection message carries; optional for the shell)::

    message    := kind:u8  chan_len:u8  channel:chan_len  [source:6 dest:6]  payload:rest
    kind       := 0 gossip to a neighbour | 1 unicast (source and dest present)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import cast

from pyweave.router.core.names import PEER_NAME_SIZE

# Sizes of fixed fields, in bytes.
COUNT_SIZE = 2
UID_SIZE = 8
VERSION_SIZE = 8
NICK_LEN_SIZE = 1
FLAGS_SIZE = 1
ADDR_LEN_SIZE = 1
KIND_SIZE = 1
CHAN_LEN_SIZE = 1

# Limits a well-behaved peer stays under; anything above is malformed.
MAX_RECORDS = 4096
MAX_CONNECTIONS = 1024
MAX_NICKNAME = 255
MAX_ADDRESS = 255
MAX_CHANNEL = 255
MAX_U64 = (1 << 64) - 1

FLAG_OUTBOUND = 0x01
FLAG_ESTABLISHED = 0x02
FLAGS_KNOWN = FLAG_OUTBOUND | FLAG_ESTABLISHED

KIND_GOSSIP = 0
KIND_UNICAST = 1

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_NAME = struct.Struct(">6s")
_CONN_HEAD = struct.Struct(">6sBB")  # peer, flags, addr_len
_RECORD_HEAD = struct.Struct(">6sQQB")  # name, uid, version, nick_len


class MalformedGossip(ValueError):
    """Gossip bytes that do not follow the layouts above.  The only error pull_* raise."""


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """One edge as reported by the peer that owns the record it sits in."""

    peer: int
    address: str
    outbound: bool
    established: bool


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """What a peer says about itself; only that peer writes it (see topology.py)."""

    name: int
    nickname: str
    uid: int
    version: int
    connections: tuple[ConnectionRecord, ...]


@dataclass(frozen=True, slots=True)
class WireMessage:
    """A decoded gossip envelope; source and dest are 0 for neighbour gossip."""

    kind: int
    channel: str
    source: int
    dest: int
    payload: bytes


class _Reader:
    """A cursor over bytes whose every read is bounds-checked first."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.offset = 0

    def need(self, size: int) -> int:
        """Check `size` more bytes exist; return the current offset and advance."""
        start = self.offset
        if start + size > len(self.data):
            raise MalformedGossip(f"truncated at byte {start}: need {size} more")
        self.offset = start + size
        return start

    def u8(self) -> int:
        return self.data[self.need(1)]

    def u16(self) -> int:
        return int(_U16.unpack_from(self.data, self.need(COUNT_SIZE))[0])

    def unpack(self, layout: struct.Struct) -> tuple[object, ...]:
        return layout.unpack_from(self.data, self.need(layout.size))

    def text(self, size: int, what: str) -> str:
        start = self.need(size)
        try:
            return self.data[start : start + size].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedGossip(f"{what} is not UTF-8") from exc

    def rest(self) -> bytes:
        start = self.need(len(self.data) - self.offset)
        return self.data[start:]

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise MalformedGossip(f"{len(self.data) - self.offset} trailing bytes")


def _push_text(out: bytearray, text: str, limit: int, what: str) -> None:
    raw = text.encode("utf-8")
    if len(raw) > limit:
        raise ValueError(f"{what} longer than {limit} bytes: {text[:40]!r}")
    out.append(len(raw))
    out += raw


def _push_name(out: bytearray, name: int) -> None:
    out += name.to_bytes(PEER_NAME_SIZE, "big")


def push_connection(out: bytearray, conn: ConnectionRecord) -> None:
    _push_name(out, conn.peer)
    flags = (FLAG_OUTBOUND if conn.outbound else 0) | (FLAG_ESTABLISHED if conn.established else 0)
    out.append(flags)
    _push_text(out, conn.address, MAX_ADDRESS, "address")


def pull_connection(reader: _Reader) -> ConnectionRecord:
    raw_peer, flags, addr_len = cast(tuple[bytes, int, int], reader.unpack(_CONN_HEAD))
    if flags & ~FLAGS_KNOWN:
        raise MalformedGossip(f"unknown connection flags {flags:#x}")
    address = reader.text(addr_len, "address")
    return ConnectionRecord(
        int.from_bytes(raw_peer, "big"),
        address,
        bool(flags & FLAG_OUTBOUND),
        bool(flags & FLAG_ESTABLISHED),
    )


def push_record(out: bytearray, record: PeerRecord) -> None:
    if len(record.connections) > MAX_CONNECTIONS:
        raise ValueError(f"more than {MAX_CONNECTIONS} connections")
    _push_name(out, record.name)
    out += _U64.pack(record.uid)
    out += _U64.pack(record.version)
    _push_text(out, record.nickname, MAX_NICKNAME, "nickname")
    out += _U16.pack(len(record.connections))
    for conn in record.connections:
        push_connection(out, conn)


def pull_record(reader: _Reader) -> PeerRecord:
    head = cast(tuple[bytes, int, int, int], reader.unpack(_RECORD_HEAD))
    raw_name, uid, version, nick_len = head
    nickname = reader.text(nick_len, "nickname")
    count = reader.u16()
    if count > MAX_CONNECTIONS:
        raise MalformedGossip(f"{count} connections exceed the limit of {MAX_CONNECTIONS}")
    conns = _pull_connections(reader, count)
    return PeerRecord(int.from_bytes(raw_name, "big"), nickname, uid, version, conns)


def _pull_connections(reader: _Reader, count: int) -> tuple[ConnectionRecord, ...]:
    """`count` times `pull_connection`, unrolled: full states are mostly connections."""
    data, offset, end = reader.data, reader.offset, len(reader.data)
    unpack_from, head_size = _CONN_HEAD.unpack_from, _CONN_HEAD.size
    conns = []
    try:
        for _ in range(count):
            if offset + head_size > end:
                raise MalformedGossip(f"truncated connection at byte {offset}")
            raw_peer, flags, addr_len = unpack_from(data, offset)
            offset += head_size
            if flags & ~FLAGS_KNOWN:
                raise MalformedGossip(f"unknown connection flags {flags:#x}")
            if offset + addr_len > end:
                raise MalformedGossip(f"truncated address at byte {offset}")
            address = data[offset : offset + addr_len].decode("utf-8")
            offset += addr_len
            conns.append(
                ConnectionRecord(
                    int.from_bytes(raw_peer, "big"),
                    address,
                    bool(flags & FLAG_OUTBOUND),
                    bool(flags & FLAG_ESTABLISHED),
                )
            )
    except UnicodeDecodeError as exc:
        raise MalformedGossip("address is not UTF-8") from exc
    reader.offset = offset
    return tuple(conns)


def push_records(records: list[PeerRecord]) -> bytes:
    if len(records) > MAX_RECORDS:
        raise ValueError(f"more than {MAX_RECORDS} records in one message")
    out = bytearray(_U16.pack(len(records)))
    for record in records:
        push_record(out, record)
    return bytes(out)


def pull_records(data: bytes) -> list[PeerRecord]:
    reader = _Reader(data)
    count = reader.u16()
    if count > MAX_RECORDS:
        raise MalformedGossip(f"{count} records exceed the limit of {MAX_RECORDS}")
    records = [pull_record(reader) for _ in range(count)]
    reader.finish()
    return records


def push_message(message: WireMessage) -> bytes:
    """The gossip envelope: channel name, routing for unicasts, then the payload."""
    if message.kind not in (KIND_GOSSIP, KIND_UNICAST):
        raise ValueError(f"unknown gossip kind {message.kind}")
    out = bytearray([message.kind])
    _push_text(out, message.channel, MAX_CHANNEL, "channel")
    if message.kind == KIND_UNICAST:
        _push_name(out, message.source)
        _push_name(out, message.dest)
    out += message.payload
    return bytes(out)


def pull_message(data: bytes) -> WireMessage:
    reader = _Reader(data)
    kind = reader.u8()
    if kind not in (KIND_GOSSIP, KIND_UNICAST):
        raise MalformedGossip(f"unknown gossip kind {kind}")
    channel = reader.text(reader.u8(), "channel")
    source = dest = 0
    if kind == KIND_UNICAST:
        raw_source = cast(bytes, reader.unpack(_NAME)[0])
        raw_dest = cast(bytes, reader.unpack(_NAME)[0])
        source, dest = int.from_bytes(raw_source, "big"), int.from_bytes(raw_dest, "big")
    return WireMessage(kind, channel, source, dest, reader.rest())
