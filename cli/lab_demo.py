"""`weave lab demo`: the whole Weave story on one machine, narrated.

Theory of operation: the demo is a script over the public pieces only — `lab_up`, the
ordinary `weave` commands run inside host namespaces, `ping` inside a container
namespace, and `lab_down` in a `finally`, so the demo cleans up even when a step fails or
the user presses Ctrl-C.  Routers connect asynchronously, so before the measured ping it
waits (bounded by a deadline) until a single probe packet gets through; the 3-packet ping
that follows decides the exit status.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence

from pyweave.cli.lab import lab_down, lab_up, run_in, weave_argv
from pyweave.cli.lab_state import HostRecord, LabError

CONNECT_DEADLINE = 30.0
STEP_TIMEOUT = 30.0


def run_demo(prefix: str, hosts: int) -> int:
    if hosts < 2:
        raise LabError("demo: needs at least 2 hosts")
    say(f"Building a lab of {hosts} simulated hosts (prefix {prefix!r}), one container each.")
    try:
        record = lab_up(prefix, hosts, 1)
        h1, h2 = record.hosts[0], record.hosts[1]
        weave_step(h1, "The router on h1:", "status")
        ok = ping_step(prefix, h1, h2)
        weave_step(h1, "h1's connections:", "status", "connections")
        weave_step(h1, "Peers h1 knows:", "status", "peers")
        weave_step(h1, "Containers attached on h1:", "ps")
        say("Demo " + ("succeeded." if ok else "FAILED: the containers could not talk."))
        return 0 if ok else 1
    finally:
        say("Tearing the lab down.")
        lab_down(prefix)


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def weave_step(host: HostRecord, title: str, *args: str) -> None:
    say(f"{title}  (weave {' '.join(args)} in {host.netns})")
    try:
        result = run_in(host.netns, [*weave_argv(), *args], host.state_dir, None, STEP_TIMEOUT)
        print(result.stdout.rstrip(), flush=True)
    except LabError as exc:
        print(f"    ({exc})", flush=True)


def ping_step(prefix: str, src: HostRecord, dst: HostRecord) -> bool:
    source, target = src.containers[0], dst.containers[0]
    address = target.address.split("/")[0]
    say(f"Waiting for {source.name} to reach {target.name} ({address}) across the mesh...")
    if not wait_for_ping(source.netns, address, CONNECT_DEADLINE):
        print(f"    no reply within {CONNECT_DEADLINE:.0f}s", flush=True)
    say(f"ping -c 3 {address} from {source.name} (host {src.name}) to {target.name}:")
    result = ping(source.netns, address, count=3)
    print(result.stdout.rstrip(), flush=True)
    return result.returncode == 0


def wait_for_ping(netns: str, address: str, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if ping(netns, address, count=1).returncode == 0:
            return True
        time.sleep(0.2)  # poll interval: an unreachable route fails instantly
    return False


def ping(netns: str, address: str, count: int) -> subprocess.CompletedProcess[str]:
    argv: Sequence[str] = ["ip", "netns", "exec", netns, "ping", "-n", "-c", str(count)]
    return subprocess.run(
        [*argv, "-W", "1", address], capture_output=True, text=True, timeout=STEP_TIMEOUT
    )
