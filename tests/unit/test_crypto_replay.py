"""ReplayWindow: model-based properties with hypothesis, plus edge cases."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pyweave.router.core.crypto.replay import COUNTER_LIMIT, WINDOW, ReplayWindow

# Counters clustered so the window edge, block boundaries and big jumps all occur.
counters = st.one_of(
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=0, max_value=2**20),
    st.integers(min_value=COUNTER_LIMIT - 3000, max_value=COUNTER_LIMIT + 2),
)


def model_accepts(seen: set[int], top: int, counter: int) -> bool:
    if counter < 0 or counter >= COUNTER_LIMIT or counter in seen:
        return False
    return counter > top or top - counter <= WINDOW


@settings(max_examples=400)
@given(st.lists(counters, max_size=300))
def test_window_matches_model(sequence: list[int]) -> None:
    window = ReplayWindow()
    seen: set[int] = set()
    top = 0
    for counter in sequence:
        expected = model_accepts(seen, top, counter)
        assert window.check(counter) == expected
        assert window.update(counter) == expected
        if expected:
            seen.add(counter)
            top = max(top, counter)
        assert window.top == top


@given(st.lists(counters, max_size=200))
def test_never_accepts_a_counter_twice(sequence: list[int]) -> None:
    window = ReplayWindow()
    accepted: set[int] = set()
    for counter in sequence + sequence:
        if window.update(counter):
            assert counter not in accepted
            accepted.add(counter)


@given(st.integers(min_value=WINDOW, max_value=2**40), st.data())
def test_accepts_every_unseen_counter_inside_the_window(top: int, data: st.DataObject) -> None:
    window = ReplayWindow()
    assert window.update(top)
    inside = data.draw(
        st.lists(st.integers(min_value=top - WINDOW, max_value=top - 1), unique=True)
    )
    for counter in inside:
        assert window.update(counter)
    for counter in inside:
        assert not window.check(counter)


@given(st.integers(min_value=WINDOW + 1, max_value=2**40), st.integers(min_value=1, max_value=5000))
def test_rejects_counters_older_than_the_window(top: int, behind: int) -> None:
    window = ReplayWindow()
    window.update(top)
    counter = top - WINDOW - behind
    assert not window.check(counter)
    assert not window.update(counter)


def test_check_does_not_modify() -> None:
    window = ReplayWindow()
    assert window.check(5) and window.check(5)
    assert window.update(5) and not window.check(5)


def test_limits() -> None:
    window = ReplayWindow()
    assert not window.check(-1)
    assert not window.check(COUNTER_LIMIT)
    assert not window.check(2**64)
    assert window.update(COUNTER_LIMIT - 1)
    assert not window.update(COUNTER_LIMIT - 1)
    assert window.update(0) is False  # far outside the window now


def test_big_jump_clears_old_bits() -> None:
    window = ReplayWindow()
    for counter in range(100):
        assert window.update(counter)
    assert window.update(10_000_000)
    assert window.update(10_000_000 - 5)
    assert not window.update(50)
