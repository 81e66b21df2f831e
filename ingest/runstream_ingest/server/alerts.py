"""Delivery of ``runstream.alert`` alerts to webhooks, one URL per entity (docs/alerts.md).

``--alert-webhook ENTITY=URL`` (repeatable; ``*=URL`` for every entity without one of its own)
names where an entity's alerts go.  The loop here polls the alerts table (the delivery queue,
``storage/sqlite/alerts.py``) for pending alerts that are due, POSTs each as JSON -- a Slack
incoming-webhook message (``text``) plus the alert's fields -- and records the outcome:

- a 2xx answer: ``delivered``;
- a network error, a timeout, 408, 429 or 5xx: tried again after ``retry_base * 2**(n-1)``
  seconds (capped at ``MAX_BACKOFF``; a 429's ``Retry-After`` is honoured up to that cap), until
  ``max_attempts`` attempts have failed: then ``failed``;
- any other 4xx (a wrong or revoked URL): ``failed`` at once, as sending it again cannot help;
- no webhook for the entity when the alert comes due: ``no_webhook``;
- an alert older than ``max_age`` when it first comes due (a run synced long after it ran):
  ``expired``, so old news is not paged out.

Delivery is at least once: a server stopped between a webhook's answer and the write of the
outcome sends that alert again after restart; receivers may use the ``alert_id`` to drop repeats.

Concurrency contract: ``AlertDelivery`` lives on the server's event loop; storage reads go to the
``readers`` pool, outcome writes to the storage's one ``writer`` thread, so ingest never waits on
a webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from runstream_ingest.server.alert_config import ANY_ENTITY
from runstream_ingest.server.storage.sqlite import alerts as st
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage

log = logging.getLogger("runstream.server.alerts")

POLL_S = 0.5  # seconds between looks at the queue: an alert waits at most this long for its first try
BATCH = 16  # alerts delivered at once
TIMEOUT_S = 10.0  # one POST, connection included
MAX_BACKOFF = 300.0
DEFAULT_RETRY_BASE = 1.0
DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_MAX_AGE = 86_400.0
LEVEL_MARK = {"INFO": ":information_source:", "WARN": ":warning:", "ERROR": ":rotating_light:"}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def run_url(public_url: str, a: st.AlertInfo) -> str:
    """The run's page in the dashboard (its fragment route, server/web/static/js/url.js)."""
    parts = "/".join(quote(p, safe="") for p in ("r", a.entity, a.project, a.run_id))
    return f"{public_url.rstrip('/')}/#/{parts}"


def payload(a: st.AlertInfo, public_url: str) -> dict[str, Any]:
    """The JSON body POSTed for an alert: Slack's ``text`` (mrkdwn) plus the alert's fields."""
    url = run_url(public_url, a)
    where = f"{a.entity}/{a.project}/{a.run_id}"
    more = f" ({a.suppressed} more with this title were rate-limited)" if a.suppressed else ""
    text = f"{LEVEL_MARK.get(a.level, '')} *[{a.level}] {a.title}*\n{a.text}\nRun <{url}|{where}>{more}"
    return {
        "text": text.strip(),
        "alert_id": a.id, "title": a.title, "alert_text": a.text, "level": a.level,
        "entity": a.entity, "project": a.project, "run_id": a.run_id, "run_name": a.run_name,
        "run_url": url, "time": iso(a.time), "step": a.step, "suppressed": a.suppressed,
    }  # fmt: skip


def backoff(attempts: int, base: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones (1, 2, 4... times ``base``)."""
    return min(MAX_BACKOFF, base * 2.0 ** max(0, attempts - 1))


class AlertDelivery:
    """The delivery loop (see the module docstring): ``start()`` on the event loop, ``stop()``
    before the storage's writer shuts down."""

    def __init__(
        self,
        storage: SqliteStorage,
        readers: ThreadPoolExecutor,
        writer: ThreadPoolExecutor,
        webhooks: dict[str, str],
        public_url: str,
        *,
        retry_base: float = DEFAULT_RETRY_BASE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.storage, self.readers, self.writer = storage, readers, writer
        self.webhooks = webhooks
        self.public_url = public_url
        self.retry_base, self.max_attempts, self.max_age = retry_base, max_attempts, max_age
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def webhook(self, entity: str) -> str | None:
        return self.webhooks.get(entity) or self.webhooks.get(ANY_ENTITY)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                due = await loop.run_in_executor(
                    self.readers, st.due_alerts, self.storage, time.time(), BATCH
                )
                if due:
                    results = await asyncio.gather(*map(self._deliver, due), return_exceptions=True)
                    for a, res in zip(due, results, strict=True):
                        if isinstance(res, Exception):
                            log.error("delivering alert %d failed", a.id, exc_info=res)
                    continue  # more may be waiting
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a bad pass (a locked database, a bug)
                log.exception("alert delivery pass failed")
            await asyncio.sleep(POLL_S)

    async def _deliver(self, a: st.AlertInfo) -> None:
        now = time.time()
        url = self.webhook(a.entity)
        if url is None:
            await self._record(a, st.NO_WEBHOOK, a.attempts, None, "no webhook is configured for the entity")
            return
        if a.attempts == 0 and now - a.time > self.max_age:
            why = f"older than {self.max_age:g} s when it reached the server"
            await self._record(a, st.EXPIRED, 0, None, why)
            return
        attempts = a.attempts + 1
        retry_after: float | None = None
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                    headers={"User-Agent": "runstream-server"},
                )
            async with self._session.post(url, json=payload(a, self.public_url)) as resp:
                body = (await resp.content.read(300)).decode("utf-8", "replace")
                if 200 <= resp.status < 300:
                    await self._record(a, st.DELIVERED, attempts, None, None, delivered=time.time())
                    return
                error = f"HTTP {resp.status}: {body.strip()[:200]}"
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                if 400 <= resp.status < 500 and resp.status not in (408, 429):
                    log.warning("alert %d to %s refused: %s; not retried", a.id, _host(url), error)
                    await self._record(a, st.FAILED, attempts, None, error)
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if attempts >= self.max_attempts:
            log.warning("alert %d to %s failed %d times, giving up: %s", a.id, _host(url), attempts, error)
            await self._record(a, st.FAILED, attempts, None, error)
            return
        wait = backoff(attempts, self.retry_base)
        if retry_after is not None:
            wait = min(MAX_BACKOFF, max(wait, retry_after))
        await self._record(a, st.PENDING, attempts, time.time() + wait, error)

    async def _record(
        self,
        a: st.AlertInfo,
        status: str,
        attempts: int,
        next_at: float | None,
        error: str | None,
        delivered: float | None = None,
    ) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self.writer, st.set_delivery, self.storage, a.id, status, attempts, next_at, error, delivered
        )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the back-off alone
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _host(url: str) -> str:
    # Logged instead of the URL: a webhook URL is a secret (Slack's carry their token in the path).
    return urlsplit(url).hostname or "?"
