"""The API-key format: checkable offline, by the SDK's ``runstream login`` and by the server.

Format (docs/auth.md)::

    rsk_ <body: 33 base62 chars = 24 random bytes> <checksum: 6 base62 chars = CRC-32 of the body>

43 characters in all, e.g. ``rsk_`` + 33 x ``0-9A-Za-z`` + 6 x ``0-9A-Za-z``.  The fixed prefix lets
secret scanners find keys; the checksum lets them (and ``runstream login``) reject a mangled or
made-up string without asking the server.  CRC-32 catches every single-character change: a
character is one byte of the body, and CRC-32 detects every error burst of up to 32 bits.

The store of keys (only their hashes) is the server's: ``runstream_ingest.server.auth.keys``.
Pure functions: safe from any thread.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

PREFIX = "rsk_"
RANDOM_BYTES = 24  # 192 bits: well past the 128 the design asks for
BODY_LEN = 33  # base62 digits needed for 2**192 - 1 (62**33 > 2**192 > 62**32)
CHECK_LEN = 6  # 62**6 > 2**32, so any CRC-32 fits
KEY_LEN = len(PREFIX) + BODY_LEN + CHECK_LEN  # 43
ID_LEN = 12  # hex chars of the id hash: 48 bits, collision-checked at creation
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHARS = frozenset(ALPHABET)


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    if n:
        raise ValueError("number too large for width")
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _b62(zlib.crc32(body.encode("ascii")), CHECK_LEN)


def new_key() -> str:
    """A fresh random key (24 bytes from the OS CSPRNG)."""
    body = _b62(int.from_bytes(secrets.token_bytes(RANDOM_BYTES), "big"), BODY_LEN)
    return PREFIX + body + _checksum(body)


def looks_like_key(s: object) -> bool:
    """Whether ``s`` is a well-formed key with a valid checksum (offline; says nothing of validity)."""
    if not isinstance(s, str) or len(s) != KEY_LEN or not s.startswith(PREFIX):
        return False
    body, check = s[len(PREFIX) : -CHECK_LEN], s[-CHECK_LEN:]
    if not _CHARS.issuperset(s[len(PREFIX) :]):
        return False
    return _checksum(body) == check  # not a secret: no need for a constant-time compare


def key_id(key: str) -> str:
    """The public id of a key: safe to print, log and type into ``keys revoke``."""
    return hashlib.sha256(b"runstream key id\0" + key.encode()).hexdigest()[:ID_LEN]


def mask(key: str | None) -> str:
    """A key fit for messages: its prefix and last 4 characters (``rsk_…Ab12``)."""
    if not key:
        return "(none)"
    if len(key) < 16:  # too short to show any of it safely
        return "****"
    head = PREFIX if key.startswith(PREFIX) else ""
    return f"{head}…{key[-4:]}"
