"""Password hashing with scrypt (RFC 7914), a memory-hard function from the standard library.

scrypt makes each guess cost memory as well as time, so a stolen catalogue is slow to attack
on GPUs; ``hashlib.scrypt`` needs no compiled dependency. The stored form names its
parameters, so they can be raised later without invalidating existing hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# n=2**14, r=8 takes 16 MiB and ~50 ms here: slow for an attacker, fine for a login.
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
_KEY_LENGTH = 32
_PREFIX = "scrypt"
MIN_PASSWORD_LENGTH = 8


class WeakPassword(ValueError):
    """The password is too short to be accepted."""


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$key`` with a random 16-byte salt (base64 without padding)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    salt = os.urandom(16)
    key = _derive(password, salt, n, r, p)
    return "$".join((_PREFIX, str(n), str(r), str(p), _b64(salt), _b64(key)))


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison against a stored hash; a malformed hash never matches."""
    try:
        prefix, n, r, p, salt, key = stored.split("$")
        if prefix != _PREFIX:
            return False
        expected = _unb64(key)
        actual = _derive(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def burn_verification_time(password: str) -> None:
    """Spend what a real verification costs, so an unknown user answers as slowly as a known one."""
    _derive(password, b"\0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P)


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * n * r + (1 << 20), dklen=_KEY_LENGTH)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))
