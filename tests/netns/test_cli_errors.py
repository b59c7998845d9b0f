"""Bad input to the real `weave` CLI: exit non-zero, one `weave: ...` line on stderr, no stdout.

Theory of operation: one lab with a single host and container.  The cases that need a
router (attach, status, connect, a second launch) run while it runs; then the router is
stopped and the cases that must fail *before* starting one (bad launch flags, `stop` with
nothing running) run against an empty host — so a launch that wrongly succeeded would
show up as a router rather than be hidden behind "already running".  Afterwards the test
checks that no failed command changed anything.  All failures of a phase are collected
and reported together.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

import pytest
from helpers import Lab, describe, ipv4_cidrs, link_info

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
LabFactory = Callable[..., Lab]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str | None:
    """Why `result` is not a clean CLI error, or None if it is one."""
    lines = result.stderr.splitlines()
    if result.returncode == 0:
        return "exited 0"
    if result.stdout:
        return "printed on stdout"
    if len(lines) != 1:
        return f"printed {len(lines)} lines on stderr"
    if not lines[0].startswith("weave: ") or len(lines[0]) <= len("weave: "):
        return "stderr does not start with 'weave: '"
    return None


def check_all(net: Lab, host: str, cases: Sequence[Sequence[str]]) -> None:
    problems = []
    for args in cases:
        result = net.weave(host, *args, check=False)
        why = one_line_error(result)
        if why is not None:
            problems.append(f"weave {' '.join(args)!r}: {why}\n{describe(result)}")
    assert not problems, "\n".join(problems)


def test_bad_input_with_router_running(lab: LabFactory) -> None:
    net = lab(hosts=1, containers=1)
    box = net.netns("h1c1")
    before = link_info(net, "h1c1", "ethwe")
    assert before is not None
    targets_before = net.weave("h1", "status", "targets").stdout

    check_all(
        net,
        "h1",
        [
            ["attach", "10.128.0.1", f"netns:{box}"],  # no prefix length
            ["attach", "10.128.0.0/10", f"netns:{box}"],  # the network address
            ["attach", "10.128.0.5/10", f"netns:{net.prefix}does-not-exist"],
            ["status", "bogus"],
            ["launch"],  # one is already running
            ["launch", "--nickname", "again"],
            ["connect", "a b"],
            ["frobnicate"],  # unknown command
        ],
    )

    after = link_info(net, "h1c1", "ethwe")
    assert after is not None
    assert (after["address"], ipv4_cidrs(after)) == (before["address"], ipv4_cidrs(before))
    targets = net.weave("h1", "status", "targets").stdout  # also: the router survived
    assert targets == targets_before, "a rejected `weave connect` changed the targets"


def test_bad_input_without_router(lab: LabFactory) -> None:
    net = lab(hosts=1, containers=1)
    net.weave("h1", "stop")

    check_all(
        net,
        "h1",
        [
            ["launch", "--port", "0"],
            ["launch", "--name", "nonsense"],
            ["launch", "bad host:x"],
            ["stop"],  # nothing runs
            ["status"],
        ],
    )

    assert not (net.state_dir(1) / "weave.pid").exists(), "a failed launch left a pid file"
    assert link_info(net, "h1", "vethwe-tap") is None, "a failed launch created the TAP"
    net.weave("h1", "launch", "--nickname", "h1")  # the host is still fine for a real launch
    net.weave("h1", "status")
