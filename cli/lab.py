"""`weave lab`: simulated hosts and containers in network namespaces.

Theory of operation: a lab is an underlay namespace `{P}ul` whose bridge `br0` plays the
LAN, N host namespaces `{P}h{i}` plugged into it (192.0.2.{10+i}/24) and M container
namespaces `{P}h{i}c{j}` per host.  `lab up` builds the namespaces (lab_net, netlink
only), then does what a user would do on real hosts: it runs the ordinary `weave launch`
and `weave attach` inside each host namespace, with one WEAVE_STATE_DIR per host so the
routers never share a pid file or database.  Routers therefore never run in the root
namespace, and each one's API listens on 127.0.0.1 of its own host namespace.

`lab down` is the important half: it assumes nothing survived (no lab.json, a crashed
`lab up`, stray processes) and rediscovers everything from the naming pattern: routers
from each host state dir's `weave.pid` (verified to belong to the lab before it is
signalled), then every other process inside the lab's namespaces, then the namespaces and
the state directory.  It is idempotent and only ever reports, never fails, on missing parts.

`lab exec` runs a command via `ip netns exec` with the host's WEAVE_STATE_DIR set, so
`weave lab exec h2 -- weave status` talks to h2's router.  pyroute2 is imported lazily
(about 0.2 s) so that `weave` commands other than `lab up/down` do not pay for it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pyweave.cli import lab_state as st
from pyweave.cli.lab_state import LabError, LabRecord

LAUNCH_TIMEOUT = 60.0
ATTACH_TIMEOUT = 30.0
EXEC_ERROR = 125  # `lab exec` failed itself (as env(1)/docker exec use it)
NETNS_RUN_DIR = Path("/run/netns")
OVERLAY_IFNAME = "ethwe"
PEER_NAME_RE = re.compile(r"\b[0-9a-f]{2}(?::[0-9a-f]{2}){5}\b")


def add_lab_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `lab` with its sub-commands up/exec/down/demo to the `weave` parser."""
    lab = subparsers.add_parser("lab", help="simulated hosts in network namespaces")
    lab.set_defaults(func=run_lab)
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="{up,exec,loss,down,demo}")
    up = sub.add_parser("up", help="create hosts, launch routers, attach containers")
    up.add_argument("--hosts", type=int, default=2, help="number of hosts (1-200)")
    up.add_argument("--containers", type=int, default=1, help="containers per host")
    up.add_argument("--password", default=None, help="WEAVE_PASSWORD for every router")
    up.add_argument("--no-launch", action="store_true", help="namespaces and underlay only")
    up.add_argument("--keep-on-error", action="store_true", help="leave a failed lab up")
    ex = sub.add_parser("exec", help="run a command in a lab namespace")
    ex.add_argument("name", help="h1, h1c2, ul or a full namespace name")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    loss = sub.add_parser("loss", help="drop a random share of the underlay's packets")
    loss.add_argument("percent", type=_percent, help="0 (no loss) to 99.9")
    sub.add_parser("down", help="remove the lab, whatever state it is in")
    demo = sub.add_parser("demo", help="up, ping across hosts, status, down")
    demo.add_argument("--hosts", type=int, default=2, help="number of hosts")
    for name, parser in sub.choices.items():
        default = "demo-" if name == "demo" else st.DEFAULT_PREFIX
        parser.add_argument("--prefix", default=default, help=f"name prefix (default {default})")


def run_lab(args: argparse.Namespace) -> int:
    try:
        if args.lab_command == "up":
            lab_up(args.prefix, args.hosts, args.containers, args.password, args)
            return 0
        if args.lab_command == "exec":
            return lab_exec(args.name, args.cmd, args.prefix)
        if args.lab_command == "loss":
            lab_loss(args.prefix, args.percent)
            return 0
        if args.lab_command == "down":
            lab_down(args.prefix)
            return 0
        from pyweave.cli.lab_demo import run_demo

        return run_demo(args.prefix, args.hosts)
    except LabError as exc:
        print(f"weave lab: {exc}", file=sys.stderr)
        return EXEC_ERROR if args.lab_command == "exec" else 1


# ---------------------------------------------------------------- up


def lab_up(
    prefix: str,
    hosts: int,
    containers: int,
    password: str | None = None,
    options: argparse.Namespace | None = None,
    out: TextIO = sys.stdout,
) -> LabRecord:
    """Build the lab; on failure tear it down again (unless --keep-on-error) and raise."""
    launch = not getattr(options, "no_launch", False)
    record = st.plan_lab(st.check_prefix(prefix), hosts, containers, launch, bool(password))
    _refuse_existing(prefix)
    try:
        _build_namespaces(record)
        st.save_record(record)
        if launch:
            _launch_routers(record, password)
            st.save_record(record)
            _attach_containers(record)
    except (Exception, KeyboardInterrupt) as exc:  # pyroute2's NetlinkError is no OSError
        if not getattr(options, "keep_on_error", False):
            lab_down(prefix, out=sys.stderr)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise LabError(f"lab up failed: {exc}") from exc
    print_summary(record, out)
    return record


def _refuse_existing(prefix: str) -> None:
    from pyweave.cli import lab_net

    taken = [n for n in lab_net.list_namespaces() if st.is_lab_member(prefix, n)]
    if taken or st.lab_dir(prefix).exists():
        what = ", ".join(taken) if taken else str(st.lab_dir(prefix))
        raise LabError(
            f"a lab with prefix {prefix!r} exists ({what}); run: weave lab down --prefix {prefix}"
        )


def _build_namespaces(record: LabRecord) -> None:
    from pyweave.cli import lab_net

    lab_net.create_namespace(record.underlay_netns)
    lab_net.create_bridge(record.underlay_netns, st.UNDERLAY_BRIDGE)
    lab_net.write_sysctls(record.underlay_netns, lab_net.BRIDGE_NF_SYSCTLS)
    for host in record.hosts:
        lab_net.create_namespace(host.netns)
        lab_net.plug_host(
            record.underlay_netns, st.UNDERLAY_BRIDGE, host.name, host.netns, "eth0", host.underlay
        )
        lab_net.write_sysctls(host.netns, lab_net.BRIDGE_NF_SYSCTLS)
        lab_net.model_a_nic(host.netns, "eth0", gro=True)
        lab_net.model_a_nic(record.underlay_netns, host.name, gro=False)
        Path(host.state_dir).mkdir(parents=True, exist_ok=True)
        for container in host.containers:
            lab_net.create_namespace(container.netns)


def _launch_routers(record: LabRecord, password: str | None) -> None:
    first = record.hosts[0].underlay.split("/")[0]
    for index, host in enumerate(record.hosts):
        peers = [first] if index else []
        # Every router knows the mesh size, so IPAM's first consensus needs a majority of
        # all hosts (h1 alone must not decide while h2..hN decide without it).
        consensus = f"consensus={len(record.hosts)}"
        argv = [*weave_argv(), "launch", "--nickname", host.name, "--ipalloc-init", consensus]
        argv += peers
        result = run_in(host.netns, argv, host.state_dir, password, LAUNCH_TIMEOUT)
        names = PEER_NAME_RE.findall(result.stdout)
        if not names:
            raise LabError(f"{host.netns}: weave launch printed no peer name: {result.stdout!r}")
        host.peer = names[-1]


def _attach_containers(record: LabRecord) -> None:
    from pyweave.cli import lab_net

    for host in record.hosts:
        for container in host.containers:
            argv = [*weave_argv(), "attach", container.address, f"netns:{container.netns}"]
            run_in(host.netns, argv, host.state_dir, None, ATTACH_TIMEOUT)
            if not lab_net.has_address(container.netns, OVERLAY_IFNAME, container.address):
                raise LabError(
                    f"weave attach gave {container.netns} no {OVERLAY_IFNAME} with "
                    f"{container.address}"
                )


def weave_argv() -> list[str]:
    """$PYWEAVE_LAB_WEAVE, else the `weave` of this interpreter (not whatever PATH finds)."""
    override = os.environ.get("PYWEAVE_LAB_WEAVE")
    if override:
        return [override]
    beside = Path(sys.executable).with_name("weave")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("weave")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from pyweave.cli.main import main; sys.exit(main())"]


def run_in(
    netns: str, argv: Sequence[str], state_dir: str, password: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run argv in netns with the host's env; raise LabError (with its output) on failure."""
    env = dict(os.environ, WEAVE_STATE_DIR=state_dir)
    if password:
        env["WEAVE_PASSWORD"] = password
    cmd = ["ip", "netns", "exec", netns, *argv]
    try:
        result = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{netns}: {' '.join(argv[1:])}: no answer after {timeout:.0f}s") from exc
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise LabError(f"{netns}: {' '.join(argv[1:])} exited {result.returncode}: {output}")
    return result


def print_summary(record: LabRecord, out: TextIO) -> None:
    rows = [("HOST", "NETNS", "UNDERLAY", "PEER", "CONTAINERS")]
    for host in record.hosts:
        boxes = " ".join(f"{c.name}={c.address}" for c in host.containers) or "-"
        peer = host.peer or ("-" if not record.launched else "?")
        rows.append((host.name, host.netns, host.underlay, peer, boxes))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[4]]), file=out)
    mode = "routers launched" if record.launched else "no routers (--no-launch)"
    print(f"lab {record.prefix!r} up: {len(record.hosts)} hosts, {mode}", file=out)
    print(f"  try: weave lab exec --prefix {record.prefix} h1 -- weave status", file=out)
    print(f"  end: weave lab down --prefix {record.prefix}", file=out)


# ---------------------------------------------------------------- exec


def lab_exec(name: str, cmd: Sequence[str], prefix: str) -> int:
    """Run cmd in the named namespace, passing stdio through; returns its exit code."""
    cmd = list(cmd[1:] if cmd[:1] == ["--"] else cmd)
    if not cmd:
        raise LabError("exec: no command given (weave lab exec NAME -- CMD...)")
    target = st.resolve_target(name, st.check_prefix(prefix))
    if not (NETNS_RUN_DIR / target.netns).exists():
        raise LabError(f"exec: no namespace {target.netns!r}")
    env = dict(os.environ)
    if target.state_dir is not None:
        env["WEAVE_STATE_DIR"] = str(target.state_dir)
    try:
        returncode = subprocess.run(["ip", "netns", "exec", target.netns, *cmd], env=env).returncode
    except KeyboardInterrupt:
        return 130
    return 128 - returncode if returncode < 0 else returncode


# ---------------------------------------------------------------- loss

LOSS_COMMENT = "weave-lab-loss"


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 100)")
    return value


def lab_loss(prefix: str, percent: float) -> None:
    """Drop `percent` % of the packets crossing the underlay bridge, at random (0: none).

    The rule sits in the underlay namespace (iptables raw PREROUTING, `statistic` match,
    with bridged packets passed through iptables while it exists), where every packet is
    still on its own: hosts segment at their egress and GRO merges only on the receiving
    host, after the wire (lab_net.model_a_nic)."""
    from pyweave.cli import lab_net

    underlay = st.resolve_target("ul", st.check_prefix(prefix)).netns
    if not (NETNS_RUN_DIR / underlay).exists():
        raise LabError(f"loss: no lab with prefix {prefix!r}")
    rule = ["PREROUTING", "-m", "comment", "--comment", LOSS_COMMENT]
    while _iptables(underlay, "-D", *_loss_rule_of(underlay)) == 0:
        pass
    if percent:
        statistic = ["-m", "statistic", "--mode", "random", "--probability", f"{percent / 100}"]
        if _iptables(underlay, "-I", *rule, *statistic, "-j", "DROP") != 0:
            raise LabError("loss: iptables could not add the rule (is iptables installed?)")
    calls = "1" if percent else "0"
    lab_net.write_sysctls(underlay, {"net/bridge/bridge-nf-call-iptables": calls})


def _loss_rule_of(underlay: str) -> list[str]:
    """The loss rule now in place (as iptables -S prints it, ready for -D), or []."""
    listing = subprocess.run(
        ["ip", "netns", "exec", underlay, "iptables", "-t", "raw", "-S", "PREROUTING"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in listing.splitlines():
        if LOSS_COMMENT in line and line.startswith("-A "):
            return line.split()[1:]
    return ["-no-such-rule-"]


def _iptables(netns: str, *args: str) -> int:
    argv = ["ip", "netns", "exec", netns, "iptables", "-t", "raw", *args]
    return subprocess.run(argv, capture_output=True, check=False).returncode


# ---------------------------------------------------------------- down


def lab_down(prefix: str, out: TextIO = sys.stdout) -> None:
    """Remove every trace of the lab with this prefix; never fails on missing pieces."""
    from pyweave.cli import lab_net

    st.check_prefix(prefix)
    members = [n for n in lab_net.list_namespaces() if st.is_lab_member(prefix, n)]
    ids = {i for i in (lab_net.namespace_id(n) for n in members) if i is not None}
    routers = _router_pids(prefix, ids)
    stopped = lab_net.terminate(routers, grace=5.0)
    strays = lab_net.terminate(lab_net.pids_in_namespaces(ids), grace=2.0)
    for name in sorted(members, key=lambda n: (-len(n), n)):  # containers, hosts, underlay
        lab_net.remove_namespace(name)
    shutil.rmtree(st.lab_dir(prefix), ignore_errors=True)
    left = [n for n in lab_net.list_namespaces() if st.is_lab_member(prefix, n)]
    print(
        f"lab {prefix!r} down: {len(stopped)} routers, {len(strays)} other processes stopped, "
        f"{len(members) - len(left)} namespaces removed",
        file=out,
    )
    if left:
        print(f"weave lab: could not remove {', '.join(left)}", file=sys.stderr)


def _router_pids(prefix: str, ids: set[tuple[int, int]]) -> list[int]:
    """PIDs from the hosts' weave.pid files that provably belong to this lab."""
    from pyweave.cli import lab_net

    pids = []
    for pid_file in sorted(st.lab_dir(prefix).glob("h*/weave.pid")):
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        ours = lab_net.process_namespace(pid) in ids
        if ours or lab_net.process_env(pid, "WEAVE_STATE_DIR") == str(pid_file.parent):
            pids.append(pid)
    return pids


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pyweave.cli.lab up ...` (or `... lab up ...`), before main.py wires it in."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="weave")
    add_lab_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv if argv[:1] == ["lab"] else ["lab", *argv])
    return run_lab(args)


if __name__ == "__main__":
    sys.exit(main())
