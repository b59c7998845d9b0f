"""Status documents: the router's live state as the JSON the API serves.

Theory of operation: `build_status` reads — never changes — the router's connections,
targets and peers and renders them into the TypedDicts of api_types, which the CLI turns
into Weave Net's text layouts.  Times of next retries are shown as wall-clock strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyweave.router.api_types import (
    PROTOCOL_MAX_VERSION,
    PROTOCOL_MIN_VERSION,
    PROTOCOL_NAME,
    ConnectionStatus,
    PeerConnection,
    PeerStatus,
    RouterStatus,
    Status,
)
from pyweave.router.connections import wall_clock_string
from pyweave.router.core.names import format_peer_name

if TYPE_CHECKING:
    from pyweave.router.router import Router

VERSION = "0.1.0"


def _connection_statuses(router: Router, now: float) -> list[ConnectionStatus]:
    result: list[ConnectionStatus] = []
    connected_targets = set()
    for conn in router.connections.connections.values():
        if conn.target:
            connected_targets.add(conn.target)
        address = conn.target if conn.outbound and conn.target else conn.remote_address
        entry: ConnectionStatus = {
            "address": address,
            "outbound": conn.outbound,
            "state": "established" if conn.state == "established" else "pending",
            "info": "",
            "peer": {"name": format_peer_name(conn.hello.name), "nickname": conn.hello.nickname},
            "encrypted": conn.link.encrypted,
            "mtu": router.config.mtu,
            "overlay": "sleeve",
        }
        result.append(entry)
    for target, st in router.targets.states.items():
        if target in connected_targets or st.state == "connected":
            continue
        if st.state == "failed":
            info = f"{st.reason}, retry: never"
        elif st.state == "retrying" and st.reason:
            info = f"{st.reason}, retry: {wall_clock_string(st.next_try - now)}"
        else:
            info = ""
        state = "connecting" if st.state == "connecting" else st.state
        if state == "retrying" and not st.reason:
            state = "connecting"
        result.append(
            {
                "address": target,
                "outbound": True,
                "state": state,  # type: ignore[typeddict-item]
                "info": info,
            }
        )
    return result


def _peer_statuses(router: Router) -> list[PeerStatus]:
    ours: list[PeerConnection] = []
    peers: list[PeerStatus] = []
    for conn in router.connections.connections.values():
        ours.append(
            {
                "name": format_peer_name(conn.hello.name),
                "nickname": conn.hello.nickname,
                "address": conn.remote_address,
                "outbound": conn.outbound,
                "established": conn.state == "established",
            }
        )
        peers.append(
            {
                "name": format_peer_name(conn.hello.name),
                "nickname": conn.hello.nickname,
                "uid": str(conn.hello.uid),
                "version": 0,
                "connections": [],
            }
        )
    me: PeerStatus = {
        "name": format_peer_name(router.config.name),
        "nickname": router.config.nickname,
        "uid": str(router.uid),
        "version": 0,
        "connections": ours,
    }
    return [me, *peers]


def _stats(router: Router) -> dict[str, int]:
    stats = {k: v for k, v in vars(router.dataplane.counters).items() if isinstance(v, int)}
    for key in ("drops_auth", "drops_replay", "drops_malformed"):
        stats[f"link_{key}"] = 0
    for conn in router.connections.connections.values():
        link = conn.link
        stats["link_drops_auth"] += link.drops_auth
        stats["link_drops_replay"] += link.drops_replay
        stats["link_drops_malformed"] += link.drops_malformed
    stats["dropped_no_route"] = router.forwarder.dropped_no_route
    stats["mac_entries"] = len(router.macs)
    return stats


def build_status(router: Router) -> Status:
    import asyncio

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
        "targets": list(router.targets.states),
        "connections": _connection_statuses(router, now),
        "peers": _peer_statuses(router),
    }
    router_status["stats"] = _stats(router)
    return {"version": VERSION, "router": router_status, "attachments": router.attachments.list()}
