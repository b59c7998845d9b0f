"""The data plane: TAP <-> UDP, drained until EAGAIN on every wake-up.

Theory of operation: two non-blocking descriptors are registered with the event loop —
the TAP port and the UDP socket.  Each wake-up drains its descriptor completely (one frame
per callback was measured 4x slower), asks the forwarder where every frame goes, and
collects the frames per (next hop, destination peer) so that small frames share one
datagram.  At the end of the drain the batches are sealed by each neighbour's `Link` and
sent.  Datagrams from neighbours are opened by the link their receiver index names,
frames are delivered to the TAP and/or relayed, and heartbeats are answered.

Why the loops are long: this is the hot path.  Per-frame work is kept flat — local
variables for attribute lookups, plain int counters, no logging, no objects per frame.
Anything that fails (a neighbour that stopped: ECONNREFUSED; a full TAP queue: EAGAIN;
a malformed datagram) is counted and dropped; nothing here may raise into the loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from pyweave.router.core.forwarder import Forwarder
from pyweave.router.core.link import Link
from pyweave.router.core.wire.data import (
    BODY_FRAMES,
    BODY_HEARTBEAT,
    BODY_HEARTBEAT_ACK,
    FRAME_LEN,
    FRAMES_PREFIX_SIZE,
    HEADER_SIZE,
    VNET_HDR_SIZE,
    MalformedDatagram,
    pull_frame_records,
    pull_heartbeat,
    push_frames_prefix,
    push_heartbeat,
)

TAP_READ_SIZE = 65536 + VNET_HDR_SIZE
UDP_READ_SIZE = 65536
DRAIN_BUDGET = 256  # frames per wake-up before yielding to other work (fairness)
SOCKET_BUFFER = 4 * 1024 * 1024


class DataPlaneCounters:
    def __init__(self) -> None:
        self.tap_frames_in = 0
        self.tap_frames_out = 0
        self.tap_drops = 0
        self.udp_datagrams_in = 0
        self.udp_datagrams_out = 0
        self.udp_send_errors = 0
        self.drops_unknown_link = 0
        self.drops_malformed = 0
        self.frames_relayed = 0


def open_udp_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # SO_*BUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    # Let the kernel fragment datagrams larger than the path MTU instead of refusing them.
    sock.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    return sock


class DataPlane:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        tap_fd: int,
        sock: socket.socket,
        forwarder: Forwarder,
        on_heard: Callable[[Link, float], None],
    ) -> None:
        self.loop = loop
        self.tap_fd = tap_fd
        self.sock = sock
        self.forwarder = forwarder
        self.ourselves = forwarder.ourselves
        self.on_heard = on_heard
        self.links_by_peer: dict[int, Link] = {}
        self.links_by_index: dict[int, Link] = {}
        self.counters = DataPlaneCounters()

    def start(self) -> None:
        self.loop.add_reader(self.tap_fd, self._drain_tap)
        self.loop.add_reader(self.sock.fileno(), self._drain_udp)

    def stop(self) -> None:
        self.loop.remove_reader(self.tap_fd)
        self.loop.remove_reader(self.sock.fileno())

    def add_link(self, link: Link) -> None:
        self.links_by_peer[link.peer] = link
        self.links_by_index[link.local_index] = link

    def remove_link(self, link: Link) -> None:
        if self.links_by_peer.get(link.peer) is link:
            del self.links_by_peer[link.peer]
        if self.links_by_index.get(link.local_index) is link:
            del self.links_by_index[link.local_index]

    # -- sending -------------------------------------------------------------------

    def send_body(self, link: Link, body: bytes) -> None:
        try:
            self.sock.sendto(link.seal(body), link.endpoint)
            self.counters.udp_datagrams_out += 1
        except OSError:  # ECONNREFUSED after ICMP, EAGAIN, EHOSTUNREACH: drop and count
            self.counters.udp_send_errors += 1

    def send_heartbeat(self, link: Link, now: float) -> None:
        self.send_body(link, push_heartbeat(BODY_HEARTBEAT, now))

    def _flush(self, batches: dict[tuple[int, int], list[bytes]]) -> None:
        links = self.links_by_peer
        ourselves = self.ourselves
        for (hop, destination), records in batches.items():
            link = links.get(hop)
            if link is None:
                continue
            prefix = push_frames_prefix(ourselves, destination)
            limit = link.max_body - FRAMES_PREFIX_SIZE
            chunk: list[bytes] = []
            size = 0
            for record in records:
                if chunk and size + len(record) > limit:
                    self.send_body(link, prefix + b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(record)
                size += len(record)
            if chunk:
                self.send_body(link, prefix + b"".join(chunk))

    # -- TAP -> mesh (hot loop) --------------------------------------------------------

    def _drain_tap(self) -> None:
        now = self.loop.time()
        from_tap = self.forwarder.from_tap
        next_hops = self.forwarder.next_hops
        ourselves = self.ourselves
        pack_len = FRAME_LEN.pack
        batches: dict[tuple[int, int], list[bytes]] = {}
        counters = self.counters
        for _ in range(DRAIN_BUDGET):
            try:
                frame = os.read(self.tap_fd, TAP_READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                counters.tap_drops += 1
                break
            counters.tap_frames_in += 1
            if len(frame) < VNET_HDR_SIZE + 14:
                continue
            destination = from_tap(frame[10:16], frame[16:22], now)
            if destination is None:
                continue
            record = pack_len(len(frame) - VNET_HDR_SIZE) + frame
            for hop in next_hops(destination, ourselves):
                batch = batches.get((hop, destination))
                if batch is None:
                    batches[(hop, destination)] = [record]
                else:
                    batch.append(record)
        if batches:
            self._flush(batches)

    # -- mesh -> TAP (hot loop) --------------------------------------------------------

    def _drain_udp(self) -> None:
        now = self.loop.time()
        counters = self.counters
        links = self.links_by_index
        for _ in range(DRAIN_BUDGET):
            try:
                datagram, _address = self.sock.recvfrom(UDP_READ_SIZE)
            except BlockingIOError:
                break
            except OSError:  # ECONNREFUSED from an earlier send: not fatal
                continue
            counters.udp_datagrams_in += 1
            if len(datagram) <= HEADER_SIZE:
                counters.drops_malformed += 1
                continue
            link = links.get(int.from_bytes(datagram[4:8], "big"))
            if link is None:
                counters.drops_unknown_link += 1
                continue
            body = link.open(datagram)
            if body is None:
                continue
            self.on_heard(link, now)
            try:
                self._on_body(link, body, now)
            except MalformedDatagram:
                counters.drops_malformed += 1

    def _on_body(self, link: Link, body: memoryview, now: float) -> None:
        kind = body[0]
        if kind == BODY_FRAMES:
            self._on_frames(body, now)
        elif kind == BODY_HEARTBEAT:
            _, stamp = pull_heartbeat(body)
            self.send_body(link, push_heartbeat(BODY_HEARTBEAT_ACK, stamp))
        elif kind == BODY_HEARTBEAT_ACK:
            _, stamp = pull_heartbeat(body)
            link.rtt = max(0.0, now - stamp)
        else:
            raise MalformedDatagram(f"unknown body kind {kind}")

    def _on_frames(self, body: memoryview, now: float) -> None:
        source = int.from_bytes(body[1:7], "big")
        destination = int.from_bytes(body[7:13], "big")
        records = pull_frame_records(body)
        if not records:
            return
        deliver, relay = self.forwarder.from_peer(
            source, destination, bytes(records[0][16:22]), now
        )
        if deliver:
            learn = self.forwarder.macs.learn
            tap_fd = self.tap_fd
            counters = self.counters
            for index, record in enumerate(records):
                if index:
                    learn(bytes(record[16:22]), source, now)
                try:
                    os.write(tap_fd, record)
                    counters.tap_frames_out += 1
                except OSError:  # TAP queue full (EAGAIN) or device gone
                    counters.tap_drops += 1
        if relay:
            raw = bytes(body)
            for hop in relay:
                link = self.links_by_peer.get(hop)
                if link is not None:
                    self.counters.frames_relayed += len(records)
                    self.send_body(link, raw)
