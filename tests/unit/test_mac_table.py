from pyweave.router.core.mac_table import LOCAL, MacTable

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")


def test_learn_and_lookup() -> None:
    t = MacTable(expiry=10)
    assert t.learn(A, LOCAL, now=0.0) is True
    assert t.learn(A, LOCAL, now=1.0) is False
    assert t.lookup(A, now=2.0) == LOCAL
    assert t.lookup(B, now=2.0) is None


def test_move_to_other_owner_reports_change() -> None:
    t = MacTable(expiry=10)
    t.learn(A, 7, now=0.0)
    assert t.learn(A, 9, now=1.0) is True
    assert t.lookup(A, now=1.0) == 9


def test_entries_expire_without_traffic() -> None:
    t = MacTable(expiry=10)
    t.learn(A, 7, now=0.0)
    t.learn(B, 7, now=5.0)
    assert t.lookup(A, now=10.0) == 7
    assert t.lookup(A, now=10.5) is None
    assert t.expire(now=15.1) == 1
    assert len(t) == 0


def test_traffic_refreshes_expiry() -> None:
    t = MacTable(expiry=10)
    t.learn(A, 7, now=0.0)
    t.learn(A, 7, now=9.0)
    assert t.lookup(A, now=18.0) == 7


def test_forget_owner() -> None:
    t = MacTable()
    t.learn(A, 7, now=0.0)
    t.learn(B, 8, now=0.0)
    assert t.forget_owner(7) == 1
    assert t.lookup(A, now=0.0) is None
    assert t.lookup(B, now=0.0) == 8
