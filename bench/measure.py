"""Measurements inside a lab: iperf3 TCP/UDP, ping percentiles, router CPU and RSS, loss.

Theory of operation: every measurement runs a client in one namespace against a server in
another (both processes are ours and end with the run).  iperf3 prints JSON (`-J`); TCP
throughput is the receiver's bits per second, UDP the delivered packets per second
((packets - lost) / seconds, as the server counted them).  Ping sends 20 probes a second
and reports the 50th/99th percentile of the per-probe RTTs.  While a run lasts, `ProcWatch`
samples the routers' /proc/PID/stat (utime + stime -> CPU %, 100 % = one core) and
/proc/PID/status (VmRSS, the maximum seen).  Underlay loss is `weave lab loss`: an
iptables `statistic` rule on the underlay bridge, which sees every packet (IP fragment or
segment) on its own, as a lossy wire would.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass

from bench.setups import LAB, Setup, sh

IPERF_PORT = "5299"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    cpu_percent: float  # the busiest router, 100 = one core
    rss_mb: float  # the largest router


class ProcWatch:
    """CPU and peak RSS of some processes between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ProcWatch:
        self._t0 = time.monotonic()
        self._cpu0 = {pid: _cpu_ticks(pid) for pid in self.pids}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        elapsed = time.monotonic() - self._t0
        busiest = 0.0
        for pid in self.pids:
            ticks = _cpu_ticks(pid) - self._cpu0[pid]
            busiest = max(busiest, 100.0 * ticks / CLK_TCK / elapsed)
        self.usage = Usage(busiest, self.peak_rss / 1024)

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            for pid in self.pids:
                self.peak_rss = max(self.peak_rss, _rss_kb(pid))


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class IperfServer:
    """`iperf3 -s` in the server namespace for the duration of a `with` block."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def __enter__(self) -> IperfServer:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.setup.server(), "iperf3", "-s", "-p", IPERF_PORT],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def iperf(setup: Setup, seconds: float, *args: str) -> dict[str, object]:
    argv = ["iperf3", "-c", setup.server_address(), "-p", IPERF_PORT, "-J"]
    argv += ["-t", f"{seconds:g}", *args]
    out = sh(setup.client(), *argv, check=False, timeout=seconds + 30)
    try:
        result: dict[str, object] = json.loads(out)
    except ValueError:
        return {"error": out[-200:]}
    return result


def tcp_gbps(setup: Setup, seconds: float, streams: int) -> float:
    result = iperf(setup, seconds, "-P", str(streams))
    try:
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9  # type: ignore[index]
    except (KeyError, TypeError):
        return 0.0


UNLIMITED = "0"  # iperf3 -b 0: as fast as the sending container can
PEAK_RATES = ("50M", "100M", "150M", "200M", "300M")  # offered payload bit rates, ascending


def udp_small(setup: Setup, seconds: float, rate: str = UNLIMITED) -> tuple[float, float]:
    """(delivered packets/s, loss %) of 64-byte UDP payloads offered at `rate` bit/s."""
    result = iperf(setup, seconds, "-u", "-l", "64", "-b", rate)
    try:
        total = result["end"]["sum"]  # type: ignore[index]
        delivered = (total["packets"] - total["lost_packets"]) / total["seconds"]
        return float(delivered), float(total["lost_percent"])
    except (KeyError, TypeError, ZeroDivisionError):
        return 0.0, 100.0


def udp_peak(setup: Setup, seconds: float) -> tuple[float, float]:
    """(the most delivered packets/s of 64-byte UDP at any of PEAK_RATES, that rate in Mbit/s).

    Delivered packets rise with the offered rate until something saturates; past that point
    some overlays deliver *less* (the sender's CPU goes into packets that are dropped
    later).  The sweep stops once the figure fell below 80 % of the best with >20 % loss."""
    best, best_rate = 0.0, 0.0
    for rate in PEAK_RATES:
        pps, loss = udp_small(setup, seconds, rate)
        if pps > best:
            best, best_rate = pps, float(rate.rstrip("M"))
        elif loss > 20 and pps < 0.8 * best:
            break
    return best, best_rate


def ping_rtts(setup: Setup, seconds: float) -> tuple[float, float]:
    """(p50, p99) RTT in ms of probes every 50 ms."""
    count = max(10, int(seconds * 20))
    argv = ["ping", "-n", "-i", "0.05", "-c", str(count), "-W", "1", setup.server_address()]
    out = sh(setup.client(), *argv, check=False, timeout=seconds + 30)
    rtts = sorted(float(part.split("=")[1]) for part in out.split() if part.startswith("time="))
    if len(rtts) < 2:
        return float("nan"), float("nan")
    cuts = statistics.quantiles(rtts, n=100)
    return statistics.median(rtts), cuts[98]


class Loss:
    """Random loss of the underlay's packets (`weave lab loss`) while the `with` block runs."""

    def __init__(self, setup: Setup, probability: float) -> None:
        self.setup = setup
        self.percent = f"{probability * 100:g}"

    def _set(self, percent: str) -> None:
        argv = [*LAB, "loss", "--prefix", self.setup.prefix, percent]
        subprocess.run(argv, capture_output=True, check=True)

    def __enter__(self) -> Loss:
        self._set(self.percent)
        return self

    def __exit__(self, *exc: object) -> None:
        self._set("0")
