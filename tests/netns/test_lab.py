"""Tests of `weave lab` itself: the namespaces, the underlay, exec, and a crash-proof down.

Theory of operation: most tests use `--no-launch` so they check the lab's own work
(namespaces, veths, addresses, sysctls, cleanup) independently of the router; one runs
`lab up` against a stub `weave` to check the launch/attach flow without a router.  The
last two run the full story with real routers: `lab up` then a cross-host ping, and
`weave lab demo` under a prefix of its own (exit 0, no packet loss, nothing left behind).
Tests that need routers fail, not skip, when `weave launch` is broken.  All traffic stays
inside the lab's namespaces on 192.0.2.0/24 and 10.128.0.0/10.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    Lab,
    describe,
    lab_cli,
    lab_namespaces,
    spawn_in,
    weave_argv,
    weave_cli_ready,
)
from pyweave.cli import lab_state

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
LabFactory = Callable[..., Lab]


def test_up_no_launch_builds_namespaces_and_underlay(lab: LabFactory) -> None:
    net = lab(hosts=3, containers=2, launch=False)
    expected = {f"{net.prefix}ul"} | {f"{net.prefix}h{i}" for i in (1, 2, 3)}
    expected |= {f"{net.prefix}h{i}c{j}" for i in (1, 2, 3) for j in (1, 2)}
    assert set(net.namespaces()) == expected
    for src, dst in [(1, 2), (2, 3), (3, 1)]:
        assert net.ping(f"h{src}", net.underlay_addr(dst)), f"h{src} -> h{dst} over underlay"
    eth0 = net.exec("h2", "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert "192.0.2.12/24" in eth0
    assert net.ping("h1c2", "127.0.0.1"), "container loopback is up"


def test_up_records_layout_and_disables_bridge_netfilter(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1, launch=False)
    record = net.record()
    assert [h["underlay"] for h in record["hosts"]] == ["192.0.2.11/24", "192.0.2.12/24"]
    assert record["hosts"][1]["containers"][0] == {
        "name": "h2c1",
        "netns": f"{net.prefix}h2c1",
        "address": "10.128.2.1/10",
    }
    assert net.addr("h2", "c1") == net.addr(2, 1) == "10.128.2.1"
    sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    probe = net.exec("h1", "sh", "-c", f"test ! -e {sysctl} || cat {sysctl}")
    assert probe.stdout.strip() in ("", "0")


def test_loss_sets_and_clears_one_rule_on_the_underlay(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=0, launch=False)

    def rules() -> list[str]:
        listing = net.exec("ul", "iptables", "-t", "raw", "-S", "PREROUTING").stdout
        return [line for line in listing.splitlines() if "weave-lab-loss" in line]

    net.loss(50)
    net.loss(30)  # replaces, never stacks
    (rule,) = rules()
    assert abs(float(rule.split("--probability ")[1].split()[0]) - 0.3) < 1e-6
    bridged = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    assert net.exec("ul", "cat", bridged).stdout.strip() == "1"
    sent = net.exec("h1", "ping", "-c", "40", "-i", "0.01", "-q", net.underlay_addr(2), check=False)
    assert " 0% packet loss" not in sent.stdout, "a 30 % loss rule lost nothing"
    net.loss(0)
    assert rules() == [] and net.exec("ul", "cat", bridged).stdout.strip() == "0"
    assert net.ping("h1", net.underlay_addr(2), count=5)
    for bad in ("100", "-1", "lots"):
        argv = [*weave_argv(), "lab", "loss", "--prefix", net.prefix, "--", bad]
        refused = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert refused.returncode != 0
        assert refused.stderr.count("\n") == 1 and bad in refused.stderr
    gone = lab_cli("loss", "--prefix", "nolab-", "5", check=False)
    assert gone.returncode == 1 and "no lab with prefix 'nolab-'" in gone.stderr


def test_up_refuses_existing_lab(lab: LabFactory) -> None:
    net = lab(hosts=1, containers=0, launch=False)
    again = lab_cli("up", "--prefix", net.prefix, "--no-launch", check=False)
    assert again.returncode == 1
    assert "weave lab down" in again.stderr


def test_exec_passes_exit_codes_stdio_and_state_dir(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1, launch=False)
    assert net.exec("h1", "sh", "-c", "exit 7", check=False).returncode == 7
    assert net.exec("h2c1", "true").returncode == 0
    assert net.exec(f"{net.prefix}h2c1", "false", check=False).returncode == 1
    assert net.exec("h1", "cat", input="hello\n").stdout == "hello\n"
    state = net.exec("h2c1", "sh", "-c", 'echo "$WEAVE_STATE_DIR"').stdout.strip()
    assert state == str(net.state_dir(2))
    killed = net.exec("h1", "sh", "-c", "kill -TERM $$", check=False)
    assert killed.returncode == 128 + 15
    missing = net.exec("h9", "true", check=False)
    assert missing.returncode == 125
    assert "no namespace" in missing.stderr


def test_down_cleans_up_after_crash(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1, launch=False)
    stray = spawn_in(net.netns("h1c1"), ["sleep", "1000"])
    fake_router = spawn_in(net.netns("h2"), ["sh", "-c", 'trap "" TERM; sleep 1000'])
    try:
        net.wait_until(lambda: _in_netns(stray.pid, net.netns("h1c1")), 10, "stray in h1c1")
        net.wait_until(lambda: _in_netns(fake_router.pid, net.netns("h2")), 10, "pid in h2")
        (net.state_dir(2) / "weave.pid").write_text(f"{fake_router.pid}\n")
        (lab_state.lab_dir(net.prefix) / lab_state.RECORD_NAME).unlink()
        down = net.down()
        assert "1 routers" in down.stdout
        assert stray.wait(timeout=10) != 0
        assert fake_router.wait(timeout=10) == -9  # ignored SIGTERM, got SIGKILL
        assert net.namespaces() == []
        assert not lab_state.lab_dir(net.prefix).exists()
    finally:
        for proc in (stray, fake_router):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_down_is_idempotent_and_ignores_stale_pid_files() -> None:
    prefix = f"{os.environ.get('PYWEAVE_TEST_PREFIX', 't')}stale-"
    lab_cli("down", "--prefix", prefix)
    outsider = subprocess.Popen(["sleep", "1000"])  # root namespace, not the lab's
    try:
        state = lab_state.host_state_dir(prefix, 1)
        state.mkdir(parents=True)
        (state / "weave.pid").write_text(f"{outsider.pid}\n")
        assert "0 routers" in lab_cli("down", "--prefix", prefix).stdout
        assert outsider.poll() is None, "down killed a process outside the lab"
        assert lab_cli("down", "--prefix", prefix).returncode == 0
        assert lab_namespaces(prefix) == []
    finally:
        outsider.kill()
        outsider.wait()


STUB_WEAVE = r"""#!/bin/sh
# Stand-in for `weave launch/attach/status`: lab's own flow, testable without a router.
set -e
if [ "$2" = "--help" ]; then echo "usage: weave $1"; exit 0; fi
case "$1" in
launch)
  ip link add weave type bridge 2>/dev/null || { echo "router already running" >&2; exit 1; }
  ip link set weave up
  sleep 1000 </dev/null >/dev/null 2>&1 &
  echo $! > "$WEAVE_STATE_DIR/weave.pid"
  printf '02:00:00:00:00:%02x\n' "${WEAVE_STATE_DIR##*/h}"
  ;;
attach)
  ns=${3#netns:}
  ip link add "v$$" type veth peer name ethwe netns "$ns"
  ip link set "v$$" master weave up
  ip -n "$ns" addr add "$2" dev ethwe
  ip -n "$ns" link set ethwe up
  echo "${2%/*}"
  ;;
status) echo "stub router for $WEAVE_STATE_DIR" ;;
*) echo "stub weave: unknown command $1" >&2; exit 1 ;;
esac
"""


def test_up_launches_and_attaches_then_down_stops_routers(
    lab: LabFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = tmp_path / "weave"
    stub.write_text(STUB_WEAVE)
    stub.chmod(0o755)
    monkeypatch.setenv("PYWEAVE_LAB_WEAVE", str(stub))
    net = lab(hosts=2, containers=2, password="s3cret")
    peers = [h["peer"] for h in net.record()["hosts"]]
    assert peers == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    assert net.ping("h2c1", net.addr(2, 2)), "containers on one host share its weave bridge"
    assert net.weave("h2", "status").stdout.strip().endswith("/h2")
    routers = [int((net.state_dir(i) / "weave.pid").read_text()) for i in (1, 2)]
    assert "2 routers" in net.down().stdout
    gone = lambda: not any(Path(f"/proc/{pid}").exists() for pid in routers)  # noqa: E731
    net.wait_until(gone, 10, "stub routers to exit")


def test_cross_host_ping_with_routers(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1)
    target = net.addr(2, 1)
    net.wait_until(lambda: net.ping("h1c1", target), 30, f"h1c1 reaching h2c1 ({target})")
    assert net.ping("h1c1", target, count=3)
    assert net.ping("h2c1", net.addr(1, 1))
    assert net.weave("h1", "status").returncode == 0


def test_demo_runs_the_story_and_cleans_up() -> None:
    if not weave_cli_ready():
        pytest.fail("`weave launch --help` does not work: the CLI is broken")
    prefix = f"{os.environ.get('PYWEAVE_TEST_PREFIX', 't')}demo-"
    lab_cli("down", "--prefix", prefix)  # leftovers of a crashed earlier run
    try:
        demo = lab_cli("demo", "--prefix", prefix, check=False)
        assert demo.returncode == 0, describe(demo)
        assert " 0% packet loss" in demo.stdout, demo.stdout
        assert "Demo succeeded." in demo.stdout, demo.stdout
        assert lab_namespaces(prefix) == [], "the demo left namespaces behind"
        assert not lab_state.lab_dir(prefix).exists(), "the demo left its lab directory"
    finally:
        lab_cli("down", "--prefix", prefix)


def _in_netns(pid: int, netns: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return False
