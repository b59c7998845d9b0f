"""`python -m bench.datapath`: pyweave's data path side by side with its baselines.

Theory of operation: one run measures, one after the other on the same machine and the
same kind of lab (bench/setups.py), the underlay itself, kernel VXLAN, tinc 1.0 in switch
mode (default cipher and no crypto), pyweave plain and pyweave encrypted — and, with
`--commit REV`, pyweave as it was at REV (a `git worktree` in a temporary directory, run
through a `weave` wrapper whose PYTHONPATH maps that tree's router/ and cli/ as
`pyweave.*`), so a change is measured against the one before it under the same load.

Per two-host setup: iperf3 TCP with 1 and 4 streams (median of N runs), 64-byte UDP
offered as fast as the container can send (delivered packets/s and loss, median of N) and
the peak delivered over a sweep of offered rates, ping p50/p99 idle and under a TCP load,
the busiest router's CPU % and peak RSS during the 1-stream runs; then all of it again
(but the sweep) with 1 % random loss on the underlay (iptables `statistic`, `weave lab
loss`).  Then three hosts with h1<->h3 blocked on the underlay: 1-stream TCP from
h1's container to h3's, relayed by h2.  The report is a table of absolute figures, one of
ratios of each pyweave row to each baseline, and the command that reproduces it; `--json`
keeps the raw figures.  Labs use the prefix `h8b-`; every lab is torn down after its
setup, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import measure
from bench.setups import Pyweave, Setup, Tinc, Underlay, Vxlan, wait_reachable

PREFIX = "h8b-"
PASSWORD = "bench-password"
REPO = Path(__file__).resolve().parent.parent
Row = dict[str, float]


def this_weave() -> list[str]:
    from pyweave.cli.lab import weave_argv

    return weave_argv()


@contextmanager
def weave_at(rev: str) -> Iterator[list[str]]:
    """A `weave` program running pyweave from commit `rev` (worktree + PYTHONPATH shadow)."""
    tmp = Path(tempfile.mkdtemp(prefix="pyweave-bench-rev-"))
    tree = tmp / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev],
        capture_output=True,
        check=True,
    )
    try:
        shadow = tmp / "shadow" / "pyweave"
        shadow.mkdir(parents=True)
        (shadow / "router").symlink_to(tree / "router")
        (shadow / "cli").symlink_to(tree / "cli")
        wrapper = tmp / "weave"
        code = "import sys; from pyweave.cli.main import main; sys.exit(main())"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH={shlex.quote(str(tmp / 'shadow'))}${{PYTHONPATH:+:$PYTHONPATH}} "
            f'exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} "$@"\n'
        )
        wrapper.chmod(0o755)
        yield [str(wrapper)]
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(tmp, ignore_errors=True)


def make_setups(hosts: int, revs: dict[str, list[str]], baselines: bool) -> list[Setup]:
    setups: list[Setup] = []
    if baselines and hosts == 2:
        setups += [Underlay(PREFIX, hosts), Vxlan(PREFIX, hosts)]
    if baselines:
        setups += [Tinc(PREFIX, hosts, "default"), Tinc(PREFIX, hosts, "none")]
    for label, weave in revs.items():
        setups.append(Pyweave(PREFIX, hosts, None, weave, f"{label}-plain"))
        setups.append(Pyweave(PREFIX, hosts, PASSWORD, weave, f"{label}-enc"))
    return setups


def selects(wanted: set[str], name: str) -> bool:
    """Is setup `name` one that `--only` asked for?  `pyweave-plain` also names the same
    setup at the `--commit` revision (`pyweave@REV-plain`), so an A/B needs no hash typed."""
    if name in wanted:
        return True
    label, _, mode = name.rpartition("-")
    return label.startswith("pyweave@") and f"pyweave-{mode}" in wanted


def median_of(runs: int, measure_once: Callable[[], float]) -> float:
    return statistics.median(measure_once() for _ in range(runs))


def measure_two_hosts(setup: Setup, seconds: float, runs: int) -> Row:
    """Every two-host scenario on a clean underlay, then again with 1 % random loss on it
    (the same keys with a `loss_` prefix; 1-stream TCP under loss keeps its old key `loss1`)."""
    row = measure_scenarios(setup, seconds, runs, sweep=True)
    with measure.Loss(setup, 0.01):
        lossy = measure_scenarios(setup, seconds, runs, sweep=False)
    row["loss1"] = lossy.pop("tcp1")
    row.update({f"loss_{key}": value for key, value in lossy.items()})
    return row


def measure_scenarios(setup: Setup, seconds: float, runs: int, sweep: bool) -> Row:
    """TCP 1 and 4 streams, 64-byte UDP (and, with `sweep`, its peak over offered rates),
    ping idle and under a 1-stream load, the busiest router's CPU % and peak RSS."""
    row: Row = {}
    with measure.IperfServer(setup), measure.ProcWatch(setup.router_pids()) as watch:
        row["tcp1"] = median_of(runs, lambda: measure.tcp_gbps(setup, seconds, 1))
    row["cpu"], row["rss"] = watch.usage.cpu_percent, watch.usage.rss_mb
    with measure.IperfServer(setup), measure.ProcWatch(setup.router_pids()) as watch4:
        row["tcp4"] = median_of(runs, lambda: measure.tcp_gbps(setup, seconds, 4))
        udp = [measure.udp_small(setup, seconds) for _ in range(runs)]
        if sweep:
            row["udp_peak"], row["udp_peak_at"] = measure.udp_peak(setup, max(2.0, seconds / 2))
    row["cpu4"], row["rss"] = watch4.usage.cpu_percent, max(row["rss"], watch4.usage.rss_mb)
    row["udp_pps"] = statistics.median(u[0] for u in udp)
    row["udp_loss"] = statistics.median(u[1] for u in udp)
    if sweep and row["udp_pps"] > row["udp_peak"]:  # unlimited offered beat every swept rate
        row["udp_peak"], row["udp_peak_at"] = row["udp_pps"], 0.0
    row["ping_p50"], row["ping_p99"] = measure.ping_rtts(setup, max(2.0, seconds / 2))
    with measure.IperfServer(setup):
        load = threading.Thread(target=measure.tcp_gbps, args=(setup, seconds + 2, 1))
        load.start()
        row["load_p50"], row["load_p99"] = measure.ping_rtts(setup, seconds)
        load.join()
    return row


def measure_relay(setup: Setup, seconds: float, runs: int) -> Row:
    with measure.IperfServer(setup), measure.ProcWatch(setup.router_pids()) as watch:
        tcp = median_of(runs, lambda: measure.tcp_gbps(setup, seconds, 1))
    return {"relay_tcp1": tcp, "relay_cpu": watch.usage.cpu_percent}


def run_setup(setup: Setup, work: Callable[[Setup], Row]) -> Row:
    print(f"-- {setup.name} ({setup.hosts} hosts)", file=sys.stderr, flush=True)
    try:
        setup.up()
        wait_reachable(setup)
        row = work(setup)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"   {setup.name} failed: {exc}", file=sys.stderr)
        row = {}
    finally:
        setup.down()
    print(f"   {json.dumps({k: round(v, 3) for k, v in row.items()})}", file=sys.stderr)
    return row


COLUMNS = [
    ("tcp1", "TCP 1 st Gbit/s", "{:.2f}"),
    ("tcp4", "TCP 4 st Gbit/s", "{:.2f}"),
    ("udp_pps", "UDP 64B kpps", "{:.0f}"),
    ("udp_loss", "UDP loss %", "{:.1f}"),
    ("udp_peak", "UDP 64B peak kpps", "{:.0f}"),
    ("udp_peak_at", "peak at Mbit/s (0: unlimited)", "{:.0f}"),
    ("ping_p50", "ping p50 ms", "{:.3f}"),
    ("ping_p99", "ping p99 ms", "{:.3f}"),
    ("load_p50", "loaded p50 ms", "{:.2f}"),
    ("load_p99", "loaded p99 ms", "{:.2f}"),
    ("cpu", "router CPU % (1 st)", "{:.0f}"),
    ("cpu4", "router CPU % (4 st)", "{:.0f}"),
    ("rss", "router RSS MB", "{:.0f}"),
    ("relay_tcp1", "relayed TCP Gbit/s", "{:.2f}"),
]
LOSS_COLUMNS = [  # the same scenarios with 1 % random loss on the underlay
    ("loss1", "TCP 1 st Gbit/s", "{:.3f}"),
    ("loss_tcp4", "TCP 4 st Gbit/s", "{:.3f}"),
    ("loss_udp_pps", "UDP 64B kpps", "{:.0f}"),
    ("loss_udp_loss", "UDP loss %", "{:.1f}"),
    ("loss_ping_p50", "ping p50 ms", "{:.3f}"),
    ("loss_ping_p99", "ping p99 ms", "{:.3f}"),
    ("loss_load_p50", "loaded p50 ms", "{:.2f}"),
    ("loss_load_p99", "loaded p99 ms", "{:.2f}"),
    ("loss_cpu", "router CPU % (1 st)", "{:.0f}"),
    ("loss_cpu4", "router CPU % (4 st)", "{:.0f}"),
    ("loss_rss", "router RSS MB", "{:.0f}"),
]
RATIO_KEYS = ["tcp1", "tcp4", "udp_pps", "udp_peak", "loss1", "loss_tcp4", "loss_udp_pps"]
RATIO_KEYS += ["relay_tcp1"]
BASELINES = ["underlay", "vxlan", "tinc-default", "tinc-none"]


def _cell(row: Row, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key.endswith(("cpu", "cpu4", "rss")) and value == 0:  # (not measured: no router)
        return "-"
    return fmt.format(value / 1000 if key.endswith(("udp_pps", "udp_peak")) else value)


def markdown_tables(results: dict[str, Row]) -> str:
    lines = figures_table(results, COLUMNS)
    lines += ["", "With 1 % random loss on the underlay:", ""]
    lines += figures_table(results, LOSS_COLUMNS)
    lines += [
        "",
        "Ratios (pyweave / baseline; TCP, UDP packets/s, the same under loss, relayed):",
        "",
    ]
    lines.append("| pyweave | baseline | " + " | ".join(RATIO_KEYS) + " |")
    lines.append("|---" * (len(RATIO_KEYS) + 2) + "|")
    for name, row in results.items():
        if name in BASELINES:
            continue
        for base in BASELINES:
            ref = results.get(base, {})
            cells = []
            for key in RATIO_KEYS:
                if row.get(key) and ref.get(key):
                    cells.append(f"{row[key] / ref[key]:.2f}x")
                else:
                    cells.append("-")
            lines.append(f"| {name} | {base} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures_table(results: dict[str, Row], columns: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| setup | " + " | ".join(title for _, title, _ in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for name, row in results.items():
        cells = [_cell(row, key, fmt) for key, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.datapath", description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 run each")
    p.add_argument("--commit", metavar="REV", help="also run pyweave from commit REV")
    p.add_argument("--seconds", type=float, help="seconds per run (default 10, quick 3)")
    p.add_argument("--runs", type=int, help="runs per figure, median (default 3, quick 1)")
    p.add_argument(
        "--only",
        help="comma-separated setup names (e.g. tinc-none,pyweave-enc; "
        "with --commit, pyweave-enc also runs pyweave@REV-enc)",
    )
    p.add_argument("--no-relay", action="store_true", help="skip the 3-host relay runs")
    p.add_argument("--json", metavar="FILE", help="write the raw figures to FILE")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    runs = args.runs or (1 if args.quick else 3)
    wanted = set(args.only.split(",")) if args.only else None
    with contextlib_rev(args.commit) as revs:
        two_hosts = make_setups(2, revs, baselines=True)
        names = [setup.name for setup in two_hosts]
        unknown = sorted(
            name for name in wanted or () if not any(selects({name}, n) for n in names)
        )
        if unknown:
            print(
                f"bench.datapath: no setup named {', '.join(unknown)} (setups: {', '.join(names)})",
                file=sys.stderr,
            )
            return 2
        results: dict[str, Row] = {}
        for setup in two_hosts:
            if wanted is None or selects(wanted, setup.name):
                results[setup.name] = run_setup(
                    setup, lambda s: measure_two_hosts(s, seconds, runs)
                )
        if not args.no_relay:
            for setup in make_setups(3, revs, baselines=True):
                if wanted is None or selects(wanted, setup.name):
                    row = run_setup(setup, lambda s: measure_relay(s, seconds, runs))
                    results.setdefault(setup.name, {}).update(row)
    print(markdown_tables(results))
    print(f"\nreproduce: cd {REPO} && python -m bench.datapath {shlex.join(argv or sys.argv[1:])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


@contextmanager
def contextlib_rev(rev: str | None) -> Iterator[dict[str, list[str]]]:
    """{label: weave argv}: this tree as `pyweave`, and REV as `pyweave@REV` if given."""
    revs = {"pyweave": this_weave()}
    if rev is None:
        yield revs
        return
    short = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with weave_at(rev) as weave:
        yield {f"pyweave@{short}": weave, **revs}


if __name__ == "__main__":
    sys.exit(main())
