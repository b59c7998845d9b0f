"""Mesh scale benchmark: convergence, recovery, control-plane load and memory at N routers.

Theory of operation: for each N (default 5, 10, 25) we build a lab of N simulated hosts
without containers (`weave lab up --no-launch`), then launch every router at once, as
the lab does (h1 alone, the others with h1 as their only peer; everything else is
discovery).  Measured, from the host namespaces only:

* converge -- seconds from the start of the launches until every router's `GET /status`
  shows N peers, each reporting N-1 established connections (a full mesh).  The launches
  themselves take part of it (`launched` column: when the last `weave launch` returned).
* CPU s per router -- CPU time each router used from its start until convergence (mean):
  with N routers on few CPUs, start-up is CPU-bound, and this shows by how much.
* recover -- seconds from `kill -9` of one router (the last) until no other router lists
  it any more (its connections dropped and its record garbage-collected).
* ctl B/s -- control-plane bytes per second per router at rest, over a window longer than
  the 30 s full-state repair period: the TCP payload sent on port 6783 (sum of
  `bytes_acked` of its sockets from `ss -ti`, so retransmissions are not counted twice).
* eth0 B/s -- everything the host sent on its underlay link in the same window, per router
  (TCP and UDP heartbeats, headers included): the control plane's total wire cost.
* cpu % -- router CPU time (utime + stime from /proc/PID/stat) over the window, mean/max.
* RSS -- VmRSS of the router processes after the window, mean/max (MiB).

Status is read with curl inside each host namespace (the API listens on 127.0.0.1 there),
all hosts in parallel; on this 2-vCPU machine the polling itself costs some CPU, which
slightly inflates `converge` at N = 25.  Run from the repository root as root:

    python -m bench.mesh_scale [--sizes 5,10,25] [--window 35] [--prefix bms-]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyweave.cli import lab_state
from pyweave.cli.lab import weave_argv

LAB = [sys.executable, "-m", "pyweave.cli.lab"]
CONVERGE_TIMEOUT = 180.0
POLL = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    n: int
    launched: float
    converge: float
    startup_cpu: float
    recover: float
    ctl_bps: float
    eth_bps: float
    cpu_mean: float
    cpu_max: float
    rss_mean: float
    rss_max: float


def run(argv: list[str], timeout: float = 120.0) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result.stdout


def in_ns(prefix: str, host: int, argv: list[str], timeout: float = 60.0) -> str:
    return run(["ip", "netns", "exec", f"{prefix}h{host}", *argv], timeout)


def status(prefix: str, host: int) -> dict[str, Any] | None:
    try:
        out = in_ns(prefix, host, ["curl", "-s", "-m", "2", "http://127.0.0.1:6784/status"])
        document: dict[str, Any] = json.loads(out)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired):
        return None
    return document


def statuses(prefix: str, hosts: list[int]) -> dict[int, dict[str, Any] | None]:
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        return dict(zip(hosts, pool.map(lambda h: status(prefix, h), hosts), strict=True))


def full_mesh(document: dict[str, Any] | None, n: int) -> bool:
    if document is None or len(document["router"]["peers"]) != n:
        return False
    return all(
        sum(c["established"] for c in peer["connections"]) == n - 1
        for peer in document["router"]["peers"]
    )


def wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)
    return time.monotonic() - start


def launch_all(prefix: str, n: int) -> float:
    """Launch every router at once; returns when the last `weave launch` returned."""
    start = time.monotonic()

    def one(host: int) -> None:
        peers = [] if host == 1 else [lab_state.underlay_addr(1)]
        env_dir = str(lab_state.host_state_dir(prefix, host))
        argv = ["env", f"WEAVE_STATE_DIR={env_dir}", *weave_argv(), "launch"]
        in_ns(prefix, host, [*argv, "--nickname", f"h{host}", *peers], timeout=120)

    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(one, range(1, n + 1)))
    return time.monotonic() - start


def router_pid(prefix: str, host: int) -> int:
    return int((lab_state.host_state_dir(prefix, host) / "weave.pid").read_text().strip())


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def tcp_acked(prefix: str, host: int) -> int:
    """Payload bytes acknowledged on this host's control connections (port 6783)."""
    out = in_ns(prefix, host, ["ss", "-tinH", "( sport = :6783 or dport = :6783 )"])
    return sum(int(m) for m in re.findall(r"bytes_acked:(\d+)", out))


def eth0_tx(prefix: str, host: int) -> int:
    return int(in_ns(prefix, host, ["cat", "/sys/class/net/eth0/statistics/tx_bytes"]))


def at_rest(prefix: str, hosts: list[int], window: float) -> tuple[float, float, list[float]]:
    """Per-router control bytes/s, eth0 bytes/s and CPU % over `window` seconds."""
    pids = {h: router_pid(prefix, h) for h in hosts}
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        start = time.monotonic()
        tcp0 = list(pool.map(lambda h: tcp_acked(prefix, h), hosts))
        eth0 = list(pool.map(lambda h: eth0_tx(prefix, h), hosts))
        cpu0 = [cpu_ticks(pids[h]) for h in hosts]
        time.sleep(window)  # the measurement window itself, not a wait for some event
        cpu1 = [cpu_ticks(pids[h]) for h in hosts]
        tcp1 = list(pool.map(lambda h: tcp_acked(prefix, h), hosts))
        eth1 = list(pool.map(lambda h: eth0_tx(prefix, h), hosts))
        elapsed = time.monotonic() - start
    n = len(hosts)
    ctl = sum(b - a for a, b in zip(tcp0, tcp1, strict=True)) / elapsed / n
    eth = sum(b - a for a, b in zip(eth0, eth1, strict=True)) / elapsed / n
    cpu = [100.0 * (b - a) / CLK_TCK / elapsed for a, b in zip(cpu0, cpu1, strict=True)]
    return ctl, eth, cpu


def measure(prefix: str, n: int, window: float) -> Result:
    run([*LAB, "down", "--prefix", prefix])
    run([*LAB, "up", "--prefix", prefix, "--hosts", str(n), "--containers", "0", "--no-launch"])
    try:
        hosts = list(range(1, n + 1))
        start = time.monotonic()
        launched = launch_all(prefix, n)
        wait(
            lambda: all(full_mesh(d, n) for d in statuses(prefix, hosts).values()),
            CONVERGE_TIMEOUT,
            f"{n} routers to form a full mesh",
        )
        converge = time.monotonic() - start
        startup_cpu = sum(cpu_ticks(router_pid(prefix, h)) for h in hosts) / CLK_TCK / n
        ctl, eth, cpu = at_rest(prefix, hosts, window)
        rss = [rss_kib(router_pid(prefix, h)) / 1024 for h in hosts]

        victim, others = n, hosts[:-1]
        victim_name = f"h{victim}"
        os.kill(router_pid(prefix, victim), signal.SIGKILL)
        start = time.monotonic()
        wait(
            lambda: all(
                d is not None and victim_name not in json.dumps(d["router"]["peers"])
                for d in statuses(prefix, others).values()
            ),
            CONVERGE_TIMEOUT,
            f"the others to forget {victim_name}",
        )
        recover = time.monotonic() - start
    finally:
        run([*LAB, "down", "--prefix", prefix])
    return Result(
        n,
        launched,
        converge,
        startup_cpu,
        recover,
        ctl,
        eth,
        sum(cpu) / n,
        max(cpu),
        sum(rss) / n,
        max(rss),
    )


def table(results: list[Result]) -> str:
    head = (
        "| N | launched s | converge s | CPU s per router | recover s | ctl B/s per router | "
        "eth0 B/s per router | cpu % mean/max | RSS MiB mean/max |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.n} | {r.launched:.1f} | {r.converge:.1f} | {r.startup_cpu:.2f} | "
            f"{r.recover:.1f} | "
            f"{r.ctl_bps:.0f} | {r.eth_bps:.0f} | {r.cpu_mean:.1f}/{r.cpu_max:.1f} | "
            f"{r.rss_mean:.1f}/{r.rss_max:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mesh_scale", description=__doc__)
    parser.add_argument("--sizes", default="5,10,25", help="comma-separated N values")
    parser.add_argument("--window", type=float, default=35.0, help="rest window, seconds")
    parser.add_argument("--prefix", default="bms-", help="lab prefix")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("mesh_scale: needs root (network namespaces)", file=sys.stderr)
        return 2
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        results.append(measure(args.prefix, n, args.window))
        print(f"N={n} done", file=sys.stderr, flush=True)
    command = " ".join(["python -m bench.mesh_scale", *(argv or sys.argv[1:])])
    print(f"command: {command}")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
