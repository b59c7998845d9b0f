"""Helpers for the mesh namespace tests: launching by hand, reading views, cutting links.

Theory of operation: the mesh tests need more control than `lab(...)` gives by default
(which peers each router is launched with, killing and relaunching single routers, cutting
the underlay between two hosts), so they build the lab with `launch=False` and drive the
real CLI themselves: `launch(net, "h3", "192.0.2.12")` runs `weave launch --nickname h3
192.0.2.12` inside h3, `attach_all` runs `weave attach` for every container as `weave lab
up` would.

Views are read from the router's JSON (`weave report`), several hosts at once in threads,
because every CLI call costs an interpreter start.  `view(report)` reduces a report to what
the assertions talk about: for every peer the router knows (by nickname), the set of
(remote nickname, established) pairs that peer reports.

Underlay cuts use routes, not iptables (which the lab machines need not have): `cut(net,
1, 3)` adds a `prohibit` route for the other host's /32 in both host namespaces, so
neither TCP nor UDP gets through in either direction and dials fail at once (EACCES)
rather than after the dial timeout; `mend` deletes the routes again.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from helpers import Lab
from pyweave.cli.lab import weave_argv

View = dict[str, set[tuple[str, bool]]]


def host_names(net: Lab) -> list[str]:
    return [f"h{i}" for i in range(1, net.hosts + 1)]


def launch(net: Lab, host: str, *args: str) -> str:
    """`weave launch --nickname HOST ARGS...` inside host; returns the peer name."""
    return net.weave(host, "launch", "--nickname", host, *args).stdout.strip()


def attach_all(net: Lab) -> None:
    """`weave attach 10.128.I.J/10 netns:{P}hIcJ` for every container, as `lab up` does."""
    for i in range(1, net.hosts + 1):
        for j in range(1, net.containers + 1):
            container = net.netns(f"h{i}c{j}")
            net.weave(f"h{i}", "attach", f"{net.addr(i, j)}/10", f"netns:{container}")


def report(net: Lab, host: str) -> dict[str, Any]:
    """The router's status document (`weave report`); AssertionError if it does not answer."""
    result = subprocess.run(
        ["ip", "netns", "exec", net.netns(host), *weave_argv(), "report"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"{host}: weave report failed: {result.stderr.strip()}")
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def reports(net: Lab, hosts: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """`report` of several hosts (default: all), queried in parallel."""
    names = hosts if hosts is not None else host_names(net)
    with ThreadPoolExecutor(max_workers=min(len(names), 16) or 1) as pool:
        return dict(zip(names, pool.map(lambda h: report(net, h), names), strict=True))


def view(document: dict[str, Any]) -> View:
    """{peer nickname: {(remote nickname, established), ...}} as this router sees the mesh."""
    return {
        peer["nickname"]: {(c["nickname"], bool(c["established"])) for c in peer["connections"]}
        for peer in document["router"]["peers"]
    }


def full_mesh(nicknames: list[str]) -> View:
    """The view of a converged full mesh: everybody established with everybody."""
    return {a: {(b, True) for b in nicknames if b != a} for a in nicknames}


def connected_to(document: dict[str, Any]) -> set[str]:
    """Nicknames of the peers this router holds an established connection to."""
    return {
        c["peer"]["nickname"]
        for c in document["router"]["connections"]
        if c["state"] == "established" and c.get("peer")
    }


def connection_lines(net: Lab, host: str) -> list[str]:
    return net.weave(host, "status", "connections").stdout.splitlines()


def relayed(net: Lab, host: str) -> int:
    return int(report(net, host)["router"]["stats"]["datagrams_relayed"])


def router_pid(net: Lab, host: str) -> int:
    return int((net.state_dir(host) / "weave.pid").read_text().strip())


def cut(net: Lab, a: int, b: int) -> None:
    """Make hosts a and b unreachable for each other on the underlay, both directions."""
    net.exec(f"h{a}", "ip", "route", "add", "prohibit", f"{net.underlay_addr(b)}/32")
    net.exec(f"h{b}", "ip", "route", "add", "prohibit", f"{net.underlay_addr(a)}/32")


def mend(net: Lab, a: int, b: int) -> None:
    net.exec(f"h{a}", "ip", "route", "del", "prohibit", f"{net.underlay_addr(b)}/32")
    net.exec(f"h{b}", "ip", "route", "del", "prohibit", f"{net.underlay_addr(a)}/32")


def ping_matrix(net: Lab, sources: list[str], targets: dict[str, str]) -> list[str]:
    """Ping every target from every source container in parallel; the pairs that failed.

    One shell per source runs `ping -c1 -W2` to all targets at once, so a round over a
    10x10 mesh takes about as long as one ping.
    """
    script = (
        'for t in "$@"; do (ping -n -c1 -W2 "${t#*=}" >/dev/null 2>&1 '
        '|| echo "${t%%=*}") & done; wait'
    )
    procs = {}
    for src in sources:
        args = [f"{name}={addr}" for name, addr in targets.items() if name != src]
        procs[src] = subprocess.Popen(
            ["ip", "netns", "exec", net.netns(src), "sh", "-c", script, "sh", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
    failed = []
    for src, proc in procs.items():
        out, _ = proc.communicate(timeout=30)
        failed += [f"{src}->{dst}" for dst in out.split()]
    return sorted(failed)
