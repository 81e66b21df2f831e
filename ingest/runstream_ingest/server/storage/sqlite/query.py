"""``RunQueries`` on SQLite: the runs table (filters, sort, paging, groups), series for charts, and
the run editor (docs/http-api.md).  Filters become SQL in ``sql.py``; series are cut into
buckets by ``series.py``.

Concurrency contract: reads use connections of their own, one per thread (thread-local,
read-only, WAL: they neither block the writer nor wait for it); one call is one read transaction,
one snapshot.  ``update_run`` and ``delete_run`` write through the storage's own write transaction
(its lock and connection), on the storage's writer thread.  ``close`` after readers have stopped.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from runstream.format import record as rec
from runstream_ingest.server.storage.filters import Cond, Field, Node, QueryError, cap_depth
from runstream_ingest.server.storage.history import chunk_arrays as ca
from runstream_ingest.server.storage.history import series as sr
from runstream_ingest.server.storage.history.chunk_arrays import CellCache
from runstream_ingest.server.storage.interface import (
    ConsoleLine,
    MemberInfo,
    MetricStats,
    RunBusy,
    RunFold,
    RunGroup,
    RunInfo,
    RunNotFound,
    RunPage,
    RunQuery,
    StorageError,
    run_path,
)
from runstream_ingest.server.storage.sqlite import members as mb
from runstream_ingest.server.storage.sqlite.schema import clamp, read_transaction
from runstream_ingest.server.storage.sqlite.sql import Sql, register

if TYPE_CHECKING:
    from runstream_ingest.server.storage.sqlite.backend import SqliteStorage

MAX_GROUPS = 1000
HISTORY = 0  # series.kind of history keys
RUN_COLS = """r.run_id, r.name, r.state, r.exit_code, r.created_at, r.heartbeat_at, r.finished_at,
    r.host, r.program, r.tags, r.grp, r.job_type, r.notes, r.config, r.summary, r.last_step, r.row_count,
    r.world_size, r.node_count"""
PROJECT = "SELECT p.id FROM projects p JOIN entities e ON e.id = p.entity WHERE e.name = ? AND p.name = ?"


def _info(entity: str, project: str, row: Sequence[Any]) -> RunInfo:
    (run_id, name, state, code, created, beat, finished, host, program, tags, group, job_type, notes,
     config, summary, last_step, rows, world_size, node_count) = row  # fmt: skip
    return RunInfo(entity, project, run_id, name, state, code, created, beat, finished, host, program,
                   rec.unpack_body(tags) if tags else [], group, job_type, notes, rec.unpack_body(config),
                   rec.unpack_body(summary), last_step, rows, world_size=world_size,
                   node_count=node_count)  # fmt: skip


def _flat_keys(d: Any, prefix: str, out: set[str], sep: str) -> None:
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                _flat_keys(v, f"{prefix}{k}{sep}", out, sep)
            else:
                out.add(f"{prefix}{k}")


class SqliteQueries:
    """``RunQueries`` over a ``SqliteStorage``'s file (see the module docstring)."""

    def __init__(self, storage: SqliteStorage) -> None:
        self.storage = storage
        self.path = storage.path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        self.cells = CellCache()  # decoded chunks' cells, for the next request of the same series

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError("the storage is closed")
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA query_only=ON")
            c.execute("PRAGMA cache_size=-32768")  # 32 MiB: a 10,000-run table stays in memory
            register(c)
            self._local.conn = c
            with self._lock:
                self._conns.append(c)
        return c

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with read_transaction(self._conn(), what) as c:
            yield c

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for c in self._conns:
                with suppress(sqlite3.Error):
                    c.close()
            self._conns.clear()

    # --- the runs table ----------------------------------------------------------------------
    def query_runs(self, entity: str, project: str, query: RunQuery) -> RunPage:
        with self._read(f"listing runs of {entity}/{project}") as c:
            pid = c.execute(PROJECT, (entity, project)).fetchone()
            if pid is None:
                return RunPage(0, [])
            sql = Sql()
            sql.params.append(pid[0])
            where = sql.where(query.filters, query.search)
            order = sql.order(query.order or ())
            lo, n = max(0, query.offset), max(0, query.limit)
            ids = f"SELECT r.id FROM runs r WHERE {where} ORDER BY {order}"
            if query.filters is None and not query.search:
                # Counting the project's runs reads an index; the sorter keeps only the page.
                total = c.execute(f"SELECT count(*) FROM runs r WHERE {where}", sql.params[:1]).fetchone()[0]
                hits = [i for (i,) in c.execute(f"{ids} LIMIT ? OFFSET ?", [*sql.params, n, lo])]
            else:
                # Every match's id in order, in one pass: each filter is computed once per run
                # (a count query beside a LIMIT query would compute them twice).
                every = [i for (i,) in c.execute(ids, sql.params)]
                total, hits = len(every), every[lo : lo + n]
            marks = ",".join("?" * len(hits))
            page = c.execute(f"SELECT r.id, {RUN_COLS} FROM runs r WHERE r.id IN ({marks})", hits)
            by_id = {r[0]: r[1:] for r in page}
            rows = [by_id[h] for h in hits]
        return RunPage(total, [_info(entity, project, r) for r in rows])

    def group_runs(
        self,
        entity: str,
        project: str,
        by: Field,
        metrics: Sequence[Field],
        filters: Node | None = None,
        search: str | None = None,
    ) -> tuple[list[RunGroup], int]:
        with self._read(f"grouping runs of {entity}/{project}") as c:
            pid = c.execute(PROJECT, (entity, project)).fetchone()
            if pid is None:
                return [], 0
            sql = Sql()
            cols = [f"{sql.field(by)} AS g"]
            for i, m in enumerate(metrics):
                e = sql.field(m, "num")
                if m.source == "column":  # a column of numbers or not: numbers only
                    e = f"CASE WHEN typeof({e}) IN ('integer', 'real') THEN {e} END"
                cols.append(f"{e} AS m{i}")
            sql.params.append(pid[0])
            where = sql.where(filters, search)
            stats = "".join(f", count(m{i}), avg(m{i}), min(m{i}), max(m{i})" for i in range(len(metrics)))
            # Every group in one pass (a second query to count them would compute every key again);
            # MATERIALIZED: the keys are computed once per run, not once per use of ``g``.
            rows = c.execute(
                f"WITH t AS MATERIALIZED (SELECT {', '.join(cols)} FROM runs r WHERE {where})"
                f" SELECT g, count(*){stats} FROM t GROUP BY g ORDER BY g",
                sql.params,
            ).fetchall()
        n, rows = len(rows), rows[:MAX_GROUPS]
        out = []
        for row in rows:
            ms = {str(m): MetricStats(*row[2 + 4 * i : 6 + 4 * i]) for i, m in enumerate(metrics)}
            out.append(RunGroup(row[0], row[1], ms))
        return out, n

    def all_projects(self, entity: str | None) -> list[dict[str, Any]]:
        """Every project (of ``entity`` when given) with its run count and last activity, the most
        recently active first: the dashboard's first page, which knows no entity yet."""
        sql = (
            # Runs are top rows; a distributed run's member rows count as its activity only.
            "SELECT e.name, p.name, count(CASE WHEN r.parent IS NULL THEN r.id END),"
            " max(max(r.heartbeat_at, coalesce(r.finished_at, 0)))"
            " FROM projects p JOIN entities e ON e.id = p.entity LEFT JOIN runs r ON r.project = p.id"
        )
        args: list[Any] = []
        if entity is not None:
            sql += " WHERE e.name = ?"
            args.append(entity)
        sql += " GROUP BY p.id ORDER BY 4 DESC, e.name, p.name"
        with self._read("listing projects") as c:
            rows = c.execute(sql, args).fetchall()
        return [{"entity": e, "name": n, "runs": k, "last_active": t} for e, n, k, t in rows]

    def run_keys(self, entity: str, project: str) -> dict[str, list[str]]:
        config: set[str] = set()
        summary: set[str] = set()
        with self._read(f"listing keys of {entity}/{project}") as c:
            pid = c.execute(PROJECT, (entity, project)).fetchone()
            rows = [] if pid is None else c.execute(
                "SELECT config, summary FROM runs WHERE project = ? AND parent IS NULL", (pid[0],)
            ).fetchall()  # fmt: skip
        for cfg, summ in rows:
            _flat_keys(cap_depth(rec.unpack_body(cfg)), "", config, ".")  # capped: _flat_keys recurses
            summary.update(rec.unpack_body(summ))
        return {"config": sorted(config), "summary": sorted(summary)}

    # --- series ------------------------------------------------------------------------------
    def series(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str],
        buckets: int,
        x_axis: str = "_step",
        lo: float | None = None,
        hi: float | None = None,
    ) -> dict[str, sr.Series]:
        _check_series(x_axis, buckets)
        path = run_path(entity, project, run_id)
        with self._read(f"reading series of run {path}") as c:
            row = c.execute(
                "SELECT r.id, r.start_time FROM runs r JOIN projects p ON p.id = r.project"
                " JOIN entities e ON e.id = p.entity WHERE e.name = ? AND p.name = ? AND r.run_id = ?",
                (entity, project, run_id),
            ).fetchone()
            if row is None:
                raise RunNotFound(path)
            return self._series_of(c, [(f"run {path}", row[0], row[1])], keys, buckets, x_axis, lo, hi)[2][0]

    def rank_series(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str],
        buckets: int,
        x_axis: str = "_step",
        lo: float | None = None,
        hi: float | None = None,
    ) -> tuple[float | None, float | None, list[tuple[int, dict[str, sr.Series]]]]:
        _check_series(x_axis, buckets)
        path = run_path(entity, project, run_id)
        with self._read(f"reading every rank's series of run {path}") as c:
            ranks = mb.rank_rows(c, entity, project, run_id)
            runs = [(f"run {path} rank {rank}", rid, start) for rank, rid, start in ranks]
            lo, hi, got = self._series_of(c, runs, keys, buckets, x_axis, lo, hi)
        return lo, hi, [(rank, out) for (rank, _, _), out in zip(ranks, got, strict=True)]

    def _series_of(
        self,
        c: sqlite3.Connection,
        runs: Sequence[tuple[str, int, float | None]],
        keys: Sequence[str],
        buckets: int,
        x_axis: str,
        lo: float | None,
        hi: float | None,
    ) -> tuple[float | None, float | None, list[dict[str, sr.Series]]]:
        """Each of ``runs`` (label, row id, start time) downsampled over ONE x range (default:
        what the keys cover in all of them), so that their buckets line up; and that range
        (None when no run has any point of the keys)."""
        names = {k: "_timestamp" if k in sr.X_AXES else k for k in keys}
        marks = ",".join("?" * len(set(names.values())))
        prepared = []
        for what, rid, start in runs:
            sids = dict(
                c.execute(
                    f"SELECT name, id FROM series WHERE run = ? AND kind = {HISTORY} AND name IN ({marks})",
                    (rid, *set(names.values())),
                ).fetchall()
            )
            if start is None and "_timestamp" in sids:  # no RUN record: runtime counts from the first row
                start = c.execute(
                    "SELECT min(first_time) FROM chunks WHERE series = ?", (sids["_timestamp"],)
                ).fetchone()[0]
            start = start or 0.0
            axis = sr.Axis(x_axis, start if x_axis == "_runtime" else 0.0)
            rows = {k: self._chunk_rows(c, sids[n], axis, lo, hi) for k, n in names.items() if n in sids}
            prepared.append((what, start, axis, rows))
        if lo is None or hi is None:
            spans = [
                b for _, _, axis, rows in prepared for b in (sr.bounds(r, axis) for r in rows.values()) if b
            ]
            if spans:
                lo = min(a for a, _ in spans) if lo is None else lo
                hi = max(b for _, b in spans) if hi is None else hi

        def fetch(ids: Sequence[int]) -> dict[int, bytes]:
            out: dict[int, bytes] = {}
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                out.update(c.execute(f"SELECT id, data FROM chunks WHERE id IN ({marks})", part).fetchall())
            return out

        def fetch_prefix(rows: Sequence[sr.ChunkRow]) -> dict[int, bytes]:
            # Incremental blob I/O reads the first pages of each blob only: the cells, not
            # the compressed points behind them (a fifth of the time of whole blobs).
            out: dict[int, bytes] = {}
            for r in rows:
                with c.blobopen("chunks", "data", r.id, readonly=True) as blob:
                    out[r.id] = blob.read(ca.prefix_len(r.points))
            return out

        result = []
        for what, start, axis, rows in prepared:
            out = {}
            for k in keys:
                if k not in rows or lo is None or hi is None:
                    out[k] = sr.Series(k, True)
                    continue
                y = sr.YMap(shift=start if k == "_runtime" else 0.0, from_steps=k == "_step")
                out[k] = sr.downsample(
                    k, rows[k], fetch, buckets, axis, lo, hi, y, f"{what} key {k!r}", self.cells, fetch_prefix
                )
            result.append(out)
        return lo, hi, result

    # --- distributed runs (members.py) -----------------------------------------------------------
    def members(self, entity: str, project: str, run_id: str) -> list[MemberInfo]:
        with self._read(f"listing the ranks of run {run_path(entity, project, run_id)}") as c:
            return mb.members(c, entity, project, run_id)

    def member_id(
        self, entity: str, project: str, run_id: str, rank: int | None = None, node: int | None = None
    ) -> str:
        with self._read(f"finding a rank of run {run_path(entity, project, run_id)}") as c:
            return mb.member_id(c, entity, project, run_id, rank, node)

    def system_id(self, entity: str, project: str, run_id: str) -> str:
        with self._read(f"finding the system metrics of run {run_path(entity, project, run_id)}") as c:
            return mb.system_id(c, entity, project, run_id)

    def rank_console(
        self, entity: str, project: str, run_id: str, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[int, ConsoleLine]]:
        with self._read(f"reading the console of run {run_path(entity, project, run_id)}") as c:
            return mb.console(c, entity, project, run_id, clamp(after_id), clamp(limit))

    def _chunk_rows(
        self, c: sqlite3.Connection, sid: int, axis: sr.Axis, lo: float | None, hi: float | None
    ) -> list[sr.ChunkRow]:
        cols = "id, first_step, last_step, first_time, last_time, count, nans, min, max, sum"
        if axis.steps:
            a = -(2**63) if lo is None else max(math.ceil(lo), -(2**63))
            b = 2**63 - 1 if hi is None else min(math.floor(hi), 2**63 - 1)
            q = f"SELECT {cols} FROM chunks WHERE series = ? AND first_step <= ? AND last_step >= ?"
            params: tuple[Any, ...] = (sid, b, a)
        else:
            a_t = -math.inf if lo is None else lo + axis.offset
            b_t = math.inf if hi is None else hi + axis.offset
            q = (
                f"SELECT {cols} FROM chunks WHERE series = ?"
                " AND min(first_time, last_time) <= ? AND max(first_time, last_time) >= ?"
            )
            params = (sid, b_t, a_t)
        return list(map(sr.ChunkRow._make, c.execute(q, params)))

    # --- the run editor (writer thread) ------------------------------------------------------
    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        with self.storage._write(what) as c:
            yield c

    def _run_row(
        self, c: sqlite3.Connection, entity: str, project: str, run_id: str
    ) -> tuple[int, str, bytes]:
        row = c.execute(
            "SELECT r.id, r.state, r.meta FROM runs r JOIN projects p ON p.id = r.project"
            " JOIN entities e ON e.id = p.entity WHERE e.name = ? AND p.name = ? AND r.run_id = ?"
            " AND r.parent IS NULL",  # a distributed run is edited and deleted as a whole
            (entity, project, run_id),
        ).fetchone()
        if row is None:
            raise RunNotFound(run_path(entity, project, run_id))
        return row[0], row[1], row[2]

    def update_run(self, entity: str, project: str, run_id: str, changes: dict[str, Any]) -> RunInfo:
        path = run_path(entity, project, run_id)
        with self._write(f"editing run {path}") as c:
            rid, _, meta_blob = self._run_row(c, entity, project, run_id)
            # The run's metadata fold reads ``meta``: an edit there survives the next batch, and
            # wins over the program's later RUN records (``RunFold.edit``).
            sets: dict[str, Any] = {}
            for k in RunFold.EDITABLE:
                if k in changes:
                    sets[k] = rec.pack_body(changes[k]) if k == "tags" else changes[k]
            sets["meta"] = rec.pack_body(RunFold.edit(rec.unpack_body(meta_blob), changes))
            c.execute(
                f"UPDATE runs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?", (*sets.values(), rid)
            )
        page = self.query_runs(entity, project, RunQuery(_id_filter(run_id), limit=1))
        if not page.runs:
            raise RunNotFound(path)
        return page.runs[0]

    def delete_run(self, entity: str, project: str, run_id: str) -> None:
        path = run_path(entity, project, run_id)
        with self._write(f"deleting run {path}") as c:
            rid, state, _ = self._run_row(c, entity, project, run_id)
            if state == "running":
                raise RunBusy(f"run {path} is running; it can be deleted once it has ended")
            # A distributed run goes with its member rows (other ranks, node writers).
            for row_id, row_run_id in [(rid, run_id), *mb.member_row_ids(c, rid)]:
                c.execute(
                    "DELETE FROM chunks WHERE series IN (SELECT id FROM series WHERE run = ?)", (row_id,)
                )
                for table in ("series", "history_values", "console_lines", "files", "raw_records", "batches",
                              "writers", "alerts"):  # fmt: skip
                    c.execute(f"DELETE FROM {table} WHERE run = ?", (row_id,))
                c.execute("DELETE FROM runs WHERE id = ?", (row_id,))
                self.storage.forget_run(entity, project, row_run_id)


def _check_series(x_axis: str, buckets: int) -> None:
    if x_axis not in sr.X_AXES:
        raise QueryError(f"x_axis must be one of {', '.join(sr.X_AXES)}, not {x_axis!r}")
    if not 1 <= buckets <= sr.MAX_BUCKETS:
        raise QueryError(f"buckets must be in [1, {sr.MAX_BUCKETS}], not {buckets}")


def _id_filter(run_id: str) -> Node:
    return Cond(Field("column", "id"), "$eq", run_id)
