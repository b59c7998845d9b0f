"""Shared primitives of the crypto core: hash, HMAC, HKDF, AEAD nonces, errors.

Theory of operation
-------------------
Everything cryptographic in pyweave is built from a handful of primitives that
the `cryptography` package provides; this module names them once so that the
handshake (`noise`), the control stream (`control_cipher`) and the data plane
(`data_keys`) agree on them byte for byte:

* **Hash**: BLAKE2s-256 (``hash_bytes``), also the HMAC hash (``hmac_hash``).
  BLAKE2s is the hash of the Noise suite we run
  (``Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s``, the suite WireGuard uses).
* **HKDF**: two flavours over HMAC-BLAKE2s.
  ``noise_hkdf`` is the Noise specification's ``HKDF(chaining_key, ikm, n)``
  (section 4.3: RFC 5869 extract with the chaining key as salt, then expand
  with empty info). ``derive_key`` is plain RFC 5869 HKDF with a *label* as
  info; every key derived outside the Noise handshake itself goes through it
  with its own label (see ``LABEL_*``), so no two keys ever coincide.
* **AEAD after the handshake**: AES-256-GCM (``transport_aead``), chosen by
  measurement on the target machines (AES-NI/VAES: about 3x faster than
  ChaCha20-Poly1305 for 64 KB super-frames, see docs/security.md).
  Nonce = 4 zero bytes + 64-bit big-endian counter (``transport_nonce``).
* **Errors**: every failure the crypto core reports on purpose is a
  ``CryptoError`` carrying ``reason``, a sentence a user can read in
  ``weave status connections``.

Nothing here touches the OS: no clock, no randomness. Callers pass random
bytes in through a ``RandomSource`` (``Callable[[int], bytes]``), which the io
edge binds to ``os.urandom``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# A source of cryptographically secure random bytes: rand(n) -> n bytes.
RandomSource = Callable[[int], bytes]

HASH_LEN: Final = 32  # BLAKE2s-256 digest size
HMAC_BLOCK_LEN: Final = 64  # BLAKE2s block size (used by HMAC)
KEY_LEN: Final = 32  # every symmetric key in pyweave is 256 bits
TAG_LEN: Final = 16  # AEAD tag (GCM and Poly1305 alike)
NONCE_LEN: Final = 12  # AEAD nonce: 4 zero bytes + u64 counter

# Protocol label and version; part of every handshake prologue and KDF label.
PROTOCOL_LABEL: Final = b"pyweave/1"

# HKDF labels (RFC 5869 "info"). One per derived key; never reuse one.
LABEL_CONTROL: Final = PROTOCOL_LABEL + b" control"
LABEL_DATA: Final = PROTOCOL_LABEL + b" data"
LABEL_DATA_CHAIN: Final = PROTOCOL_LABEL + b" data rekey chain"
LABEL_DATA_REKEY: Final = PROTOCOL_LABEL + b" data rekey"

_ZERO4: Final = b"\x00\x00\x00\x00"


class CryptoError(Exception):
    """A failure of the crypto core; ``reason`` is a plain sentence for users."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def hash_bytes(data: bytes) -> bytes:
    """BLAKE2s-256 of ``data``."""
    digest = hashes.Hash(hashes.BLAKE2s(HASH_LEN))
    digest.update(data)
    return digest.finalize()


def hmac_hash(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s(key, data), as Noise section 4.3 defines ``HMAC-HASH``."""
    mac = hmac.HMAC(key, hashes.BLAKE2s(HASH_LEN))
    mac.update(data)
    return mac.finalize()


def noise_hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """The Noise ``HKDF(chaining_key, input_key_material, num_outputs)``.

    Returns 2 or 3 outputs of ``HASH_LEN`` bytes each (Noise section 4.3).
    """
    if outputs not in (2, 3):
        raise ValueError("noise_hkdf produces 2 or 3 outputs")
    temp_key = hmac_hash(chaining_key, ikm)
    out1 = hmac_hash(temp_key, b"\x01")
    out2 = hmac_hash(temp_key, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, hmac_hash(temp_key, out2 + b"\x03")


def derive_key(secret: bytes, label: bytes, context: bytes, length: int = KEY_LEN) -> bytes:
    """RFC 5869 HKDF-BLAKE2s: extract(salt=context, ikm=secret), expand(info=label)."""
    return HKDF(hashes.BLAKE2s(HASH_LEN), length, context, label).derive(secret)


def transport_nonce(counter: int) -> bytes:
    """The 12-byte AEAD nonce for ``counter``: 4 zero bytes + u64 big endian."""
    return _ZERO4 + counter.to_bytes(8, "big")


def transport_aead(key: bytes) -> AESGCM:
    """The AEAD used after the handshake (control stream and data plane).

    One function so the choice lives in one place: AES-256-GCM, keyed with
    ``key`` (which must be ``KEY_LEN`` bytes).
    """
    if len(key) != KEY_LEN:
        raise ValueError(f"transport keys are {KEY_LEN} bytes, not {len(key)}")
    return AESGCM(key)
