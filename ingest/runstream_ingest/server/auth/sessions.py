"""Browser sessions for the HTTP API: sign in once with an API key, then a cookie (docs/http-api.md,
"Browser sessions").

``POST /api/v1/session`` with a valid key creates a session: a random 256-bit id, kept in this
process's memory only (a restart signs browsers out; nothing secret is ever written to disk), sent
as an ``HttpOnly; SameSite=Strict`` cookie that scripts cannot read and other sites cannot make the
browser send.  Each session also has a CSRF token, returned in the JSON body: a request that
changes something and is authenticated by the cookie alone must echo it in ``X-Runstream-CSRF``.
A session dies with its key: revoking the key ends it at the next request.

Concurrency contract: used on the server's event loop only (no locking).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from runstream_ingest.server.auth.keys import KeyInfo

COOKIE = "runstream_session"
CSRF_HEADER = "X-Runstream-CSRF"
TTL_S = 7 * 24 * 3600.0  # a week, then sign in again
MAX_SESSIONS = 10_000  # the oldest are dropped past this (sign-ins are cheap; memory is not)


@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    key: KeyInfo | None  # None when the server runs without auth
    expires_at: float

    @property
    def entity(self) -> str | None:
        return None if self.key is None else self.key.entity

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def create(self, key: KeyInfo | None) -> Session:
        now = self._clock()
        if len(self._by_id) >= MAX_SESSIONS:
            self._expire(now)
            while len(self._by_id) >= MAX_SESSIONS:  # dicts keep insertion order: oldest first
                del self._by_id[next(iter(self._by_id))]
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), key, now + TTL_S)
        self._by_id[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session with this id, or None (unknown or expired)."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is not None and s.expires_at <= self._clock():
            del self._by_id[sid]
            return None
        return s

    def end(self, sid: str) -> None:
        self._by_id.pop(sid, None)

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._by_id.items() if s.expires_at <= now]:
            del self._by_id[sid]
