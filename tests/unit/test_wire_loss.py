"""The loss estimate behind segment mode: counter gaps -> underlay packet loss -> mode."""

from __future__ import annotations

from pyweave.router.core.link import (
    LOSS_ENTER_PPM,
    Link,
    PlainLink,
    estimate_loss_ppm,
)
from pyweave.router.core.wire.data import LOSS_UNKNOWN


def _link() -> PlainLink:
    return PlainLink(1, ("192.0.2.1", 6783), 7, 9, 1472)


def test_no_gaps_no_loss() -> None:
    link = _link()
    for counter in range(1, 201):
        link.note_received(0, counter, 1400)
    assert link.take_loss_report() == 0


def test_fragment_loss_is_recovered_from_datagram_loss() -> None:
    # 41-fragment datagrams lost at 1 - 0.99**41 = 33.8 %: about 1 % per packet
    ppm = estimate_loss_ppm(1000, 662, 60000)
    assert 9000 < ppm < 11000


def test_few_datagrams_say_nothing() -> None:
    link = _link()
    for counter in (1, 2, 3, 5, 6, 9):
        link.note_received(0, counter, 100)
    assert link.take_loss_report() == LOSS_UNKNOWN
    assert link.take_loss_report() == LOSS_UNKNOWN  # nothing at all: nothing to say


def test_the_few_datagrams_threshold_is_five_missing() -> None:
    for lost, known in ((4, False), (5, True)):
        link = _link()
        for counter in range(1, 30 - lost):  # 30 expected, fewer than a full sample
            link.note_received(0, counter, 1400)
        link.note_received(0, 30, 1400)
        report = link.take_loss_report()
        assert (report != LOSS_UNKNOWN) == known, (lost, report)
        if known:
            assert report == estimate_loss_ppm(30, 30 - lost, 1400)


def test_a_flow_stalled_by_loss_is_reported_from_few_datagrams() -> None:
    # Super-frames lost whole (full reassembly memory) leave a trickle of small datagrams:
    # too few for a sample, but the gaps between their counters are unmistakable.
    link = _link()
    for counter in (1, 4, 9, 15, 22, 30):
        link.note_received(0, counter, 1400)
    report = link.take_loss_report()
    assert report != LOSS_UNKNOWN and report >= LOSS_ENTER_PPM
    link.peer_reported_loss(report)
    assert link.lossy


def test_rekey_restarts_the_interval() -> None:
    link = _link()
    for counter in range(1000, 1100):
        link.note_received(0, counter, 100)
    for counter in range(0, 100):
        link.note_received(1, counter, 100)
    assert link.take_loss_report() == 0


def test_reports_switch_the_lossy_state_with_hysteresis() -> None:
    link = _link()
    link.peer_reported_loss(LOSS_ENTER_PPM)
    assert link.lossy
    link.peer_reported_loss(LOSS_ENTER_PPM - 1)
    assert link.lossy  # between the thresholds: unchanged
    link.peer_reported_loss(LOSS_UNKNOWN)
    assert link.lossy
    link.peer_reported_loss(0)
    assert not link.lossy


def test_segment_mode_only_where_a_lost_piece_loses_the_whole_datagram() -> None:
    """A plain link's trains are salvaged (core/wire/salvage.py): it keeps super-frames
    under loss.  A sealed link (its tag covers the whole datagram), or any link whose
    large datagrams go as IP fragments (the kernel refused UDP_SEGMENT, or the path MTU
    is too small for a train), segments."""
    plain = _link()
    sealed_like = Link(1, ("192.0.2.1", 6783), 7, 9, 1472)  # trains_salvaged is False
    assert not Link.trains_salvaged and PlainLink.trains_salvaged
    for link in (plain, sealed_like):
        link.peer_reported_loss(LOSS_ENTER_PPM)
        assert link.lossy
    assert not plain.segment and sealed_like.segment
    plain.refuse_udp_segment()  # no trains: its super-frames go as IP fragments
    assert plain.segment
    small = PlainLink(1, ("192.0.2.1", 6783), 7, 9, 1000)  # a path MTU too small for trains
    small.peer_reported_loss(LOSS_ENTER_PPM)
    assert not small.trains_fit and small.segment
    plain.peer_reported_loss(0)
    assert not plain.segment and not plain.lossy
