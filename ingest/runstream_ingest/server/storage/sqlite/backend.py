"""The SQLite backend of ``Storage`` (schema and invariants: docs/storage.md).

This module holds the connections, transactions and run lifecycle (open, heartbeat, crash
marking, compaction); the schema is in ``schema.py``, storing batches in
``ingest.py`` and the reading methods in ``read.py``.

Durability: WAL mode with ``synchronous=FULL`` on the write connection, so a COMMIT has reached
the disk (the WAL is fsynced) before ``store_batches`` returns and the server acks.  NORMAL
would only fsync at checkpoints: a power cut (not a server crash) could lose acked batches,
which clients have by then let go of.  Group commit makes one fsync serve many batches.

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from operator import itemgetter, lt
from typing import Any

from runstream.format import record as rec
from runstream_ingest.server.storage.history import chunks as ck
from runstream_ingest.server.storage.interface import (
    RESUME_MODES,
    BatchWrite,
    Bucket,
    ConsoleLine,
    FileInfo,
    Member,
    OpenedRun,
    RunInfo,
    RunNotFound,
    StorageError,
    StoreResult,
    run_path,
)
from runstream_ingest.server.storage.sqlite import ingest, jobs
from runstream_ingest.server.storage.sqlite import read as rd
from runstream_ingest.server.storage.sqlite.schema import (
    DIST_INDEXES,
    FIND_RUN,
    HISTORY,
    INSERT_CHUNK,
    SCHEMA,
    SCHEMA_VERSION,
    SYSTEM,
    chunk_row,
    migrate,
    read_transaction,
)


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
        # Ids of rows, valid while no transaction that created them rolls back (``_rollback``
        # forgets them all) and their run is not deleted (``forget_run``).
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
                    for index in DIST_INDEXES:
                        c.execute(index)
                elif row[0] not in ("1", str(SCHEMA_VERSION)):
                    raise StorageError(
                        f"{self.path} has storage schema version {row[0]}; "
                        f"this server reads version {SCHEMA_VERSION}"
                    )
                else:
                    migrate(c, row[0])  # version 1 gains the distributed-run columns
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
        with read_transaction(self._reader(), what) as c:
            yield c

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

    def forget_run(self, entity: str, project: str, run_id: str) -> None:
        """Forget the row ids cached for a run and its series: a deleted run's ids may be reused.
        Called by the writer (``SqliteQueries.delete_run``, inside its transaction)."""
        with self._wlock:
            rid = self._run_ids.pop((entity, project, run_id), None)
            # A run whose id was not cached may still have its series cached: forget them all.
            self._series_ids = {k: v for k, v in self._series_ids.items() if rid is not None and k[0] != rid}

    # --- writing -----------------------------------------------------------------------------
    def open_run(
        self,
        entity: str,
        project: str,
        run_id: str,
        writer_id: str,
        resume: str,
        member: Member | None = None,
    ) -> OpenedRun:
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, not {resume!r}")
        if not all((entity, project, run_id, writer_id)):
            raise ValueError("entity, project, run_id and writer_id must not be empty")
        jobs.check_run_id(run_id)
        if member is not None:
            member.check()
        path = run_path(entity, project, run_id)
        with self._write(f"opening run {path}") as c:
            now = self._clock()
            if member is not None:
                rid, row_id, resumed = jobs.register(
                    self, c, entity, project, run_id, writer_id, resume, member, now
                )
            else:
                row_id = run_id
                found = self._find_run(c, entity, project, run_id)
                resumed = found is not None
                if found is None:
                    if resume == "must":
                        raise RunNotFound(path)
                    entity_id = self._name_id(c, "entities", "name", (entity,))
                    pid = self._name_id(c, "projects", "entity,name", (entity_id, project))
                    rid = jobs.insert_run(c, pid, run_id, now)
                else:
                    rid = found
                    jobs.resume_row(c, path, rid, writer_id, resume, now)
            c.execute(
                "INSERT OR IGNORE INTO writers(run, writer_id, acked_seq, opened_at) VALUES (?,?,0,?)",
                (rid, writer_id, now),
            )
            acked = c.execute(
                "SELECT acked_seq FROM writers WHERE run = ? AND writer_id = ?", (rid, writer_id)
            ).fetchone()[0]
            last_step = c.execute("SELECT last_step FROM runs WHERE id = ?", (rid,)).fetchone()[0]
            if (top := jobs.top_of(c, rid)) is not None:
                jobs.recompute(c, top)  # a rank opening (again) may make the job run again
        return OpenedRun(int(acked), resumed, int(last_step), path, row_id)

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
        batch = BatchWrite(entity, project, run_id, writer_id, first_seq, last_seq, records)
        result = self.store_batches([batch])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def store_batches(self, batches: Sequence[BatchWrite]) -> list[StoreResult | Exception]:
        return ingest.store_batches(self, batches)

    def _rollback_to(self, savepoint: str) -> None:
        self._w.execute(f"ROLLBACK TO {savepoint}")
        # Ids cached since the savepoint may name rows that are gone now.
        self._run_ids.clear()
        self._series_ids.clear()

    def heartbeat(self, entity: str, project: str, run_id: str, at: float) -> None:
        path = run_path(entity, project, run_id)
        with self._write(f"heartbeat of run {path}") as c:
            rid = self._need_run(c, entity, project, run_id)
            ended_by, *kind = c.execute(
                "SELECT ended_by, parent, rank, world_size FROM runs WHERE id = ?", (rid,)
            ).fetchone()
            c.execute("UPDATE runs SET heartbeat_at = max(heartbeat_at, ?) WHERE id = ?", (at, rid))
            col = jobs.state_column(*kind)
            if ended_by == "stale" and col is not None:  # a sign of life revives what the janitor ended
                c.execute(
                    f"UPDATE runs SET {col} = 'running', finished_at = NULL, ended_by = NULL WHERE id = ?",
                    (rid,),
                )
                if (top := jobs.top_of(c, rid)) is not None:
                    jobs.recompute(c, top)

    def mark_stale_runs_crashed(self, older_than: float) -> list[str]:
        """Also a distributed run's ranks one by one (rank 0 by the top row's own state); node
        rows never go stale themselves (their state follows their ranks'); the job's state is
        recomputed for each run that had a rank marked."""
        with self._write("marking stale runs crashed") as c:
            stale = c.execute(
                "SELECT r.id, e.name || '/' || p.name || '/' || r.run_id, r.parent, r.rank, r.world_size"
                " FROM runs r JOIN projects p ON p.id = r.project JOIN entities e ON e.id = p.entity"
                " WHERE r.state = 'running' AND r.heartbeat_at < ?"
                " AND coalesce(r.own_state, 'running') = 'running'"
                " AND (r.parent IS NULL OR r.rank IS NOT NULL) ORDER BY r.id",
                (older_than,),
            ).fetchall()
            tops: set[int] = set()
            for rid, _, parent, rank, world_size in stale:
                col = jobs.state_column(parent, rank, world_size)
                c.execute(
                    f"UPDATE runs SET {col} = 'crashed', ended_by = 'stale', finished_at = heartbeat_at"
                    " WHERE id = ?",
                    (rid,),
                )
                if parent is not None or world_size is not None:
                    tops.add(parent if parent is not None else rid)
            for top in sorted(tops):
                jobs.recompute(c, top)
        return [p for _, p, *_ in stale]

    def compact(self, entity: str, project: str, run_id: str) -> int:
        """Merge runs of adjacent chunks smaller than COMPACT_MIN into chunks of at most
        CHUNK_MAX points, one transaction per series.  While the run is running, only merges that
        reach COMPACT_MIN are done, so a point is rewritten a few times at most, not once per
        idle moment; once it has ended, every mergeable neighbour is merged."""
        path = run_path(entity, project, run_id)
        with self._write(f"listing chunks of run {path}") as c:
            rid = self._need_run(c, entity, project, run_id)
            # A row's own state: a distributed run's rank 0 may be done while the job runs.
            own = c.execute("SELECT coalesce(own_state, state) FROM runs WHERE id = ?", (rid,)).fetchone()[0]
            final = own != "running"
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
                c.execute(INSERT_CHUNK, chunk_row(sid, blob, st))
                c.execute(f"DELETE FROM chunks WHERE id IN ({marks})", ids)
                removed += len(ids) - 1
        return removed

    # --- reading (read.py) ----------------------------------------------------------------
    def get_run(self, entity: str, project: str, run_id: str) -> RunInfo | None:
        return rd.get_run(self, entity, project, run_id)

    def list_runs(self, entity: str, project: str, limit: int = 100, offset: int = 0) -> list[RunInfo]:
        return rd.list_runs(self, entity, project, limit, offset)

    def list_projects(self, entity: str) -> list[str]:
        return rd.list_projects(self, entity)

    def history_keys(self, entity: str, project: str, run_id: str) -> list[str]:
        return rd.history_keys(self, entity, project, run_id)

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
        return rd.scan_history(self, entity, project, run_id, keys, min_step, max_step, page_size)

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
        return rd.series(self, entity, project, run_id, key, buckets, min_step, max_step)

    def console(
        self, entity: str, project: str, run_id: str, after_id: int = 0, limit: int = 1000
    ) -> list[ConsoleLine]:
        return rd.console(self, entity, project, run_id, after_id, limit)

    def system_metrics(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str] | None = None,
        min_time: float | None = None,
        max_time: float | None = None,
    ) -> list[dict[str, Any]]:
        return rd.system_metrics(self, entity, project, run_id, keys, min_time, max_time)

    def files(self, entity: str, project: str, run_id: str) -> list[FileInfo]:
        return rd.files(self, entity, project, run_id)
