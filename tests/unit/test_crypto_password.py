"""stretch_password: scrypt with the documented parameters."""

from __future__ import annotations

import hashlib

import pytest
from pyweave.router.core.crypto.password import SALT, stretch_password


def test_matches_reference_scrypt_and_is_deterministic() -> None:
    expected = hashlib.scrypt(
        b"correct horse battery staple", salt=SALT, n=2**15, r=8, p=1, maxmem=2**26, dklen=32
    )
    assert SALT == b"pyweave/1 password"
    assert stretch_password(b"correct horse battery staple") == expected
    assert stretch_password(b"correct horse battery staple") == expected
    assert stretch_password(b"correct horse battery stapler") != expected


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError):
        stretch_password(b"")
