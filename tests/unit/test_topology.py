"""Topology records: codec, merge by (version, uid), restarts, garbage collection."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyweave.router.core.topology import (
    ConnectionRecord,
    MalformedGossip,
    PeerRecord,
    Topology,
    decode_records,
    encode_records,
)
from pyweave.router.core.wire import gossip as wire

A, B, C, D = 0xA, 0xB, 0xC, 0xD


def conn(peer: int, address: str = "10.0.0.1:6783", outbound: bool = True) -> ConnectionRecord:
    return ConnectionRecord(peer, address, outbound, True)


def rec(name: int, version: int = 1, uid: int = 1, *peers: int) -> PeerRecord:
    return PeerRecord(name, f"n{name:x}", uid, version, tuple(conn(p) for p in peers))


names = st.integers(min_value=1, max_value=(1 << 48) - 1)
connections = st.builds(ConnectionRecord, names, st.text(max_size=40), st.booleans(), st.booleans())
records = st.builds(
    PeerRecord,
    names,
    st.text(max_size=30),
    st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 64) - 1),
    st.lists(connections, max_size=5).map(tuple),
)


@given(st.lists(records, max_size=8))
def test_codec_round_trip(rs: list[PeerRecord]) -> None:
    assert decode_records(encode_records(rs)) == rs


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_decoder_fuzz_only_malformed_escapes(data: bytes) -> None:
    with contextlib.suppress(MalformedGossip):
        decode_records(data)


@settings(max_examples=300)
@given(st.lists(records, min_size=1, max_size=4), st.data())
def test_decoder_fuzz_mutations(rs: list[PeerRecord], data: st.DataObject) -> None:
    raw = bytearray(encode_records(rs))
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255))))
    for index, value in flips:
        raw[index] = value
    for candidate in (bytes(raw), bytes(raw[:cut]), bytes(raw) + b"\x00"):
        with contextlib.suppress(MalformedGossip):
            decode_records(candidate)


def test_decoder_rejects_specific_garbage() -> None:
    good = encode_records([rec(A, 1, 1, B)])
    with pytest.raises(MalformedGossip):
        decode_records(good[:-1])  # truncated
    with pytest.raises(MalformedGossip):
        decode_records(good + b"x")  # trailing
    with pytest.raises(MalformedGossip):
        decode_records((wire.MAX_RECORDS + 1).to_bytes(2, "big"))
    flags_at = len(good) - len("10.0.0.1:6783") - 2
    bad = bytearray(good)
    bad[flags_at] = 0x80
    with pytest.raises(MalformedGossip):
        decode_records(bytes(bad))
    nick = bytearray(encode_records([PeerRecord(A, "é", 1, 1, ())]))
    nick[2 + 6 + 16 + 1] = 0xFF  # first byte of the nickname: not UTF-8
    with pytest.raises(MalformedGossip):
        decode_records(bytes(nick))


def test_envelope_round_trip_and_fuzz() -> None:
    for msg in (
        wire.WireMessage(wire.KIND_GOSSIP, "topology", 0, 0, b"abc"),
        wire.WireMessage(wire.KIND_UNICAST, "ipam", A, B, b""),
    ):
        assert wire.pull_message(wire.push_message(msg)) == msg
    for bad in (b"", b"\x02\x00", b"\x01\x03ipa", b"\x01\x00\x00"):
        with pytest.raises(MalformedGossip):
            wire.pull_message(bad)


def test_merge_returns_only_delta() -> None:
    topo = Topology(A, "a", 1)
    topo.set_connections([conn(B)])
    first = topo.merge([rec(B, 3, 1, A, C), rec(C, 1, 1, B)])
    assert [r.name for r in first.delta] == [B, C]
    again = topo.merge([rec(B, 3, 1, A, C), rec(C, 1, 1, B), rec(B, 2, 1, A)])
    assert again.delta == () and not again.changed
    newer = topo.merge([rec(B, 4, 1, A, C), rec(C, 1, 1, B)])
    assert [r.version for r in newer.delta] == [4]


def test_same_version_higher_uid_wins_everywhere() -> None:
    x, y = rec(B, 5, 10, A), rec(B, 5, 20, A)
    for order in ((x, y), (y, x)):
        topo = Topology(A, "a", 1)
        topo.set_connections([conn(B)])
        topo.merge(order)
        assert topo.get(B) == y


def test_restart_bumps_beyond_old_incarnation() -> None:
    topo = Topology(A, "a", uid=2)  # restarted: version 1, new uid
    result = topo.merge([rec(A, 40, 1, B)])  # our past life, told by someone
    assert topo.ourself.uid == 2 and topo.ourself.version == 41
    assert result.delta == (topo.ourself,)
    assert topo.merge([rec(A, 3, 1, B)]).delta == ()  # older past life: nothing to do


def test_own_connections_bump_version_only_on_change() -> None:
    topo = Topology(A, "a", 1)
    r1 = topo.set_connections([conn(B), conn(C)])
    assert r1.delta[0].version == 2
    r2 = topo.set_connections([conn(C), conn(B)])
    assert not r2.changed and topo.ourself.version == 2


def test_gc_unreachable_but_keep_mentioned_and_pinned() -> None:
    topo = Topology(A, "a", 1)
    topo.set_connections([conn(B)])
    topo.merge([rec(B, 2, 1, A, C), rec(C, 2, 1, B, D), rec(D, 1, 1, C)])
    assert topo.names() == [A, B, C, D]
    # C drops D: D is no longer mentioned by anyone reachable -> gone
    result = topo.merge([rec(C, 3, 1, B)])
    assert result.removed == (D,) and D not in topo
    # B drops C but we hold a connection to C: pinned, kept
    topo.merge([rec(B, 3, 1, A)], pinned={C})
    assert C in topo
    # our own link to B goes: B and C vanish unless pinned
    assert topo.set_connections([], pinned=()).removed == (B, C)


def test_gc_of_unmentioned_newcomer_and_relay_excludes_it() -> None:
    topo = Topology(A, "a", 1)
    result = topo.merge([rec(D, 1, 1)])
    assert result.removed == (D,) and result.delta == ()


def test_name_zero_ignored() -> None:
    topo = Topology(A, "a", 1)
    assert not topo.merge([rec(0, 1, 1, A)]).changed
