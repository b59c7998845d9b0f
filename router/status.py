"""Status documents: the router's live state as the JSON the API serves.

Theory of operation: `build_status` reads — never changes — the router's connections,
targets and peers and renders them into the TypedDicts of api_types, which the CLI turns
into Weave Net's text layouts.  Times of next retries are shown as wall-clock strings.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pyweave.router.api_types import (
    PROTOCOL_MAX_VERSION,
    PROTOCOL_MIN_VERSION,
    PROTOCOL_NAME,
    ConnectionStatus,
    RouterStatus,
    Status,
)
from pyweave.router.core.names import format_peer_name, parse_peer_name

if TYPE_CHECKING:
    from pyweave.router.router import Router

VERSION = "0.1.0"


def _wall_clock(monotonic_deadline: float) -> str:
    """A loop-clock deadline as local wall-clock time, as Weave Net prints retry times."""
    delay = monotonic_deadline - asyncio.get_running_loop().time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + delay))


def _connection_statuses(router: Router, now: float) -> list[ConnectionStatus]:
    """The mesh's view of our connections and targets, with data-path details added."""
    result = router.mesh.connection_statuses(now, format_time=_wall_clock)
    for entry in result:
        peer = entry.get("peer")
        if peer is None:
            continue
        conn = router.connections.connections.get(parse_peer_name(peer["name"]))
        if conn is None:
            continue
        entry["encrypted"] = conn.link.encrypted
        entry["mtu"] = router.mtu
        entry["overlay"] = "sleeve"
        entry["segmented"] = conn.link.segment
        entry["lossy"] = conn.link.lossy
        entry["peer_loss_ppm"] = conn.link.peer_loss_ppm
    for address, reason in router.connections.inbound_failures.shown(now):
        result.append({"address": address, "outbound": False, "state": "failed", "info": reason})
    return result


def _stats(router: Router) -> dict[str, int]:
    stats = router.dataplane.counters.as_dict()
    for key in ("drops_auth", "drops_replay", "drops_malformed"):
        stats[f"link_{key}"] = 0
    for conn in router.connections.connections.values():
        link = conn.link
        auth, replay, malformed = link.drop_counts()
        stats["link_drops_auth"] += auth
        stats["link_drops_replay"] += replay
        stats["link_drops_malformed"] += malformed
    stats["dropped_no_route"] = router.forwarder.dropped_no_route
    stats["mac_entries"] = len(router.macs)
    return stats


def build_status(router: Router) -> Status:
    now = asyncio.get_running_loop().time()
    cfg = router.config
    router_status: RouterStatus = {
        "protocol": PROTOCOL_NAME,
        "protocol_min_version": PROTOCOL_MIN_VERSION,
        "protocol_max_version": PROTOCOL_MAX_VERSION,
        "name": format_peer_name(cfg.name),
        "nickname": cfg.nickname,
        "port": cfg.port,
        "encryption": cfg.password is not None,
        "peer_discovery": cfg.discovery,
        "trusted_subnets": list(cfg.trusted_subnets),
        "targets": router.mesh.targets(),
        "connections": _connection_statuses(router, now),
        "peers": router.mesh.peer_statuses(),
    }
    router_status["stats"] = _stats(router)
    status: Status = {
        "version": VERSION,
        "router": router_status,
        "attachments": router.attachments.list(),
    }
    if router.ipam is not None:  # IPAM: the `Service: ipam` block and `weave status ipam`
        status["ipam"] = router.ipam.status(now)
    return status
