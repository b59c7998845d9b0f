"""Recovery without intervention: a router killed with SIGKILL, and a partition that heals.

Theory of operation: three hosts as `weave lab up` builds them (h1 alone, h2 and h3 with
h1 as peer; h2 and h3 find each other by discovery), one container each.

* Kill: h1's router dies by SIGKILL (its PID from `$WEAVE_STATE_DIR/weave.pid`, checked to
  be a pyweave router).  The kernel closes its sockets, so h2 and h3 drop the connection
  at once; while h1 is down their `status connections` shows the target as `retrying`
  with a reason.  `weave launch` on h1 starts a new incarnation (new uid, same peer name);
  h2 and h3 redial on their own, every router ends up with the new uid, and the old
  record is gone.  Traffic to h1's container recovers.
* Partition: h3's underlay link goes down.  No FIN arrives, so it takes the heartbeat
  timeout (6 s) for both sides to drop the connections; h1 and h2 keep talking, and then
  garbage-collect h3.  The link comes back up; the backoff interval is still small (we
  heal as soon as the partition is seen) so the mesh re-converges by itself and traffic
  flows again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Lab
from mesh_tools import connection_lines, full_mesh, launch, report, reports, router_pid, view

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
LabFactory = Callable[..., Lab]

CONVERGE = 20.0
HOSTS = ["h1", "h2", "h3"]


def converged_lab(lab: LabFactory) -> Lab:
    net = lab(hosts=3, containers=1)
    want = full_mesh(HOSTS)
    net.wait_until(
        lambda: all(view(r) == want for r in reports(net).values()), CONVERGE, "a full mesh"
    )
    return net


def uids_of(net: Lab, nickname: str) -> set[str]:
    """The uid each router holds for `nickname` (absent routers contribute nothing)."""
    found = set()
    for document in reports(net).values():
        for peer in document["router"]["peers"]:
            if peer["nickname"] == nickname:
                found.add(peer["uid"])
    return found


def pings_all(net: Lab, pairs: list[tuple[str, str]]) -> bool:
    return all(net.ping(src, net.addr(dst[:2], dst[2:])) for src, dst in pairs)


def test_kill_9_and_relaunch_recovers(lab: LabFactory) -> None:
    net = converged_lab(lab)
    (old_uid,) = uids_of(net, "h1")
    pid = router_pid(net, "h1")
    assert b"pyweave.router" in Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGKILL)
    target = f"-> {net.underlay_addr(1)}:6783 "

    def retrying(host: str) -> list[str]:
        return [
            line
            for line in connection_lines(net, host)
            if line.startswith(target) and " retrying " in line and "retry: " in line
        ]

    for host in ("h2", "h3"):
        (line,) = net.wait_until(lambda h=host: retrying(h), CONVERGE, f"{host} retrying h1")
        reason = line.split(" retrying ", 1)[1].split(", retry: ")[0].strip()
        assert reason, f"no reason given: {line!r}"
    remaining = {"h2": {("h3", True)}, "h3": {("h2", True)}}
    net.wait_until(
        lambda: all(view(r) == remaining for r in reports(net, ["h2", "h3"]).values()),
        CONVERGE,
        "h2 and h3 to drop h1's old incarnation",
    )

    launch(net, "h1")
    net.wait_until(
        lambda: all(view(r) == full_mesh(HOSTS) for r in reports(net).values()),
        CONVERGE,
        "the relaunched h1 to be reconnected by h2 and h3",
    )
    new_uids = uids_of(net, "h1")
    assert len(new_uids) == 1 and old_uid not in new_uids, (old_uid, new_uids)
    pairs = [("h2c1", "h1c1"), ("h3c1", "h1c1"), ("h1c1", "h2c1"), ("h1c1", "h3c1")]
    net.wait_until(lambda: pings_all(net, pairs), CONVERGE, "traffic to and from h1c1")


def test_partition_heals_by_itself(lab: LabFactory) -> None:
    net = converged_lab(lab)
    net.exec("h3", "ip", "link", "set", "eth0", "down")
    try:
        net.wait_until(
            lambda: all(
                view(r) == {"h1": {("h2", True)}, "h2": {("h1", True)}}
                for r in reports(net, ["h1", "h2"]).values()
            ),
            CONVERGE,
            "h1 and h2 to drop and forget h3 (heartbeat timeout)",
        )
        net.wait_until(
            lambda: not [c for c in report(net, "h3")["router"]["connections"] if c.get("peer")],
            CONVERGE,
            "h3 to drop its connections",
        )
        assert net.ping("h1c1", net.addr(2, 1)), "h1 and h2 lost each other in the partition"
    finally:
        net.exec("h3", "ip", "link", "set", "eth0", "up")
    net.wait_until(
        lambda: all(view(r) == full_mesh(HOSTS) for r in reports(net).values()),
        45,
        "the mesh to re-converge after the partition healed",
    )
    pairs = [("h3c1", "h1c1"), ("h3c1", "h2c1"), ("h1c1", "h3c1"), ("h2c1", "h3c1")]
    net.wait_until(lambda: pings_all(net, pairs), CONVERGE, "traffic across the healed cut")
