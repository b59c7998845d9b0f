"""The router: core and I/O wired together for one host.

Theory of operation: `Router.start` builds, in order, the `weave` bridge and the TAP port
on it, the UDP data plane, the TCP control listener (port 6783) and the HTTP API
(127.0.0.1:6784) — the API after everything it reports on, so a router that answers
`GET /status` is a router that works — then the Docker integration (events, proxy), which
needs the API.  Frames move in the data plane's own two threads (io/datapath.py); the
event loop runs the connection manager's per-connection readers and a few periodic tasks
(heartbeats, dialing due targets, MAC expiry), and applies the mesh's effects.  `Router.stop` closes
connections with a reason, removes the TAP port and the listeners; the bridge stays, as
with Weave Net.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyweave.router.api_types import API_PORT, CONTROL_PORT
from pyweave.router.attachments import AttachmentStore
from pyweave.router.connections import (
    Connection,
    ConnectionCallbacks,
    ConnectionManager,
    Identity,
)
from pyweave.router.core.connector import split_address
from pyweave.router.core.crypto.data_keys import RekeyPolicy
from pyweave.router.core.crypto.password import stretch_password
from pyweave.router.core.forwarder import Forwarder
from pyweave.router.core.gossip import SendGossip, SendUnicast
from pyweave.router.core.mac_table import MacTable
from pyweave.router.core.mesh import Dial, DropConnection, Effect, Mesh, RoutesChanged
from pyweave.router.core.wire.control import push_gossip, push_unicast
from pyweave.router.core.wire.data import UDP_IP_HEADERS, overlay_mtu
from pyweave.router.io import netlink
from pyweave.router.io.api import ApiServer
from pyweave.router.io.control import Security
from pyweave.router.io.datapath import DataPlane, open_udp_socket
from pyweave.router.io.tap import clamp_gso_max_size, open_tap
from pyweave.router.security import NoiseSecurity

if TYPE_CHECKING:
    from pyweave.router.ipam_service import IpamService  # IPAM

log = logging.getLogger(__name__)

BRIDGE = "weave"
TAP_NAME = "vethwe-tap"
DEFAULT_UNDERLAY_MTU = 1500  # when the underlay cannot be found
MAC_EXPIRY_INTERVAL = 30.0
MESH_IDLE = 1.0  # seconds between mesh timer checks when nothing is scheduled sooner


@dataclass
class RouterConfig:
    name: int
    nickname: str
    state_dir: str
    port: int = CONTROL_PORT
    api_host: str = "127.0.0.1"
    api_port: int = API_PORT
    peers: list[str] = field(default_factory=list)
    mtu: int | None = None  # None: derived from the underlay (overlay_mtu)
    ipalloc_range: str = "10.128.0.0/10"
    ipalloc_default_subnet: str = ""  # IPAM: "" = the whole range
    ipalloc_init: str = ""  # IPAM: "" = consensus among the peers named at launch + 1
    password: bytes | None = None
    discovery: bool = True
    conn_limit: int = 100
    trusted_subnets: list[str] = field(default_factory=list)
    rekey_policy: RekeyPolicy = field(default_factory=RekeyPolicy)
    # -- docker (router/docker_containers.py): engine URL, proxy address, release delay --
    docker_api: str = ""
    docker_proxy: str = ""
    container_release_delay: float = 30.0


class TrustedSubnets:
    """`--trusted-subnets`: peers at these addresses may skip data-plane encryption."""

    def __init__(self, cidrs: list[str]) -> None:
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def contains(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


def bridge_mac(peer_name: int) -> str:
    """The bridge's MAC: derived from the peer name (so stable), locally administered."""
    raw = bytearray(peer_name.to_bytes(6, "big"))
    raw[0] = (raw[0] & 0xFC) | 0x02
    raw[5] ^= 0x01  # differ from the peer name itself
    return ":".join(f"{b:02x}" for b in raw)


def _ipam_service(router: Router) -> IpamService | None:
    """IPAM (router/ipam_service.py), unless `--ipalloc-range ""` turned it off."""
    from pyweave.router.ipam_service import IpamConfig, IpamService

    cfg = router.config
    if not cfg.ipalloc_range:
        return None
    ipam_config = IpamConfig.parse(
        cfg.ipalloc_range, cfg.ipalloc_default_subnet, cfg.ipalloc_init, len(cfg.peers)
    )
    return IpamService(router, ipam_config)


class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.uid = int.from_bytes(os.urandom(8), "big")
        self.rng = random.Random(os.urandom(16))
        self.macs = MacTable()
        self.mesh = Mesh(
            config.name,
            config.nickname,
            self.uid,
            config.port,
            self.rng,
            discovery=config.discovery,
            conn_limit=config.conn_limit,
        )
        self.attachments = AttachmentStore(os.path.join(config.state_dir, "attachments.json"))
        self.ipam = _ipam_service(self)  # IPAM: registers the "ipam" channel on the mesh
        identity = Identity(
            config.name,
            config.nickname,
            self.uid,
            config.port,
            security_factory=self._security_factory(),
            trusts=TrustedSubnets(config.trusted_subnets).contains,
        )
        callbacks = ConnectionCallbacks(
            handshaken=self._on_handshaken,
            established=self._on_established,
            lost=self._on_lost,
            gossip=self._on_gossip,
            unicast=self._on_unicast,
            dial_failed=self._on_dial_failed,
        )
        self.connections = ConnectionManager(
            identity,
            callbacks,
            self._new_receiver_index,
            add_link=lambda link: self.dataplane.add_link(link),
            remove_link=lambda link: self.dataplane.remove_link(link),
            send_heartbeat=lambda link, now: self.dataplane.send_heartbeat(link, now),
        )
        self.forwarder = Forwarder(config.name, self.mesh, self.macs)
        self.api = ApiServer()
        self.stopping = asyncio.Event()
        self._mesh_wakeup = asyncio.Event()
        self._periodic: list[asyncio.Task[None]] = []
        self._tap_fd = -1
        self._control_server: asyncio.Server | None = None
        self.dataplane: DataPlane
        self.underlay_mtu = DEFAULT_UNDERLAY_MTU  # found at start()
        self.mtu = overlay_mtu(config.mtu, self.underlay_mtu)

    def _security_factory(self) -> Callable[[bool], Security | None]:
        if self.config.password is None:
            return lambda outbound: None
        psk = stretch_password(self.config.password)  # ~0.1 s, once
        policy = self.config.rekey_policy
        return lambda outbound: NoiseSecurity(psk, outbound, policy)

    def _new_receiver_index(self) -> int:
        while True:
            index = self.rng.getrandbits(32)
            if index and index not in self.dataplane.links_by_index:
                return index

    # -- start / stop --------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        # pyroute2's synchronous API runs its own event loop: keep it off ours.
        underlay = await asyncio.to_thread(netlink.underlay_mtu, _hosts(cfg.peers), BRIDGE)
        self.underlay_mtu = underlay or DEFAULT_UNDERLAY_MTU
        self.mtu = overlay_mtu(cfg.mtu, self.underlay_mtu)
        self.connections.max_datagram = self.underlay_mtu - UDP_IP_HEADERS
        log.info("underlay MTU %d, overlay MTU %d", self.underlay_mtu, self.mtu)
        await asyncio.to_thread(netlink.ensure_bridge, BRIDGE, self.mtu, bridge_mac(cfg.name))
        self._tap_fd = open_tap(TAP_NAME, offload=True)
        await asyncio.to_thread(clamp_gso_max_size, TAP_NAME)
        await asyncio.to_thread(netlink.enslave, TAP_NAME, BRIDGE, self.mtu)
        sock = open_udp_socket(cfg.port)
        self.dataplane = DataPlane(loop, self._tap_fd, sock, self.forwarder, self.connections.heard)
        self.dataplane.start()
        self._control_server = await asyncio.start_server(
            self.connections.accept, "0.0.0.0", cfg.port, reuse_address=True
        )
        self._periodic = [
            asyncio.ensure_future(self.connections.heartbeat_loop()),
            asyncio.ensure_future(self._mesh_loop()),
            asyncio.ensure_future(self._expiry_loop()),
        ]
        from pyweave.router.api_handlers import register_handlers

        register_handlers(self.api, self)
        from pyweave.router.api_ipam import register_ipam_handlers  # IPAM

        register_ipam_handlers(self.api, self)
        if self.ipam is not None:
            self.ipam.start()
        self.apply(self.mesh.add_targets(cfg.peers, loop.time()))
        await self.api.start(cfg.api_host, cfg.api_port)
        await self._start_docker()  # after the API: attaching containers talks to it
        log.info("router started: %s", self.describe())

    # -- docker (router/docker_containers.py) ---------------------------------------

    async def _start_docker(self) -> None:
        from pyweave.router.docker_containers import DockerConfig, DockerContainers

        self.docker: DockerContainers | None = None
        cfg = self.config
        if not cfg.docker_api:
            return
        try:
            docker = DockerContainers(
                self, DockerConfig(cfg.docker_api, cfg.docker_proxy, cfg.container_release_delay)
            )
            await docker.start()
        except Exception as exc:
            log.error("docker integration disabled: engine %s: %s", cfg.docker_api, exc)
            return
        self.docker = docker

    # -- end docker ------------------------------------------------------------------

    async def stop(self) -> None:
        if self.ipam is not None:  # IPAM: persist, stop liveness checks
            self.ipam.stop()
        docker = getattr(self, "docker", None)  # docker: stop the proxy and the watcher first
        if docker is not None:
            await docker.stop()
        for task in self._periodic:
            task.cancel()
        self.connections.close_all("router stopping")
        await self.api.stop()
        if self._control_server is not None:
            self._control_server.close()
        self.dataplane.stop()
        self.dataplane.close()
        self.dataplane.sock.close()
        if self._tap_fd >= 0:
            os.close(self._tap_fd)  # deletes the TAP device
            self._tap_fd = -1

    def describe(self) -> str:
        from pyweave.router.core.names import describe_peer

        return describe_peer(self.config.name, self.config.nickname)

    # -- periodic work -------------------------------------------------------------

    async def _mesh_loop(self) -> None:
        """Run the mesh's timers: gossip flushes, periodic full state, due dials."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self.apply(self.mesh.tick(now))
            deadline = self.mesh.next_deadline()
            delay = MESH_IDLE if deadline is None else min(MESH_IDLE, max(0.0, deadline - now))
            self._mesh_wakeup.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._mesh_wakeup.wait(), delay)

    def wake_mesh(self) -> None:
        self._mesh_wakeup.set()

    def apply(self, effects: list[Effect]) -> None:
        """Carry out the mesh's effects."""
        for effect in effects:
            if isinstance(effect, SendGossip):
                conn = self.connections.connections.get(effect.to_peer)
                if conn is not None and not conn.dropped:
                    conn.channel.send(push_gossip(effect.channel, effect.payload))
            elif isinstance(effect, SendUnicast):
                conn = self.connections.connections.get(effect.to_peer)
                if conn is not None and not conn.dropped:
                    conn.channel.send(
                        push_unicast(effect.channel, effect.source, effect.dest, effect.payload)
                    )
            elif isinstance(effect, Dial):
                self.connections.dial(effect.address)  # the mesh enforces --conn-limit
            elif isinstance(effect, DropConnection):
                self.connections.drop_matching(
                    effect.peer_name, effect.peer_uid, effect.address, effect.reason
                )
            elif isinstance(effect, RoutesChanged):
                self.dataplane.routes_changed()
                self._forget_unreachable_macs()
        if effects:
            self.wake_mesh()

    def _forget_unreachable_macs(self) -> None:
        reachable = set(self.mesh.routes.unicast)
        for _mac, owner, _seen in self.macs.entries():
            if owner >= 0 and owner not in reachable:
                self.macs.forget_owner(owner)

    async def _expiry_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(MAC_EXPIRY_INTERVAL)
            self.macs.expire(loop.time())

    # -- connection events ---------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def loop_time(self) -> float:
        return self._now()

    def _on_handshaken(self, conn: Connection) -> str | None:
        hello = conn.hello
        effects = self.mesh.connection_established(
            hello.name,
            hello.nickname,
            hello.uid,
            conn.mesh_address,
            conn.outbound,
            self._now(),
            established=False,
        )
        refusal = None
        for effect in effects:
            if (
                isinstance(effect, DropConnection)
                and effect.peer_name == hello.name
                and effect.peer_uid == hello.uid
                and effect.address == conn.mesh_address
            ):
                refusal = effect.reason
        rest: list[Effect] = []
        direct: list[bytes] = []
        for effect in effects:
            if isinstance(effect, DropConnection) and effect.reason == refusal:
                continue
            if refusal is None and isinstance(effect, SendGossip) and effect.to_peer == hello.name:
                # The new neighbour's full state: `conn` is not registered yet (the caller
                # does that once we accept it), so deliver on its channel directly.
                direct.append(push_gossip(effect.channel, effect.payload))
                continue
            rest.append(effect)
        self.apply(rest)  # drops a superseded connection to this peer before we send
        for message in direct:
            conn.channel.send(message)
        return refusal

    def _on_established(self, conn: Connection) -> None:
        self.apply(self.mesh.connection_confirmed(conn.hello.name, conn.mesh_address, self._now()))

    def _on_lost(self, conn: Connection, reason: str) -> None:
        self.macs.forget_owner(conn.hello.name)
        self.apply(
            self.mesh.connection_lost(
                conn.hello.name, conn.mesh_address, reason, self._now(), conn.hello.uid
            )
        )

    def _on_gossip(self, conn: Connection, channel: str, payload: bytes) -> None:
        self.apply(self.mesh.gossip_received(conn.hello.name, channel, payload, self._now()))

    def _on_unicast(
        self, conn: Connection, channel: str, source: int, dest: int, payload: bytes
    ) -> None:
        self.apply(
            self.mesh.unicast_received(conn.hello.name, channel, source, dest, payload, self._now())
        )

    def _on_dial_failed(self, target: str, reason: str) -> None:
        self.apply(self.mesh.dial_failed(target, reason, self._now()))


def _hosts(targets: list[str]) -> list[str]:
    """The host parts of `host[:port]` targets (invalid ones are skipped)."""
    hosts = []
    for target in targets:
        with contextlib.suppress(ValueError):
            hosts.append(split_address(target)[0])
    return hosts
