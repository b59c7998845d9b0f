"""IPAM with real routers: concurrent allocation on 3 hosts, restarts, partitions, rmpeer.

Extra containers are plain namespaces named like the lab's own (`{P}h{i}c{j}`), so
`weave lab down` removes them with the rest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import LabFactory
from helpers import Lab
from pyweave.cli.lab import weave_argv

pytestmark = [pytest.mark.netns, pytest.mark.timeout(400)]

PER_HOST = 50
ALLOC_SCRIPT = r"""
import json, sys, time, http.client
from concurrent.futures import ThreadPoolExecutor

def one(name):
    deadline = time.monotonic() + 90
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", 6784, timeout=30)
        body = json.dumps({"spec": "netns:" + name, "wait": 5})
        conn.request("POST", "/ip/" + name, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        doc = json.loads(response.read())
        conn.close()
        if response.status == 200:
            return doc["address"]
        if response.status != 503 or time.monotonic() > deadline:
            return "ERROR " + doc.get("error", "")

names = sys.argv[1:]
with ThreadPoolExecutor(len(names)) as pool:
    print(json.dumps(dict(zip(names, pool.map(one, names)))))
"""


def add_containers(net: Lab, host: int, first: int, count: int) -> list[str]:
    names = [f"{net.prefix}h{host}c{j}" for j in range(first, first + count)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    return names


def allocate_in_parallel(net: Lab, host: int, names: list[str]) -> dict[str, str]:
    result = net.exec(f"h{host}", sys.executable, "-c", ALLOC_SCRIPT, *names, timeout=180)
    got: dict[str, str] = json.loads(result.stdout)
    return got


def ipam_status(net: Lab, host: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(net.weave(host, "report").stdout)
    ipam: dict[str, Any] = report["ipam"]
    return ipam


def peer_name(net: Lab, host: str) -> str:
    report = json.loads(net.weave(host, "report").stdout)
    return str(report["router"]["name"])


def attach(net: Lab, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return net.weave(host, "attach", *args, check=check, timeout=60)


def test_three_hosts_allocate_fifty_each_concurrently(lab: LabFactory) -> None:
    net = lab(hosts=3, containers=1)
    names = {h: add_containers(net, h, 2, PER_HOST) for h in (1, 2, 3)}
    with ThreadPoolExecutor(3) as pool:
        done = pool.map(lambda h: allocate_in_parallel(net, h, names[h]), names)
        results = dict(zip(names, done, strict=True))
    addresses = [cidr for got in results.values() for cidr in got.values()]
    assert not [a for a in addresses if a.startswith("ERROR")], addresses
    assert len(addresses) == 3 * PER_HOST
    ips = [a.split("/")[0] for a in addresses]
    lab_ips = [net.addr(h, 1) for h in (1, 2, 3)]
    assert len(set(ips + lab_ips)) == len(ips) + 3, "an address was handed out twice"
    assert all(a.endswith("/10") for a in addresses)
    # a sample gets real interfaces (claiming what it already holds) and must be reachable
    sample = {h: [names[h][0], names[h][-1]] for h in names}
    for h, boxes in sample.items():
        for box in boxes:
            assert attach(net, f"h{h}", results[h][box], f"netns:{box}").stdout.strip()
    for src_host, dst_host in ((1, 2), (2, 3), (3, 1)):
        src = sample[src_host][0].removeprefix(net.prefix)
        for box in sample[dst_host]:
            ip = results[dst_host][box].split("/")[0]
            net.wait_until(lambda s=src, i=ip: net.ping(s, i), 20, f"{src} -> {ip}")
    for h in (1, 2, 3):
        assert ipam_status(net, f"h{h}")["active_ips"] == PER_HOST + 1


def test_allocation_survives_router_restart(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1)
    (box,) = add_containers(net, 2, 2, 1)
    first = attach(net, "h2", f"netns:{box}").stdout.strip()
    net.weave("h2", "stop")
    net.weave("h2", "launch", "--nickname", "h2", net.underlay_addr(1))
    assert ipam_status(net, "h2")["active_ips"] == 2
    again = attach(net, "h2", f"netns:{box}").stdout.strip()
    assert again == first, "the container's address changed across stop/launch"
    (other,) = add_containers(net, 2, 3, 1)
    assert attach(net, "h2", f"netns:{other}").stdout.strip() not in (first, net.addr(1, 1))
    net.wait_until(lambda: net.ping(box.removeprefix(net.prefix), net.addr(1, 1)), 20, "ping")


def test_detach_and_vanished_namespace_release_addresses(lab: LabFactory) -> None:
    net = lab(hosts=1, containers=1)
    one, two = add_containers(net, 1, 2, 2)
    a = attach(net, "h1", f"netns:{one}").stdout.strip()
    b = attach(net, "h1", f"netns:{two}").stdout.strip()
    assert a != b
    net.weave("h1", "detach", f"netns:{one}")
    assert ipam_status(net, "h1")["active_ips"] == 2
    subprocess.run(["ip", "netns", "del", two], check=True)
    net.wait_until(lambda: ipam_status(net, "h1")["active_ips"] == 1, 15, "release of a gone ns")
    (three,) = add_containers(net, 1, 4, 1)
    assert attach(net, "h1", f"netns:{three}").stdout.strip() == min(a, b, key=_ip_key)


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(p) for p in ip.split("."))


def test_claim_of_an_address_held_elsewhere_is_refused(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1)
    (box,) = add_containers(net, 2, 2, 1)
    result = attach(net, "h2", f"{net.addr(1, 1)}/10", f"netns:{box}", check=False)
    assert result.returncode == 1
    assert "already in use by container" in result.stderr, result.stderr


def partition(net: Lab, host: str) -> None:
    net.exec(host, "ip", "link", "set", "eth0", "down")


def heal(net: Lab, host: str) -> None:
    net.exec(host, "ip", "link", "set", "eth0", "up")


def unreachable(net: Lab, viewer: str, name: str) -> bool:
    owners = ipam_status(net, viewer).get("owners", [])
    return any(o["peer"] == name and not o["reachable"] for o in owners)


def test_partition_both_sides_allocate_without_conflict(lab: LabFactory) -> None:
    net = lab(hosts=3, containers=1)
    before = {h: add_containers(net, h, 2, 1)[0] for h in (1, 2, 3)}
    for h, box in before.items():
        attach(net, f"h{h}", f"netns:{box}")
    h3 = peer_name(net, "h3")
    partition(net, "h3")
    try:
        net.wait_until(lambda: unreachable(net, "h1", h3), 30, "h1 to see h3 unreachable")
        sides = {h: add_containers(net, h, 3, 3) for h in (1, 3)}
        got = [attach(net, f"h{h}", f"netns:{b}").stdout.strip() for h in sides for b in sides[h]]
        assert len(set(got)) == len(got)
        (stuck,) = add_containers(net, 3, 6, 1)
        env = ["env", "WEAVE_IPAM_TIMEOUT=8", *weave_argv()]
        result = net.exec("h3", *env, "attach", "net:10.128.1.0/24", f"netns:{stuck}", check=False)
        assert result.returncode == 1
        assert re.search(r"unreachable", result.stderr), result.stderr
    finally:
        heal(net, "h3")
    net.wait_until(lambda: not unreachable(net, "h1", h3), 60, "h3 back")
    (late,) = add_containers(net, 3, 7, 1)
    assert attach(net, "h3", "net:10.128.1.0/24", f"netns:{late}").stdout.strip()


def test_rmpeer_takes_over_a_removed_host(lab: LabFactory) -> None:
    net = lab(hosts=3, containers=1)
    (box,) = add_containers(net, 3, 2, 1)
    attach(net, "h3", f"netns:{box}")
    h3 = peer_name(net, "h3")
    net.weave("h3", "stop")
    net.exec("h3", "ip", "link", "set", "eth0", "down")

    def removed() -> str:
        result = net.weave("h1", "rmpeer", h3, check=False)
        return result.stdout if result.returncode == 0 else ""

    out = net.wait_until(removed, 30, "rmpeer to be accepted")
    assert re.fullmatch(rf"\d+ IPs taken over from {h3}\n", out), out
    net.wait_until(
        lambda: all(
            h3 not in {o["peer"] for o in ipam_status(net, h)["owners"]} for h in ("h1", "h2")
        ),
        20,
        "h3 to own nothing in every view",
    )


def test_reset_hands_ranges_over(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1)
    (box,) = add_containers(net, 2, 2, 1)
    attach(net, "h2", f"netns:{box}")
    h2 = peer_name(net, "h2")
    net.weave("h2", "reset")
    assert not (net.state_dir(2) / "ipam.json").exists()
    net.wait_until(
        lambda: h2 not in {o["peer"] for o in ipam_status(net, "h1")["owners"]},
        20,
        "h1 to own h2's ranges",
    )
