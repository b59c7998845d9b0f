"""A link: the data-plane half of one established connection to a neighbour.

Theory of operation: when the control connection to a neighbour completes its handshake,
each side knows the other's UDP endpoint and *receiver index* (the number the neighbour
wants to see in datagrams addressed to it).  A `Link` turns datagram bodies into
datagrams for that neighbour (`seal`) and back (`open`), keeping the per-direction
counter and liveness bookkeeping (`last_heard`, heartbeat round-trip time).  `PlainLink`
carries bodies in the clear (no password, or a trusted subnet); `SealedLink` runs every
body through the connection's data keys: one AEAD call per datagram, a replay window per
key epoch, and rekeying driven from the control connection.  Failures are counted, never
raised: the data plane drops what does not open.

The hot-path entry point avoids copies: `seal_into(buf, end)` seals a body that the data
plane has already placed at `buf[HEADER_SIZE:end]` (a plain link just writes the header in
front of it; a sealed link encrypts into its own output buffer) and returns the datagram
as a memoryview.

Loss awareness: the receiving side notes the (epoch, counter, size) of every authentic
datagram (`note_received`); once per heartbeat `take_loss_report` turns the gaps in the
counters into an estimate of the *underlay packet* loss rate (a datagram of k
packets on the wire — pieces, or IP fragments — is lost when any of them is:
P = 1 - (1 - p)^k, solved for p), which travels
to the peer in the heartbeat.  The peer's report about what *we* sent lands in
`peer_reported_loss`, which sets `lossy` (above LOSS_ENTER_PPM, until below
LOSS_LEAVE_PPM) and from it `segment`: while true, the data plane cuts super-frames into
path-MTU-sized datagrams.  A lossy plain link whose super-frames travel as trains of
pieces (UDP_SEGMENT taken, the path MTU large enough) does not segment: its receiver
salvages what arrived of a train (core/wire/salvage.py).

Threads: the data plane seals from its TAP thread (frames), its UDP thread (relays,
heartbeat answers) and the control thread (heartbeats, rekey switches).  A sealed link's
counter, key and output buffer must change together, so every seal-and-send and every
key switch holds `send_lock` (uncontended, it costs a fraction of a microsecond).  The
core does no threading: `send_lock` is a no-op context until the data plane, which shares
the link between threads, installs a real lock (`DataPlane.add_link`).  Receiving happens
on one thread only, so `open` and the loss bookkeeping take no lock.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from pyweave.router.core.crypto.data_keys import OVERHEAD, DataReceiver, DataSender
from pyweave.router.core.wire.data import (
    DATAGRAM_PLAIN,
    FRAME_RECORD_OVERHEAD,
    FRAMES_PREFIX_SIZE,
    HEADER,
    HEADER_SIZE,
    LOSS_UNKNOWN,
    MAX_UDP_PAYLOAD,
)
from pyweave.router.core.wire.gro import GRO_MAX_BYTES
from pyweave.router.core.wire.pieces import pieces_fit

LARGEST_PLAIN_DATAGRAM = HEADER_SIZE + FRAMES_PREFIX_SIZE + FRAME_RECORD_OVERHEAD + GRO_MAX_BYTES
LOSS_MIN_SAMPLE = 50  # datagrams per interval below which no estimate is made, unless ...
LOSS_MIN_LOST = 5  # ... at least this many of them are missing (a flow stalled by loss)
LOSS_ENTER_PPM = 2000  # 0.2 % underlay packet loss: start segmenting super-frames
LOSS_LEAVE_PPM = 500  # 0.05 %: back to super-frames
UNDERLAY_FRAGMENT_PAYLOAD = 1480  # IPv4 fragment payload on a 1500-byte underlay
NO_COUNTER = 1 << 64


def estimate_loss_ppm(expected: int, received: int, mean_size: float) -> int:
    """Underlay packet loss (ppm) from datagram loss and the mean datagram size."""
    if expected <= 0 or received > expected:
        return 0 if received else LOSS_UNKNOWN
    datagram_loss = 1.0 - received / expected
    fragments = max(1.0, (mean_size + 8) / UNDERLAY_FRAGMENT_PAYLOAD)
    packet_loss = 1.0 - (1.0 - datagram_loss) ** (1.0 / fragments)
    return min(int(packet_loss * 1_000_000), LOSS_UNKNOWN - 1)


class Link:
    """Shared bookkeeping; subclasses implement seal/open."""

    encrypted = False
    trains_salvaged = False  # the receiver delivers what arrived of a train (salvage.py)
    overhead = HEADER_SIZE  # bytes a datagram adds to its body

    def __init__(
        self,
        peer: int,
        endpoint: tuple[str, int],
        local_index: int,
        remote_index: int,
        max_datagram: int,
    ) -> None:
        self.peer = peer
        self.endpoint = endpoint
        self.local_index = local_index
        self.remote_index = remote_index
        self.max_datagram = max_datagram  # larger datagrams travel as pieces (wire/pieces.py)
        self.max_body = max_datagram - self.overhead
        self.send_counter = 0
        self.train = 0  # the number of the last datagram sent as pieces
        # Held around seal + send and key switches; a real lock once a data plane shares it.
        self.send_lock: AbstractContextManager[object] = nullcontext()
        self.last_heard = 0.0
        self.confirmed = False  # the control thread has seen a datagram from the peer
        self.rtt: float | None = None
        # The kernel takes UDP_SEGMENT sends towards the peer (trains of pieces, segment
        # batches); cleared when it refused one (`refuse_udp_segment`).
        self.udp_segment = True
        # The largest super-frame fits a train of pieces on this path MTU.
        self.trains_fit = pieces_fit(LARGEST_PLAIN_DATAGRAM, max_datagram)
        self.lossy = False  # the peer reports loss on what we send (with hysteresis)
        self.segment = False  # cut super-frames to path-MTU datagrams (lossy, see above)
        self.peer_loss_ppm = LOSS_UNKNOWN
        self._rx_epoch = -1
        self._reset_loss_interval()

    def seal(self, body: bytes) -> bytes:
        raise NotImplementedError

    def seal_into(self, buf: bytearray | memoryview, end: int) -> memoryview:
        """Seal the body at buf[HEADER_SIZE:end]; return the datagram.

        The datagram must start at offset 0 of the returned view's buffer (`.obj`) when
        `buf` is a bytearray: the data plane cuts trains of pieces from views of that
        buffer made once.  Segment mode passes a view into its batch instead and relies on
        a plain link sealing in place (only the header is written)."""
        raise NotImplementedError

    def open(self, datagram: bytes | memoryview) -> memoryview | None:
        raise NotImplementedError

    def drop_counts(self) -> tuple[int, int, int]:
        """(failed authentication, replayed, malformed) datagrams from this peer so far."""
        raise NotImplementedError

    # -- loss estimate -------------------------------------------------------------

    def _reset_loss_interval(self) -> None:
        self._rx_low = NO_COUNTER
        self._rx_high = -1
        self._rx_count = 0
        self._rx_bytes = 0

    def note_received(self, epoch: int, counter: int, size: int) -> None:
        """Account one authentic datagram for the loss estimate (hot path: keep flat)."""
        if epoch != self._rx_epoch:  # a rekey restarts the counters
            self._rx_epoch = epoch
            self._reset_loss_interval()
        if counter > self._rx_high:
            self._rx_high = counter
        if counter < self._rx_low:
            self._rx_low = counter
        self._rx_count += 1
        self._rx_bytes += size

    def take_loss_report(self) -> int:
        """Loss (ppm) seen on datagrams from the peer since the last report; starts anew."""
        count = self._rx_count
        expected = self._rx_high - self._rx_low + 1 if count else 0
        if count == 0 or (expected < LOSS_MIN_SAMPLE and expected - count < LOSS_MIN_LOST):
            report = LOSS_UNKNOWN
        else:
            report = estimate_loss_ppm(expected, count, self._rx_bytes / count)
        self._reset_loss_interval()
        return report

    def peer_reported_loss(self, ppm: int) -> None:
        """The peer's estimate of loss on what we send: pick super-frames or segments."""
        if ppm == LOSS_UNKNOWN:
            return
        self.peer_loss_ppm = ppm
        if ppm >= LOSS_ENTER_PPM:
            self.lossy = True
        elif ppm <= LOSS_LEAVE_PPM:
            self.lossy = False
        self._choose_segment_mode()

    def _choose_segment_mode(self) -> None:
        """Segment when lossy, unless super-frames travel as trains that the receiver
        salvages (a lost piece costs about what a lost segment does)."""
        trains = self.udp_segment and self.trains_fit
        self.segment = self.lossy and not (self.trains_salvaged and trains)

    def refuse_udp_segment(self) -> None:
        """The kernel refused a UDP_SEGMENT send on this path: no trains (large datagrams
        go as IP fragments, which nobody salvages) and no segment batches from now on."""
        self.udp_segment = False
        self._choose_segment_mode()

    def heard(self, now: float) -> None:
        self.last_heard = now


class PlainLink(Link):
    """No encryption: header + body, the counter only for diagnostics."""

    trains_salvaged = True
    drops_malformed = 0

    def drop_counts(self) -> tuple[int, int, int]:
        return 0, 0, self.drops_malformed

    def seal(self, body: bytes) -> bytes:
        self.send_counter += 1
        length = HEADER_SIZE + len(body)
        return HEADER.pack(DATAGRAM_PLAIN, 0, length, self.remote_index, self.send_counter) + body

    def seal_into(self, buf: bytearray | memoryview, end: int) -> memoryview:
        self.send_counter += 1
        HEADER.pack_into(buf, 0, DATAGRAM_PLAIN, 0, end, self.remote_index, self.send_counter)
        return memoryview(buf)[:end]

    def open(self, datagram: bytes | memoryview) -> memoryview | None:
        size = len(datagram)
        length = (datagram[2] << 8) | datagram[3] if size > HEADER_SIZE else 0
        if size <= HEADER_SIZE or datagram[0] != DATAGRAM_PLAIN or (length and length != size):
            self.drops_malformed += 1
            return None
        return memoryview(datagram)[HEADER_SIZE:]


class SealedLink(Link):
    """Every body sealed with the connection's data key (AES-GCM), replay-protected."""

    encrypted = True
    overhead = OVERHEAD

    def __init__(
        self,
        peer: int,
        endpoint: tuple[str, int],
        local_index: int,
        remote_index: int,
        max_datagram: int,
        sender: DataSender,
        receiver: DataReceiver,
    ) -> None:
        super().__init__(peer, endpoint, local_index, remote_index, max_datagram)
        self.sender = sender
        self.receiver = receiver
        self._out = bytearray(MAX_UDP_PAYLOAD + OVERHEAD)
        self._out_view = memoryview(self._out)

    def seal(self, body: bytes) -> bytes:
        return self.sender.seal_datagram(self.remote_index, body)

    def seal_into(self, buf: bytearray | memoryview, end: int) -> memoryview:
        body = memoryview(buf)[HEADER_SIZE:end]
        size = self.sender.seal_datagram_into(self._out, self.remote_index, body)
        return self._out_view[:size]

    def open(self, datagram: bytes | memoryview) -> memoryview | None:
        plaintext = self.receiver.open_datagram(datagram)
        return None if plaintext is None else memoryview(plaintext)

    def drop_counts(self) -> tuple[int, int, int]:
        r = self.receiver  # counted where the decision is made, read only for status
        return r.drops_auth, r.drops_replay, r.drops_malformed + r.drops_unknown_epoch
