"""The SQLite backend's schema and the SQL and helpers its modules share (docs/storage.md).

Pure constants and functions: safe from any thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from runstream.format import record as rec
from runstream_ingest.server.storage.history import chunks as ck
from runstream_ingest.server.storage.interface import StorageError
from runstream_ingest.server.storage.sqlite.alerts import SCHEMA as ALERTS_SCHEMA

# Version 2 added the distributed-run columns of ``runs`` (DIST_COLUMNS); a version-1 file is
# migrated in place when opened (``migrate``).  An older server refuses a version-2 file: it would
# list the hidden member rows as runs.
SCHEMA_VERSION = 2
HISTORY, SYSTEM = 0, 1  # series.kind
STEP_MIN, STEP_MAX = -(2**63), 2**63 - 1
META_KINDS = frozenset(
    (rec.KIND_RUN, rec.KIND_CONFIG, rec.KIND_SUMMARY, rec.KIND_STATS, rec.KIND_EXIT, rec.KIND_METRIC)
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS storage_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entities(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS projects(
    id INTEGER PRIMARY KEY, entity INTEGER NOT NULL REFERENCES entities(id), name TEXT NOT NULL,
    UNIQUE(entity, name));
CREATE TABLE IF NOT EXISTS runs(
    id INTEGER PRIMARY KEY, project INTEGER NOT NULL REFERENCES projects(id), run_id TEXT NOT NULL,
    name TEXT, state TEXT NOT NULL, exit_code INTEGER, ended_by TEXT,
    created_at REAL NOT NULL, heartbeat_at REAL NOT NULL, finished_at REAL, start_time REAL,
    host TEXT, program TEXT, tags BLOB, grp TEXT, job_type TEXT, notes TEXT,
    meta BLOB NOT NULL, config BLOB NOT NULL, summary BLOB NOT NULL, latest BLOB NOT NULL,
    pinned BLOB NOT NULL, unpinned BLOB NOT NULL, stats BLOB NOT NULL,
    last_step INTEGER NOT NULL DEFAULT -1, row_count INTEGER NOT NULL DEFAULT 0,
    regressions INTEGER NOT NULL DEFAULT 0,
    parent INTEGER, rank INTEGER, node INTEGER, local_rank INTEGER, world_size INTEGER,
    node_count INTEGER, own_state TEXT,
    UNIQUE(project, run_id));
CREATE INDEX IF NOT EXISTS runs_by_state ON runs(state, heartbeat_at);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs(project, created_at);
CREATE TABLE IF NOT EXISTS writers(
    run INTEGER NOT NULL REFERENCES runs(id), writer_id TEXT NOT NULL,
    acked_seq INTEGER NOT NULL, opened_at REAL NOT NULL,
    PRIMARY KEY(run, writer_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches(
    run INTEGER NOT NULL, writer_id TEXT NOT NULL, last_seq INTEGER NOT NULL,
    first_seq INTEGER NOT NULL, records INTEGER NOT NULL, stored_at REAL NOT NULL,
    PRIMARY KEY(run, writer_id, last_seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series(
    id INTEGER PRIMARY KEY, run INTEGER NOT NULL REFERENCES runs(id), kind INTEGER NOT NULL,
    name TEXT NOT NULL, UNIQUE(run, kind, name));
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY, series INTEGER NOT NULL REFERENCES series(id),
    first_step INTEGER NOT NULL, last_step INTEGER NOT NULL,
    first_time REAL NOT NULL, last_time REAL NOT NULL,
    count INTEGER NOT NULL, nans INTEGER NOT NULL, min REAL, max REAL, sum REAL, first REAL, last REAL,
    data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_series ON chunks(series, first_step);
-- A chart reads every statistic of thousands of chunks: from this index that is a few dozen
-- pages, from the table a page per chunk (each holds the start of its blob).
CREATE INDEX IF NOT EXISTS chunks_stats ON chunks(
    series, first_step, last_step, first_time, last_time, count, nans, min, max, sum);
CREATE TABLE IF NOT EXISTS history_values(
    run INTEGER NOT NULL, step INTEGER NOT NULL, series INTEGER NOT NULL, time REAL NOT NULL,
    value BLOB NOT NULL, PRIMARY KEY(run, step, series)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS console_lines(
    id INTEGER PRIMARY KEY, run INTEGER NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL,
    stream TEXT NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS console_by_run ON console_lines(run, id);
CREATE TABLE IF NOT EXISTS files(
    run INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT, size INTEGER, policy TEXT,
    time REAL NOT NULL, PRIMARY KEY(run, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS raw_records(
    run INTEGER NOT NULL, writer_id TEXT NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL,
    flags INTEGER NOT NULL, step INTEGER NOT NULL, time REAL NOT NULL, body BLOB NOT NULL,
    reason TEXT NOT NULL, PRIMARY KEY(run, writer_id, seq)) WITHOUT ROWID;
"""
SCHEMA += ALERTS_SCHEMA  # alerts and their webhook delivery queue (sqlite/alerts.py)

# The columns of a distributed run (docs/storage.md, "Distributed runs"), in the order of the
# CREATE TABLE above; a version-1 database gains them with ALTER TABLE (all NULL: single-process).
DIST_COLUMNS = (
    ("parent", "INTEGER"),  # runs.id of the job's top row; NULL for top rows and single runs
    ("rank", "INTEGER"),  # the global rank this row folds (0 on a distributed top row)
    ("node", "INTEGER"),  # node index of that rank or node writer
    ("local_rank", "INTEGER"),
    ("world_size", "INTEGER"),  # on the top row of a distributed run
    ("node_count", "INTEGER"),  # on the top row
    ("own_state", "TEXT"),  # top row: rank 0's own state; ``state`` is then the job's
)
DIST_INDEXES = (
    # Member rows of a job by their top row (job state, the read side's rank lists).
    "CREATE INDEX IF NOT EXISTS runs_by_parent ON runs(parent) WHERE parent IS NOT NULL",
    # The runs table's pages count and sort top rows only: without it, 10,000 runs cost 3.9 ms a
    # page instead of 0.4 ms (runs_by_created cannot answer ``parent IS NULL``).
    "CREATE INDEX IF NOT EXISTS runs_top_by_created ON runs(project, created_at) WHERE parent IS NULL",
)


def migrate(c: sqlite3.Connection, version: str) -> None:
    """Bring a database of schema ``version`` (as stored) up to SCHEMA_VERSION, inside the
    caller's write transaction.  Idempotent: a column already there is not added again."""
    if version not in ("1", str(SCHEMA_VERSION)):
        raise StorageError(f"storage schema version {version}; this server reads version {SCHEMA_VERSION}")
    have = {row[1] for row in c.execute("PRAGMA table_info(runs)")}
    for name, sql_type in DIST_COLUMNS:
        if name not in have:
            c.execute(f"ALTER TABLE runs ADD COLUMN {name} {sql_type}")
    for index in DIST_INDEXES:
        c.execute(index)
    c.execute("UPDATE storage_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


RUN_INFO = """SELECT e.name, p.name, r.run_id, r.name, r.state, r.exit_code, r.created_at,
    r.heartbeat_at, r.finished_at, r.host, r.program, r.tags, r.grp, r.job_type, r.notes, r.config,
    r.summary, r.last_step, r.row_count
    FROM runs r JOIN projects p ON p.id = r.project JOIN entities e ON e.id = p.entity"""
FIND_RUN = """SELECT r.id FROM runs r JOIN projects p ON p.id = r.project
    JOIN entities e ON e.id = p.entity WHERE e.name = ? AND p.name = ? AND r.run_id = ?"""
LOAD_FOLD = """SELECT state, ended_by, start_time, meta, config, latest, pinned, unpinned, stats,
    last_step, row_count, regressions, parent, rank, world_size FROM runs WHERE id = ?"""
INSERT_CHUNK = """INSERT INTO chunks(series, first_step, last_step, first_time, last_time, count,
    nans, min, max, sum, first, last, data) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"""

pack, unpack = rec.pack_body, rec.unpack_body


def opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def clamp(n: int) -> int:
    """A count or offset from a request, into SQLite's integer range (past the end is empty)."""
    return max(0, min(n, STEP_MAX))


def chunk_row(series: int, blob: bytes, s: ck.ChunkStats) -> tuple[Any, ...]:
    # NaN binds as NULL in SQLite: first/last of NaN read back as None, sum of +inf and -inf too.
    return (series, s.first_step, s.last_step, s.first_time, s.last_time, s.count, s.nans, s.min, s.max,
            s.sum, s.first, s.last, blob)  # fmt: skip


@contextmanager
def read_transaction(c: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """A read transaction on a reading thread's own connection: several queries, one snapshot.
    A SQLite error becomes a ``StorageError`` saying ``what`` was being read."""
    try:
        c.execute("BEGIN")
        yield c
    except sqlite3.Error as e:
        raise StorageError(f"{what}: {e}") from e
    finally:
        with suppress(sqlite3.Error):
            c.execute("COMMIT")
