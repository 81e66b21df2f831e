"""The SQLite backend's ingest path: batches into runs, group commit (docs/storage.md).

``store_batches`` takes every batch of a group commit in ONE transaction.  Each batch is
admitted against its writer's progress in turn (duplicate, overlap or gap; the dedupe key and
the progress are written in the same transaction as its data), and the records of a run's
batches are then folded into the run together: one load and save of the run's fold, one chunk
per key for all of them.  A batch that fails is rolled back to its savepoint and the others go
on; a run whose batches fail together is stored again batch by batch, so that only the failing
one fails.

Concurrency contract: these functions run inside ``SqliteStorage``'s write transaction, on the
storage's one writer thread.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

from runstream.format import record as rec
from runstream.format.fold import flatten
from runstream_ingest.server.decode import RecordBatch, join_records
from runstream_ingest.server.storage.history import chunks as ck
from runstream_ingest.server.storage.history import columns as cl
from runstream_ingest.server.storage.interface import (
    KIND_CONSOLE,
    KIND_FILE,
    KIND_MEDIA,
    KIND_SYSTEM,
    BadBatch,
    BatchWrite,
    RunFold,
    SequenceGap,
    StorageError,
    StoreResult,
    UnstorableBatch,
    check_batch,
    run_path,
)
from runstream_ingest.server.storage.sqlite import jobs
from runstream_ingest.server.storage.sqlite.alerts import store_alert
from runstream_ingest.server.storage.sqlite.schema import (
    HISTORY,
    INSERT_CHUNK,
    LOAD_FOLD,
    META_KINDS,
    SYSTEM,
    chunk_row,
    opt_str,
    pack,
    unpack,
)

if TYPE_CHECKING:
    from runstream_ingest.server.storage.sqlite.backend import SqliteStorage

log = logging.getLogger("runstream.server.storage")
# The run's count of lost seqs (RunFold.lost) lives in its ``stats`` blob under this key, which no
# STATS record may set (the blob's other keys are the SDK's counters, latest value wins).
LOST_STATS = "_server_lost_records"
METRIC_STATS = "_metric_aggregates"  # define_metric's aggregates (RunFold.metrics), kept with the stats


def store_batches(store: SqliteStorage, batches: Sequence[BatchWrite]) -> list[StoreResult | Exception]:
    out: list[StoreResult | Exception | None] = [None] * len(batches)
    by_run: dict[tuple[str, str, str], list[int]] = {}
    for i, b in enumerate(batches):
        by_run.setdefault((b.entity, b.project, b.run_id), []).append(i)
    if len(batches) == 1:
        b = batches[0]
        what = f"storing batch {b.first_seq}..{b.last_seq} of run {run_path(*next(iter(by_run)))}"
        what += f" writer {b.writer_id}"
    else:
        what = f"storing {len(batches)} batches"
    with store._write(what) as c:
        for idx in by_run.values():
            # Runs are independent, so each run's batches are stored as one: one fold of
            # the run, one set of chunks.  Should any of them fail, they are stored again
            # one by one, so that only the failing batch fails, as if stored alone.
            if len(idx) > 1 and _store_run(store, c, [batches[i] for i in idx], out, idx):
                continue
            for i in idx:
                out[i] = _store_alone(store, c, batches[i])
    return out  # type: ignore[return-value]  # every place is filled


def _store_alone(store: SqliteStorage, c: sqlite3.Connection, b: BatchWrite) -> StoreResult | Exception:
    c.execute("SAVEPOINT batch")
    try:
        result, rid, todo = _admit(store, c, b)
        if todo or result.lost:
            _apply(store, c, rid, b.writer_id, todo, result.lost)
        return result
    except Exception as e:
        store._rollback_to("batch")
        if isinstance(e, StorageError):  # SequenceGap, BadBatch, RunNotFound: as they are
            return e
        what = f"batch {b.first_seq}..{b.last_seq} of run {run_path(b.entity, b.project, b.run_id)}"
        what += f" writer {b.writer_id}"
        if isinstance(e, (OSError, MemoryError)):
            return e  # the machine's trouble: storing the same batch again may well succeed
        if isinstance(e, sqlite3.OperationalError):
            # The database's trouble (a full disk, an I/O error, a lock): likewise retried.
            return StorageError(f"storing {what}: {e}")
        # Anything else fails again on these bytes (a constraint, a value SQLite cannot hold, a
        # bug): retrying would stop this writer for good, so the client is told to go past it.
        log.exception("cannot store %s", what)
        return UnstorableBatch(f"{what} cannot be stored: {type(e).__name__}: {e}", b.first_seq, b.last_seq)
    finally:
        c.execute("RELEASE batch")


def _store_run(
    store: SqliteStorage, c: sqlite3.Connection, batches: list[BatchWrite], out: list[Any], idx: list[int]
) -> bool:
    """Batches of one run, each admitted in turn, their records folded in together (per
    stretch of one writer); False, with nothing written, if anything failed."""
    c.execute("SAVEPOINT run")
    try:
        results = []
        stretches: list[tuple[int, str, list[Sequence[rec.Record]], list[int]]] = []
        for b in batches:
            result, rid, todo = _admit(store, c, b)
            results.append(result)
            if not todo and not result.lost:
                continue
            if not (stretches and stretches[-1][1] == b.writer_id):
                stretches.append((rid, b.writer_id, [], [0]))
            if todo:
                stretches[-1][2].append(todo)
            stretches[-1][3][0] += result.lost
        for rid, writer_id, parts, lost in stretches:
            _apply(store, c, rid, writer_id, join_records(parts) if parts else (), lost[0])
    except Exception:
        store._rollback_to("run")
        return False
    finally:
        c.execute("RELEASE run")
    for i, r in zip(idx, results, strict=True):
        out[i] = r
    return True


def _admit(
    store: SqliteStorage, c: sqlite3.Connection, b: BatchWrite
) -> tuple[StoreResult, int, Sequence[rec.Record]]:
    """Check a batch against its writer's progress and record it as stored (dedupe key,
    progress); returns its result, the run's id and the records still to fold in."""
    entity, project, run_id, writer_id, first_seq, last_seq = (
        b.entity, b.project, b.run_id, b.writer_id, b.first_seq, b.last_seq
    )  # fmt: skip
    path = run_path(entity, project, run_id)
    if b.lost is None:
        check_batch(path, first_seq, last_seq, b.records)
    elif first_seq < 1 or last_seq < first_seq:
        raise BadBatch(f"run {path}: lost seq range {first_seq}..{last_seq} is empty or starts below 1")
    rid = store._need_run(c, entity, project, run_id)
    row = c.execute(
        "SELECT acked_seq FROM writers WHERE run = ? AND writer_id = ?", (rid, writer_id)
    ).fetchone()
    acked = 0 if row is None else int(row[0])
    if last_seq <= acked:
        return StoreResult(True, acked), rid, ()
    if first_seq > acked + 1:
        raise SequenceGap(path, writer_id, acked + 1, first_seq)
    if b.lost is not None:
        # Declared lost: only the seqs above acked count (a resent Lost overlaps itself), the
        # progress moves past them, and so no record with those seqs is ever stored later.
        lost = last_seq - max(first_seq, acked + 1) + 1
        c.execute(
            "INSERT INTO writers(run, writer_id, acked_seq, opened_at) VALUES (?,?,?,?)"
            " ON CONFLICT(run, writer_id) DO UPDATE SET acked_seq = excluded.acked_seq",
            (rid, writer_id, last_seq, store._clock()),
        )
        log.warning("run %s writer %s: seqs %d..%d declared lost: %s", path, writer_id,
                    last_seq - lost + 1, last_seq, b.lost)  # fmt: skip
        return StoreResult(False, last_seq, 0, lost), rid, ()
    todo = b.records[acked + 1 - first_seq :] if first_seq <= acked else b.records
    try:
        # The dedupe key: the primary key refuses a batch stored before even if the
        # progress row below were somehow behind.
        c.execute(
            "INSERT INTO batches(run, writer_id, last_seq, first_seq, records, stored_at)"
            " VALUES (?,?,?,?,?,?)",
            (rid, writer_id, last_seq, first_seq, len(todo), store._clock()),
        )
    except sqlite3.IntegrityError:
        return StoreResult(True, max(acked, last_seq)), rid, ()
    c.execute(
        "INSERT INTO writers(run, writer_id, acked_seq, opened_at) VALUES (?,?,?,?)"
        " ON CONFLICT(run, writer_id) DO UPDATE SET acked_seq = excluded.acked_seq",
        (rid, writer_id, last_seq, store._clock()),
    )
    return StoreResult(False, last_seq, len(todo)), rid, todo


def _apply(
    store: SqliteStorage,
    c: sqlite3.Connection,
    rid: int,
    writer_id: str,
    records: Sequence[rec.Record],
    lost: int = 0,
) -> None:
    """Fold records, and ``lost`` seqs declared lost, into the run (inside the caller's
    transaction)."""
    (_, ended_by, start, meta, config, latest, pinned, unpinned, stats, last_step, row_count,
     regressions, *kind) = c.execute(LOAD_FOLD, (rid,)).fetchone()  # fmt: skip
    stats = unpack(stats)
    fold = RunFold(unpack(meta), unpack(config), unpack(latest), unpack(pinned), unpack(unpinned),
                   stats, start, regressions=regressions, lost=int(stats.pop(LOST_STATS, 0)))  # fmt: skip
    fold.load_metrics(stats.pop(METRIC_STATS, None))
    if lost:
        fold.add_lost(lost)
    rows: Sequence[rec.Record] = records
    others: Sequence[rec.Record] = ()
    if isinstance(records, RecordBatch):
        is_row = records.kind == rec.KIND_ROW
        if not is_row.all():
            rows, others = records.select(is_row), records.select(~is_row).records()
    elif bytes(map(attrgetter("kind"), records)).count(rec.KIND_ROW) != len(records):
        rows = [r for r in records if r.kind == rec.KIND_ROW]
        others = [r for r in records if r.kind != rec.KIND_ROW]
    raw: list[tuple[rec.Record, str]] = []
    system: list[rec.Record] = []
    if others:  # all rows is the common case: no loop
        for r in others:
            k = r.kind
            if k in META_KINDS:
                if not fold.apply(r):
                    raw.append((r, "malformed body"))
            elif k == KIND_SYSTEM:
                system.append(r)
            elif k == KIND_CONSOLE:
                if not _console(store, c, rid, r):
                    raw.append((r, "malformed body"))
            elif k == KIND_FILE:
                if not _file(store, c, rid, r):
                    raw.append((r, "malformed body"))
            elif k == rec.KIND_ALERT:
                if not store_alert(c, rid, writer_id, r, store._clock()):
                    raw.append((r, "malformed body"))
            elif k == KIND_MEDIA:
                # An index of what the sidecar encoded: its pointer is already in the row after
                # it (docs/media.md), so there is nothing to keep.  One the sidecar did not encode
                # (no FLAG_MEDIA_DONE) should never come: kept raw, as nothing logged is lost.
                if not r.flags & rec.FLAG_MEDIA_DONE:
                    raw.append((r, "media record not encoded by the sidecar"))
            else:
                raw.append((r, f"unknown kind {k}"))
    chunk_rows: list[tuple[Any, ...]] = []
    if rows:
        if isinstance(rows, RecordBatch):
            cols, malformed, dropped = cl.batch_columns(rows, last_step)
        else:
            cols, malformed, dropped = cl.rows_to_columns(rows, last_step)
        raw += [(r, "malformed row body") for r in malformed]
        if dropped:
            fold.regressions += dropped
            fold.dirty.add("summary")
        if cols is not None:
            steps, times = cols.steps, cols.times
            fold.add_columns(cols.numeric, cols.other)
            sids = store._series(c, rid, HISTORY, cols.order)
            cols.numeric["_timestamp"] = cl.Column(steps, times, times, ck.VT_F64)
            shared: dict[tuple[int, int, int, int], ck.XPart] = {}
            for key, col in cols.numeric.items():
                for blob, st in ck.encode_points(col.steps, col.times, col.values, col.vtype, shared):
                    chunk_rows.append(chunk_row(sids[key], blob, st))
            c.executemany(
                "INSERT INTO history_values(run, step, series, time, value) VALUES (?,?,?,?,?)",
                [(rid, s, sids[k], t, pack(v)) for k, s, t, v in cols.other],
            )
            last = cols.last
            last_step, last_time = int(steps[-1]), float(times[-1])
            last["_step"], last["_timestamp"], last["_runtime"] = (
                last_step,
                last_time,
                fold.runtime(last_time),
            )
            fold.add_latest(last)
            row_count += len(steps)
    if system:
        raw += _system(store, c, rid, system, chunk_rows)
    c.executemany(INSERT_CHUNK, chunk_rows)
    if raw:
        c.executemany(
            "INSERT OR IGNORE INTO raw_records VALUES (?,?,?,?,?,?,?,?,?)",
            [(rid, writer_id, r.seq, r.kind, r.flags, r.step, r.time, r.body, why) for r, why in raw],
        )
    _save_fold(store, c, rid, fold, kind, ended_by, last_step, row_count)


def _save_fold(
    store: SqliteStorage,
    c: sqlite3.Connection,
    rid: int,
    fold: RunFold,
    kind: list[Any],
    ended_by: str | None,
    last_step: int,
    rows: int,
) -> None:
    """Write the fold back; ``kind``: the row's (parent, rank, world_size), which say where its
    own state goes (``jobs.state_column``) and whether a job's state follows from it."""
    col = jobs.state_column(*kind)
    sets: dict[str, Any] = {"last_step": last_step, "row_count": rows, "heartbeat_at": None}
    changed = False
    if ended_by == "stale" and col is not None:  # data is proof of life
        sets.update({col: "running", "ended_by": None, "finished_at": None})
        changed = True
    if "meta" in fold.dirty:
        m = fold.meta
        tags = m.get("tags")
        sets.update(
            meta=pack(m), start_time=fold.start_time, name=opt_str(m.get("name")),
            host=opt_str(m.get("host")), program=opt_str(m.get("program")), grp=opt_str(m.get("group")),
            job_type=opt_str(m.get("job_type")), notes=opt_str(m.get("notes")),
            tags=pack([str(t) for t in tags] if isinstance(tags, list) else []),
        )  # fmt: skip
        if sets["host"] is None:  # keep the host a rank's Open.member named (jobs.register)
            del sets["host"]
    if "config" in fold.dirty:
        sets["config"] = pack(fold.config)
    if "summary" in fold.dirty:
        sets.update(
            latest=pack(fold.latest), pinned=pack(fold.pinned), unpinned=pack(fold.unpinned),
            stats=pack(_stats_blob(fold)), regressions=fold.regressions, summary=pack(fold.summary()),
        )  # fmt: skip
    if "exit" in fold.dirty:
        st, code = fold.exit_state()
        sets.update(exit_code=code, ended_by="exit", finished_at=fold.exit_time)
        if col is not None:  # a node row's state follows its ranks', not its writer's EXIT
            sets[col] = st
            changed = True
    assign = ", ".join(
        "heartbeat_at = max(heartbeat_at, ?)" if k == "heartbeat_at" else f"{k} = ?" for k in sets
    )
    sets["heartbeat_at"] = store._clock()
    c.execute(f"UPDATE runs SET {assign} WHERE id = ?", (*sets.values(), rid))
    parent, _, world_size = kind
    if changed and (parent is not None or world_size is not None):
        jobs.recompute(c, parent if parent is not None else rid)


def _is_int64(n: Any) -> bool:
    # A size past SQLite's 64-bit integers would fail the batch at every try: stored as unknown.
    return isinstance(n, int) and -(2**63) <= n < 2**63


def _stats_blob(fold: RunFold) -> dict[str, Any]:
    stats = {k: v for k, v in fold.stats.items() if k != LOST_STATS}  # a STATS record cannot set it
    if fold.lost:
        stats[LOST_STATS] = fold.lost
    if fold.metrics is not None and fold.metrics.aggs:
        stats[METRIC_STATS] = fold.metrics.aggs
    return stats


def _system(
    store: SqliteStorage,
    c: sqlite3.Connection,
    rid: int,
    records: list[rec.Record],
    out: list[tuple[Any, ...]],
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
        cols = cl.build_columns(
            [s for _, s, _ in samples], [t for t, _, _ in samples], [d for *_, d in samples]
        )
        sids = store._series(c, rid, SYSTEM, list(cols.numeric))
        for key, col in cols.numeric.items():
            for blob, st in ck.encode_points(col.steps, col.times, col.values, col.vtype):
                out.append(chunk_row(sids[key], blob, st))
    return raw


def _console(store: SqliteStorage, c: sqlite3.Connection, rid: int, r: rec.Record) -> bool:
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


def _file(store: SqliteStorage, c: sqlite3.Connection, rid: int, r: rec.Record) -> bool:
    try:
        body = r.value()
    except Exception:
        return False
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        return False
    size = body.get("size")
    c.execute(
        # A save request (no sha256) must not hide an uploaded version that came first on the
        # companion's stream: the two writers' records are not ordered with each other.
        "INSERT INTO files(run, path, sha256, size, policy, time) VALUES (?,?,?,?,?,?) "
        "ON CONFLICT(run, path) DO UPDATE SET sha256 = coalesce(excluded.sha256, sha256), "
        "size = coalesce(excluded.size, size), policy = coalesce(excluded.policy, policy), "
        "time = max(time, excluded.time)",
        (rid, body["path"], opt_str(body.get("sha256")), size if _is_int64(size) else None,
         opt_str(body.get("policy")), r.time),
    )  # fmt: skip
    return True
