"""API keys: their format (checkable offline) and their store (a table in the server's SQLite file).

Format (docs/auth.md)::

    rsk_ <body: 33 base62 chars = 24 random bytes> <checksum: 6 base62 chars = CRC-32 of the body>

43 characters in all, e.g. ``rsk_`` + 33 x ``0-9A-Za-z`` + 6 x ``0-9A-Za-z``.  The fixed prefix lets
secret scanners find keys; the checksum lets them (and ``runstream login``) reject a mangled or
made-up string without asking the server.  CRC-32 catches every single-character change: a
character is one byte of the body, and CRC-32 detects every error burst of up to 32 bits.

Only ``sha256(key)`` is stored.  A key's id is a second, domain-separated hash of it, so the row of
a presented key is found by primary key and its hash then compared in constant time.

Concurrency contract: a ``KeyStore`` holds one connection, guarded by a lock, and may be used from
any thread.  The server and the ``runstream server keys`` CLI are separate processes on one WAL
database, so a revocation committed by the CLI is seen by the server's very next read.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

PREFIX = "rsk_"
RANDOM_BYTES = 24  # 192 bits: well past the 128 the design asks for
BODY_LEN = 33  # base62 digits needed for 2**192 - 1 (62**33 > 2**192 > 62**32)
CHECK_LEN = 6  # 62**6 > 2**32, so any CRC-32 fits
KEY_LEN = len(PREFIX) + BODY_LEN + CHECK_LEN  # 43
ID_LEN = 12  # hex chars of the id hash: 48 bits, collision-checked at creation
TOUCH_EVERY = 60.0  # seconds between last_used_at writes for one key
TOUCH_RETRY = 5.0  # seconds before retrying a last_used_at write the database was too busy for

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHARS = frozenset(ALPHABET)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # entity / service-account names

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    entity TEXT NOT NULL,
    service_account TEXT,
    hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
)
"""
_COLUMNS = "id, entity, service_account, created_at, last_used_at, revoked_at"


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


def _hash(key: str) -> str:
    # A fast unsalted hash is right here: salts and slow KDFs protect guessable passwords, but a
    # key holds 192 random bits, so even a stolen table can't be brute-forced, and the per-batch
    # re-check stays cheap.
    return hashlib.sha256(key.encode()).hexdigest()


def mask(key: str | None) -> str:
    """A key fit for messages: its prefix and last 4 characters (``rsk_…Ab12``)."""
    if not key:
        return "(none)"
    if len(key) < 16:  # too short to show any of it safely
        return "****"
    head = PREFIX if key.startswith(PREFIX) else ""
    return f"{head}…{key[-4:]}"


@dataclass(frozen=True)
class KeyInfo:
    """A key's row, without its hash.  Times are Unix seconds."""

    id: str
    entity: str
    service_account: str | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyStore:
    """The ``api_keys`` table of the server's SQLite file (other modules own the other tables)."""

    def __init__(self, db_path: str | Path, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(db_path)
        self._busy_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._next_touch: dict[str, float] = {}
        # Autocommit (isolation_level=None): every statement is its own transaction, so a read
        # never holds a snapshot that would hide another process's revocation.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, entity: str, service_account: str | None = None) -> tuple[KeyInfo, str]:
        """A new key for ``entity``: its info and the plaintext, which exists nowhere else after this."""
        for label, name in (("entity", entity), ("service account", service_account)):
            if name is not None and not NAME_RE.match(name):
                raise ValueError(f"{label} {name!r} is not a valid name (letters, digits, _ . -)")
        while True:
            key = new_key()
            info = KeyInfo(key_id(key), entity, service_account, time.time(), None, None)
            try:
                with self._lock:
                    self._db.execute(
                        "INSERT INTO api_keys (id, entity, service_account, hash, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (info.id, entity, service_account, _hash(key), info.created_at),
                    )
            except sqlite3.IntegrityError:  # 48-bit id collision: astronomically rare, just redraw
                continue
            return info, key

    def list(self) -> list[KeyInfo]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id").fetchall()
        return [KeyInfo(*r) for r in rows]

    def get(self, key_id: str) -> KeyInfo | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return KeyInfo(*row) if row else None

    def revoke(self, key_id: str) -> bool:
        """Revoke an active key; False when there is no such key or it was already revoked."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
        return cur.rowcount == 1

    def authenticate(self, key: str) -> KeyInfo | None:
        """The active key's info, or None for a malformed, unknown or revoked key."""
        if not looks_like_key(key):
            return None
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS}, hash FROM api_keys WHERE id = ?", (key_id(key),)
            ).fetchone()
        # Found by id, a hash of the key: its timing tells an attacker nothing about any secret.
        # The stored hash is then compared in constant time.
        if row is None or not hmac.compare_digest(row[-1], _hash(key)):
            return None
        info = KeyInfo(*row[:-1])
        return info if info.active else None

    def is_active(self, key_id: str) -> bool:
        """Whether the key exists and is not revoked: one primary-key lookup (a few microseconds)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)
            ).fetchone()
        return row is not None

    def touch(self, key_id: str) -> None:
        """Record that the key was used, at most once a minute per key; best effort, never blocks.

        The server calls this on its event loop while its storage writer may hold the write lock,
        so a busy database skips the write (retried a few seconds later) instead of waiting.
        """
        now = time.monotonic()
        if now < self._next_touch.get(key_id, 0.0):
            return
        with self._lock:
            self._db.execute("PRAGMA busy_timeout = 0")
            try:
                self._db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (time.time(), key_id))
                self._next_touch[key_id] = now + TOUCH_EVERY
            except sqlite3.OperationalError:  # SQLITE_BUSY: the writer has the lock
                self._next_touch[key_id] = now + TOUCH_RETRY
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
