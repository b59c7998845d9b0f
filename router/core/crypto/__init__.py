"""The sans-I/O cryptography core of pyweave.

One concern per module, each opening with its theory of operation:

* ``primitives``     -- hash, HMAC, HKDF, AEAD choice and nonces, ``CryptoError``
* ``password``       -- scrypt: mesh password -> 32-byte PSK (once, at start-up)
* ``noise``          -- Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s handshake -> ``HandshakeResult``
* ``control_cipher`` -- AEAD for the TCP control stream (implicit counters)
* ``data_keys``      -- UDP datagram sealing/opening, epochs, rekeying
* ``replay``         -- sliding-window replay protection for data counters

No module here touches the clock, the OS or global randomness: time comes in
as ``now`` and random bytes through a ``rand(n) -> bytes`` callable.
See docs/security.md for the threat model and the reasons behind each choice.
"""
