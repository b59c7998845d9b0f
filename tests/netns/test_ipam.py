"""IPAM with real routers: concurrent allocation on 3 hosts, restarts, partitions, rmpeer,
expose/hide, prime and status, the default subnet.

Extra containers are plain namespaces named like the lab's own (`{P}h{i}c{j}`), so
`weave lab down` removes them with the rest.  Timings worth knowing are printed (run
with `-s` to see them).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import LabFactory
from helpers import Lab, ipv4_cidrs, link_info, reap, start_in
from pyweave.cli.lab import weave_argv

pytestmark = [pytest.mark.netns, pytest.mark.timeout(400)]

PER_HOST = 50
# Runs in a host: `weave attach netns:NAME` (no address: IPAM) for every NAME at once.  Each
# is the real CLI (`pyweave.cli.main.main`, the `weave` entry point) in a process of its
# own, forked from this one after the imports: a fresh interpreter per attach costs ~0.3 s
# of CPU in imports, which for 150 attaches on 2 cores pushes the test past 90 s.
# Prints {name: "IP" | "ERROR ..."} as JSON.
ATTACH_SCRIPT = r"""
import json, os, sys
from pyweave.cli.main import main
import pyweave.cli.attach, pyweave.cli.ipam_cmds, pyweave.cli.netns, pyroute2

children = {}
for name in sys.argv[1:]:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        try:
            code = main(["attach", "netns:" + name])
        except BaseException as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    os.close(out_w)
    os.close(err_w)
    children[name] = (pid, out_r, err_r)

def drain(fd):
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace").strip()

result = {}
for name, (pid, out_r, err_r) in children.items():
    out, err = drain(out_r), drain(err_r)
    _, status = os.waitpid(pid, 0)
    result[name] = out if os.waitstatus_to_exitcode(status) == 0 else "ERROR " + err
print(json.dumps(result))
"""
# Runs in a container: ping every address once, all in parallel; prints the failures.
PING_ALL = 'for a in "$@"; do (ping -n -q -c1 -W2 "$a" >/dev/null 2>&1 || echo "$a") & done; wait'
# Runs in a host: allocate (POST /ip) in SUBNET for every NAME at once, through the API.
# The holders' liveness spec is this process: alive while we look at the result.
ALLOC_SCRIPT = r"""
import json, os, sys, time, http.client
from concurrent.futures import ThreadPoolExecutor

def one(name):
    deadline = time.monotonic() + 60
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", 6784, timeout=30)
        body = json.dumps({"spec": f"pid:{os.getpid()}", "wait": 5, "subnet": sys.argv[1]})
        conn.request("POST", "/ip/" + name, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        doc = json.loads(response.read())
        conn.close()
        if response.status == 200:
            return doc["address"]
        if response.status != 503 or time.monotonic() > deadline:
            return "ERROR " + doc.get("error", "")

names = sys.argv[3:]
with ThreadPoolExecutor(len(names)) as pool:
    print(json.dumps(dict(zip(names, pool.map(one, names)))), flush=True)
# The addresses belong to this process (pid:PID): it must outlive the other host's
# allocations, or its router releases them ("container ... is gone") and they are handed
# out again, rightly.  The test creates the release file when both hosts are done.
deadline = time.monotonic() + 120
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def add_containers(net: Lab, host: int, first: int, count: int) -> list[str]:
    names = [f"{net.prefix}h{host}c{j}" for j in range(first, first + count)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    return names


def attach_in_parallel(net: Lab, host: int, names: list[str]) -> dict[str, str]:
    result = net.exec(f"h{host}", sys.executable, "-c", ATTACH_SCRIPT, *names, timeout=180)
    got: dict[str, str] = json.loads(result.stdout)
    return got


def allocate_in_parallel(
    net: Lab, host: int, subnet: str, names: list[str], release: Path
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Allocate `names` at once on `host`; the allocating process (which holds the
    addresses) lives on until `release` exists — reap it after that."""
    script = [sys.executable, "-c", ALLOC_SCRIPT, subnet, str(release), *names]
    proc = start_in(net.netns(f"h{host}"), script)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    got: dict[str, str] = json.loads(line) if line else {"?": "ERROR no answer"}
    return proc, got


def unreachable_from(net: Lab, src: str, addresses: list[str]) -> list[str]:
    """The addresses `src` cannot ping (one ping each, all at once)."""
    result = net.exec(src, "sh", "-c", PING_ALL, "ping-all", *addresses, timeout=60)
    return result.stdout.split()


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
    """150 real `weave attach netns:X` (50 per host, all at once on all three hosts): all
    distinct, and every one pingable from a container on another host."""
    net = lab(hosts=3, containers=1)
    started = time.monotonic()
    names = {h: add_containers(net, h, 2, PER_HOST) for h in (1, 2, 3)}
    made = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        done = pool.map(lambda h: attach_in_parallel(net, h, names[h]), names)
        results = dict(zip(names, done, strict=True))
    attached = time.monotonic()
    ips = [ip for got in results.values() for ip in got.values()]
    assert not [a for a in ips if a.startswith("ERROR")], ips
    assert len(ips) == 3 * PER_HOST
    lab_ips = [net.addr(h, 1) for h in (1, 2, 3)]
    assert len(set(ips + lab_ips)) == len(ips) + 3, "an address was handed out twice"
    for h, got in results.items():  # each address really is on the namespace's ethwe
        for box in (names[h][0], names[h][-1]):
            link = link_info(net, box, "ethwe")
            assert link is not None and f"{got[box]}/10" in ipv4_cidrs(link), (box, link)
    # every address, pinged from the lab container of the next host
    pending = {h % 3 + 1: list(results[h].values()) for h in (1, 2, 3)}
    first_failures: list[str] = []

    def all_reachable() -> bool:
        with ThreadPoolExecutor(3) as pool:
            failed = dict(
                zip(
                    pending,
                    pool.map(lambda h: unreachable_from(net, f"h{h}c1", pending[h]), pending),
                    strict=True,
                )
            )
        if not first_failures:
            first_failures.append(str(sum(len(f) for f in failed.values())))
        pending.update(failed)
        return not any(pending.values())

    try:
        net.wait_until(all_reachable, 30, "every one of the 150 addresses to answer a ping")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; unreachable: {pending}") from None
    pinged = time.monotonic()
    for h in (1, 2, 3):
        assert ipam_status(net, f"h{h}")["active_ips"] == PER_HOST + 1
    print(
        f"\n150 namespaces: created {made - started:.1f}s, attached {attached - made:.1f}s, "
        f"pinged {pinged - attached:.1f}s (failures in the first round: {first_failures[0]})"
    )


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
    first = {h: attach(net, f"h{h}", f"netns:{box}").stdout.strip() for h, box in before.items()}
    # A subnet h3 owns nothing of: a /28 just above h1's first allocation (lowest free of
    # h1's space, whose range is far larger than 32 addresses). Which peer owns a fixed
    # subnet depends on the randomly named peers' ring split, so none can be hard-coded.
    foreign = ipaddress.IPv4Network(f"{ipaddress.IPv4Address(first[1]) + 16}/28", strict=False)
    h3 = peer_name(net, "h3")
    partition(net, "h3")
    try:
        net.wait_until(lambda: unreachable(net, "h1", h3), 30, "h1 to see h3 unreachable")
        sides = {h: add_containers(net, h, 3, 3) for h in (1, 3)}
        got = [attach(net, f"h{h}", f"netns:{b}").stdout.strip() for h in sides for b in sides[h]]
        assert len(set(got)) == len(got)
        (stuck,) = add_containers(net, 3, 6, 1)
        env = ["env", "WEAVE_IPAM_TIMEOUT=8", *weave_argv()]
        result = net.exec("h3", *env, "attach", f"net:{foreign}", f"netns:{stuck}", check=False)
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


# -- expose / hide -----------------------------------------------------------------------


def bridge_cidrs(net: Lab, host: str) -> list[str]:
    link = link_info(net, host, "weave")
    assert link is not None, f"no weave bridge in {host}"
    return ipv4_cidrs(link)


def expose_line(net: Lab, host: str) -> list[str]:
    """The fields of `weave ps`'s `weave:expose` line after the MAC (its CIDRs)."""
    lines = net.weave(host, "ps").stdout.splitlines()
    fields = lines[0].split()
    assert fields[0] == "weave:expose", lines
    return fields[2:]


def test_expose_gives_the_host_addresses_and_hide_takes_them_back(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1)
    assert bridge_cidrs(net, "h1") == [] and expose_line(net, "h1") == []
    plain = net.weave("h1", "expose").stdout.strip()
    assert ipaddress.IPv4Address(plain) in ipaddress.IPv4Network("10.128.0.0/10")
    assert plain not in (net.addr(1, 1), net.addr(2, 1))
    sub = net.weave("h1", "expose", "net:10.128.9.0/24").stdout.strip()
    assert ipaddress.IPv4Address(sub) in ipaddress.IPv4Network("10.128.9.0/24")
    assert sub not in ("10.128.9.0", "10.128.9.255")
    exposed = [f"{plain}/10", f"{sub}/24"]
    assert sorted(bridge_cidrs(net, "h1")) == sorted(exposed)
    assert sorted(expose_line(net, "h1")) == sorted(exposed)
    assert ipam_status(net, "h1")["active_ips"] == 3  # h1c1 and the two of weave:expose
    # the host reaches the containers: its own and the other host's
    for target in (net.addr(1, 1), net.addr(2, 1)):
        net.wait_until(lambda t=target: net.ping("h1", t), 20, f"h1 (host) -> {target}")
    hidden = net.weave("h1", "hide").stdout.split()
    assert sorted(hidden) == sorted([plain, sub])
    assert bridge_cidrs(net, "h1") == [] and expose_line(net, "h1") == []
    assert ipam_status(net, "h1")["active_ips"] == 1
    assert not net.ping("h1", net.addr(1, 1))
    # released in IPAM: containers can claim exactly those addresses again (a held address
    # would be refused), and they are counted as active once more
    one, two = add_containers(net, 1, 2, 2)
    assert attach(net, "h1", f"{plain}/10", f"netns:{one}").stdout.strip() == plain
    assert attach(net, "h1", f"{sub}/24", f"netns:{two}").stdout.strip() == sub
    assert ipam_status(net, "h1")["active_ips"] == 3


# -- prime and status --------------------------------------------------------------------


def status_fields(text: str, service: str) -> dict[str, str]:
    """`Key: value` lines of one `Service:` block of `weave status`."""
    fields: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        key, sep, value = line.strip().partition(": ")
        if not sep:
            continue
        if key == "Service":
            current = value
        elif current == service:
            fields[key] = value
    return fields


STATUS_IPAM_LINE = re.compile(
    r"(?P<peer>[0-9a-f:]{17})\((?P<nick>[^)]*)\)\s+(?P<ips>\d+) IPs \((?P<pct>[\d.]+)% of total\)"
    r"(?: \((?P<active>\d+) active\))?\s*"
)


def test_prime_on_a_fresh_mesh_then_attach_at_once(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=0)  # nothing asked for an address yet
    before = status_fields(net.weave("h2", "status").stdout, "ipam")
    assert before["Status"] == "idle", before
    started = time.monotonic()
    net.weave("h2", "prime", timeout=40)  # h2 (quorum 2) needs h1: real consensus
    primed = time.monotonic() - started
    for host in ("h1", "h2"):
        text = net.weave(host, "status").stdout
        fields = status_fields(text, "ipam")
        assert fields == {
            "Status": "ready",
            "Range": "10.128.0.0/10",
            "DefaultSubnet": "10.128.0.0/10",
        }, text
    (box,) = add_containers(net, 2, 1, 1)
    started = time.monotonic()
    env = ["env", "WEAVE_IPAM_TIMEOUT=3", *weave_argv()]  # at once, or fail
    ip = net.exec("h2", *env, "attach", f"netns:{box}").stdout.strip()
    attached = time.monotonic() - started
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("10.128.0.0/10")
    text = net.weave("h2", "status", "ipam").stdout
    rows = [STATUS_IPAM_LINE.fullmatch(line) for line in text.splitlines()]
    assert all(rows) and len(rows) == 2, text
    peers = {m["peer"]: m for m in rows if m}
    assert set(peers) == {peer_name(net, "h1"), peer_name(net, "h2")}, text
    assert {m["nick"] for m in peers.values()} == {"h1", "h2"}
    assert sum(int(m["ips"]) for m in peers.values()) == 1 << 22, text
    assert all(int(m["ips"]) > 0 for m in peers.values()), text
    ours = peers[peer_name(net, "h2")]
    assert ours["active"] == "1" and rows[0] is ours, text  # our own line first
    print(f"\nprime on a fresh 2-host mesh: {primed:.1f}s; attach after it: {attached:.1f}s")


# -- --ipalloc-default-subnet ------------------------------------------------------------

SUBNET18 = ipaddress.IPv4Network("10.128.64.0/18")


def relaunch_with(net: Lab, *flags: str) -> None:
    for h in (1, 2):
        net.weave(f"h{h}", "stop")
    net.weave("h1", "launch", "--nickname", "h1", *flags)
    net.weave("h2", "launch", "--nickname", "h2", *flags, net.underlay_addr(1))


def test_default_subnet(lab: LabFactory, tmp_path: Path) -> None:
    net = lab(hosts=2, containers=1)
    relaunch_with(net, "--ipalloc-default-subnet", str(SUBNET18))
    fields = status_fields(net.weave("h2", "status").stdout, "ipam")
    assert fields["DefaultSubnet"] == str(SUBNET18), fields
    plain, default, other = add_containers(net, 2, 2, 3)
    for box, args in ((plain, ()), (default, ("net:default",))):
        ip = attach(net, "h2", *args, f"netns:{box}").stdout.strip()
        assert ipaddress.IPv4Address(ip) in SUBNET18, (args, ip)
        link = link_info(net, box, "ethwe")
        assert link is not None and ipv4_cidrs(link) == [f"{ip}/18"], link
    net24 = ipaddress.IPv4Network("10.128.1.0/24")
    ip = attach(net, "h2", f"net:{net24}", f"netns:{other}").stdout.strip()
    assert ipaddress.IPv4Address(ip) in net24 and ip not in ("10.128.1.0", "10.128.1.255")
    # fill the rest of the /24 from both hosts at once: exactly the usable addresses
    held = {net.addr(1, 1), ip}  # h1c1 is 10.128.1.1
    names = [f"fill{i}" for i in range(254 - len(held))]
    half = len(names) // 2
    release = tmp_path / "release"
    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda hn: allocate_in_parallel(net, hn[0], str(net24), hn[1], release),
                [(1, names[:half]), (2, names[half:])],
            )
        )
    release.touch()
    for proc, _ in runs:
        reap(proc, timeout=10)
    filled = [cidr for _, part in runs for cidr in part.values()]
    assert not [c for c in filled if c.startswith("ERROR")], filled
    assert all(c.endswith("/24") for c in filled)
    assert len(set(filled)) == len(filled), "an address was handed out twice"
    got = {c.split("/")[0] for c in filled} | held
    assert got == {str(a) for a in net24.hosts()}, "the /24 must be exactly .1 - .254"
    # a claim of the /24's network address: one clear line, nothing attached
    (refused_box,) = add_containers(net, 2, 5, 1)
    result = attach(net, "h2", "10.128.1.0/24", f"netns:{refused_box}", check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "network or broadcast address of 10.128.1.0/24" in result.stderr, result.stderr
    assert link_info(net, refused_box, "ethwe") is None
