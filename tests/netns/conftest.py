"""Fixtures for the namespace tests: skip unless root with `ip netns`, and the `lab` factory.

Theory of operation: every test that wants simulated hosts calls the `lab` fixture
factory, which brings a lab up under a prefix unique to the test (`t1-`, `t2-`, ...;
set PYWEAVE_TEST_PREFIX to change the `t`, e.g. when several people share a machine) and
always runs `weave lab down` afterwards — also when the test failed — then checks that
nothing of the lab is left.  Before `up` it runs `down` on the same prefix, so leftovers
of an earlier crashed run cannot make the test fail.

    def test_ping(lab):
        net = lab(hosts=2, containers=1)
        net.wait_until(lambda: net.ping("h1c1", net.addr(2, 1)), 20, "h1c1 -> h2c1")
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest
from helpers import Lab, netns_unavailable_reason, weave_cli_ready

_counter = itertools.count(1)
_BASE = os.environ.get("PYWEAVE_TEST_PREFIX", "t")
LabFactory = Callable[..., Lab]


@pytest.fixture(autouse=True)
def _require_netns(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("netns") is None:
        return
    reason = netns_unavailable_reason()
    if reason is not None:
        if os.environ.get("PYWEAVE_REQUIRE_NETNS") == "1":  # CI: a skip would hide a failure
            pytest.fail(f"namespace tests required but unavailable: {reason}")
        pytest.skip(reason)


@pytest.fixture
def lab() -> Iterator[LabFactory]:
    """lab(hosts=2, containers=1, prefix=None, password=None, launch=True) -> Lab."""
    made: list[Lab] = []

    def factory(
        hosts: int = 2,
        containers: int = 1,
        prefix: str | None = None,
        password: str | None = None,
        launch: bool = True,
    ) -> Lab:
        if launch and not weave_cli_ready():
            pytest.fail("`weave launch --help` does not work: the CLI is broken")
        net = Lab(prefix or f"{_BASE}{next(_counter)}-", hosts, containers, password)
        net.down()  # leftovers of a crashed earlier run
        made.append(net)
        net.up(launch=launch)
        return net

    yield factory
    problems = []
    for net in made:
        try:
            net.down()
        except AssertionError as exc:
            problems.append(str(exc))
        if net.namespaces():
            problems.append(f"weave lab down left namespaces behind: {net.namespaces()}")
    assert not problems, "\n".join(problems)
