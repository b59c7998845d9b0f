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
"""

from __future__ import annotations

from pyweave.router.core.crypto.data_keys import OVERHEAD, DataReceiver, DataSender
from pyweave.router.core.wire.data import DATAGRAM_PLAIN, HEADER, HEADER_SIZE


class Link:
    """Shared bookkeeping; subclasses implement seal/open."""

    encrypted = False
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
        self.max_body = max_datagram - self.overhead
        self.send_counter = 0
        self.last_heard = 0.0
        self.heard_once = False
        self.rtt: float | None = None
        self.drops_malformed = 0
        self.drops_auth = 0
        self.drops_replay = 0
        self.datagrams_in = 0
        self.datagrams_out = 0

    def seal(self, body: bytes) -> bytes:
        raise NotImplementedError

    def open(self, datagram: bytes) -> memoryview | None:
        raise NotImplementedError

    def heard(self, now: float) -> None:
        self.last_heard = now
        self.heard_once = True


class PlainLink(Link):
    """No encryption: header + body, the counter only for diagnostics."""

    def seal(self, body: bytes) -> bytes:
        self.send_counter += 1
        self.datagrams_out += 1
        return HEADER.pack(DATAGRAM_PLAIN, 0, 0, self.remote_index, self.send_counter) + body

    def open(self, datagram: bytes) -> memoryview | None:
        if datagram[0] != DATAGRAM_PLAIN or len(datagram) <= HEADER_SIZE:
            self.drops_malformed += 1
            return None
        self.datagrams_in += 1
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

    def seal(self, body: bytes) -> bytes:
        self.datagrams_out += 1
        return self.sender.seal_datagram(self.remote_index, body)

    def open(self, datagram: bytes) -> memoryview | None:
        plaintext = self.receiver.open_datagram(datagram)
        if plaintext is None:
            receiver = self.receiver
            self.drops_auth = receiver.drops_auth
            self.drops_replay = receiver.drops_replay
            self.drops_malformed = receiver.drops_malformed + receiver.drops_unknown_epoch
            return None
        self.datagrams_in += 1
        return memoryview(plaintext)
