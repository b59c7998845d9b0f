"""The data plane: TAP <-> UDP, drained until EAGAIN on every wake-up.

Theory of operation: two non-blocking descriptors are registered with the event loop —
the TAP port (opened with IFF_VNET_HDR and TSO/CSUM offloads, so one read can be a 64 KB
TCP super-frame) and the UDP socket.  Each wake-up drains its descriptor completely (one
frame per callback was measured 4x slower).

TAP -> mesh.  Every read lands in one preallocated buffer *behind* 31 bytes of headroom:
the datagram header (16), the frames prefix (13) and the record length (2) are written in
front of the frame in place, so a large frame becomes a datagram with no copy at all
(`Link.seal_into`: a plain link writes its header; a sealed link makes one AEAD call per
super-frame into its own output buffer).  Small frames (ACKs, ARP, pings) are copied into
per-(next hop, destination) batches and coalesced into path-MTU-sized datagrams at the end
of the drain; a large frame first flushes the batch for its destination, so a flow's frames
keep their order.  A TCP super-frame is cut into MSS-sized frames in software
(core/wire/gso.py) when the link is in *segment* mode (the peer reports underlay loss, so a
fragmented 64 KB datagram would be lost whole) or when it would not fit one UDP datagram.

Mesh -> TAP.  Datagrams are received into a preallocated buffer, opened by the link their
receiver index names, accounted for the loss estimate, and their frame records are written
to the TAP *with* their virtio_net_hdr, so the local kernel finishes partial checksums and
segments super-frames for the containers.  Bodies for other peers are relayed (re-sealed
hop by hop), cut into segments first if the next link is in segment mode.

Why the loops are long: this is the hot path.  Per-frame work is kept flat — local
variables for attribute lookups, plain int counters, no logging, no objects per frame.
Anything that fails (a neighbour that stopped: ECONNREFUSED; a full TAP queue: EAGAIN;
a malformed datagram) is counted and dropped; nothing here may raise into the loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable

from pyweave.router.core.forwarder import Forwarder
from pyweave.router.core.link import Link
from pyweave.router.core.wire.data import (
    BODY_FRAMES,
    BODY_HEARTBEAT,
    BODY_HEARTBEAT_ACK,
    ETHERNET_HEADER_SIZE,
    FRAME_LEN,
    FRAME_RECORD_OVERHEAD,
    FRAMES_PREFIX_SIZE,
    HEADER,
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    VNET_HDR_SIZE,
    MalformedDatagram,
    pull_heartbeat,
    push_frames_prefix_into,
    push_heartbeat,
)
from pyweave.router.core.wire.gso import segment_record

TAP_READ_SIZE = 65536 + VNET_HDR_SIZE
UDP_READ_SIZE = 65536
HEADROOM = HEADER_SIZE + FRAMES_PREFIX_SIZE + FRAME_LEN.size  # 31 bytes before the vnet hdr
RECORD_AT = HEADER_SIZE + FRAMES_PREFIX_SIZE  # where the record (u16 length) starts
DIRECT_MIN = 600  # frames at least this long (with vnet hdr) go out alone, uncopied
SEGMENTS_PER_DATAGRAM = 1  # MSS segments per datagram in segment mode (see docs/protocol.md)
DRAIN_BUDGET = 256  # reads per wake-up before yielding to other work (fairness)
MAC_PAIR = struct.Struct("6s6s")  # destination and source MAC, as bytes (dict keys)
SOCKET_BUFFER = 16 * 1024 * 1024
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


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
        self.datagrams_relayed = 0  # frames bodies forwarded to another peer, per next hop
        self.frames_segmented = 0


def open_udp_socket(port: int) -> socket.socket:
    """The data-plane socket: big buffers (beyond rmem_max), fragmentation allowed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for option, force in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:  # not CAP_NET_ADMIN: capped by rmem_max / wmem_max
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    # Super-frames (up to 64 KB) travel as IP fragments: the kernel must not refuse them.
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
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
        self.ourselves_bytes = forwarder.ourselves.to_bytes(6, "big")
        self.on_heard = on_heard
        self.links_by_peer: dict[int, Link] = {}
        self.links_by_index: dict[int, Link] = {}
        self.counters = DataPlaneCounters()
        self.tap_buf = bytearray(HEADROOM + TAP_READ_SIZE)
        self.udp_buf = bytearray(UDP_READ_SIZE)
        self.send_buf = bytearray(MAX_UDP_PAYLOAD + 64)  # batches and relayed bodies

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
        self._sendto(link.seal(body), link.endpoint)

    def _sendto(self, datagram: bytes | memoryview, endpoint: tuple[str, int]) -> None:
        try:
            self.sock.sendto(datagram, endpoint)
            self.counters.udp_datagrams_out += 1
        except OSError:  # ECONNREFUSED after ICMP, EAGAIN, EHOSTUNREACH: drop and count
            self.counters.udp_send_errors += 1

    def send_heartbeat(self, link: Link, now: float) -> None:
        self.send_body(link, push_heartbeat(BODY_HEARTBEAT, now, link.take_loss_report()))

    def _send_records(
        self, link: Link, source: bytes, destination: int, records: list[bytes]
    ) -> None:
        """Coalesce records (u16 length + vnet hdr + frame) into path-MTU-sized datagrams.

        A record larger than the path MTU goes alone; a super-frame is cut first if the link
        is in segment mode or the record would not fit one datagram."""
        buf = self.send_buf
        limit = max(link.max_body, FRAMES_PREFIX_SIZE) + HEADER_SIZE
        largest = MAX_UDP_PAYLOAD - link.overhead + HEADER_SIZE
        push_frames_prefix_into(buf, HEADER_SIZE, source, destination)
        end = RECORD_AT
        for record in self._cut_where_needed(link, records, largest):
            size = len(record)
            if end > RECORD_AT and end + size > limit:
                self._sendto(link.seal_into(buf, end), link.endpoint)
                end = RECORD_AT
            buf[end : end + size] = record
            end += size
        if end > RECORD_AT:
            self._sendto(link.seal_into(buf, end), link.endpoint)

    def _cut_where_needed(self, link: Link, records: list[bytes], largest: int) -> list[bytes]:
        per_record = SEGMENTS_PER_DATAGRAM if link.segment else 1
        limit = link.max_body * per_record if link.segment else largest - RECORD_AT
        if all(len(r) <= limit for r in records):
            return records
        out: list[bytes] = []
        pack_len = FRAME_LEN.pack
        for record in records:
            if len(record) <= limit or not record[FRAME_LEN.size + 1]:  # not GSO: as is
                out.append(record)
                continue
            segments = segment_record(memoryview(record)[FRAME_LEN.size :], per_record)
            self.counters.frames_segmented += 1
            out.extend(pack_len(len(s) - VNET_HDR_SIZE) + s for s in segments)
        return out

    # -- TAP -> mesh (hot loop) --------------------------------------------------------

    def _drain_tap(self) -> None:
        now = self.loop.time()
        from_tap = self.forwarder.from_tap
        next_hops = self.forwarder.next_hops
        links = self.links_by_peer
        ourselves = self.ourselves
        source = self.ourselves_bytes
        fd = self.tap_fd
        buf = self.tap_buf
        view = memoryview(buf)
        into = [view[HEADROOM:]]
        readv = os.readv
        pack_len_into = FRAME_LEN.pack_into
        batches: dict[tuple[int, int], list[bytes]] = {}
        counters = self.counters
        dst_at = HEADROOM + VNET_HDR_SIZE
        unpack_macs = MAC_PAIR.unpack_from
        largest = MAX_UDP_PAYLOAD + HEADER_SIZE  # end + link.overhead beyond: not one datagram
        for _ in range(DRAIN_BUDGET):
            try:
                n = readv(fd, into)
            except BlockingIOError:
                break
            except OSError:
                counters.tap_drops += 1
                break
            counters.tap_frames_in += 1
            if n < VNET_HDR_SIZE + ETHERNET_HEADER_SIZE:
                continue
            dst_mac, src_mac = unpack_macs(buf, dst_at)
            destination = from_tap(dst_mac, src_mac, now)
            if destination is None:
                continue
            hops = next_hops(destination, ourselves)
            pack_len_into(buf, RECORD_AT, n - VNET_HDR_SIZE)
            end = HEADROOM + n
            if n >= DIRECT_MIN and len(hops) == 1:
                link = links.get(hops[0])
                if link is None:
                    continue
                pending = batches.pop((hops[0], destination), None)
                if pending:
                    self._send_records(link, source, destination, pending)
                if (buf[HEADROOM + 1] and link.segment) or end + link.overhead > largest:
                    self._send_records(link, source, destination, [bytes(view[RECORD_AT:end])])
                    continue
                push_frames_prefix_into(buf, HEADER_SIZE, source, destination)
                self._sendto(link.seal_into(buf, end), link.endpoint)
                continue
            record = bytes(view[RECORD_AT:end])
            for hop in hops:
                batch = batches.get((hop, destination))
                if batch is None:
                    batches[(hop, destination)] = [record]
                else:
                    batch.append(record)
        for (hop, destination), records in batches.items():
            link = links.get(hop)
            if link is not None:
                self._send_records(link, source, destination, records)

    # -- mesh -> TAP (hot loop) --------------------------------------------------------

    def _drain_udp(self) -> None:
        now = self.loop.time()
        counters = self.counters
        links = self.links_by_index
        buf = self.udp_buf
        view = memoryview(buf)
        recv_into = self.sock.recvfrom_into
        unpack_header = HEADER.unpack_from
        for _ in range(DRAIN_BUDGET):
            try:
                n, _address = recv_into(buf)
            except BlockingIOError:
                break
            except OSError:  # ECONNREFUSED from an earlier send: not fatal
                continue
            counters.udp_datagrams_in += 1
            if n <= HEADER_SIZE:
                counters.drops_malformed += 1
                continue
            _kind, epoch, _reserved, index, counter = unpack_header(buf)
            link = links.get(index)
            if link is None:
                counters.drops_unknown_link += 1
                continue
            body = link.open(view[:n])
            if body is None:
                continue
            link.note_received(epoch, counter, n)
            if link.last_heard != now:
                self.on_heard(link, now)
            try:
                if body[0] == BODY_FRAMES:
                    self._on_frames(body, now)
                else:
                    self._on_control_body(link, body, now)
            except MalformedDatagram:
                counters.drops_malformed += 1

    def _on_control_body(self, link: Link, body: memoryview, now: float) -> None:
        kind, stamp, loss = pull_heartbeat(body)
        link.peer_reported_loss(loss)
        if kind == BODY_HEARTBEAT:
            ack = push_heartbeat(BODY_HEARTBEAT_ACK, stamp, link.take_loss_report())
            self.send_body(link, ack)
        else:
            link.rtt = max(0.0, now - stamp)

    def _on_frames(self, body: memoryview, now: float) -> None:
        """Deliver and/or relay the records of a frames body (hot: once per datagram)."""
        end = len(body)
        if end < FRAMES_PREFIX_SIZE + FRAME_RECORD_OVERHEAD + ETHERNET_HEADER_SIZE:
            raise MalformedDatagram("frames body without a frame")
        source = int.from_bytes(body[1:7], "big")
        destination = int.from_bytes(body[7:13], "big")
        src_mac_at = FRAMES_PREFIX_SIZE + FRAME_RECORD_OVERHEAD + 6
        deliver, relay = self.forwarder.from_peer(
            source, destination, bytes(body[src_mac_at : src_mac_at + 6]), now
        )
        if deliver:
            self._deliver(body, source, now)
        if relay:
            self._relay(body, destination, relay)

    def _deliver(self, body: memoryview, source: int, now: float) -> None:
        """Write every record (vnet hdr + frame) to the TAP; learn the later frames' MACs."""
        learn = self.forwarder.macs.learn
        write = os.write
        tap_fd = self.tap_fd
        counters = self.counters
        unpack_len = FRAME_LEN.unpack_from
        offset = FRAMES_PREFIX_SIZE
        end = len(body)
        while offset < end:
            if offset + FRAME_RECORD_OVERHEAD > end:
                raise MalformedDatagram("truncated frame record header")
            (frame_len,) = unpack_len(body, offset)
            start = offset + FRAME_LEN.size
            stop = start + VNET_HDR_SIZE + frame_len
            if frame_len < ETHERNET_HEADER_SIZE or stop > end:
                raise MalformedDatagram("frame record overruns the datagram")
            if offset != FRAMES_PREFIX_SIZE:
                learn(bytes(body[start + 16 : start + 22]), source, now)
            try:
                write(tap_fd, body[start:stop])
                counters.tap_frames_out += 1
            except OSError:  # TAP queue full (EAGAIN) or device gone
                counters.tap_drops += 1
            offset = stop

    def _relay(self, body: memoryview, destination: int, hops: tuple[int, ...]) -> None:
        """Forward a body unchanged (re-sealed for each next link), cut if that link needs."""
        size = len(body)
        for hop in hops:
            link = self.links_by_peer.get(hop)
            if link is None:
                continue
            self.counters.datagrams_relayed += 1
            if size > link.max_body and (link.segment or size + link.overhead > MAX_UDP_PAYLOAD):
                records = _records_of(body)
                self._send_records(link, bytes(body[1:7]), destination, records)
                continue
            self.send_buf[HEADER_SIZE : HEADER_SIZE + size] = body
            self._sendto(link.seal_into(self.send_buf, HEADER_SIZE + size), link.endpoint)


def _records_of(body: memoryview) -> list[bytes]:
    """The records of a frames body, each with its u16 length, as bytes."""
    records = []
    offset = FRAMES_PREFIX_SIZE
    while offset + FRAME_RECORD_OVERHEAD <= len(body):
        (frame_len,) = FRAME_LEN.unpack_from(body, offset)
        stop = offset + FRAME_RECORD_OVERHEAD + frame_len
        records.append(bytes(body[offset:stop]))
        offset = stop
    return records
