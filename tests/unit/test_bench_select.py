"""`python -m bench.datapath --only`: which setups a list of names selects, and a name that
selects none is an error before anything runs (a typo must not cost a 20-minute run)."""

from __future__ import annotations

import pytest

from bench.datapath import main, selects


def test_a_name_selects_itself_and_nothing_else() -> None:
    assert selects({"tinc-none"}, "tinc-none")
    assert not selects({"tinc-none"}, "tinc-default")
    assert not selects({"pyweave-plain"}, "pyweave-enc")


def test_a_pyweave_name_also_selects_it_at_the_chosen_commit() -> None:
    assert selects({"pyweave-enc"}, "pyweave@1151c2a-enc")
    assert not selects({"pyweave-enc"}, "pyweave@1151c2a-plain")
    assert selects({"pyweave@1151c2a-plain"}, "pyweave@1151c2a-plain")
    assert not selects({"pyweave@1151c2a-plain"}, "pyweave-plain")


def test_an_unknown_name_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "tinc-none,tinc-nnoe", "--no-relay"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "tinc-nnoe" in err and "tinc-none," not in err.split("(")[0]
