import random

import pytest
from pyweave.router.core.targets import (
    BACKOFF_CAP,
    JITTER,
    BadTarget,
    Targets,
    normalise_target,
)


def test_normalise() -> None:
    assert normalise_target("192.0.2.1", 6783) == "192.0.2.1:6783"
    assert normalise_target("h1:7000", 6783) == "h1:7000"
    for bad in ("", "a b", "h:0", "h:99999", ":1", "h:x"):
        with pytest.raises(BadTarget):
            normalise_target(bad, 6783)


def test_backoff_grows_is_capped_and_jittered() -> None:
    t = Targets(random.Random(1), 6783)
    delays = [t.backoff(n) for n in range(20)]
    assert all(d <= BACKOFF_CAP * (1 + JITTER) for d in delays)
    assert delays[5] > delays[0]
    assert len({round(d, 6) for d in delays[10:]}) > 1  # jitter spreads retries


def test_failure_schedules_retry_and_success_resets() -> None:
    t = Targets(random.Random(1), 6783)
    t.add(["192.0.2.1"], replace=False)
    assert t.due(0.0, set()) == ["192.0.2.1:6783"]
    t.connecting("192.0.2.1:6783")
    t.failed("192.0.2.1:6783", "refused", now=0.0)
    assert t.due(0.1, set()) == []
    deadline = t.next_deadline()
    assert deadline is not None and deadline > 0
    assert t.due(deadline, set()) == ["192.0.2.1:6783"]
    t.succeeded("192.0.2.1:6783")
    assert t.states["192.0.2.1:6783"].attempts == 0


def test_permanent_failure_never_retries() -> None:
    t = Targets(random.Random(1), 6783)
    t.add(["192.0.2.1"], replace=False)
    t.failed("192.0.2.1:6783", "cannot connect to ourself", 0.0, permanent=True)
    assert t.due(1e9, set()) == []


def test_replace_and_forget() -> None:
    t = Targets(random.Random(1), 6783)
    t.add(["192.0.2.1", "192.0.2.2"], replace=False)
    t.add(["192.0.2.3"], replace=True)
    assert list(t.states) == ["192.0.2.3:6783"]
    t.forget(["192.0.2.3"])
    assert not t.states
