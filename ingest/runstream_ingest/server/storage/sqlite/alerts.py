"""Alerts kept with runs, and their webhook delivery state, in SQLite (docs/storage.md, "alerts";
docs/alerts.md).

One row per ``KIND_ALERT`` record, written in the same transaction as the batch that carried it
(so exactly once: the batch's dedupe key guards it, and ``UNIQUE(run, writer_id, seq)`` too).
The row is also the delivery queue: ``status`` starts ``pending`` with ``next_attempt_at`` 0, and
the server's delivery loop (``server/alerts.py``) moves it to ``delivered``, ``failed``,
``no_webhook`` or ``expired``.  Being a table, the queue survives a server restart.

Concurrency contract: ``store_alert`` runs inside the ingest write transaction on the storage's
writer thread; ``set_delivery`` takes its own write transaction (call it on the writer thread);
the reads open a read transaction on the calling thread's connection (any thread).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runstream.format import record as rec
from runstream_ingest.server.storage.interface import RunNotFound, run_path

if TYPE_CHECKING:
    from runstream_ingest.server.storage.sqlite.backend import SqliteStorage

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts(
    id INTEGER PRIMARY KEY, run INTEGER NOT NULL, writer_id TEXT NOT NULL, seq INTEGER NOT NULL,
    time REAL NOT NULL, step INTEGER NOT NULL, title TEXT NOT NULL, text TEXT NOT NULL,
    level TEXT NOT NULL, wait_duration REAL NOT NULL, suppressed INTEGER NOT NULL,
    stored_at REAL NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL, last_error TEXT, delivered_at REAL,
    UNIQUE(run, writer_id, seq));
CREATE INDEX IF NOT EXISTS alerts_by_run ON alerts(run, time);
CREATE INDEX IF NOT EXISTS alerts_due ON alerts(status, next_attempt_at);
"""

LEVELS = frozenset(("INFO", "WARN", "ERROR"))
PENDING, DELIVERED, FAILED, NO_WEBHOOK, EXPIRED = "pending", "delivered", "failed", "no_webhook", "expired"
STATUSES = (PENDING, DELIVERED, FAILED, NO_WEBHOOK, EXPIRED)
MAX_TITLE, MAX_TEXT = 256, 65_536  # what a hand-made record may hold; the SDK sends at most 64 / 16,384

_COLS = """a.id, e.name, p.name, r.run_id, r.name, a.time, a.step, a.title, a.text, a.level,
    a.wait_duration, a.suppressed, a.status, a.attempts, a.next_attempt_at, a.last_error,
    a.delivered_at"""
_FROM = """FROM alerts a JOIN runs r ON r.id = a.run JOIN projects p ON p.id = r.project
    JOIN entities e ON e.id = p.entity"""


@dataclass(frozen=True)
class AlertInfo:
    """One stored alert and its delivery state."""

    id: int
    entity: str
    project: str
    run_id: str
    run_name: str | None
    time: float
    step: int
    title: str
    text: str
    level: str
    wait_duration: float
    suppressed: int
    status: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    delivered_at: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "entity": self.entity, "project": self.project, "run_id": self.run_id,
            "run_name": self.run_name, "time": self.time, "step": self.step, "title": self.title,
            "text": self.text, "level": self.level, "wait_duration": self.wait_duration,
            "suppressed": self.suppressed,
            "delivery": {
                "status": self.status, "attempts": self.attempts,
                "next_attempt_at": self.next_attempt_at if self.status == PENDING else None,
                "last_error": self.last_error, "delivered_at": self.delivered_at,
            },
        }  # fmt: skip


def _num(v: Any, default: float) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else default


def store_alert(c: sqlite3.Connection, rid: int, writer_id: str, r: rec.Record, now: float) -> bool:
    """Keep one ``KIND_ALERT`` record (inside the ingest transaction); False for a body that is
    not an alert (the caller keeps it raw)."""
    try:
        body = r.value()
    except Exception:
        return False
    if not isinstance(body, dict):
        return False
    title, text, level = body.get("title"), body.get("text"), body.get("level")
    if not isinstance(title, str) or not title or not isinstance(text, str) or level not in LEVELS:
        return False
    step = body.get("step")
    suppressed = body.get("suppressed")
    c.execute(
        "INSERT OR IGNORE INTO alerts(run, writer_id, seq, time, step, title, text, level,"
        " wait_duration, suppressed, stored_at, status, attempts, next_attempt_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,0)",
        (
            rid, writer_id, r.seq, r.time,
            step if isinstance(step, int) and -(2**63) <= step < 2**63 else r.step,
            title[:MAX_TITLE], text[:MAX_TEXT], level, _num(body.get("wait_duration"), 60.0),
            suppressed if isinstance(suppressed, int) and 0 <= suppressed < 2**63 else 0, now, PENDING,
        ),
    )  # fmt: skip
    return True


def _info(row: tuple[Any, ...]) -> AlertInfo:
    return AlertInfo(*row)


def list_alerts(
    store: SqliteStorage, entity: str, project: str, run_id: str | None, limit: int, offset: int
) -> tuple[list[AlertInfo], int]:
    """A run's alerts (``run_id``) or a project's, newest first, and how many there are in all.

    Raises:
        RunNotFound: ``run_id`` names no run.
    """
    what = f"alerts of {run_path(entity, project, run_id) if run_id else entity + '/' + project}"
    with store._read(f"reading {what}") as c:
        if run_id is not None:
            rid = store._find_run(c, entity, project, run_id)
            if rid is None:
                raise RunNotFound(run_path(entity, project, run_id))
            where, args = "a.run = ?", (rid,)
        else:
            where, args = "e.name = ? AND p.name = ?", (entity, project)  # type: ignore[assignment]
        total = c.execute(f"SELECT count(*) {_FROM} WHERE {where}", args).fetchone()[0]
        rows = c.execute(
            f"SELECT {_COLS} {_FROM} WHERE {where} ORDER BY a.time DESC, a.id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
    return [_info(row) for row in rows], int(total)


def due_alerts(store: SqliteStorage, now: float, limit: int) -> list[AlertInfo]:
    """Pending alerts whose next attempt is due, oldest first."""
    with store._read("reading alerts due for delivery") as c:
        rows = c.execute(
            f"SELECT {_COLS} {_FROM} WHERE a.status = ? AND a.next_attempt_at <= ?"
            " ORDER BY a.next_attempt_at, a.id LIMIT ?",
            (PENDING, now, limit),
        ).fetchall()
    return [_info(row) for row in rows]


def set_delivery(
    store: SqliteStorage,
    alert_id: int,
    status: str,
    attempts: int,
    next_attempt_at: float | None,
    last_error: str | None,
    delivered_at: float | None,
) -> None:
    """Record the outcome of a delivery attempt (or a decision not to deliver)."""
    if status not in STATUSES:
        raise ValueError(f"alert delivery status must be one of {STATUSES}, not {status!r}")
    with store._write(f"recording delivery of alert {alert_id}") as c:
        c.execute(
            "UPDATE alerts SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
            " delivered_at = ? WHERE id = ?",
            (status, attempts, next_attempt_at, last_error, delivered_at, alert_id),
        )
