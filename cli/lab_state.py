"""Names, addresses and the on-disk record of a `weave lab`.

Theory of operation: a lab is fully determined by its prefix P and its size.  Every name
and address is computed here, in one place, so `lab up`, `lab exec`, `lab down` and the
test fixtures agree without talking to each other:

    {P}ul            underlay namespace holding bridge br0
    {P}h{i}          simulated host i, eth0 = 192.0.2.{10+i}/24 (TEST-NET-1)
    {P}h{i}c{j}      container j of host i, ethwe = 10.128.{i}.{j}/10
    /var/lib/pyweave-lab/{P}/h{i}   that host's WEAVE_STATE_DIR (router pid file, db, ...)
    /var/lib/pyweave-lab/{P}/lab.json   what `lab up` made (informational only)

`lab down` never trusts lab.json: it rediscovers namespaces by the pattern above (so a
crash half-way through `lab up` is still cleaned), which is why the pattern is strict —
`lab-` must not sweep away the namespaces of a lab whose prefix is `lab-b-`.
Nothing here touches the network; it is plain data plus one JSON file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LAB_ROOT = Path(os.environ.get("PYWEAVE_LAB_ROOT", "/var/lib/pyweave-lab"))
DEFAULT_PREFIX = "lab-"
UNDERLAY_SUFFIX = "ul"
UNDERLAY_BRIDGE = "br0"
UNDERLAY_NET = "192.0.2"  # TEST-NET-1; host i is .{10+i}
UNDERLAY_PREFIXLEN = 24
HOST_OFFSET = 10
MAX_HOSTS = 200
MAX_CONTAINERS = 254
OVERLAY_PREFIXLEN = 10  # 10.128.0.0/10, Weave Net's default allocation range
RECORD_NAME = "lab.json"
PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,40}")
MEMBER_RE = re.compile(r"(?:ul|h(?P<host>[1-9]\d*)(?:c(?P<container>[1-9]\d*))?)")
FULL_NAME_RE = re.compile(r"(?P<prefix>.+?)(?P<member>ul|h[1-9]\d*(?:c[1-9]\d*)?)")


class LabError(Exception):
    """A user-facing failure: the message is printed, the command exits non-zero."""


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.fullmatch(prefix):
        raise LabError(f"bad prefix {prefix!r}: use 1-40 characters of [A-Za-z0-9_.-]")
    return prefix


def lab_dir(prefix: str) -> Path:
    return LAB_ROOT / check_prefix(prefix)


def host_state_dir(prefix: str, host: int) -> Path:
    return lab_dir(prefix) / f"h{host}"


def underlay_ns(prefix: str) -> str:
    return f"{prefix}{UNDERLAY_SUFFIX}"


def host_ns(prefix: str, host: int) -> str:
    return f"{prefix}h{host}"


def container_ns(prefix: str, host: int, container: int) -> str:
    return f"{prefix}h{host}c{container}"


def underlay_addr(host: int) -> str:
    return f"{UNDERLAY_NET}.{HOST_OFFSET + host}"


def container_addr(host: int, container: int) -> str:
    return f"10.128.{host}.{container}"


def is_lab_member(prefix: str, netns: str) -> bool:
    """True for exactly the namespace names `lab up` creates with this prefix."""
    return netns.startswith(prefix) and MEMBER_RE.fullmatch(netns[len(prefix) :]) is not None


@dataclass(frozen=True)
class Target:
    """Where `lab exec` runs: a namespace and the state dir of the host it belongs to."""

    netns: str
    state_dir: Path | None


def resolve_target(name: str, prefix: str) -> Target:
    """Map `h1`, `h1c2`, `ul` (relative to prefix) or a full namespace name to a Target."""
    member = MEMBER_RE.fullmatch(name)
    if member is not None:
        return _target(prefix, name, member)
    if name.startswith(prefix):
        member = MEMBER_RE.fullmatch(name[len(prefix) :])
        if member is not None:
            return _target(prefix, name[len(prefix) :], member)
    full = FULL_NAME_RE.fullmatch(name)
    if full is not None and PREFIX_RE.fullmatch(full["prefix"]):
        member = MEMBER_RE.fullmatch(full["member"])
        assert member is not None
        return _target(full["prefix"], full["member"], member)
    return Target(netns=name, state_dir=None)


def _target(prefix: str, rel: str, member: re.Match[str]) -> Target:
    host = member["host"]
    state = host_state_dir(prefix, int(host)) if host else None
    return Target(netns=prefix + rel, state_dir=state)


@dataclass
class ContainerRecord:
    name: str  # "h1c2"
    netns: str
    address: str  # "10.128.1.2/10"


@dataclass
class HostRecord:
    name: str  # "h1"
    netns: str
    underlay: str  # "192.0.2.11/24"
    state_dir: str
    peer: str = ""  # router's peer name, once launched
    containers: list[ContainerRecord] = field(default_factory=list)


@dataclass
class LabRecord:
    prefix: str
    underlay_netns: str
    launched: bool
    encrypted: bool
    hosts: list[HostRecord] = field(default_factory=list)


def plan_lab(
    prefix: str, hosts: int, containers: int, launched: bool, encrypted: bool
) -> LabRecord:
    """The full layout of a lab, before anything exists."""
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"--hosts must be 1..{MAX_HOSTS}")
    if not 0 <= containers <= MAX_CONTAINERS:
        raise LabError(f"--containers must be 0..{MAX_CONTAINERS}")
    record = LabRecord(prefix, underlay_ns(prefix), launched, encrypted)
    for i in range(1, hosts + 1):
        host = HostRecord(
            name=f"h{i}",
            netns=host_ns(prefix, i),
            underlay=f"{underlay_addr(i)}/{UNDERLAY_PREFIXLEN}",
            state_dir=str(host_state_dir(prefix, i)),
        )
        for j in range(1, containers + 1):
            address = f"{container_addr(i, j)}/{OVERLAY_PREFIXLEN}"
            host.containers.append(
                ContainerRecord(f"h{i}c{j}", container_ns(prefix, i, j), address)
            )
        record.hosts.append(host)
    return record


def save_record(record: LabRecord) -> Path:
    path = lab_dir(record.prefix) / RECORD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(path)
    return path


def load_record(prefix: str) -> LabRecord | None:
    path = lab_dir(prefix) / RECORD_NAME
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    hosts = [
        HostRecord(
            **{k: v for k, v in h.items() if k != "containers"},
            containers=[ContainerRecord(**c) for c in h.get("containers", [])],
        )
        for h in raw.pop("hosts", [])
    ]
    return LabRecord(**raw, hosts=hosts)
