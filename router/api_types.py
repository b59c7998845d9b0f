"""The router's HTTP API as types: the one module the CLI may import from the router.

Theory of operation: the router serves JSON on 127.0.0.1:6784 (see docs/api.md).  These
TypedDicts describe the documents it returns, so both sides agree on field names and the
CLI can format Weave Net's text layouts without knowing anything else of the router.
Everything here is plain data: no behaviour, no imports from the rest of the router.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

API_PORT = 6784
CONTROL_PORT = 6783
PROTOCOL_NAME = "weave"
PROTOCOL_MIN_VERSION = 1
PROTOCOL_MAX_VERSION = 2

ConnectionState = Literal["connecting", "retrying", "failed", "pending", "established"]


class PeerRef(TypedDict):
    name: str  # "aa:bb:cc:dd:ee:ff"
    nickname: str


class ConnectionStatus(TypedDict):
    """One of our own connections (or connection attempts), as `weave status connections`."""

    address: str  # "192.0.2.12:6783"; for inbound connections the remote ip:port
    outbound: bool
    state: ConnectionState
    info: str  # free text: failure reason, "retry: 2026-11-27 23:41:02" etc.
    peer: NotRequired[PeerRef]  # known once the handshake got far enough
    encrypted: NotRequired[bool]
    mtu: NotRequired[int]
    attrs: NotRequired[dict[str, str]]
    # Added for `weave status connections` (cli/status_format.py).  When `info` is empty and
    # `peer` is known, the CLI builds Weave's Info column itself: "[encrypted|unencrypted]
    # <overlay> <name>(<nickname>)"; a non-empty `info` is always printed verbatim.
    overlay: NotRequired[str]  # "fastdp" | "sleeve"; Weave's Attrs["name"]
    # pyweave's data-path state for the link (shown by `weave report`): whether the peer
    # reports underlay loss on what we send, whether super-frames are therefore cut into
    # path-MTU datagrams (sealed links; plain ones are salvaged), and that report (parts
    # per million; 4294967295 = not enough datagrams to tell).
    lossy: NotRequired[bool]
    segmented: NotRequired[bool]
    peer_loss_ppm: NotRequired[int]


class PeerConnection(TypedDict):
    """An edge of the topology as reported by the peer that owns it."""

    name: str
    nickname: str
    address: str
    outbound: bool
    established: bool


class PeerStatus(TypedDict):
    name: str
    nickname: str
    uid: str
    version: int
    connections: list[PeerConnection]


class RouterStatus(TypedDict):
    protocol: str
    protocol_min_version: int
    protocol_max_version: int
    name: str
    nickname: str
    port: int
    encryption: bool
    peer_discovery: bool
    trusted_subnets: list[str]
    targets: list[str]
    connections: list[ConnectionStatus]
    peers: list[PeerStatus]
    stats: NotRequired[dict[str, int]]  # data-plane counters, drops by reason


class IpamOwner(TypedDict):
    """How much of the range one peer owns, as `weave status ipam` lists it."""

    peer: str  # peer name "aa:bb:cc:dd:ee:ff"
    nickname: str
    ips: int  # number of addresses owned
    reachable: bool  # False prints "- unreachable!"


class IpamStatus(TypedDict):
    status: str  # "ready", "awaiting consensus", ...
    range: str
    default_subnet: str
    entries: NotRequired[list[dict[str, object]]]
    # Added for `weave status ipam` (cli/status_format.py).  Weave's `status` strings are
    # "idle", "priming", "awaiting consensus (quorum: Q, known: K)", "ready",
    # "waiting for IP(s) to become available" and "all IP ranges owned by unreachable
    # peers - use 'rmpeer' if they are dead"; the CLI prints `status` verbatim.
    range_num_ips: NotRequired[int]  # size of `range` in addresses
    active_ips: NotRequired[int]  # addresses of ours currently allocated
    owners: NotRequired[list[IpamOwner]]  # one per peer owning part of the ring


class Attachment(TypedDict):
    """A container attached to the weave bridge, as listed by `weave ps`."""

    container: str  # docker id, or the netns name / pid spec
    mac: str
    cidrs: list[str]
    netns: NotRequired[str]  # how to reach it: "netns:NAME", "pid:PID", "docker:ID"


class DnsEntry(TypedDict):
    """One live (non-tombstoned) weaveDNS record, as `weave status dns` lists it."""

    hostname: str  # fully qualified, "web.weave.local."
    address: str  # "10.32.0.1"
    container_id: str  # full docker id, or "weave:expose" / "weave:extern"
    origin: str  # name of the peer that registered it


class DnsStatus(TypedDict):
    domain: str  # "weave.local."
    upstream: list[str]
    ttl: int
    entries: list[DnsEntry]


class Status(TypedDict):
    version: str
    router: RouterStatus
    ipam: NotRequired[IpamStatus]
    attachments: NotRequired[list[Attachment]]
    # Added for `weave status` (cli/status_format.py).
    version_check: NotRequired[str]  # absent: "version check update disabled"
    dns: NotRequired[DnsStatus]


class ErrorDocument(TypedDict):
    error: str
