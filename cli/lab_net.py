"""The OS side of `weave lab`: namespaces, links, sysctls and processes.

Theory of operation: everything is done through netlink (pyroute2) and /proc, never by
parsing `ip` output, and never inside the root namespace.  The underlay veth pairs are
created *inside* the underlay namespace with their peer end placed directly into the host
namespace (`net_ns_fd`), so not even a transient interface appears in the root namespace.

Sysctls under /proc/sys/net belong to the network namespace of the thread that opens
them, so `write_sysctls` moves a short-lived helper thread into the namespace (setns is
per thread) and lets it die there; the calling thread never changes namespace.

Processes are found by comparing /proc/PID/ns/net with the namespace's bind mount (what
`ip netns pids` does) and are signalled through pidfds, so a PID that was reused between
finding and killing can never hit an unrelated process; waiting polls the pidfds, which
become readable when the process exits (no guessed sleeps).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from pyroute2 import NetNS, netns

NETNS_RUN_DIR = Path("/run/netns")
BRIDGE_NF_SYSCTLS = {
    "net/bridge/bridge-nf-call-iptables": "0",
    "net/bridge/bridge-nf-call-ip6tables": "0",
    "net/bridge/bridge-nf-call-arptables": "0",
}

CLONE_NEWNET = 0x40000000
NsId = tuple[int, int]  # (st_dev, st_ino) of a network namespace


def list_namespaces() -> list[str]:
    try:
        names: list[str] = netns.listnetns()
    except FileNotFoundError:  # no /run/netns yet: no namespaces
        return []
    return names


def create_namespace(name: str) -> None:
    """Create a named namespace with its loopback up."""
    netns.create(name)
    with NetNS(name) as ns:
        ns.link("set", index=_index(ns, "lo"), state="up")


def remove_namespace(name: str) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        netns.remove(name)


def create_bridge(ns_name: str, bridge: str) -> None:
    with NetNS(ns_name) as ns:
        ns.link("add", ifname=bridge, kind="bridge")
        ns.link("set", index=_index(ns, bridge), state="up")


def plug_host(underlay: str, bridge: str, port: str, host_ns: str, ifname: str, cidr: str) -> None:
    """veth from underlay's `bridge` (port name `port`) to `ifname` in host_ns, with cidr."""
    address, prefixlen = cidr.split("/")
    with NetNS(underlay) as ul:
        ul.link("add", ifname=port, kind="veth", peer={"ifname": ifname, "net_ns_fd": host_ns})
        ul.link("set", index=_index(ul, port), master=_index(ul, bridge), state="up")
    with NetNS(host_ns) as host:
        index = _index(host, ifname)
        host.addr("add", index=index, address=address, prefixlen=int(prefixlen))
        host.link("set", index=index, state="up")


def has_address(ns_name: str, ifname: str, cidr: str) -> bool:
    """True if ifname exists in ns_name, is up, and carries the address cidr."""
    address, prefixlen = cidr.split("/")
    with NetNS(ns_name) as ns:
        found = ns.link_lookup(ifname=ifname)
        if not found:
            return False
        addrs = ns.get_addr(index=found[0], family=socket.AF_INET)
    return any(a.get("IFA_ADDRESS") == address and a["prefixlen"] == int(prefixlen) for a in addrs)


def _index(ns: NetNS, ifname: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise OSError(f"no interface {ifname}")
    index: int = found[0]
    return index


def _run_inside(ns_name: str, work: Callable[[], None]) -> None:
    """Run `work` in a helper thread that entered ns_name (and dies there)."""
    errors: list[BaseException] = []

    def inside() -> None:
        try:
            with open(NETNS_RUN_DIR / ns_name) as fd:
                _setns(fd.fileno(), CLONE_NEWNET)
            work()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=inside, name=f"in-{ns_name}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def write_sysctls(ns_name: str, values: Mapping[str, str]) -> list[str]:
    """Write sysctls (paths under /proc/sys) inside ns_name; returns those written.

    Missing sysctls (e.g. br_netfilter not loaded) are skipped, not errors."""
    written: list[str] = []

    def write() -> None:
        for key, value in values.items():
            path = Path("/proc/sys") / key
            if path.exists():
                path.write_text(value)
                written.append(key)

    _run_inside(ns_name, write)
    return written


def model_a_nic(ns_name: str, ifname: str, gro: bool) -> None:
    """Make the veth ifname behave like a network card on a real wire (ethtool -K).

    Segmentation offloads off: a veth would otherwise carry a TCP or UDP GSO packet (up to
    64 KB, one `sendmsg` with UDP_SEGMENT) across the underlay bridge whole, where no real
    wire carries more than an MTU per packet; an iptables `statistic` loss rule would then
    drop or keep all of its datagrams together.  The kernel now segments at the host's
    egress (software GSO, as for a card without TSO/USO).  With `gro`, the receive side
    runs NAPI and GRO like a card's driver (a veth has neither by default), so the
    receiving host merges a flow's packets before its stack, as it would behind a NIC."""
    from pyroute2.ethtool import Ethtool

    def configure() -> None:
        ethtool = Ethtool()
        try:
            features = ethtool.get_features(ifname)
            wanted = {
                name: False
                for name, feature in features.features.items()
                if name.endswith("-segmentation") and feature.enable
            }
            if gro:
                wanted["rx-gro"] = True
            changed = False
            for name, enable in wanted.items():
                feature = features.features.get(name)
                if feature is not None and feature.enable != enable:
                    feature.enable = enable
                    changed = True
            if changed:
                ethtool.set_features(ifname, features)
        finally:
            ethtool.close()

    _run_inside(ns_name, configure)


def _setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread (os.setns only exists from Python 3.12)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def namespace_id(ns_name: str) -> NsId | None:
    try:
        st = os.stat(NETNS_RUN_DIR / ns_name)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def process_namespace(pid: int) -> NsId | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_namespaces(ids: Iterable[NsId]) -> list[int]:
    """PIDs of processes whose network namespace is one of ids, except us and our ancestors."""
    wanted = set(ids)
    spared = _self_and_ancestors()
    found = []
    for entry in os.listdir("/proc"):
        pid = int(entry) if entry.isdigit() else 0
        if pid and pid not in spared and process_namespace(pid) in wanted:
            found.append(pid)
    return sorted(found)


def _self_and_ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        pid = _parent(pid)
    return pids


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def process_env(pid: int, key: str) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        name, _, value = item.partition(b"=")
        if name.decode(errors="replace") == key:
            return value.decode(errors="replace")
    return None


def terminate(pids: Iterable[int], grace: float = 5.0) -> list[int]:
    """SIGTERM the processes, wait up to `grace` s, SIGKILL survivors; returns those signalled."""
    fds: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            fds[pid] = os.pidfd_open(pid)
    try:
        _signal_all(fds.values(), signal.SIGTERM)
        alive = _wait_exit(fds, time.monotonic() + grace)
        _signal_all((fds[pid] for pid in alive), signal.SIGKILL)
        _wait_exit({pid: fds[pid] for pid in alive}, time.monotonic() + grace)
    finally:
        for fd in fds.values():
            os.close(fd)
    return sorted(fds)


def _signal_all(fds: Iterable[int], signum: int) -> None:
    for fd in fds:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signum)


def _wait_exit(fds: Mapping[int, int], deadline: float) -> list[int]:
    """Wait until every pidfd is readable (process exited) or the deadline; returns the rest."""
    pending = {fd: pid for pid, fd in fds.items()}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    while pending:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            break
        for fd, _ in poller.poll(left_ms):
            poller.unregister(fd)
            pending.pop(fd, None)
    return sorted(pending.values())
