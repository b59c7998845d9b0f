"""Connector: targets, discovery, backoff with jitter and cap, limits, refusals."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyweave.router.core.connector import (
    Connector,
    discover_addresses,
    split_address,
)
from pyweave.router.core.topology import ConnectionRecord, PeerRecord


def make(**kw: object) -> Connector:
    return Connector(6783, random.Random(3), **kw)  # type: ignore[arg-type]


def test_address_normalisation() -> None:
    c = make()
    assert c.add_targets(["10.0.0.2", "10.0.0.3:7000", "[fe80::1]:99", "::1"]) == [
        "10.0.0.2:6783",
        "10.0.0.3:7000",
        "[fe80::1]:99",
        "[::1]:6783",
    ]
    for bad in ("", "1.2.3.4:0", "1.2.3.4:x", ":80", "[::1", "1.2.3.4:70000"):
        with pytest.raises(ValueError):
            split_address(bad)


def test_due_then_connecting_then_backoff() -> None:
    c = make()
    c.add_targets(["10.0.0.2"])
    assert c.due(0.0) == ["10.0.0.2:6783"]
    assert c.due(0.0) == []  # in flight
    assert c.status(0.0)[0].state == "connecting"
    c.connection_failed("10.0.0.2:6783", "connection refused", now=10.0)
    (st_,) = c.status(10.0)
    assert st_.state == "failed" and st_.reason == "connection refused"
    assert st_.retry_at is not None and 10.75 <= st_.retry_at <= 11.25
    assert c.next_deadline() == st_.retry_at
    assert c.due(st_.retry_at - 0.01) == []
    assert c.due(st_.retry_at) == ["10.0.0.2:6783"]


@given(st.integers(0, 2**32), st.integers(1, 40))
def test_backoff_bounds_and_cap(seed: int, failures: int) -> None:
    c = Connector(6783, random.Random(seed))
    c.add_targets(["h:1"])
    now, interval = 0.0, 1.0
    for _ in range(failures):
        assert c.due(now) == ["h:1"]
        c.connection_failed("h:1", "refused", now)
        retry = c.status(now)[0].retry_at
        assert retry is not None
        delay = retry - now
        assert interval * 0.75 <= delay <= interval * 1.25
        assert delay <= 180.0 * 1.25
        interval = min(interval * 2, 180.0)
        now = retry


def test_long_lived_connection_retries_at_once() -> None:
    c = make()
    c.add_targets(["h:1"])
    for t in range(5):  # grow the interval
        c.due(1000.0 * t)
        c.connection_failed("h:1", "x", 1000.0 * t)
    c.due(10_000.0)
    c.connection_succeeded("h:1", 0xB, 10_000.0)
    c.connection_failed("h:1", "reset", 10_100.0)
    assert c.due(10_100.0) == ["h:1"]


def test_connect_to_ourself_never_retried_until_re_added() -> None:
    c = make()
    c.add_targets(["h:1"])
    c.due(0.0)
    c.connection_failed("h:1", "cannot connect to ourself", 0.0, retry=False)
    (s,) = c.status(1.0)
    assert s.state == "failed" and s.retry_at is None
    assert c.due(1e9) == [] and c.next_deadline() is None
    c.add_targets(["h:1"])
    assert c.due(5.0) == ["h:1"]


def test_forget_and_replace() -> None:
    c = make()
    c.add_targets(["a:1", "b:1"])
    c.forget_targets(["a:1", "garbage:"])
    assert c.targets() == ["b:1"]
    c.add_targets(["c:1"], replace=True)
    assert c.targets() == ["c:1"]
    assert c.due(0.0) == ["c:1"]


def test_conn_limit_stops_dialing() -> None:
    c = make(conn_limit=2)
    c.add_targets(["a:1"])
    c.update([], {1, 2}, [], [])
    assert c.due(0.0) == [] and c.next_deadline() is None
    c.update([], {1}, [], [])
    assert c.due(0.0) == ["a:1"]


def test_discovery_and_its_switch() -> None:
    us, b, c_, d = 1, 2, 3, 4
    records = [
        PeerRecord(
            b,
            "b",
            1,
            1,
            (
                ConnectionRecord(c_, "10.0.0.3:6783", True, True),
                ConnectionRecord(d, "10.0.0.4:51234", False, True),
                ConnectionRecord(us, "10.0.0.1:6783", False, True),
            ),
        )
    ]
    found = discover_addresses(records, us, connected={b}, port=6783)
    assert found == {"10.0.0.3:6783", "10.0.0.4:6783"}
    assert discover_addresses(records, us, connected={b, c_}, port=6783) == {"10.0.0.4:6783"}
    on, off = make(), make(discovery=False)
    for conn in (on, off):
        conn.update(found, {b}, [], [])
    assert on.due(0.0) == ["10.0.0.3:6783", "10.0.0.4:6783"]
    assert off.due(0.0) == []
    # once connected elsewhere, a discovered target that is no longer mentioned goes away
    on.connection_failed("10.0.0.3:6783", "refused", 0.0)
    on.update({"10.0.0.4:6783"}, {b}, [], [])
    assert [s.address for s in on.status(0.0)] == ["10.0.0.4:6783"]


def test_target_of_peer_connected_otherwise_is_not_dialed() -> None:
    c = make()
    c.add_targets(["h:1"])
    c.due(0.0)
    c.connection_succeeded("h:1", 0xB, 0.0)
    c.connection_failed("h:1", "duplicate connection", 1.0)
    c.update([], {0xB}, [], ["10.9.9.9:5555"])  # still connected to B inbound
    assert c.due(100.0) == [] and c.status(100.0) == []
    c.update([], set(), [], [])  # that connection went too: dial again
    assert c.due(100.0) == ["h:1"]


def test_portless_direct_target_skipped_while_inbound_from_its_ip() -> None:
    c = make()
    c.add_targets(["10.0.0.2"])
    c.update([], {0xB}, ["10.0.0.2:40000"], ["10.0.0.2:40000"])
    assert c.due(0.0) == []
    c.update([], set(), [], [])
    assert c.due(0.0) == ["10.0.0.2:6783"]


def test_lost_connection_shows_retrying() -> None:
    c = make()
    c.add_targets(["h:1"])
    c.due(0.0)
    c.connection_succeeded("h:1", 0xB, 0.0)
    c.connection_failed("h:1", "timeout", 5.0)
    (s,) = c.status(5.0)
    assert s.state == "retrying" and s.reason == "timeout" and s.retry_at is not None


def test_targets_are_listed_as_given() -> None:
    c = make()
    c.add_targets(["10.0.0.1", "10.0.0.2:7000"])
    assert c.targets() == ["10.0.0.1", "10.0.0.2:7000"]
    c.forget_targets([f"10.0.0.1:{c.port}"])  # the same target, spelled with our port
    assert c.targets() == ["10.0.0.2:7000"]


def test_retrying_lasts_while_a_lost_peer_stays_down() -> None:
    c = make()
    c.add_targets(["h:1"])
    c.due(0.0)
    c.connection_succeeded("h:1", 0xB, 0.0)
    c.connection_failed("h:1", "peer silent", 5.0)
    assert c.due(100.0) == ["h:1"]
    c.connection_failed("h:1", "connection refused", 100.0)
    (s,) = c.status(100.0)
    assert s.state == "retrying" and s.reason == "connection refused"


def test_a_refused_connection_is_not_redialed_at_once() -> None:
    # The peer accepts the handshake, then closes ("connection limit reached"): the mesh
    # reports the loss and then the connection set without that peer.  The target keeps
    # its backoff; it is not retried at once as it would be had another link to it gone.
    c = make()
    c.add_targets(["h:1"])
    c.update([], set(), [], [])
    assert c.due(0.0) == ["h:1"]
    c.update([], {0xB}, ["h:1"], [])
    c.connection_succeeded("h:1", 0xB, 0.0)
    c.connection_failed("h:1", "peer closed the connection: connection limit reached (1)", 0.1)
    c.update([], set(), [], [])
    assert c.due(0.1) == []
    (s,) = c.status(0.1)
    assert s.retry_at is not None and s.retry_at > 0.1 + 0.5
    assert "connection limit reached (1)" in s.reason
