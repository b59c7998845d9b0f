"""The data plane: TAP <-> UDP, one thread per direction, sleeping in the kernel, drained.

Theory of operation: two threads move the frames.  The UDP thread blocks in `recv_into` of
the data socket; the TAP thread blocks in `epoll_wait` on the TAP port (opened with
IFF_VNET_HDR and TSO/CSUM offloads, so one read can be a 64 KB TCP super-frame).  A thread
asleep in the kernel is the cheapest wake-up an idle router can have: measured on this
machine, an idle container-to-container ping through two Python forwarders costs ~0.40 ms
with blocking reads in threads, ~0.44 ms with an epoll loop and ~0.53 ms with asyncio's
reader callbacks.  After the wake-up each thread drains its descriptor without blocking
(the TAP is non-blocking; `MSG_DONTWAIT` on the socket) until EAGAIN or DRAIN_BUDGET
reads, so under load one wake-up serves many frames (one frame per wake-up was measured 4x
slower).  The GIL is released in every system call, so one thread's `sendto` or TAP
`write` (where most of the time goes) overlaps the other thread's Python.  The asyncio
loop (control plane, API) runs in the main thread and is idle while frames flow.

Reading the TAP and sending what was read is one step under `tap_lock`: the TAP thread
takes it after its wait, and the UDP thread takes it (if free) right after it wrote to the
TAP.  A TAP write runs the bridge and the container's stack inside the system call, so the
answer to a frame just written (a ping reply, an ACK) is usually queued on the TAP when
`write` returns; the UDP thread forwards it at once instead of waiting for the TAP
thread's wake-up on another CPU — one Python wake-up less per round trip.  With both
threads reading only under the lock, a flow's frames cannot overtake each other.

Hand-over.  A router receiving a stream would wake its TAP thread for every ACK the
container sends back, on the other CPU, and the two threads would pass the GIL back and
forth around each system call.  So the TAP thread waits in an epoll set that the UDP thread
may change: when the UDP thread wakes less than BUSY_GAP after its previous wake-up, and
the last answers it read were all small (no frame of DIRECT_MIN bytes: ACKs, not data of
its own) and fewer than ANSWER_BUDGET, it takes the TAP out of the set for the length of
its drain, forwards the answers itself at the end, and puts the TAP back (level-triggered:
whatever is still queued wakes the TAP thread at once).  Two `epoll_ctl` calls per busy
wake-up; none on an idle router, nor where the TAP carries more than answers (a sender,
two-way traffic, a container sending many small frames of its own).

TAP -> mesh (TAP thread).  Every read lands in one preallocated buffer *behind* 31 bytes
of headroom: the datagram header (16), the frames prefix (13) and the record length (2)
are written in front of the frame in place, so a frame becomes a datagram with no copy at
all (`Link.seal_into`: a plain link writes its header; a sealed link makes one AEAD call
per super-frame into its own output buffer).  The first frame of a wake-up goes out at
once, alone (latency); later small frames (ACKs, ARP, pings) are copied into
per-(next hop, destination) batches and coalesced into path-MTU-sized datagrams at the end
of the drain (runs of one UDP flow's equal-sized datagrams first become one UDP GSO
super-frame, core/wire/uso.py); a large frame first flushes the batch for its
destination, so a flow's frames keep their order.  A datagram larger than the path MTU
(a super-frame) leaves as a train of path-MTU pieces in one `sendmsg` with UDP_SEGMENT
(core/wire/pieces.py), never copied: the iovec alternates piece headers and views of the
sealed datagram.  A TCP
super-frame is cut into MSS-sized frames in software (core/wire/gso.py) instead when the
link is in *segment* mode (the peer reports underlay loss and a lost piece would lose
the whole 64 KB train: sealed links; plain trains are salvaged) or when it would not fit
one datagram; those segments leave in UDP_SEGMENT batches
(one `sendmsg` per 64 KB of datagrams).  In segment mode a TCP super-frame is cut
straight into that batch (`_send_cut`, from `_send_records`, which every sender uses):
each segment is laid out as the datagram it becomes, and a plain link writes its header
in place.

Mesh -> TAP (UDP thread).  Datagrams are received into a preallocated buffer.  The socket
has UDP_GRO on, so one read may hold several datagrams of one sender, merged by the host's
GRO: a whole train of pieces (copied together into one buffer), or ordinary datagrams,
split by the length in their headers; pieces of a train that is not whole in the read are
joined one by one (`PieceJoiner`); a plain train that lost pieces yields a datagram of its
intact parts (core/wire/salvage.py), taken before the piece that ended the train.  Each
datagram is opened by the link its receiver index
names, accounted for the loss estimate, and their frame records are written to the TAP
*with* their virtio_net_hdr, so the local kernel finishes partial checksums and segments
super-frames for the containers (a UDP GSO record the kernel refuses, before Linux 6.2, is
cut here and written datagram by datagram).  Consecutive TCP segments of one flow (what
segment mode sends) are merged back into super-frames first (core/wire/gro.py), so the
kernel sees one write instead of ~45; the merge is flushed before any other frame is
written and when the socket's queue is empty.  Bodies for other peers are relayed
(re-sealed hop by hop), cut into segments first if the next link needs it.

Sharing between threads.  Each thread has its own buffers and its own counters (summed
for status).  Sealing holds the link's `send_lock` (the control thread seals heartbeats
and switches keys).  Links are added and removed by the control thread with single dict
operations; the first datagram from a link is reported to the control thread with
`call_soon_threadsafe`, later ones only store `last_heard`.  Anything that fails (a
neighbour that stopped: ECONNREFUSED; a full TAP queue: EAGAIN; a malformed datagram) is
counted and dropped; an unexpected exception is logged, counted and the thread goes on.

Why the loops are long: this is the hot path.  Per-frame work is kept flat — local
variables for attribute lookups, plain int counters, no logging, no objects per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

from pyweave.router.core.forwarder import Forwarder
from pyweave.router.core.link import Link
from pyweave.router.core.wire.data import (
    BODY_FRAMES,
    BODY_HEARTBEAT,
    BODY_HEARTBEAT_ACK,
    BROADCAST_PEER,
    ETHERNET_HEADER_SIZE,
    FRAME_LEN,
    FRAME_RECORD_OVERHEAD,
    FRAMES_PREFIX_SIZE,
    HEADER,
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_UDP_L4,
    VNET_HDR_SIZE,
    MalformedDatagram,
    pull_heartbeat,
    push_frames_prefix,
    push_frames_prefix_into,
    push_heartbeat,
)
from pyweave.router.core.wire.gro import TcpCoalescer
from pyweave.router.core.wire.gso import TCP_GSO_TYPES, gso_type, segment_record, tcp_segments
from pyweave.router.core.wire.pieces import (
    DATAGRAM_PIECE,
    PIECE_HEADER_SIZE,
    TRAIN_MASK,
    PieceHeaders,
    PieceJoiner,
    TrainCopier,
    piece_end,
    pieces_fit,
    train_in_read,
)
from pyweave.router.core.wire.uso import cut_udp_record, merge_udp_runs

log = logging.getLogger(__name__)

TAP_READ_SIZE = 65536 + VNET_HDR_SIZE
UDP_READ_SIZE = 65536
HEADROOM = HEADER_SIZE + FRAMES_PREFIX_SIZE + FRAME_LEN.size  # 31 bytes before the vnet hdr
RECORD_AT = HEADER_SIZE + FRAMES_PREFIX_SIZE  # where the record (u16 length) starts
DIRECT_MIN = 600  # frames at least this long (with vnet hdr) go out alone, uncopied
SEGMENTS_PER_DATAGRAM = 1  # MSS segments per datagram in segment mode (see docs/protocol.md)
DRAIN_BUDGET = 256  # reads per wake-up before the batches are flushed
RUN_OVERHEAD = FRAMES_PREFIX_SIZE + FRAME_RECORD_OVERHEAD  # a merged run's body, but the frame
ANSWER_BUDGET = 64  # TAP reads the UDP thread makes after writing (the TAP thread does the rest)
BUSY_GAP = 0.002  # s between two wake-ups of the UDP thread under which it is "busy" (hand-over)
MAC_PAIR = struct.Struct("6s6s")  # destination and source MAC, as bytes (dict keys)
SOCKET_BUFFER = 16 * 1024 * 1024
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
DONTWAIT = socket.MSG_DONTWAIT
SOL_UDP = 17
UDP_SEGMENT = 103  # setsockopt/cmsg: one sendmsg, many equal datagrams (Linux >= 4.18)
UDP_GRO = 104  # setsockopt/cmsg: receive a GRO-merged run of datagrams in one read (>= 5.0)
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels
GSO_SIZE = struct.Struct("=H")
RECEIVER_INDEX = struct.Struct("!I")  # at offset 4 of every datagram and piece
GSO_UNSUPPORTED = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
ERROR_PAUSE = 0.01  # seconds a thread waits after a failed blocking read (device gone)
STOP_TIMEOUT = 2.0


class DataPlaneCounters:
    def __init__(self) -> None:
        self.tap_frames_in = 0
        self.tap_large_in = 0  # of those, frames of DIRECT_MIN bytes or more (data, not ACKs)
        self.tap_handovers = 0  # busy wake-ups in which the UDP thread watched the TAP alone
        self.tap_frames_out = 0
        self.tap_drops = 0
        self.udp_datagrams_in = 0
        self.udp_datagrams_out = 0
        self.udp_send_errors = 0
        self.drops_unknown_link = 0
        self.drops_malformed = 0
        self.datagrams_relayed = 0  # frames bodies forwarded to another peer, per next hop
        self.frames_segmented = 0
        self.internal_errors = 0  # unexpected exceptions in a data-plane thread (logged)
        self.segments_merged = 0  # TCP segments merged into super-frames before the TAP
        self.trains_sent = 0  # datagrams sent as a train of pieces (core/wire/pieces.py)
        self.trains_joined = 0  # trains received and joined (all pieces in one read, or not)
        self.trains_joined_piecewise = 0  # of those, trains whose pieces came in several reads
        self.trains_given_up = 0  # trains never completed (a piece lost)
        self.trains_salvaged = 0  # of those, plain trains whose intact parts went on
        self.udp_frames_merged = 0  # small UDP frames merged into a GSO super-frame (uso.py)
        self.udp_gso_cut = 0  # UDP GSO records the kernel refused, cut here (Linux < 6.2)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class SegmentBatch:
    """Sealed datagrams of one size for one endpoint, sent with one `sendmsg` (UDP_SEGMENT).

    Segment mode cuts a super-frame into ~45 path-MTU datagrams; sent one by one, each costs
    a system call and a trip through the stack.  With UDP_SEGMENT the kernel takes them as
    one buffer and one packet through the stack and splits them at the device (or the
    receiving socket): ~45 times fewer system calls.  All but the last datagram of a batch
    must have the same size; a shorter one ends the batch."""

    __slots__ = ("buf", "count", "endpoint", "last", "pieces", "size", "used", "view")

    def __init__(self) -> None:
        self.buf = bytearray(MAX_UDP_PAYLOAD)
        self.view = memoryview(self.buf)
        self.used = self.size = self.count = 0
        self.endpoint: tuple[str, int] = ("", 0)
        self.last = False  # a shorter datagram was added: nothing may follow it
        self.pieces = PieceHeaders()  # the same thread's trains of pieces

    def added(self, size: int, endpoint: tuple[str, int]) -> None:
        """A datagram of `size` was written at `used` (after `must_send_before` was asked)."""
        if not self.count:
            self.size = size
            self.endpoint = endpoint
        elif size < self.size:
            self.last = True
        self.used += size
        self.count += 1

    def must_send_before(self, size: int, endpoint: tuple[str, int]) -> bool:
        """Whether what the batch holds must leave before a datagram of `size` joins it."""
        return (
            self.last
            or size > self.size
            or self.used + size > MAX_UDP_PAYLOAD
            or self.count >= GSO_MAX_SEGMENTS
            or self.endpoint != endpoint
        )


def open_udp_socket(port: int) -> socket.socket:
    """The data-plane socket: big buffers (beyond rmem_max), fragmentation allowed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for option, force in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:  # not CAP_NET_ADMIN: capped by rmem_max / wmem_max
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    # Datagrams too large for pieces (a small path MTU) travel as IP fragments.
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    # Pieces merged by the host's GRO arrive in one read (else one read per piece).
    with contextlib.suppress(OSError):
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    sock.bind(("0.0.0.0", port))
    return sock


class DataPlane:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        tap_fd: int,
        sock: socket.socket,
        forwarder: Forwarder,
        on_heard: Callable[[Link, float], bool],
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
        self.tap_counters = DataPlaneCounters()  # written by the TAP thread only
        self.udp_counters = DataPlaneCounters()  # by the UDP thread only
        self.control_counters = DataPlaneCounters()  # by the control thread only
        self.tap_buf = bytearray(HEADROOM + TAP_READ_SIZE)
        self.batch_buf = bytearray(MAX_UDP_PAYLOAD + 64)  # TAP thread: coalesced batches
        self.udp_buf = bytearray(UDP_READ_SIZE)
        self.relay_buf = bytearray(MAX_UDP_PAYLOAD + 64)  # UDP thread: relayed bodies
        self.tap_segments = SegmentBatch()  # TAP thread
        self.joiner = PieceJoiner()  # UDP thread: trains that did not arrive in one read
        self.join_buf = bytearray(MAX_UDP_PAYLOAD)  # UDP thread: trains that did
        self.gro = TcpCoalescer()  # UDP thread: merges segments before the TAP
        self.relay_segments = SegmentBatch()  # UDP thread
        # Reading the TAP and sending what was read is one step under this lock, taken by
        # the TAP thread after its wait, and by the UDP thread after it wrote to the TAP (an
        # answer to what it wrote is often queued already: see _udp_thread).
        self.tap_lock = threading.Lock()
        self._stop_read, self._stop_write = os.pipe()  # wakes the TAP thread's wait on stop
        # What the TAP thread waits on: the TAP (unless the UDP thread took it over, see
        # _udp_thread) and the stop pipe.
        self.tap_watch = select.epoll()
        self.udp_tap_buf = bytearray(HEADROOM + TAP_READ_SIZE)  # UDP thread's TAP reads
        self.udp_gso = True  # cleared if the kernel refuses UDP_SEGMENT
        # The flow cache (whoever holds tap_lock): destination MAC -> (link, frames prefix,
        # destination peer) for unicast frames to a known MAC with one next hop.  Cleared
        # at the start of a drain when the MAC table (`macs.changes`) or the links and
        # routes (`flow_generation`, bumped by the control thread) changed since that
        # drainer's last look.
        self.flows: dict[bytes, tuple[Link, bytes, int]] = {}
        self.flow_generation = 0
        self.running = False
        self._threads: list[threading.Thread] = []

    @property
    def counters(self) -> DataPlaneCounters:
        """All threads' counters summed (a snapshot, for status)."""
        total = DataPlaneCounters()
        for part in (self.tap_counters, self.udp_counters, self.control_counters):
            for name, value in vars(part).items():
                setattr(total, name, getattr(total, name) + value)
        total.segments_merged = self.gro.merged
        total.trains_joined += self.joiner.joined
        total.trains_joined_piecewise = self.joiner.joined
        total.trains_given_up = self.joiner.given_up
        total.trains_salvaged = self.joiner.salvaged_trains
        total.drops_malformed += self.joiner.malformed
        return total

    def start(self) -> None:
        os.set_blocking(self.tap_fd, False)  # read after the wait, under tap_lock
        self.tap_watch.register(self.tap_fd, select.EPOLLIN)
        self.tap_watch.register(self._stop_read, select.EPOLLIN)  # stop() writes here
        self.sock.setblocking(True)
        self.running = True
        self._threads = [
            threading.Thread(target=self._tap_thread, name="dataplane-tap", daemon=True),
            threading.Thread(target=self._udp_thread, name="dataplane-udp", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads (before the caller closes the descriptors)."""
        self.running = False
        # Wakes the blocked recv (it returns 0); raises ENOTCONN on an unconnected socket
        # but the reader is woken anyway.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            os.write(self._stop_write, b"x")  # wakes the TAP thread's wait
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                log.warning("data plane thread %s did not stop", thread.name)
        self._threads = []

    def close(self) -> None:
        """Release the stop pipe (after stop(); the caller closes the TAP and the socket)."""
        for fd in (self._stop_read, self._stop_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.tap_watch.close()

    def add_link(self, link: Link) -> None:
        link.send_lock = threading.Lock()  # before any thread of ours can see the link
        if not self.udp_gso:
            link.refuse_udp_segment()
        self.links_by_peer[link.peer] = link
        self.links_by_index[link.local_index] = link
        self.routes_changed()

    def _udp_segment_refused(self, exc: OSError, endpoint: tuple[str, int]) -> None:
        """The kernel refused a UDP_SEGMENT send to `endpoint`.  ENOPROTOOPT/EOPNOTSUPP:
        this kernel has none, for any link now or later; EINVAL/EIO: this path cannot (a
        route with a smaller MTU, IPsec), the links to that endpoint stop using it."""
        everywhere = exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP)
        if everywhere:
            self.udp_gso = False
        for link in list(self.links_by_index.values()):
            if everywhere or link.endpoint == endpoint:
                link.refuse_udp_segment()
        log.warning(
            "UDP_SEGMENT refused towards %s (%s): large datagrams go as IP fragments, "
            "segment mode sends one by one",
            "every peer" if everywhere else endpoint[0],
            exc,
        )

    def remove_link(self, link: Link) -> None:
        if self.links_by_peer.get(link.peer) is link:
            del self.links_by_peer[link.peer]
        if self.links_by_index.get(link.local_index) is link:
            del self.links_by_index[link.local_index]
        self.routes_changed()

    def routes_changed(self) -> None:
        """Control thread: next hops or links changed; the flow cache starts anew."""
        self.flow_generation += 1

    def _internal_error(self, counters: DataPlaneCounters) -> None:
        counters.internal_errors += 1
        if counters.internal_errors <= 10:
            log.exception("data plane: unexpected error (dropped, going on)")

    # -- sending (any thread; the link's lock makes seal + send one step) ------------

    def send_body(self, link: Link, body: bytes, counters: DataPlaneCounters | None = None) -> None:
        counters = counters or self.control_counters
        with link.send_lock:
            self._sendto(link.seal(body), link.endpoint, counters)

    def _sendto(
        self, datagram: bytes | memoryview, endpoint: tuple[str, int], counters: DataPlaneCounters
    ) -> None:
        try:
            self.sock.sendto(datagram, DONTWAIT, endpoint)
            counters.udp_datagrams_out += 1
        except OSError:  # ECONNREFUSED after ICMP, EAGAIN, EHOSTUNREACH: drop and count
            counters.udp_send_errors += 1

    def _seal_and_send(
        self,
        link: Link,
        buf: bytearray,
        end: int,
        counters: DataPlaneCounters,
        segments: SegmentBatch,
    ) -> None:
        with link.send_lock:
            self._send_datagram(link, link.seal_into(buf, end), counters, segments.pieces)

    def _send_datagram(
        self,
        link: Link,
        datagram: memoryview,
        counters: DataPlaneCounters,
        headers: PieceHeaders,
    ) -> None:
        """Send a sealed datagram: alone, or as a train of pieces if it exceeds the path MTU.

        The caller holds the link's send lock (the train number is per link)."""
        total = len(datagram)
        largest = link.max_datagram
        if total <= largest or not (link.udp_segment and pieces_fit(total, largest)):
            self._sendto(datagram, link.endpoint, counters)
            return
        size = largest - PIECE_HEADER_SIZE
        link.train = train = (link.train + 1) & TRAIN_MASK
        count = headers.fill(link.remote_index, train, size, total)
        iov: list[memoryview] = [datagram] * (2 * count)
        iov[0::2] = headers.views[:count]
        iov[1::2] = headers.payloads(datagram, size, count)
        cmsg = [(SOL_UDP, UDP_SEGMENT, GSO_SIZE.pack(largest))]
        try:
            self.sock.sendmsg(iov, cmsg, DONTWAIT, link.endpoint)
            counters.udp_datagrams_out += 1
            counters.trains_sent += 1
        except OSError as exc:
            if exc.errno in GSO_UNSUPPORTED:
                self._udp_segment_refused(exc, link.endpoint)
                self._sendto(datagram, link.endpoint, counters)
            else:
                counters.udp_send_errors += 1

    def send_heartbeat(self, link: Link, now: float) -> None:
        self.send_body(link, push_heartbeat(BODY_HEARTBEAT, now, link.take_loss_report()))

    def _send_records(
        self,
        link: Link,
        source: bytes,
        destination: int,
        records: Sequence[bytes | memoryview],
        buf: bytearray,
        counters: DataPlaneCounters,
        segments: SegmentBatch,
    ) -> None:
        """Coalesce records (u16 length + vnet hdr + frame) into path-MTU-sized datagrams.

        A record larger than the path MTU goes alone; a super-frame is cut first if the link
        is in segment mode or the record would not fit one datagram.  In segment mode the
        datagrams leave together, through `segments` (UDP_SEGMENT), and a TCP super-frame is
        cut straight into that batch (`_send_cut`)."""
        limit = max(link.max_body, FRAMES_PREFIX_SIZE) + HEADER_SIZE
        largest = MAX_UDP_PAYLOAD - link.overhead + HEADER_SIZE
        gso = link.segment and link.udp_segment
        push_frames_prefix_into(buf, HEADER_SIZE, source, destination)
        prefix = bytes(buf[HEADER_SIZE:RECORD_AT]) if gso else b""
        end = RECORD_AT
        for record in self._cut_where_needed(link, records, largest, counters, gso):
            size = len(record)
            if end > RECORD_AT and end + size > limit:
                if gso:
                    self._add_segment(link, buf, end, segments, counters)
                else:
                    self._seal_and_send(link, buf, end, counters, segments)
                end = RECORD_AT
            if gso and size > link.max_body and record[FRAME_LEN.size + 1]:  # kept: TCP
                super_frame = memoryview(record)[FRAME_LEN.size :]
                # (buf is a sealed link's scratch: the cut writes this same prefix there)
                if self._send_cut(link, prefix, super_frame, buf, counters, segments):
                    continue
            buf[end : end + size] = record
            end += size
        if end > RECORD_AT:
            if gso:
                self._add_segment(link, buf, end, segments, counters)
            else:
                self._seal_and_send(link, buf, end, counters, segments)
        if gso:
            self._send_segments(segments, counters)

    def _add_segment(
        self,
        link: Link,
        buf: bytearray,
        end: int,
        batch: SegmentBatch,
        counters: DataPlaneCounters,
    ) -> None:
        """Seal the body at buf[HEADER_SIZE:end] into `batch` (sent first if it must be)."""
        with link.send_lock:
            datagram = link.seal_into(buf, end)
            size = len(datagram)
            if batch.count and batch.must_send_before(size, link.endpoint):
                self._send_segments(batch, counters)
            batch.buf[batch.used : batch.used + size] = datagram
            batch.added(size, link.endpoint)

    def _send_segments(self, batch: SegmentBatch, counters: DataPlaneCounters) -> None:
        """Send what `batch` holds: one sendmsg with UDP_SEGMENT (or one sendto)."""
        if not batch.count:
            return
        data = batch.view[: batch.used]
        try:
            if batch.count == 1:
                self.sock.sendto(data, DONTWAIT, batch.endpoint)
            else:
                cmsg = [(SOL_UDP, UDP_SEGMENT, GSO_SIZE.pack(batch.size))]
                self.sock.sendmsg([data], cmsg, DONTWAIT, batch.endpoint)
            counters.udp_datagrams_out += batch.count
        except OSError as exc:
            if batch.count > 1 and exc.errno in GSO_UNSUPPORTED:
                self._udp_segment_refused(exc, batch.endpoint)  # one sendto each
                for offset in range(0, batch.used, batch.size):
                    self._sendto(data[offset : offset + batch.size], batch.endpoint, counters)
            else:
                counters.udp_send_errors += batch.count
        batch.used = batch.count = 0
        batch.last = False

    def _send_cut(
        self,
        link: Link,
        prefix: bytes,
        record: memoryview,
        scratch: bytearray,
        counters: DataPlaneCounters,
        batch: SegmentBatch,
    ) -> bool:
        """Segment mode: cut a TCP super-frame (vnet hdr + frame) straight into `batch`.

        Each MSS segment is laid out as the whole datagram it becomes — header, frames
        prefix, record length, vnet hdr, headers, payload — in the batch's buffer (a plain
        link writes its header in place) or in `scratch` (a sealed link seals from there into
        the batch): the payload is copied once or twice, with no objects per segment.  The
        caller (`_send_records`) sends the batch.  False if there is nothing to cut (the
        payload fits one segment): the caller sends the record as it is."""
        try:
            cuts = tcp_segments(record, SEGMENTS_PER_DATAGRAM)
        except MalformedDatagram:
            counters.drops_malformed += 1
            return True
        if cuts is None:
            return False
        counters.frames_segmented += 1
        plain = not link.encrypted
        out = batch.buf
        out_view = batch.view
        overhead = link.overhead
        endpoint = link.endpoint
        lock = link.send_lock
        seal_into = link.seal_into
        pack_len_into = FRAME_LEN.pack_into
        vnet_at = RECORD_AT + FRAME_LEN.size
        headers_at = vnet_at + VNET_HDR_SIZE
        try:
            for vnet, headers, start, stop in cuts:
                frame_len = len(headers) + stop - start
                end = headers_at + frame_len  # the datagram's end, plain
                size = end - HEADER_SIZE + overhead
                if batch.count and batch.must_send_before(size, endpoint):
                    self._send_segments(batch, counters)
                used = batch.used
                target, at = (out, used) if plain else (scratch, 0)
                target[at + HEADER_SIZE : at + RECORD_AT] = prefix
                pack_len_into(target, at + RECORD_AT, frame_len)
                target[at + vnet_at : at + headers_at] = vnet
                payload_at = at + headers_at + len(headers)
                target[at + headers_at : payload_at] = headers
                target[payload_at : at + end] = record[start:stop]
                with lock:  # (per datagram, like _add_segment: heartbeats may interleave)
                    if plain:
                        seal_into(out_view[used:], end)  # the header, in place
                    else:
                        out[used : used + size] = seal_into(scratch, end)
                batch.added(size, endpoint)
        except Exception:  # (a sealing error: nothing half-built may leave later)
            batch.used = batch.count = 0
            batch.last = False
            raise
        return True

    def _cut_where_needed(
        self,
        link: Link,
        records: Sequence[bytes | memoryview],
        largest: int,
        counters: DataPlaneCounters,
        keep_tcp: bool,
    ) -> Sequence[bytes | memoryview]:
        """The records with every super-frame that needs it cut in software, in order.

        With `keep_tcp` (segment mode with UDP_SEGMENT) TCP super-frames stay whole: the
        caller cuts them straight into its batch (`_send_cut`)."""
        per_record = SEGMENTS_PER_DATAGRAM if link.segment else 1
        limit = link.max_body * per_record if link.segment else largest - RECORD_AT
        if all(len(r) <= limit for r in records):
            return records
        out: list[bytes | memoryview] = []
        pack_len = FRAME_LEN.pack
        for record in records:
            if len(record) <= limit or not record[FRAME_LEN.size + 1]:  # not GSO: as is
                out.append(record)
                continue
            if keep_tcp and gso_type(record[FRAME_LEN.size :]) in TCP_GSO_TYPES:
                out.append(record)
                continue
            try:
                segments = segment_record(memoryview(record)[FRAME_LEN.size :], per_record)
            except MalformedDatagram:
                counters.drops_malformed += 1
                continue
            counters.frames_segmented += 1
            out.extend(pack_len(len(s) - VNET_HDR_SIZE) + s for s in segments)
        return out

    # -- TAP -> mesh (TAP thread) ----------------------------------------------------

    def _tap_thread(self) -> None:
        """Wait until the TAP is readable; forward what it holds (under the TAP lock); repeat."""
        drain = self._tap_drainer(
            self.tap_buf, self.batch_buf, self.tap_segments, self.tap_counters, DRAIN_BUDGET
        )
        wait = self.tap_watch.poll
        lock = self.tap_lock
        counters = self.tap_counters
        while True:
            try:
                wait()  # blocks: the idle router sleeps here
            except OSError:
                if not self.running:
                    return
                continue
            if not self.running:  # stop() wakes us through the stop pipe
                return
            with lock:
                read = drain()
            if read < 0:  # the device is gone or broken: do not spin
                counters.tap_drops += 1
                time.sleep(ERROR_PAUSE)

    def _tap_drainer(
        self,
        buf: bytearray,
        batch_buf: bytearray,
        segments: SegmentBatch,
        counters: DataPlaneCounters,
        budget: int,
    ) -> Callable[[], int]:
        """A function that forwards what the TAP holds now, up to `budget` frames.

        The caller holds `tap_lock` (reads and sends of TAP frames are one ordered step).
        Returns the frames read, -1 on a read error other than EAGAIN.  Everything it
        needs is bound once, here: an idle router's wake-up runs on cold caches, and each
        attribute lookup or call saved is measurable in the idle round trip."""
        route_from_tap = self.forwarder.route_from_tap
        learn_local = self.forwarder.learn_local
        links = self.links_by_peer
        source = self.ourselves_bytes
        prefixes: dict[int, bytes] = {}  # destination peer -> frames prefix
        fd = self.tap_fd
        view = memoryview(buf)
        into = [view[HEADROOM:]]
        readv = os.readv
        monotonic = time.monotonic
        sendto = self.sock.sendto
        pack_len_into = FRAME_LEN.pack_into
        dst_at = HEADROOM + VNET_HDR_SIZE
        unpack_macs = MAC_PAIR.unpack_from
        largest = MAX_UDP_PAYLOAD + HEADER_SIZE  # end + link.overhead beyond: not one datagram
        batches: dict[tuple[int, int], list[bytes]] = {}
        tap_out = (batch_buf, counters, segments)
        send_datagram = self._send_datagram
        send_records = self._send_records
        flush = self._flush
        pieces = segments.pieces
        macs = self.forwarder.macs
        flows = self.flows
        seen_macs = seen_generation = -1
        now = monotonic()

        def drain() -> int:
            nonlocal seen_macs, seen_generation, now
            i = large = 0
            try:
                # The MAC lookup before the first send uses the previous wake-up's clock
                # (entries live for minutes): one call less before the frame leaves.
                if macs.changes != seen_macs or self.flow_generation != seen_generation:
                    seen_macs = macs.changes
                    seen_generation = self.flow_generation
                    flows.clear()
                first_src = last_src = b""
                for i in range(budget):
                    if i == 1:  # the first frame is on its way: the clock, then the rest
                        now = monotonic()
                        if batches:  # the first frame does not wait for others
                            flush(batches, tap_out)
                    try:
                        n = readv(fd, into)
                    except BlockingIOError:
                        break
                    except OSError:  # the device is gone: what is batched goes nowhere
                        batches.clear()
                        counters.tap_frames_in += i
                        return -1
                    if n < VNET_HDR_SIZE + ETHERNET_HEADER_SIZE:
                        continue
                    dst_mac, src_mac = unpack_macs(buf, dst_at)
                    if src_mac != last_src:  # learn each source once per wake-up ...
                        if i:
                            learn_local(src_mac, now)
                        else:  # ... the first frame's once it is on its way
                            first_src = src_mac
                        last_src = src_mac
                    end = HEADROOM + n
                    flow = flows.get(dst_mac)
                    if flow is None:
                        route = route_from_tap(dst_mac, now)
                        if route is None:
                            continue
                        destination, hops = route
                        link = links.get(hops[0]) if len(hops) == 1 else None
                        if link is None:  # flooded to several neighbours (or none)
                            pack_len_into(buf, RECORD_AT, n - VNET_HDR_SIZE)
                            record = bytes(view[RECORD_AT:end])
                            for hop in hops:
                                batch = batches.get((hop, destination))
                                if batch is None:
                                    batches[(hop, destination)] = [record]
                                else:
                                    batch.append(record)
                            continue
                        prefix = prefixes.get(destination)
                        if prefix is None:
                            prefix = prefixes[destination] = push_frames_prefix(
                                self.ourselves, destination
                            )
                        flow = (link, prefix, destination)
                        if (
                            destination != BROADCAST_PEER
                            and macs.changes == seen_macs
                            and self.flow_generation == seen_generation
                        ):
                            flows[dst_mac] = flow
                    link, prefix, destination = flow
                    pack_len_into(buf, RECORD_AT, n - VNET_HDR_SIZE)
                    if n >= DIRECT_MIN or not i:
                        large += n >= DIRECT_MIN
                        if batches:
                            pending = batches.pop((link.peer, destination), None)
                            if pending:
                                send_records(link, source, destination, pending, *tap_out)
                        if (buf[HEADROOM + 1] and link.segment) or end + link.overhead > largest:
                            one = [view[RECORD_AT:end]]  # (sent before the next read)
                            send_records(link, source, destination, one, *tap_out)
                            continue
                        buf[HEADER_SIZE:RECORD_AT] = prefix
                        with link.send_lock:
                            datagram = link.seal_into(buf, end)
                            if len(datagram) > link.max_datagram:
                                send_datagram(link, datagram, counters, pieces)
                            else:
                                try:
                                    sendto(datagram, DONTWAIT, link.endpoint)
                                    counters.udp_datagrams_out += 1
                                except OSError:
                                    counters.udp_send_errors += 1
                        continue
                    record = bytes(view[RECORD_AT:end])
                    batch = batches.get((link.peer, destination))
                    if batch is None:
                        batches[(link.peer, destination)] = [record]
                    else:
                        batch.append(record)
                else:
                    i = budget
                if not i:
                    return 0
                counters.tap_frames_in += i
                counters.tap_large_in += large
                now = monotonic()
                if first_src:
                    learn_local(first_src, now)
                if batches:
                    flush(batches, tap_out)
            except Exception:
                batches.clear()
                self._internal_error(counters)
            return i

        return drain

    def _flush(
        self,
        batches: dict[tuple[int, int], list[bytes]],
        out: tuple[bytearray, DataPlaneCounters, SegmentBatch],
    ) -> None:
        """Send and forget the coalesced batches (through one thread's buffer and batch)."""
        counters = out[1]
        links = self.links_by_peer
        for (hop, destination), records in batches.items():
            link = links.get(hop)
            if link is not None:
                # Runs of small UDP datagrams, in segment mode too: a run fits one datagram,
                # so losing it costs what losing a datagram of coalesced frames costs.
                if len(records) > 1:
                    merged = merge_udp_runs(records, link.max_body - RUN_OVERHEAD)
                    counters.udp_frames_merged += len(records) - len(merged)
                    records = merged
                self._send_records(link, self.ourselves_bytes, destination, records, *out)
        batches.clear()

    # -- mesh -> TAP (UDP thread) ----------------------------------------------------

    def _udp_thread(self) -> None:
        """Block in recv; open, deliver and relay that datagram and those queued behind it.

        Bound once, like the TAP thread (see there)."""
        counters = self.udp_counters
        links = self.links_by_index
        buf = self.udp_buf
        view = memoryview(buf)
        recv_into = self.sock.recv_into
        unpack_index = RECEIVER_INDEX.unpack_from
        joiner_add = self.joiner.add
        open_trains = self.joiner.trains  # truthy while a train waits for pieces
        salvaged = self.joiner.salvaged  # intact parts of trains that lost pieces
        supersede = self.joiner.supersede
        copy_train = TrainCopier(buf, self.join_buf).copy
        unpack_header = HEADER.unpack_from
        monotonic = time.monotonic
        from_peer = self.forwarder.from_peer
        learn_from_peer = self.forwarder.learn_from_peer
        ourselves_bytes = self.ourselves_bytes
        call_soon_threadsafe = self.loop.call_soon_threadsafe
        confirm = self._confirm
        deliver = self._deliver
        frames_min = FRAMES_PREFIX_SIZE + FRAME_RECORD_OVERHEAD + ETHERNET_HEADER_SIZE
        src_mac_at = FRAMES_PREFIX_SIZE + FRAME_RECORD_OVERHEAD + 6
        first_record_at = FRAMES_PREFIX_SIZE + FRAME_LEN.size
        gro = self.gro
        gro_add = gro.add
        gro_flush = gro.flush
        unpack_len = FRAME_LEN.unpack_from
        write = os.write
        tap_fd = self.tap_fd
        tap_lock = self.tap_lock
        answers = self._tap_drainer(
            self.udp_tap_buf, self.relay_buf, self.relay_segments, counters, ANSWER_BUDGET
        )

        watch_tap = self.tap_watch.modify
        answers_small = False  # the last answers that read frames read only small ones
        last_wake = 0.0

        def answer() -> None:
            """Forward what our TAP writes made the kernel queue on the TAP, unless the TAP
            thread is at it (the lock keeps reads and sends of TAP frames in order)."""
            nonlocal answers_small
            if tap_lock.acquire(blocking=False):
                try:
                    large = counters.tap_large_in
                    read = answers()
                    if read > 0:  # (a full budget: the TAP carries more than answers)
                        answers_small = read < ANSWER_BUDGET and counters.tap_large_in == large
                finally:
                    tap_lock.release()

        while True:
            try:
                n = recv_into(buf)  # blocks: the idle router sleeps here
            except OSError as exc:  # ECONNREFUSED from an earlier send: not fatal
                if not self.running or exc.errno == errno.EBADF:
                    return
                if exc.errno != errno.ECONNREFUSED:
                    time.sleep(ERROR_PAUSE)
                continue
            if not self.running:
                return
            written = counters.tap_frames_out
            early = True  # the first datagram's answer is forwarded before the bookkeeping
            handover = False
            try:
                now = monotonic()
                # Hand-over: a busy receiver whose answers are small (the ACKs of a stream
                # it receives) takes the TAP from the TAP thread until this drain ends, and
                # forwards them itself at the end: the TAP thread would wake for each, on
                # the other CPU, and the two would hand the GIL back and forth.
                if answers_small and now - last_wake < BUSY_GAP:
                    watch_tap(tap_fd, 0)
                    handover = True
                    counters.tap_handovers += 1
                last_wake = now
                for i in range(DRAIN_BUDGET):
                    if i:
                        try:
                            n = recv_into(buf, 0, DONTWAIT)
                        except BlockingIOError:
                            break
                        except OSError:  # ECONNREFUSED from an earlier send: not fatal
                            continue
                    at = 0
                    # The datagrams of one read (several if GRO merged them), and any
                    # salvaged ones (they go first: they came before what superseded them).
                    while at < n or salvaged:
                        fresh = True
                        if salvaged:
                            datagram = memoryview(salvaged.pop(0))
                            fresh = False  # (its counter stays missing in the loss estimate)
                        elif (
                            open_trains
                            and buf[at] == DATAGRAM_PIECE
                            and n - at >= PIECE_HEADER_SIZE
                            and supersede(
                                unpack_index(buf, at + 4)[0], unpack_index(buf, at + 8)[0]
                            )
                        ):
                            continue  # the salvage of an older train first
                        elif buf[at] == DATAGRAM_PIECE:
                            train = train_in_read(buf, at, n)
                            if train is None:  # not a whole train here: joined piece by piece
                                stop = piece_end(buf, at, n)
                                if (
                                    n - at < HEADER_SIZE
                                    or unpack_index(buf, at + 4)[0] not in links
                                ):
                                    counters.drops_unknown_link += 1  # no memory for strangers
                                    at = stop
                                    continue
                                joined = joiner_add(view[at:stop])
                                at = stop
                                if joined is None:
                                    continue
                                datagram = memoryview(joined)
                            else:  # a whole train, in order: copy the pieces together
                                count, size, total = train
                                datagram = copy_train(at, count, size, total)
                                at += (count - 1) * (PIECE_HEADER_SIZE + size)
                                at += PIECE_HEADER_SIZE + total - (count - 1) * size
                                counters.trains_joined += 1
                        else:  # its header says how long it is (0: the rest of the read)
                            stop = at + ((buf[at + 2] << 8) | buf[at + 3]) if n - at > 3 else n
                            if stop == at or stop > n:  # a truncated one: its link drops it
                                stop = n
                            elif stop - at <= HEADER_SIZE:
                                counters.drops_malformed += 1
                                break  # the rest of the read cannot be split
                            datagram = view[at:stop]
                            at = stop
                        dsize = len(datagram)
                        counters.udp_datagrams_in += fresh
                        if dsize <= HEADER_SIZE:
                            counters.drops_malformed += 1
                            continue
                        _kind, epoch, _length, index, counter = unpack_header(datagram)
                        link = links.get(index)
                        if link is None:
                            counters.drops_unknown_link += 1
                            continue
                        body = link.open(datagram)
                        if body is None:
                            continue
                        # Frames for us go to the TAP first; the bookkeeping follows.
                        if body[0] != BODY_FRAMES:
                            self._on_control_body(link, body, now)
                        elif len(body) < frames_min:
                            counters.drops_malformed += 1
                        elif body[7:13] == ourselves_bytes and body[1:7] != ourselves_bytes:
                            (frame_len,) = unpack_len(body, FRAMES_PREFIX_SIZE)
                            if len(body) == FRAMES_PREFIX_SIZE + FRAME_RECORD_OVERHEAD + frame_len:
                                # One record (a super-frame, a segment, a lone frame): no loop.
                                # TCP segments (partial checksum, no GSO) may merge (gro.py).
                                record = body[first_record_at:]
                                if record[0] == VNET_F_NEEDS_CSUM and not record[1]:
                                    done, taken = gro_add(record)
                                else:  # (no call when nothing is pending: the idle path)
                                    done, taken = gro_flush() if gro.count else None, False
                                if done is not None:
                                    try:
                                        write(tap_fd, done)
                                        counters.tap_frames_out += 1
                                    except OSError:  # TAP queue full or device gone
                                        counters.tap_drops += 1
                                if not taken:
                                    try:
                                        write(tap_fd, record)
                                        counters.tap_frames_out += 1
                                    except OSError as exc:  # TAP full, gone, or no UDP GSO
                                        after_failed_write(tap_fd, record, exc, counters)
                                if early and counters.tap_frames_out != written:
                                    early = False
                                    answer()  # an idle wake-up: the answer before bookkeeping
                                    written = counters.tap_frames_out
                                source = int.from_bytes(body[1:7], "big")
                            else:
                                self._flush_gro()
                                source = int.from_bytes(body[1:7], "big")
                                if not deliver(body, source, now):
                                    counters.drops_malformed += 1
                                    continue
                            learn_from_peer(bytes(body[src_mac_at : src_mac_at + 6]), source, now)
                        else:
                            source = int.from_bytes(body[1:7], "big")
                            destination = int.from_bytes(body[7:13], "big")
                            to_tap, relay = from_peer(
                                source, destination, bytes(body[src_mac_at : src_mac_at + 6]), now
                            )
                            if to_tap:
                                self._flush_gro()
                            if to_tap and not deliver(body, source, now):
                                counters.drops_malformed += 1
                            elif relay:
                                self._relay(body, destination, relay)
                        if fresh:
                            link.note_received(epoch, counter, dsize)
                        link.last_heard = now
                        if not link.confirmed:
                            link.confirmed = True
                            call_soon_threadsafe(confirm, link, now)
                self._flush_gro()  # the queue is empty: nothing waits behind a segment
            except Exception:
                self._internal_error(counters)
                self._flush_gro()
            # What we wrote to the TAP was delivered by the kernel inside the write, and an
            # answer (a ping reply, an ACK) may already be queued on the TAP: sending it from
            # here saves the TAP thread's wake-up on the round trip.  After the first
            # datagram of a wake-up that is done at once (above), else here.
            if counters.tap_frames_out != written:
                answer()
            if handover:  # what is still queued wakes the TAP thread at once
                with contextlib.suppress(OSError):  # (the router is stopping)
                    watch_tap(tap_fd, select.EPOLLIN)

    def _flush_gro(self) -> None:
        """UDP thread: write the coalesced segments, before any other frame goes out."""
        done = self.gro.flush()
        if done is not None:
            try:
                os.write(self.tap_fd, done)
                self.udp_counters.tap_frames_out += 1
            except OSError:
                self.udp_counters.tap_drops += 1

    def _confirm(self, link: Link, now: float) -> None:
        """Control thread: the first datagram from `link` arrived."""
        if not self.on_heard(link, now):
            link.confirmed = False  # not registered yet: the next datagram asks again

    def _on_control_body(self, link: Link, body: memoryview, now: float) -> None:
        try:
            kind, stamp, loss = pull_heartbeat(body)
        except MalformedDatagram:
            self.udp_counters.drops_malformed += 1
            return
        link.peer_reported_loss(loss)
        if kind == BODY_HEARTBEAT:
            ack = push_heartbeat(BODY_HEARTBEAT_ACK, stamp, link.take_loss_report())
            self.send_body(link, ack, self.udp_counters)
        else:
            link.rtt = max(0.0, now - stamp)

    def _deliver(self, body: memoryview, source: int, now: float) -> bool:
        """Write every record (vnet hdr + frame) to the TAP; learn the later frames' MACs.

        The caller learned the first frame's source MAC; a later frame's is learned only if
        it differs (a batch of small frames usually comes from one container).  Returns
        False when a record is malformed (the records before it are delivered)."""
        learn = self.forwarder.macs.learn
        write = os.write
        tap_fd = self.tap_fd
        counters = self.udp_counters
        unpack_len = FRAME_LEN.unpack_from
        offset = FRAMES_PREFIX_SIZE
        end = len(body)
        first_src_at = FRAMES_PREFIX_SIZE + FRAME_RECORD_OVERHEAD + 6
        first_src = bytes(body[first_src_at : first_src_at + 6])
        while offset < end:
            if offset + FRAME_RECORD_OVERHEAD > end:
                return False  # truncated frame record header
            (frame_len,) = unpack_len(body, offset)
            start = offset + FRAME_LEN.size
            stop = start + VNET_HDR_SIZE + frame_len
            if frame_len < ETHERNET_HEADER_SIZE or stop > end:
                return False  # the record overruns the datagram
            if offset != FRAMES_PREFIX_SIZE:
                src = bytes(body[start + 16 : start + 22])
                if src != first_src:
                    learn(src, source, now)
            try:
                write(tap_fd, body[start:stop])
                counters.tap_frames_out += 1
            except OSError as exc:  # TAP queue full, device gone, no UDP GSO here
                after_failed_write(tap_fd, body[start:stop], exc, counters)
            offset = stop
        return True

    def _relay(self, body: memoryview, destination: int, hops: tuple[int, ...]) -> None:
        """Forward a body unchanged (re-sealed for each next link), cut if that link needs."""
        size = len(body)
        counters = self.udp_counters
        buf = self.relay_buf
        for hop in hops:
            link = self.links_by_peer.get(hop)
            if link is None:
                continue
            counters.datagrams_relayed += 1
            if size > link.max_body and (link.segment or size + link.overhead > MAX_UDP_PAYLOAD):
                records = _records_of(body)
                self._send_records(
                    link,
                    bytes(body[1:7]),
                    destination,
                    records,
                    buf,
                    counters,
                    self.relay_segments,
                )
                continue
            buf[HEADER_SIZE : HEADER_SIZE + size] = body
            self._seal_and_send(link, buf, HEADER_SIZE + size, counters, self.relay_segments)


def after_failed_write(
    fd: int, record: bytes | memoryview, exc: OSError, counters: DataPlaneCounters
) -> None:
    """A TAP write of `record` failed with `exc`: cut a refused UDP GSO record, else drop.

    EINVAL for a GSO_UDP_L4 record means a kernel before 6.2 (or a header this kernel does
    not take): its datagrams go one by one.  Anything else (a full TAP queue) is a drop."""
    if exc.errno == errno.EINVAL and record[1] == VNET_GSO_UDP_L4:
        write_datagrams_of(fd, record, counters)
    else:
        counters.tap_drops += 1


def write_datagrams_of(fd: int, record: bytes | memoryview, counters: DataPlaneCounters) -> None:
    """Write a UDP GSO record's datagrams to the TAP one by one (the kernel refused it whole)."""
    try:
        frames = cut_udp_record(record)
    except MalformedDatagram:
        counters.drops_malformed += 1
        return
    counters.udp_gso_cut += 1
    for frame in frames:
        try:
            os.write(fd, frame)
            counters.tap_frames_out += 1
        except OSError:
            counters.tap_drops += 1


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
