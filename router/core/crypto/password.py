"""Stretch the mesh password into the handshake's 32-byte pre-shared key.

Theory of operation
-------------------
The password is the only secret peers share; it becomes the Noise PSK. A
password is low in entropy, and anyone who records one handshake can test
guesses offline (the first handshake message is authenticated under the
PSK), so every guess must be expensive. ``stretch_password`` runs scrypt:

* parameters ``n = 2**15, r = 8, p = 1``: 32 MiB of memory and about 0.12 s
  on the 2-vCPU development machine (n = 2**14 took 0.065 s, 2**16 0.25 s);
* salt: the fixed protocol label ``SALT``. Both peers must derive the same
  PSK without exchanging anything, so there is no per-peer salt; the label
  at least makes pyweave's table of precomputed guesses useless for any
  other protocol, and the cost per guess stays 32 MiB x 0.12 s;
* output: 32 bytes, the PSK.

Callers run this once at start-up (it is deliberately slow) and keep the
result; a change of password means a restart. Long random passwords (say 20+
random characters) are the real defence: scrypt multiplies the attacker's
cost per guess, it cannot rescue a dictionary word.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .primitives import KEY_LEN, PROTOCOL_LABEL

SALT: Final = PROTOCOL_LABEL + b" password"
SCRYPT_N: Final = 2**15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1


def stretch_password(password: bytes) -> bytes:
    """The 32-byte PSK for ``password`` (scrypt; about 0.1 s and 32 MiB)."""
    if not password:
        raise ValueError("the password must not be empty")
    kdf = Scrypt(salt=SALT, length=KEY_LEN, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(password)
