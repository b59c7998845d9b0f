"""IPAM in the router: the allocator core wired to the mesh, the disk and the kernel.

Theory of operation
-------------------
`IpamService` owns one `Allocator` (router/core/ipam) and registers it as the "ipam"
gossip channel before any connection comes up.  Whenever the allocator changes or has
something to send it calls `notify`; we then, on the event loop: persist its snapshot to
`$WEAVE_STATE_DIR/ipam.json` (temp file + rename, *before* anything leaves, so a crash
never forgets a range we told others about), hand its outbox to the mesh
(`gossiper.broadcast` / `send_unicast`, effects applied by `router.apply`), and wake the
API requests waiting for space.

Requests (`allocate`, `claim`, `prime`) ask the allocator again each time it changed, or
every `POLL` seconds, until served or their deadline passes; then they return the reason
they are still waiting.  Once a second the reachable peers (from the mesh's routes) are
passed in, and every `LIVENESS_INTERVAL` seconds the containers holding addresses are
checked: a `netns:NAME` whose namespace file is gone, or a `pid:N` whose process is gone,
releases its addresses.  Docker containers (`docker:ID`) are not polled here: the Docker
watcher (router/docker_containers.py) frees theirs with `DELETE /ip/<id>` when a container
dies (after its restart grace period) or is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyweave.router.api_types import IpamOwner, IpamStatus
from pyweave.router.core.ipam.allocator import (
    Allocated,
    Allocator,
    Gossip,
    Init,
    Outcome,
    Waiting,
)
from pyweave.router.core.ipam.space import Interval
from pyweave.router.core.names import format_peer_name, parse_peer_name

if TYPE_CHECKING:
    from pyweave.router.router import Router

log = logging.getLogger(__name__)

CHANNEL = "ipam"
STATE_FILE = "ipam.json"
POLL = 0.25
PEERS_INTERVAL = 1.0
LIVENESS_INTERVAL = 3.0
EXPOSE = "weave:expose"


def network(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr, strict=False)


def interval(net: ipaddress.IPv4Network) -> Interval:
    return int(net.network_address), int(net.broadcast_address) + 1


def parse_init(text: str, initial_peers: int) -> Init:
    """`--ipalloc-init`: consensus[=N] (default N: peers named at launch + 1), seed=, observer."""
    kind, _, arg = text.partition("=")
    if kind in ("", "consensus"):
        count = int(arg) if arg else initial_peers
        if count < 1:
            raise ValueError("consensus needs at least one peer")
        return Init("consensus", peers=count)
    if kind == "seed" and arg:
        return Init("seed", seeds=tuple(parse_peer_name(n) for n in arg.split(",")))
    if kind == "observer" and not arg:
        return Init("observer")
    raise ValueError(f"invalid --ipalloc-init {text!r}: consensus[=N], seed=NAME,... or observer")


@dataclass(frozen=True)
class IpamConfig:
    range: ipaddress.IPv4Network
    default_subnet: ipaddress.IPv4Network
    init: Init

    @classmethod
    def parse(cls, range_text: str, subnet_text: str, init_text: str, peers: int) -> IpamConfig:
        universe = network(range_text)
        subnet = network(subnet_text) if subnet_text else universe
        if not subnet.subnet_of(universe):
            raise ValueError(f"--ipalloc-default-subnet {subnet} is not inside {universe}")
        return cls(universe, subnet, parse_init(init_text, peers + 1))


def container_alive(spec: str) -> bool:
    if spec.startswith("netns:"):
        if not os.path.isdir("/run/netns"):
            return True  # cannot tell from here: never release on a guess
        return os.path.exists(os.path.join("/run/netns", spec.removeprefix("netns:")))
    if spec.startswith("pid:"):
        return os.path.exists(f"/proc/{spec.removeprefix('pid:')}")
    # weave:expose is always alive; docker:ID is released by the Docker watcher
    # (router/docker_containers.py calls DELETE /ip/<id> when the container dies or goes)
    return True


class IpamService:
    def __init__(self, router: Router, config: IpamConfig) -> None:
        self.router = router
        self.config = config
        self.path = os.path.join(router.config.state_dir, STATE_FILE)
        self.allocator = Allocator(
            router.config.name,
            interval(config.range),
            interval(config.default_subnet),
            config.init,
            router.rng,
        )
        self._load()
        self.allocator.notify = self._notify
        router.mesh.gossiper.register(CHANNEL, self.allocator)
        self.nicknames: dict[int, str] = {router.config.name: router.config.nickname}
        self._changed = asyncio.Event()
        self._scheduled = False
        self._saved = self.allocator.generation
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    def _load(self) -> None:
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise SystemExit(f"cannot read {self.path}: {exc}") from exc
        try:
            self.allocator.restore(doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"cannot use {self.path}: {exc}") from exc

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._periodic())
        self._notify()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.flush()

    async def _periodic(self) -> None:
        ticks = 0
        while True:
            self.update_peers()
            if ticks % int(LIVENESS_INTERVAL / PEERS_INTERVAL) == 0:
                self.release_dead()
            self.flush()
            ticks += 1
            await asyncio.sleep(PEERS_INTERVAL)

    # -- plumbing ------------------------------------------------------------------

    def _notify(self) -> None:
        if self._scheduled:
            return
        with contextlib.suppress(RuntimeError):  # no loop yet: start() flushes
            asyncio.get_running_loop().call_soon(self.flush)
            self._scheduled = True

    def flush(self) -> None:
        self._scheduled = False
        alloc = self.allocator
        if alloc.generation != self._saved:
            self._save()
            self._saved = alloc.generation
        outbox, alloc.outbox = alloc.outbox, []
        mesh, now = self.router.mesh, self.router.loop_time()
        for out in outbox:
            if isinstance(out, Gossip):
                self.router.apply(list(mesh.gossiper.broadcast(CHANNEL, out.payload, now)))
            else:
                self.router.apply(mesh.send_unicast(out.dest, CHANNEL, out.payload))
        self._changed.set()
        self._changed = asyncio.Event()

    def _save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.allocator.snapshot(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def update_peers(self) -> None:
        mesh = self.router.mesh
        for record in mesh.peers():
            self.nicknames[record.name] = record.nickname
        self.allocator.update_peers(set(mesh.routes.unicast) | {mesh.name})

    def release_dead(self) -> None:
        for container, holder in self.allocator.containers().items():
            if not container_alive(holder.spec):
                released = self.allocator.free(container)
                log.info("container %s is gone: released %d address(es)", container, len(released))

    # -- requests ------------------------------------------------------------------

    async def request(self, attempt: Any, wait: float) -> Outcome:
        """Call `attempt(now)` until it is not `Waiting` or `wait` seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            self.update_peers()
            outcome: Outcome = attempt(loop.time())
            self.flush()
            remaining = deadline - loop.time()
            if not isinstance(outcome, Waiting) or remaining <= 0:
                return outcome
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(POLL, remaining))

    async def allocate(
        self, container: str, spec: str, subnet: ipaddress.IPv4Network | None, wait: float
    ) -> tuple[Outcome, ipaddress.IPv4Network]:
        net = subnet or self.config.default_subnet
        span = interval(net)
        outcome = await self.request(
            lambda now: self.allocator.allocate(container, spec, span, now), wait
        )
        return outcome, net

    async def claim(self, container: str, spec: str, addr: int, wait: float) -> Outcome:
        return await self.request(
            lambda now: self.allocator.claim(container, spec, addr, now), wait
        )

    async def prime(self, wait: float) -> str:
        outcome = await self.request(
            lambda now: (
                Allocated(0)
                if not self.allocator.ring.empty()
                else Waiting(self.allocator.prime(now))
            ),
            wait,
        )
        now = asyncio.get_running_loop().time()
        return "ready" if isinstance(outcome, Allocated) else self.allocator.status(now)

    def free(self, container: str, addrs: list[int] | None) -> list[int]:
        released = self.allocator.free(container, addrs)
        self.flush()
        return released

    def resolve_peer(self, text: str) -> int:
        """A peer name, or the nickname of a peer we know of."""
        with contextlib.suppress(ValueError):
            return parse_peer_name(text)
        self.update_peers()
        matches = [name for name, nick in self.nicknames.items() if nick == text]
        if len(matches) != 1:
            raise ValueError(f"unknown peer {text!r}" if not matches else f"{text!r} is ambiguous")
        return matches[0]

    def rmpeer(self, peers: list[int]) -> int:
        self.update_peers()
        taken = self.allocator.rmpeer(peers)
        self.flush()
        return taken

    def handoff(self) -> int | None:
        self.update_peers()
        heir = self.allocator.handoff()
        self.flush()
        return heir

    # -- status --------------------------------------------------------------------

    def status(self, now: float) -> IpamStatus:
        self.update_peers()
        alloc = self.allocator
        reachable = alloc.reachable | {alloc.name}
        owners: list[IpamOwner] = [
            {
                "peer": format_peer_name(peer),
                "nickname": self.nicknames.get(peer, ""),
                "ips": count,
                "reachable": peer in reachable,
            }
            for peer, count in sorted(alloc.ring.shares().items())
        ]
        return {
            "status": alloc.status(now),
            "range": str(self.config.range),
            "default_subnet": str(self.config.default_subnet),
            "range_num_ips": self.config.range.num_addresses,
            "active_ips": alloc.active(),
            "owners": owners,
        }
