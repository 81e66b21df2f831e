"""The SQLite backend of ``Storage`` (schema and invariants: docs/storage.md).

Durability: WAL mode with ``synchronous=FULL`` on the write connection, so a COMMIT has reached
the disk (the WAL is fsynced) before ``store_batch`` returns and the server acks.  NORMAL would
only fsync at checkpoints: a power cut could lose acked batches.

Concurrency contract: one write connection, used under a lock by the writer thread (every
writing method takes ``BEGIN IMMEDIATE``, so another process or ``SqliteStorage`` on the same
file waits for it rather than interleaving).  Each reading thread gets its own read-only
connection (thread-local); WAL readers never block the writer nor wait for it, and see only
committed transactions.  ``scan_history`` opens a connection of its own for the life of the
iteration: it holds one read snapshot, so compaction running meanwhile cannot make it skip or
repeat points, and pages may be pulled from any thread.  ``close`` after readers have stopped.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from operator import attrgetter, itemgetter, lt
from typing import Any

from runstream import records as rec
from runstream.reader import flatten

from . import chunks as ck
from .base import (
    KIND_CONSOLE,
    KIND_FILE,
    KIND_SYSTEM,
    RESUME_MODES,
    Bucket,
    BucketSums,
    ConsoleLine,
    FileInfo,
    OpenedRun,
    RunExists,
    RunFold,
    RunInfo,
    RunNotFound,
    SequenceGap,
    StorageError,
    StoreResult,
    check_batch,
    run_path,
)

SCHEMA_VERSION = 1
HISTORY, SYSTEM = 0, 1  # series.kind
STEP_MIN, STEP_MAX = -(2**63), 2**63 - 1
META_KINDS = frozenset((rec.KIND_RUN, rec.KIND_CONFIG, rec.KIND_SUMMARY, rec.KIND_STATS, rec.KIND_EXIT))

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

RUN_INFO = """SELECT e.name, p.name, r.run_id, r.name, r.state, r.exit_code, r.created_at,
    r.heartbeat_at, r.finished_at, r.host, r.program, r.tags, r.grp, r.job_type, r.notes, r.config,
    r.summary, r.last_step, r.row_count
    FROM runs r JOIN projects p ON p.id = r.project JOIN entities e ON e.id = p.entity"""
FIND_RUN = """SELECT r.id FROM runs r JOIN projects p ON p.id = r.project
    JOIN entities e ON e.id = p.entity WHERE e.name = ? AND p.name = ? AND r.run_id = ?"""
LOAD_FOLD = """SELECT state, ended_by, start_time, meta, config, latest, pinned, unpinned, stats,
    last_step, row_count, regressions FROM runs WHERE id = ?"""
INSERT_CHUNK = """INSERT INTO chunks(series, first_step, last_step, first_time, last_time, count,
    nans, min, max, sum, first, last, data) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"""

pack, unpack = rec.pack_body, rec.unpack_body


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _clamp(n: int) -> int:
    """A count or offset from a request, into SQLite's integer range (past the end is empty)."""
    return max(0, min(n, STEP_MAX))


def _chunk_row(series: int, blob: bytes, s: ck.ChunkStats) -> tuple[Any, ...]:
    # NaN binds as NULL in SQLite: first/last of NaN read back as None, sum of +inf and -inf too.
    return (series, s.first_step, s.last_step, s.first_time, s.last_time, s.count, s.nans, s.min, s.max,
            s.sum, s.first, s.last, blob)  # fmt: skip


class SqliteStorage:
    """``Storage`` in one SQLite file.  ``clock`` stamps creation and liveness (tests inject it)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._timeout = busy_timeout
        self._wlock = threading.RLock()
        self._rlock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        # Ids of rows that are never deleted, valid while no transaction that created them rolls
        # back (``_rollback`` forgets them all).
        self._run_ids: dict[tuple[str, str, str], int] = {}
        self._series_ids: dict[tuple[int, int, str], int] = {}
        try:
            self._w = self._connect(write=True)
            with self._write("creating the schema") as c:
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                row = c.execute("SELECT value FROM storage_meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    c.execute("INSERT INTO storage_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif row[0] != str(SCHEMA_VERSION):
                    raise StorageError(
                        f"{self.path} has storage schema version {row[0]}; "
                        f"this server reads version {SCHEMA_VERSION}"
                    )
        except BaseException as e:
            if hasattr(self, "_w"):
                self._w.close()
            if isinstance(e, sqlite3.Error):
                raise StorageError(f"cannot open {self.path}: {e}") from e
            raise

    # --- connections and transactions --------------------------------------------------------
    def _connect(self, write: bool) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
        if write:
            mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                c.close()
                raise StorageError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA cache_size=-65536")
        else:
            c.execute("PRAGMA query_only=ON")
        return c

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; sqlite errors become StorageError naming ``what``."""
        with self._wlock:
            if self._closed:
                raise StorageError(f"{what}: the storage is closed")
            c = self._w
            try:
                c.execute("BEGIN IMMEDIATE")
                yield c
                c.execute("COMMIT")
            except BaseException as e:
                self._rollback()
                if isinstance(e, sqlite3.Error):
                    raise StorageError(f"{what}: {e}") from e
                raise

    def _rollback(self) -> None:
        if self._w.in_transaction:
            with suppress(sqlite3.Error):
                self._w.execute("ROLLBACK")
        self._run_ids.clear()
        self._series_ids.clear()

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError("the storage is closed")
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = self._connect(write=False)
            with self._rlock:
                self._readers.append(c)
        return c

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        """A read transaction on this thread's connection: several queries, one snapshot."""
        c = self._reader()
        try:
            c.execute("BEGIN")
            yield c
        except sqlite3.Error as e:
            raise StorageError(f"{what}: {e}") from e
        finally:
            with suppress(sqlite3.Error):
                c.execute("COMMIT")

    def close(self) -> None:
        with self._wlock:
            if self._closed:
                return
            self._closed = True
            with self._rlock:
                for c in self._readers:
                    with suppress(sqlite3.Error):
                        c.close()
                self._readers.clear()
            self._w.close()

    def __enter__(self) -> SqliteStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _find_run(self, c: sqlite3.Connection, entity: str, project: str, run_id: str) -> int | None:
        key = (entity, project, run_id)
        rid = self._run_ids.get(key) if c is self._w else None
        if rid is None:
            row = c.execute(FIND_RUN, key).fetchone()
            if row is None:
                return None
            rid = row[0]
            if c is self._w:
                self._run_ids[key] = rid
        return rid

    def _need_run(self, c: sqlite3.Connection, entity: str, project: str, run_id: str) -> int:
        rid = self._find_run(c, entity, project, run_id)
        if rid is None:
            raise RunNotFound(run_path(entity, project, run_id))
        return rid

    def _name_id(self, c: sqlite3.Connection, table: str, cols: str, values: tuple[Any, ...]) -> int:
        where = " AND ".join(f"{k} = ?" for k in cols.split(","))
        row = c.execute(f"SELECT id FROM {table} WHERE {where}", values).fetchone()
        if row is None:
            marks = ",".join("?" * len(values))
            row = c.execute(f"INSERT INTO {table}({cols}) VALUES ({marks}) RETURNING id", values).fetchone()
        return int(row[0])

    def _series(self, c: sqlite3.Connection, run: int, kind: int, names: Sequence[str]) -> dict[str, int]:
        out = {}
        for n in names:
            sid = self._series_ids.get((run, kind, n))
            if sid is None:
                sid = self._series_ids[(run, kind, n)] = self._name_id(
                    c, "series", "run,kind,name", (run, kind, n)
                )
            out[n] = sid
        return out

    # --- writing -----------------------------------------------------------------------------
    def open_run(self, entity: str, project: str, run_id: str, writer_id: str, resume: str) -> OpenedRun:
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, not {resume!r}")
        if not all((entity, project, run_id, writer_id)):
            raise ValueError("entity, project, run_id and writer_id must not be empty")
        path = run_path(entity, project, run_id)
        with self._write(f"opening run {path}") as c:
            now = self._clock()
            rid = self._find_run(c, entity, project, run_id)
            resumed = rid is not None
            if rid is None:
                if resume == "must":
                    raise RunNotFound(path)
                pid = self._name_id(
                    c, "projects", "entity,name", (self._name_id(c, "entities", "name", (entity,)), project)
                )
                empty_map, empty_list = pack({}), pack([])
                rid = c.execute(
                    "INSERT INTO runs(project, run_id, state, created_at, heartbeat_at, meta, config,"
                    " summary, latest, pinned, unpinned, stats, tags)"
                    " VALUES (?,?,'running',?,?,?,?,?,?,?,?,?,?) RETURNING id",
                    (pid, run_id, now, now, *[empty_map] * 5, empty_list, empty_map, empty_list),
                ).fetchone()[0]
            else:
                writers = dict(
                    c.execute("SELECT writer_id, acked_seq FROM writers WHERE run = ?", (rid,)).fetchall()
                )
                others = sorted(w for w, acked in writers.items() if w != writer_id and acked > 0)
                if resume == "never" and others:
                    raise RunExists(path, others)
                # A new writer resumes the run: it runs again until its own EXIT.  A writer
                # coming back only revives a run the janitor (not an EXIT) declared crashed.
                revive = "1" if writer_id not in writers else "ended_by = 'stale'"
                c.execute(
                    "UPDATE runs SET state = 'running', ended_by = NULL, exit_code = NULL,"
                    " finished_at = NULL"
                    f" WHERE id = ? AND ({revive})",
                    (rid,),
                )
                c.execute("UPDATE runs SET heartbeat_at = max(heartbeat_at, ?) WHERE id = ?", (now, rid))
            c.execute(
                "INSERT OR IGNORE INTO writers(run, writer_id, acked_seq, opened_at) VALUES (?,?,0,?)",
                (rid, writer_id, now),
            )
            acked = c.execute(
                "SELECT acked_seq FROM writers WHERE run = ? AND writer_id = ?", (rid, writer_id)
            ).fetchone()[0]
            last_step = c.execute("SELECT last_step FROM runs WHERE id = ?", (rid,)).fetchone()[0]
        return OpenedRun(int(acked), resumed, int(last_step), path)

    def store_batch(
        self,
        entity: str,
        project: str,
        run_id: str,
        writer_id: str,
        first_seq: int,
        last_seq: int,
        records: Sequence[rec.Record],
    ) -> StoreResult:
        path = run_path(entity, project, run_id)
        check_batch(path, first_seq, last_seq, records)
        with self._write(f"storing batch {first_seq}..{last_seq} of run {path} writer {writer_id}") as c:
            rid = self._need_run(c, entity, project, run_id)
            row = c.execute(
                "SELECT acked_seq FROM writers WHERE run = ? AND writer_id = ?", (rid, writer_id)
            ).fetchone()
            acked = 0 if row is None else int(row[0])
            if last_seq <= acked:
                return StoreResult(True, acked)
            if first_seq > acked + 1:
                raise SequenceGap(path, writer_id, acked + 1, first_seq)
            todo = records[acked + 1 - first_seq :] if first_seq <= acked else records
            try:
                # The dedupe key: the primary key refuses a batch stored before even if the
                # progress row below were somehow behind.
                c.execute(
                    "INSERT INTO batches(run, writer_id, last_seq, first_seq, records, stored_at)"
                    " VALUES (?,?,?,?,?,?)",
                    (rid, writer_id, last_seq, first_seq, len(todo), self._clock()),
                )
            except sqlite3.IntegrityError:
                return StoreResult(True, max(acked, last_seq))
            c.execute(
                "INSERT INTO writers(run, writer_id, acked_seq, opened_at) VALUES (?,?,?,?)"
                " ON CONFLICT(run, writer_id) DO UPDATE SET acked_seq = excluded.acked_seq",
                (rid, writer_id, last_seq, self._clock()),
            )
            self._apply(c, rid, writer_id, todo)
        return StoreResult(False, last_seq, len(todo))

    def _apply(self, c: sqlite3.Connection, rid: int, writer_id: str, records: Sequence[rec.Record]) -> None:
        """Fold records into the run (inside the caller's transaction)."""
        (state, ended_by, start, meta, config, latest, pinned, unpinned, stats, last_step, row_count,
         regressions) = c.execute(LOAD_FOLD, (rid,)).fetchone()  # fmt: skip
        fold = RunFold(unpack(meta), unpack(config), unpack(latest), unpack(pinned), unpack(unpinned),
                       unpack(stats), start, regressions=regressions)  # fmt: skip
        kinds = bytes(map(attrgetter("kind"), records))
        rows: Sequence[rec.Record] = records
        raw: list[tuple[rec.Record, str]] = []
        system: list[rec.Record] = []
        if kinds.count(rec.KIND_ROW) != len(kinds):  # all rows is the common case: no loop
            rows = []
            for r in records:
                k = r.kind
                if k == rec.KIND_ROW:
                    rows.append(r)
                elif k in META_KINDS:
                    if not fold.apply(r):
                        raw.append((r, "malformed body"))
                elif k == KIND_SYSTEM:
                    system.append(r)
                elif k == KIND_CONSOLE:
                    if not self._console(c, rid, r):
                        raw.append((r, "malformed body"))
                elif k == KIND_FILE:
                    if not self._file(c, rid, r):
                        raw.append((r, "malformed body"))
                else:
                    raw.append((r, f"unknown kind {k}"))
        chunk_rows: list[tuple[Any, ...]] = []
        if rows:
            cols, malformed, dropped = ck.rows_to_columns(rows, last_step)
            raw += [(r, "malformed row body") for r in malformed]
            if dropped:
                fold.regressions += dropped
                fold.dirty.add("summary")
            if cols is not None:
                steps, times = cols.steps, cols.times
                sids = self._series(c, rid, HISTORY, cols.order)
                cols.numeric["_timestamp"] = ck.Column(steps, times, times, ck.VT_F64)
                shared: dict[tuple[int, int, int, int], ck.XPart] = {}
                for key, col in cols.numeric.items():
                    for blob, st in ck.encode_points(col.steps, col.times, col.values, col.vtype, shared):
                        chunk_rows.append(_chunk_row(sids[key], blob, st))
                c.executemany(
                    "INSERT INTO history_values(run, step, series, time, value) VALUES (?,?,?,?,?)",
                    [(rid, s, sids[k], t, pack(v)) for k, s, t, v in cols.other],
                )
                last = cols.last
                last["_step"], last["_timestamp"], last["_runtime"] = (
                    steps[-1],
                    times[-1],
                    fold.runtime(times[-1]),
                )
                fold.add_latest(last)
                last_step, row_count = steps[-1], row_count + len(steps)
        if system:
            raw += self._system(c, rid, system, chunk_rows)
        c.executemany(INSERT_CHUNK, chunk_rows)
        if raw:
            c.executemany(
                "INSERT OR IGNORE INTO raw_records VALUES (?,?,?,?,?,?,?,?,?)",
                [(rid, writer_id, r.seq, r.kind, r.flags, r.step, r.time, r.body, why) for r, why in raw],
            )
        self._save_fold(c, rid, fold, state, ended_by, last_step, row_count)

    def _save_fold(
        self,
        c: sqlite3.Connection,
        rid: int,
        fold: RunFold,
        state: str,
        ended_by: str | None,
        last_step: int,
        rows: int,
    ) -> None:
        sets: dict[str, Any] = {"last_step": last_step, "row_count": rows, "heartbeat_at": None}
        if ended_by == "stale":  # data is proof of life
            sets.update(state="running", ended_by=None, finished_at=None)
        if "meta" in fold.dirty:
            m = fold.meta
            tags = m.get("tags")
            sets.update(
                meta=pack(m), start_time=fold.start_time, name=_str(m.get("name")), host=_str(m.get("host")),
                program=_str(m.get("program")), grp=_str(m.get("group")), job_type=_str(m.get("job_type")),
                notes=_str(m.get("notes")),
                tags=pack([str(t) for t in tags] if isinstance(tags, list) else []),
            )  # fmt: skip
        if "config" in fold.dirty:
            sets["config"] = pack(fold.config)
        if "summary" in fold.dirty:
            sets.update(
                latest=pack(fold.latest), pinned=pack(fold.pinned), unpinned=pack(fold.unpinned),
                stats=pack(fold.stats), regressions=fold.regressions, summary=pack(fold.summary()),
            )  # fmt: skip
        if "exit" in fold.dirty:
            st, code = fold.exit_state()
            sets.update(state=st, exit_code=code, ended_by="exit", finished_at=fold.exit_time)
        assign = ", ".join(
            "heartbeat_at = max(heartbeat_at, ?)" if k == "heartbeat_at" else f"{k} = ?" for k in sets
        )
        sets["heartbeat_at"] = self._clock()
        c.execute(f"UPDATE runs SET {assign} WHERE id = ?", (*sets.values(), rid))

    def _system(
        self, c: sqlite3.Connection, rid: int, records: list[rec.Record], out: list[tuple[Any, ...]]
    ) -> list[tuple[rec.Record, str]]:
        """A batch's system samples as one chunk per key (x = time); a sample holding something
        other than numbers is also kept raw, so nothing of it is lost."""
        raw: list[tuple[rec.Record, str]] = []
        samples: list[tuple[float, int, dict[str, Any]]] = []
        for r in records:
            try:
                body = r.value()
            except Exception:
                body = None
            if not isinstance(body, dict):
                raw.append((r, "malformed body"))
                continue
            flat = {str(k): v for k, v in flatten(body).items()}
            good = {k: v for k, v in flat.items() if ck.value_type([v]) is not None}
            if len(good) != len(flat):
                raw.append((r, "system sample holds values that are not numbers"))
            samples.append((r.time, r.step, good))
        if samples:
            samples.sort(key=itemgetter(0))  # chunks of a system series are in time order
            cols = ck.build_columns(
                [s for _, s, _ in samples], [t for t, _, _ in samples], [d for *_, d in samples]
            )
            sids = self._series(c, rid, SYSTEM, list(cols.numeric))
            for key, col in cols.numeric.items():
                for blob, st in ck.encode_points(col.steps, col.times, col.values, col.vtype):
                    out.append(_chunk_row(sids[key], blob, st))
        return raw

    def _console(self, c: sqlite3.Connection, rid: int, r: rec.Record) -> bool:
        try:
            body = r.value()
        except Exception:
            return False
        lines = body.get("lines") if isinstance(body, dict) else None
        if isinstance(lines, str):
            lines = lines.splitlines()
        if not isinstance(lines, list):
            return False
        stream = str(body.get("stream") or "stdout")
        c.executemany(
            "INSERT INTO console_lines(run, seq, time, stream, line) VALUES (?,?,?,?,?)",
            [(rid, r.seq, r.time, stream, str(line)) for line in lines],
        )
        return True

    def _file(self, c: sqlite3.Connection, rid: int, r: rec.Record) -> bool:
        try:
            body = r.value()
        except Exception:
            return False
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            return False
        size = body.get("size")
        c.execute(
            "INSERT OR REPLACE INTO files(run, path, sha256, size, policy, time) VALUES (?,?,?,?,?,?)",
            (rid, body["path"], _str(body.get("sha256")), size if isinstance(size, int) else None,
             _str(body.get("policy")), r.time),
        )  # fmt: skip
        return True

    def heartbeat(self, entity: str, project: str, run_id: str, at: float) -> None:
        path = run_path(entity, project, run_id)
        with self._write(f"heartbeat of run {path}") as c:
            rid = self._need_run(c, entity, project, run_id)
            c.execute(
                "UPDATE runs SET heartbeat_at = max(heartbeat_at, ?),"
                " state = CASE WHEN ended_by = 'stale' THEN 'running' ELSE state END,"
                " finished_at = CASE WHEN ended_by = 'stale' THEN NULL ELSE finished_at END,"
                " ended_by = CASE WHEN ended_by = 'stale' THEN NULL ELSE ended_by END WHERE id = ?",
                (at, rid),
            )

    def mark_stale_runs_crashed(self, older_than: float) -> list[str]:
        with self._write("marking stale runs crashed") as c:
            stale = c.execute(
                "SELECT r.id, e.name || '/' || p.name || '/' || r.run_id FROM runs r"
                " JOIN projects p ON p.id = r.project JOIN entities e ON e.id = p.entity"
                " WHERE r.state = 'running' AND r.heartbeat_at < ? ORDER BY r.id",
                (older_than,),
            ).fetchall()
            c.executemany(
                "UPDATE runs SET state = 'crashed', ended_by = 'stale', finished_at = heartbeat_at"
                " WHERE id = ?",
                [(rid,) for rid, _ in stale],
            )
        return [p for _, p in stale]

    def compact(self, entity: str, project: str, run_id: str) -> int:
        """Merge runs of adjacent chunks smaller than COMPACT_MIN into chunks of at most
        CHUNK_MAX points, one transaction per series.  While the run is running, only merges that
        reach COMPACT_MIN are done, so a point is rewritten a few times at most, not once per
        idle moment; once it has ended, every mergeable neighbour is merged."""
        path = run_path(entity, project, run_id)
        with self._write(f"listing chunks of run {path}") as c:
            rid = self._need_run(c, entity, project, run_id)
            final = c.execute("SELECT state FROM runs WHERE id = ?", (rid,)).fetchone()[0] != "running"
            todo = c.execute(
                "SELECT s.id, s.kind, s.name FROM series s WHERE s.run = ? AND"
                " (SELECT count(*) FROM chunks WHERE series = s.id AND count < ?) > 1",
                (rid, ck.COMPACT_MIN),
            ).fetchall()
        removed = 0
        damaged: list[str] = []  # chunks compaction left alone
        for sid, kind, name in todo:
            removed += self._compact_series(path, sid, kind, name, final, damaged)
        if damaged:
            raise StorageError(f"compacting run {path}: left damaged chunks alone: {'; '.join(damaged)}")
        return removed

    def _compact_series(
        self, path: str, sid: int, kind: int, name: str, final: bool, damaged: list[str]
    ) -> int:
        removed = 0
        with self._write(f"compacting run {path} key {name!r}") as c:
            order = "first_step" if kind == HISTORY else "first_time"
            metas = c.execute(
                f"SELECT id, count FROM chunks WHERE series = ? ORDER BY {order}, id", (sid,)
            ).fetchall()
            for group in ck.plan_merges(metas, final):
                ids = [i for i, _ in group]
                marks = ",".join("?" * len(ids))
                blobs = dict(c.execute(f"SELECT id, data FROM chunks WHERE id IN ({marks})", ids).fetchall())
                pts: list[tuple[int, float, Any]] = []
                try:
                    for i in ids:
                        pts += zip(
                            *ck.decode_chunk(blobs[i], f"run {path} key {name!r} chunk {i}"), strict=True
                        )
                except ck.ChunkCorrupt as e:  # keep damaged chunks as they are; merge the rest
                    damaged.append(str(e))
                    continue
                if kind == SYSTEM:
                    pts.sort(key=itemgetter(1))
                steps, times, values = (list(x) for x in zip(*pts, strict=True))
                if kind == HISTORY and not all(map(lt, steps, steps[1:])):
                    damaged.append(f"run {path} key {name!r}: chunks {ids} overlap in steps")
                    continue
                blob, st = ck.encode_chunk(steps, times, values)
                c.execute(INSERT_CHUNK, _chunk_row(sid, blob, st))
                c.execute(f"DELETE FROM chunks WHERE id IN ({marks})", ids)
                removed += len(ids) - 1
        return removed

    # --- reading -----------------------------------------------------------------------------
    def _info(self, row: Sequence[Any]) -> RunInfo:
        (entity, project, run_id, name, state, code, created, beat, finished, host, program, tags, group,
         job_type, notes, config, summary, last_step, rows) = row  # fmt: skip
        return RunInfo(entity, project, run_id, name, state, code, created, beat, finished, host, program,
                       unpack(tags) if tags else [], group, job_type, notes, unpack(config), unpack(summary),
                       last_step, rows)  # fmt: skip

    def get_run(self, entity: str, project: str, run_id: str) -> RunInfo | None:
        with self._read("reading a run") as c:
            row = c.execute(
                RUN_INFO + " WHERE e.name = ? AND p.name = ? AND r.run_id = ?", (entity, project, run_id)
            ).fetchone()
        return None if row is None else self._info(row)

    def list_runs(self, entity: str, project: str, limit: int = 100, offset: int = 0) -> list[RunInfo]:
        with self._read("listing runs") as c:
            rows = c.execute(
                RUN_INFO
                + " WHERE e.name = ? AND p.name = ? ORDER BY r.created_at DESC, r.id DESC LIMIT ? OFFSET ?",
                (entity, project, _clamp(limit), _clamp(offset)),
            ).fetchall()
        return [self._info(r) for r in rows]

    def list_projects(self, entity: str) -> list[str]:
        with self._read("listing projects") as c:
            rows = c.execute(
                "SELECT p.name FROM projects p JOIN entities e ON e.id = p.entity"
                " WHERE e.name = ? ORDER BY p.name",
                (entity,),
            ).fetchall()
        return [r[0] for r in rows]

    def history_keys(self, entity: str, project: str, run_id: str) -> list[str]:
        with self._read("listing history keys") as c:
            rid = self._need_run(c, entity, project, run_id)
            names = [
                r[0]
                for r in c.execute("SELECT name FROM series WHERE run = ? AND kind = 0 ORDER BY id", (rid,))
            ]
        out: list[str] = []
        for n in names:
            out += ("_step", "_timestamp", "_runtime") if n == "_timestamp" else (n,)
        return out

    def scan_history(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str] | None = None,
        min_step: int | None = None,
        max_step: int | None = None,
        page_size: int = 1000,
    ) -> Iterator[list[dict[str, Any]]]:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        with self._read("scanning history") as c:
            self._need_run(c, entity, project, run_id)
        lo = STEP_MIN if min_step is None else max(min_step, STEP_MIN)
        hi = STEP_MAX if max_step is None else min(max_step, STEP_MAX)
        return self._scan(entity, project, run_id, keys, lo, hi, page_size)

    def _scan(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str] | None,
        lo: int,
        hi: int,
        page_size: int,
    ) -> Iterator[list[dict[str, Any]]]:
        """Decode chunks in order of their first step into a buffer of rows; a row is complete
        (and is emitted) once every chunk that starts at or before its step has been decoded."""
        path = run_path(entity, project, run_id)
        c = self._connect(write=False)
        try:
            c.execute("BEGIN")  # one snapshot for the whole scan
            rid = self._need_run(c, entity, project, run_id)
            start = c.execute("SELECT start_time FROM runs WHERE id = ?", (rid,)).fetchone()[0]
            names = dict(
                c.execute("SELECT id, name FROM series WHERE run = ? AND kind = 0", (rid,)).fetchall()
            )
            if keys is not None:
                want = {"_timestamp" if k in ck.RESERVED else k for k in keys}
                names = {sid: n for sid, n in names.items() if n in want}
            metas: list[tuple[int, int, int]] = []
            for sid in names:
                metas += c.execute(
                    "SELECT first_step, id, series FROM chunks"
                    " WHERE series = ? AND last_step >= ? AND first_step <= ?",
                    (sid, lo, hi),
                ).fetchall()
            metas.sort()
            buf: dict[int, dict[str, Any]] = {}
            page: list[dict[str, Any]] = []
            done = lo - 1  # rows up to this step have been emitted

            def new_row(s: int, t: float) -> dict[str, Any]:
                row = buf[s] = {
                    "_step": s,
                    "_timestamp": t,
                    "_runtime": t - (start if start is not None else t),
                }
                return row

            def complete(bound: int) -> Iterator[dict[str, Any]]:
                for s, t, sid, value in c.execute(
                    "SELECT step, time, series, value FROM history_values"
                    " WHERE run = ? AND step >= ? AND step <= ?",
                    (rid, done + 1, bound),
                ):
                    if sid in names:
                        (buf.get(s) or new_row(s, t))[names[sid]] = unpack(value)
                for s in sorted(s for s in buf if s <= bound):
                    yield buf.pop(s)

            for i, (_, cid, sid) in enumerate(metas):
                name = names[sid]
                blob = c.execute("SELECT data FROM chunks WHERE id = ?", (cid,)).fetchone()[0]
                steps, times, values = ck.decode_chunk(blob, f"run {path} key {name!r} chunk {cid}")
                a, b = bisect_left(steps, lo), bisect_right(steps, hi)
                get = buf.get
                if name == "_timestamp":
                    for s, t in zip(steps[a:b], times[a:b], strict=True):
                        if s not in buf:
                            new_row(s, t)
                else:
                    for s, t, v in zip(steps[a:b], times[a:b], values[a:b], strict=True):
                        (get(s) or new_row(s, t))[name] = v
                bound = metas[i + 1][0] - 1 if i + 1 < len(metas) else hi
                if bound > done:
                    for row in complete(bound):
                        page.append(row)
                        if len(page) == page_size:
                            yield page
                            page = []
                    done = bound
            if done < hi:
                for row in complete(hi):
                    page.append(row)
                    if len(page) == page_size:
                        yield page
                        page = []
            if page:
                yield page
        except sqlite3.Error as e:
            raise StorageError(f"scanning history of run {path}: {e}") from e
        finally:
            c.close()

    def series(
        self,
        entity: str,
        project: str,
        run_id: str,
        key: str,
        buckets: int,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> list[Bucket]:
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, not {buckets}")
        path = run_path(entity, project, run_id)
        derived = key in ("_step", "_runtime")  # computed from the _timestamp series' points
        with self._read(f"reading series {key!r} of run {path}") as c:
            rid = self._need_run(c, entity, project, run_id)
            row = c.execute(
                "SELECT s.id, r.start_time FROM series s JOIN runs r ON r.id = s.run"
                " WHERE s.run = ? AND s.kind = 0 AND s.name = ?",
                (rid, "_timestamp" if derived else key),
            ).fetchone()
            if row is None:
                return []
            sid, start = row
            lo = STEP_MIN if min_step is None else max(min_step, STEP_MIN)
            hi = STEP_MAX if max_step is None else min(max_step, STEP_MAX)
            metas = c.execute(
                "SELECT id, first_step, last_step, count, nans, min, max, sum FROM chunks"
                " WHERE series = ? AND last_step >= ? AND first_step <= ? ORDER BY first_step",
                (sid, lo, hi),
            ).fetchall()
            if not metas:
                return []
            lo = metas[0][1] if min_step is None else lo
            hi = max(m[2] for m in metas) if max_step is None else hi
            acc = BucketSums(lo, hi, buckets)
            for cid, first, last, count, nans, mn, mx, total in metas:
                if not derived and lo <= first and last <= hi and acc.index(first) == acc.index(last):
                    acc.add_stats(first, last, count, nans, mn, mx, total)
                    continue
                blob = c.execute("SELECT data FROM chunks WHERE id = ?", (cid,)).fetchone()[0]
                steps, times, values = ck.decode_chunk(blob, f"run {path} key {key!r} chunk {cid}")
                if key == "_step":
                    values = steps
                elif key == "_runtime":
                    values = [t - (start if start is not None else t) for t in times]
                a, b = bisect_left(steps, lo), bisect_right(steps, hi)
                acc.add_points(steps[a:b], values[a:b])
        return acc.buckets()

    def console(
        self, entity: str, project: str, run_id: str, after_id: int = 0, limit: int = 1000
    ) -> list[ConsoleLine]:
        with self._read("reading console output") as c:
            rid = self._need_run(c, entity, project, run_id)
            rows = c.execute(
                "SELECT id, seq, time, stream, line FROM console_lines"
                " WHERE run = ? AND id > ? ORDER BY id LIMIT ?",
                (rid, _clamp(after_id), _clamp(limit)),
            ).fetchall()
        return [ConsoleLine(*r) for r in rows]

    def system_metrics(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str] | None = None,
        min_time: float | None = None,
        max_time: float | None = None,
    ) -> list[dict[str, Any]]:
        path = run_path(entity, project, run_id)
        lo = float("-inf") if min_time is None else min_time
        hi = float("inf") if max_time is None else max_time
        samples: dict[float, dict[str, Any]] = {}
        with self._read(f"reading system metrics of run {path}") as c:
            rid = self._need_run(c, entity, project, run_id)
            for sid, name in c.execute(
                "SELECT id, name FROM series WHERE run = ? AND kind = 1", (rid,)
            ).fetchall():
                if keys is not None and name not in keys:
                    continue
                for cid, blob in c.execute(
                    "SELECT id, data FROM chunks WHERE series = ? AND last_time >= ? AND first_time <= ?",
                    (sid, lo, hi),
                ).fetchall():
                    _, times, values = ck.decode_chunk(blob, f"run {path} key {name!r} chunk {cid}")
                    for t, v in zip(times, values, strict=True):
                        if lo <= t <= hi:
                            samples.setdefault(t, {"_timestamp": t})[name] = v
        return [samples[t] for t in sorted(samples)]

    def files(self, entity: str, project: str, run_id: str) -> list[FileInfo]:
        with self._read("listing files") as c:
            rid = self._need_run(c, entity, project, run_id)
            rows = c.execute(
                "SELECT path, sha256, size, policy, time FROM files WHERE run = ? ORDER BY path", (rid,)
            ).fetchall()
        return [FileInfo(*r) for r in rows]
