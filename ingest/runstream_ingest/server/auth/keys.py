"""API keys' store: a table in the server's SQLite file (the key format: ``runstream.format.api_key``).

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
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from runstream.format.api_key import key_id, looks_like_key, new_key

TOUCH_EVERY = 60.0  # seconds between last_used_at writes for one key
TOUCH_RETRY = 5.0  # seconds before retrying a last_used_at write the database was too busy for

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


def _hash(key: str) -> str:
    # A fast unsalted hash is right here: salts and slow KDFs protect guessable passwords, but a
    # key holds 192 random bits, so even a stolen table can't be brute-forced, and the per-batch
    # re-check stays cheap.
    return hashlib.sha256(key.encode()).hexdigest()


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
