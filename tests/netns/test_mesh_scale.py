"""Ten hosts with one container each: the mesh converges and every container reaches all.

Theory of operation: `weave lab up` launches h1 alone and h2..h10 with h1 as their only
peer, so everything beyond the star is discovery.  We wait until every router sees all
ten peers, each reporting nine established connections (a full mesh), then ping every
ordered pair of containers (90 pings, all at once, see `mesh_tools.ping_matrix`).  Pairs
that fail are retried until the deadline — the first ping of a pair may race its ARP
resolution — and the test fails listing the pairs that never worked.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import Lab
from mesh_tools import full_mesh, host_names, ping_matrix, reports, view

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
LabFactory = Callable[..., Lab]

HOSTS = 10
CONVERGE = 30.0


def test_ten_hosts_converge_and_all_pairs_ping(lab: LabFactory) -> None:
    net = lab(hosts=HOSTS, containers=1)
    names = host_names(net)
    want = full_mesh(names)

    def laggards() -> list[str]:
        return [h for h, r in reports(net).items() if view(r) != want]

    net.wait_until(lambda: not laggards(), CONVERGE, f"all {HOSTS} routers to see a full mesh")
    for host, document in reports(net).items():
        assert len(document["router"]["peers"]) == HOSTS, host

    boxes = {f"{h}c1": net.addr(h, 1) for h in names}
    failed = ping_matrix(net, list(boxes), boxes)
    for _ in range(5):  # bounded retries of the failed pairs only (each round <= 2 s)
        if not failed:
            break
        sources = sorted({pair.split("->")[0] for pair in failed})
        wanted = {pair.split("->")[1] for pair in failed}
        failed = [
            pair
            for pair in ping_matrix(net, sources, {n: a for n, a in boxes.items() if n in wanted})
            if pair in failed
        ]
    assert not failed, f"{len(failed)} of {HOSTS * (HOSTS - 1)} pairs never pinged: {failed}"
