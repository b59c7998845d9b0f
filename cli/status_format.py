"""Weave Net 2.x text layouts for `weave status`, its sub-commands and `weave ps`.

Theory of operation: Weave's router renders its status pages with Go text/template strings
(``prog/weaver/http.go``: the ``status``, ``targets``, ``connections``, ``peers``, ``dns``
and ``ipam`` templates), and the ``weave`` shell script wraps some of them (``status`` puts
a blank line before and after the page; ``ps`` reflows the output of ``weaveutil
container-addrs``).  People read these pages and scripts grep them, so pyweave prints them
byte for byte the same.  Every function here is pure: it takes the JSON documents typed in
``pyweave.router.api_types`` and returns the exact text to write to stdout, newlines
included, and never talks to the router, Docker or the kernel.

Layout rules carried over from Weave (widths are Go ``printf`` verbs):

* ``weave status``: ``<label>: <value>`` lines with the label right-aligned in 15 columns
  (the longest label, ``TrustedSubnets``, fits exactly), one block per service, blocks
  separated by an empty line, the whole page framed by one empty line above and below.
  Connection counts are listed in the fixed order established, pending, retrying, failed,
  connecting, leaving out states with no connection; peer-connection counts say
  established/pending over the connections every peer reports (so each link counts twice).
* ``status connections``: ``-> |<- `` direction, address ``%-21v``, state ``%-11v``, the
  Info column, then the connection attributes as ``key=value`` in sorted key order, except
  ``name``, *with no separator between pairs* (Weave prints ``encrypted=truemtu=1376``).
  Weave always emits the spaces around Info and the attributes, so lines without them end
  in blanks; we keep that too.  Info of a pending/established connection is built like
  mesh does it: ``%-6v`` overlay name + ``name(nickname)``, prefixed with ``%-11v``
  ``encrypted``/``unencrypted`` when the router runs with a password.
* ``status peers``: ``name(nickname)`` per peer, then per connection three spaces, the
  direction, address ``%-21v``, ``name(nickname)`` ``%-37v``, ``established|pending``.
* ``status ipam``: ``name(nickname)`` ``%-37v``, ``%8d IPs``, ``(%04.1f%% of total)`` (the
  share computed in float32 like Go) and ``(N active)`` for ourselves, ``- unreachable!`` or
  nothing for others; our own line first.
* ``status dns``: hostname without the domain ``%-12v``, address ``%-15v``, container id
  ``%12.12v`` (right-aligned, cut to 12), origin peer.
* ``ps``: ``weave:expose <bridge-mac> <cidr>...`` first, then ``<container> <mac>
  <cidr>...`` per attached interface, single spaces (the script's ``echo $1 $3 $4``
  collapses weaveutil's ``%12s`` padding), no trailing blank when there is no address.

Documents are listed in the order given: Weave iterates Go maps there, so its own order is
arbitrary and nothing can rely on it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence

from pyweave.router.api_types import (
    Attachment,
    ConnectionStatus,
    DnsStatus,
    IpamStatus,
    RouterStatus,
    Status,
)

__all__ = [
    "LABEL_WIDTH",
    "format_connections",
    "format_dns",
    "format_ipam",
    "format_peers",
    "format_ps",
    "format_status",
    "format_targets",
]

LABEL_WIDTH = 15
VERSION_CHECK_DISABLED = "version check update disabled"
EXPOSE_NAME = "weave:expose"

# printConnectionCounts: the states Weave counts, in the order it lists them.
_CONNECTION_STATE_ORDER = ("established", "pending", "retrying", "failed", "connecting")
_HEX_ID = re.compile(r"[0-9a-f]{13,}")


def _field(label: str, value: object) -> str:
    return f"{label:>{LABEL_WIDTH}}: {value}\n"


def _enabled(flag: bool) -> str:
    return "enabled" if flag else "disabled"


def _list_or_none(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


def _counts(counts: Mapping[str, int], order: Iterable[str]) -> str:
    return ", ".join(f"{counts[key]} {key}" for key in order if counts.get(key))


def _protocol(router: RouterStatus) -> str:
    low, high = router["protocol_min_version"], router["protocol_max_version"]
    versions = str(high) if low == high else f"{low}..{high}"
    return f"{router['protocol']} {versions}"


def _connections_summary(router: RouterStatus) -> str:
    connections = router["connections"]
    counts: dict[str, int] = {}
    for conn in connections:
        counts[conn["state"]] = counts.get(conn["state"], 0) + 1
    detail = _counts(counts, _CONNECTION_STATE_ORDER)
    return f"{len(connections)} ({detail})" if detail else str(len(connections))


def _peers_summary(router: RouterStatus) -> str:
    counts = {"established": 0, "pending": 0}
    for peer in router["peers"]:
        for conn in peer["connections"]:
            counts["established" if conn["established"] else "pending"] += 1
    detail = _counts(counts, ("established", "pending"))
    peers = len(router["peers"])
    return f"{peers} (with {detail} connections)" if detail else str(peers)


def _router_block(router: RouterStatus) -> str:
    return (
        _field("Service", "router")
        + _field("Protocol", _protocol(router))
        + _field("Name", f"{router['name']}({router['nickname']})")
        + _field("Encryption", _enabled(router["encryption"]))
        + _field("PeerDiscovery", _enabled(router["peer_discovery"]))
        + _field("Targets", len(router["targets"]))
        + _field("Connections", _connections_summary(router))
        + _field("Peers", _peers_summary(router))
        + _field("TrustedSubnets", _list_or_none(router["trusted_subnets"]))
    )


def _ipam_block(ipam: IpamStatus) -> str:
    return (
        _field("Service", "ipam")
        + _field("Status", ipam["status"])
        + _field("Range", ipam["range"])
        + _field("DefaultSubnet", ipam["default_subnet"])
    )


def _dns_block(dns: DnsStatus) -> str:
    return (
        _field("Service", "dns")
        + _field("Domain", dns["domain"])
        + _field("Upstream", _list_or_none(dns["upstream"]))
        + _field("TTL", dns["ttl"])
        + _field("Entries", len(dns["entries"]))
    )


def format_status(status: Status) -> str:
    """The whole stdout of ``weave status``: blank line, Version, service blocks, blank line.

    Blocks: router always; ipam and dns when the document has them.  Weave's proxy and
    plugin blocks have no pyweave counterpart and are never printed.
    """
    version_check = status.get("version_check") or VERSION_CHECK_DISABLED
    blocks = [
        _field("Version", f"{status['version']} ({version_check})"),
        _router_block(status["router"]),
    ]
    if "ipam" in status:
        blocks.append(_ipam_block(status["ipam"]))
    if "dns" in status:
        blocks.append(_dns_block(status["dns"]))
    return "\n" + "\n".join(blocks) + "\n"


def _direction(outbound: bool) -> str:
    return "->" if outbound else "<-"


def _connection_info(conn: ConnectionStatus, router_encrypts: bool) -> str:
    if conn["info"] or "peer" not in conn:
        return conn["info"]
    overlay = conn.get("overlay") or conn.get("attrs", {}).get("name") or "none"
    peer = conn["peer"]
    info = f"{overlay:<6} {peer['name']}({peer['nickname']})"
    if router_encrypts:
        mode = "unencrypted" if conn.get("encrypted") is False else "encrypted"
        info = f"{mode:<11} {info}"
    return info


def _connection_attrs(conn: ConnectionStatus, router_encrypts: bool) -> str:
    attrs: dict[str, str] = dict(conn.get("attrs", {}))
    if "mtu" in conn:
        attrs["mtu"] = str(conn["mtu"])
    if router_encrypts and conn.get("encrypted"):
        attrs["encrypted"] = "true"
    return "".join(f"{key}={attrs[key]}" for key in sorted(attrs) if key != "name")


def format_connections(status: Status) -> str:
    """``weave status connections``: one line per connection or connection attempt."""
    router = status["router"]
    encrypts = router["encryption"]
    lines = []
    for conn in router["connections"]:
        lines.append(
            f"{_direction(conn['outbound'])} {conn['address']:<21} {conn['state']:<11} "
            f"{_connection_info(conn, encrypts)} {_connection_attrs(conn, encrypts)}\n"
        )
    return "".join(lines)


def format_peers(status: Status) -> str:
    """``weave status peers``: every known peer (ourselves included) and its connections."""
    out = []
    for peer in status["router"]["peers"]:
        out.append(f"{peer['name']}({peer['nickname']})\n")
        for conn in peer["connections"]:
            remote = f"{conn['name']}({conn['nickname']})"
            state = "established" if conn["established"] else "pending"
            out.append(
                f"   {_direction(conn['outbound'])} {conn['address']:<21} {remote:<37} {state}\n"
            )
    return "".join(out)


def format_targets(status: Status) -> str:
    """``weave status targets``: the peers we were asked to connect to, one per line."""
    return "".join(f"{target}\n" for target in status["router"]["targets"])


def _float32(value: float) -> float:
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def _share(ips: int, total: int) -> float:
    # Go: float32(ips) * 100.0 / float32(status.RangeNumIPs), all in float32.
    if total <= 0:
        return 0.0
    return _float32(_float32(_float32(ips) * 100.0) / _float32(total))


def format_ipam(status: Status) -> str:
    """``weave status ipam``: how much of the allocation range each peer owns.

    Empty when IPAM is disabled or owns nothing yet (Weave prints nothing then either).
    """
    ipam = status.get("ipam")
    if ipam is None:
        return ""
    ourself = status["router"]["name"]
    total = ipam.get("range_num_ips", 0)
    owners = ipam.get("owners", [])
    ours = [owner for owner in owners if owner["peer"] == ourself]
    others = [owner for owner in owners if owner["peer"] != ourself]
    lines = []
    for owner in ours[:1] + others:
        if owner["peer"] == ourself:
            info = f"({ipam.get('active_ips', 0)} active)"
        else:
            info = "" if owner["reachable"] else "- unreachable!"
        display = f"{owner['peer']}({owner['nickname']})"
        share = _share(owner["ips"], total)
        lines.append(f"{display:<37} {owner['ips']:>8} IPs ({share:04.1f}% of total) {info}\n")
    return "".join(lines)


def format_dns(status: Status) -> str:
    """``weave status dns``: the live weaveDNS records, one per line."""
    dns = status.get("dns")
    if dns is None:
        return ""
    suffix = "." + dns["domain"]
    lines = []
    for entry in dns["entries"]:
        hostname = entry["hostname"]
        if hostname.endswith(suffix):
            hostname = hostname[: -len(suffix)]
        lines.append(
            f"{hostname:<12} {entry['address']:<15} {entry['container_id'][:12]:>12} "
            f"{entry['origin']}\n"
        )
    return "".join(lines)


def _container_label(container: str) -> str:
    # `docker ps -q` gives 12-digit ids; anything else (names, netns:NAME, pid:PID) as is.
    return container[:12] if _HEX_ID.fullmatch(container) else container


def _ps_line(label: str, mac: str, cidrs: Sequence[str]) -> str:
    return " ".join([label, mac, *cidrs]) + "\n"


def format_ps(attachments: Sequence[Attachment], expose: Attachment | None) -> str:
    """``weave ps``: the bridge (``weave:expose``) first, then every attached interface.

    ``expose`` is the weave bridge itself (its ``container`` field is ignored) or None
    when there is no bridge, in which case Weave prints no ``weave:expose`` line.
    """
    lines = []
    if expose is not None:
        lines.append(_ps_line(EXPOSE_NAME, expose["mac"], expose["cidrs"]))
    for attachment in attachments:
        label = _container_label(attachment["container"])
        lines.append(_ps_line(label, attachment["mac"], attachment["cidrs"]))
    return "".join(lines)
