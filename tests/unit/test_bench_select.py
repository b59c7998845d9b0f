"""`python -m bench.datapath --only`: which setups a list of names selects, and a name that
selects none is an error before anything runs (a typo must not cost a 20-minute run)."""

from __future__ import annotations

import pytest

from bench.datapath import main, markdown_tables, selects


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


def test_the_loss_figures_have_their_own_table_and_ratios() -> None:
    results = {
        "tinc-none": {"tcp1": 1.0, "loss1": 1.0, "loss_tcp4": 2.0, "loss_udp_pps": 1000.0},
        "pyweave-plain": {"tcp1": 4.0, "loss1": 2.0, "loss_tcp4": 3.0, "loss_udp_pps": 3000.0},
    }
    text = markdown_tables(results)
    figures, lossy = text.split("With 1 % random loss on the underlay:")
    assert "| pyweave-plain | 4.00 |" in figures and "2.000" not in figures
    assert "| pyweave-plain | 2.000 | 3.000 | 3 |" in lossy
    ratios = [line for line in lossy.splitlines() if line.startswith("| pyweave-plain | tinc-none")]
    assert ratios == [
        "| pyweave-plain | tinc-none | 4.00x | - | - | - | 2.00x | 1.50x | 3.00x | - |"
    ]
