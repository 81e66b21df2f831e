"""The SQLite backend's reading methods: runs, history, series, console, system metrics, files.

Concurrency contract: any thread.  Each call reads in one transaction of the calling thread's
read-only connection (``SqliteStorage._read``); ``scan_history`` holds a connection of its own
for the life of its iterator, so the whole scan sees one snapshot.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from runstream_ingest.server.storage.history import chunks as ck
from runstream_ingest.server.storage.interface import (
    Bucket,
    BucketSums,
    ConsoleLine,
    FileInfo,
    RunFold,
    RunInfo,
    StorageError,
    run_path,
)
from runstream_ingest.server.storage.sqlite.schema import RUN_INFO, STEP_MAX, STEP_MIN, clamp, unpack

if TYPE_CHECKING:
    from runstream_ingest.server.storage.sqlite.backend import SqliteStorage


# A run's columns, and a distributed run's world size and node count (docs/distributed.md).
RUN_DIST = RUN_INFO.replace(" FROM ", ", r.world_size, r.node_count FROM ", 1)


def _info(row: Sequence[Any]) -> RunInfo:
    (entity, project, run_id, name, state, code, created, beat, finished, host, program, tags, group,
     job_type, notes, config, summary, last_step, rows, world_size, node_count) = row  # fmt: skip
    return RunInfo(entity, project, run_id, name, state, code, created, beat, finished, host, program,
                   unpack(tags) if tags else [], group, job_type, notes, unpack(config), unpack(summary),
                   last_step, rows, world_size=world_size, node_count=node_count)  # fmt: skip


def get_run(store: SqliteStorage, entity: str, project: str, run_id: str) -> RunInfo | None:
    with store._read("reading a run") as c:
        row = c.execute(
            RUN_DIST.replace(" FROM ", ", r.meta FROM ", 1)
            + " WHERE e.name = ? AND p.name = ? AND r.run_id = ?",
            (entity, project, run_id),
        ).fetchone()
    if row is None:
        return None
    info = _info(row[:-1])
    # The record of which fields a person edited is the storage's bookkeeping, not the run's.
    info.meta = {k: v for k, v in unpack(row[-1]).items() if k != RunFold.EDITED}
    return info


def list_runs(
    store: SqliteStorage, entity: str, project: str, limit: int = 100, offset: int = 0
) -> list[RunInfo]:
    with store._read("listing runs") as c:
        rows = c.execute(
            RUN_DIST + " WHERE e.name = ? AND p.name = ? AND r.parent IS NULL"  # member rows are hidden
            " ORDER BY r.created_at DESC, r.id DESC LIMIT ? OFFSET ?",
            (entity, project, clamp(limit), clamp(offset)),
        ).fetchall()
    return [_info(r) for r in rows]


def list_projects(store: SqliteStorage, entity: str) -> list[str]:
    with store._read("listing projects") as c:
        rows = c.execute(
            "SELECT p.name FROM projects p JOIN entities e ON e.id = p.entity"
            " WHERE e.name = ? ORDER BY p.name",
            (entity,),
        ).fetchall()
    return [r[0] for r in rows]


def history_keys(store: SqliteStorage, entity: str, project: str, run_id: str) -> list[str]:
    with store._read("listing history keys") as c:
        rid = store._need_run(c, entity, project, run_id)
        names = [
            r[0] for r in c.execute("SELECT name FROM series WHERE run = ? AND kind = 0 ORDER BY id", (rid,))
        ]
    out: list[str] = []
    for n in names:
        out += ("_step", "_timestamp", "_runtime") if n == "_timestamp" else (n,)
    return out


def scan_history(
    store: SqliteStorage,
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
    with store._read("scanning history") as c:
        store._need_run(c, entity, project, run_id)
    lo = STEP_MIN if min_step is None else max(min_step, STEP_MIN)
    hi = STEP_MAX if max_step is None else min(max_step, STEP_MAX)
    return _scan(store, entity, project, run_id, keys, lo, hi, page_size)


def _scan(
    store: SqliteStorage,
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
    c = store._connect(write=False)
    try:
        c.execute("BEGIN")  # one snapshot for the whole scan
        rid = store._need_run(c, entity, project, run_id)
        start = c.execute("SELECT start_time FROM runs WHERE id = ?", (rid,)).fetchone()[0]
        names = dict(c.execute("SELECT id, name FROM series WHERE run = ? AND kind = 0", (rid,)).fetchall())
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
    store: SqliteStorage,
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
    with store._read(f"reading series {key!r} of run {path}") as c:
        rid = store._need_run(c, entity, project, run_id)
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
    store: SqliteStorage, entity: str, project: str, run_id: str, after_id: int = 0, limit: int = 1000
) -> list[ConsoleLine]:
    with store._read("reading console output") as c:
        rid = store._need_run(c, entity, project, run_id)
        rows = c.execute(
            "SELECT id, seq, time, stream, line FROM console_lines"
            " WHERE run = ? AND id > ? ORDER BY id LIMIT ?",
            (rid, clamp(after_id), clamp(limit)),
        ).fetchall()
    return [ConsoleLine(*r) for r in rows]


def system_metrics(
    store: SqliteStorage,
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
    with store._read(f"reading system metrics of run {path}") as c:
        rid = store._need_run(c, entity, project, run_id)
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


def files(store: SqliteStorage, entity: str, project: str, run_id: str) -> list[FileInfo]:
    with store._read("listing files") as c:
        rid = store._need_run(c, entity, project, run_id)
        rows = c.execute(
            "SELECT path, sha256, size, policy, time FROM files WHERE run = ? ORDER BY path", (rid,)
        ).fetchall()
    return [FileInfo(*r) for r in rows]
