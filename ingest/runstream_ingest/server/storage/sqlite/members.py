"""Reading a distributed run's member rows on SQLite (docs/distributed.md, "Reading a distributed
run back"; docs/storage.md for the columns).

A distributed run is one top row (rank 0's records, ``state`` = the job's, ``own_state`` = rank
0's) and hidden member rows with ``parent`` = the top row's id: rank r >= 1 as run_id
``"<id>~r<r>"``, node k's own writer (node-wide system metrics) as ``"<id>~n<k>"``.  These
functions resolve a rank or node to its row and list the rows; ``query.py`` calls them inside its
read transactions.

Pure functions of a connection: any thread, within the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from runstream.format import record as rec
from runstream_ingest.server.storage.interface import (
    ConsoleLine,
    MemberInfo,
    RankNotFound,
    RunNotFound,
    run_path,
)

TOP = """SELECT r.id, r.world_size, r.node_count, r.node, r.parent FROM runs r
    JOIN projects p ON p.id = r.project JOIN entities e ON e.id = p.entity
    WHERE e.name = ? AND p.name = ? AND r.run_id = ?"""
COLS = """r.id, r.run_id, r.rank, r.node, r.local_rank, r.host, coalesce(r.own_state, r.state),
    r.exit_code, r.created_at, r.heartbeat_at, r.finished_at, r.last_step, r.row_count, r.ended_by,
    r.summary"""
# Rank 0 has reported once one of its writers (not a companion) opened the top row; a member
# opening first makes the top row a placeholder without writers.
RANK0_SEEN = f"""EXISTS (SELECT 1 FROM writers w WHERE w.run = r.id
    AND substr(w.writer_id, -{len(rec.COMPANION_WRITER_SUFFIX)}) != '{rec.COMPANION_WRITER_SUFFIX}')"""


def rank_run_id(run_id: str, rank: int) -> str:
    return run_id if rank == 0 else f"{run_id}~r{rank}"


def node_run_id(run_id: str, node: int) -> str:
    return f"{run_id}~n{node}"


def top(
    c: sqlite3.Connection, entity: str, project: str, run_id: str
) -> tuple[int, int | None, int | None, int | None]:
    """(row id, world_size, node_count, rank 0's node) of a run's top row.  RunNotFound for no
    such run and for a member row's own id (member rows are never addressed directly)."""
    row = c.execute(TOP, (entity, project, run_id)).fetchone()
    if row is None or row[4] is not None:
        raise RunNotFound(run_path(entity, project, run_id))
    return row[0], row[1], row[2], row[3]


def _member(row: tuple[Any, ...]) -> MemberInfo:
    (_, run_id, rank, node, local_rank, host, state, code, created, beat, finished, last_step, rows,
     ended_by, summary) = row  # fmt: skip
    return MemberInfo(run_id, rank, node, local_rank, host, state, code, created, beat, finished,
                      last_step, rows, ended_by, rec.unpack_body(summary))  # fmt: skip


def members(c: sqlite3.Connection, entity: str, project: str, run_id: str) -> list[MemberInfo]:
    rid, world, _, _ = top(c, entity, project, run_id)
    if world is None:
        return []
    out = [
        _member(r) for r in c.execute(f"SELECT {COLS} FROM runs r WHERE r.id = ? AND {RANK0_SEEN}", (rid,))
    ]
    for m in out:
        m.rank = 0  # the top row folds rank 0's records
    out += [
        _member(r)
        for r in c.execute(
            # Ranks past the job's latest world size (an elastic restart with fewer ranks) are
            # no longer part of it, as for the job's state (jobs.py).
            f"SELECT {COLS} FROM runs r WHERE r.parent = ? AND (r.rank IS NULL OR r.rank < ?)"
            " ORDER BY r.rank IS NULL, r.rank, r.node",
            (rid, world),
        )
    ]
    return out


def member_id(
    c: sqlite3.Connection, entity: str, project: str, run_id: str, rank: int | None, node: int | None
) -> str:
    path = run_path(entity, project, run_id)
    rid, world, nodes, _ = top(c, entity, project, run_id)
    if rank is not None:
        if rank == 0:
            return run_id
        if world is None:
            raise RankNotFound(path, f"run {path} is not distributed: it has rank 0 only, not rank {rank}")
        if not 0 <= rank < world:
            raise RankNotFound(path, f"run {path} has ranks 0..{world - 1}; there is no rank {rank}")
        want, what = rank_run_id(run_id, rank), f"rank {rank}"
    elif node is not None:
        if world is None:
            raise RankNotFound(path, f"run {path} is not distributed: it has no node {node}")
        if nodes is not None and not 0 <= node < nodes:
            raise RankNotFound(path, f"run {path} has nodes 0..{nodes - 1}; there is no node {node}")
        want, what = node_run_id(run_id, node), f"node {node}'s own writer (its node-wide system metrics)"
    else:
        return run_id
    found = c.execute("SELECT 1 FROM runs WHERE parent = ? AND run_id = ?", (rid, want)).fetchone()
    if found is None:
        raise RankNotFound(path, f"{what} of run {path} has not reported to the server yet")
    return want


def system_id(c: sqlite3.Connection, entity: str, project: str, run_id: str) -> str:
    """The row /system shows by default: for a distributed run, the own writer of rank 0's node
    (node-wide metrics, as for a single process) when it has reported; else the run's own row."""
    rid, world, _, node = top(c, entity, project, run_id)
    if world is None or node is None:
        return run_id
    want = node_run_id(run_id, node)
    found = c.execute("SELECT 1 FROM runs WHERE parent = ? AND run_id = ?", (rid, want)).fetchone()
    return run_id if found is None else want


def rank_rows(
    c: sqlite3.Connection, entity: str, project: str, run_id: str
) -> list[tuple[int, int, float | None]]:
    """(rank, row id, start_time) of every rank that has reported, by rank (rank 0: the top row,
    also of a single-process run)."""
    rid, world, _, _ = top(c, entity, project, run_id)
    out: list[tuple[int, int, float | None]] = []
    if world is None or c.execute(f"SELECT 1 FROM runs r WHERE r.id = ? AND {RANK0_SEEN}", (rid,)).fetchone():
        out.append((0, rid, c.execute("SELECT start_time FROM runs WHERE id = ?", (rid,)).fetchone()[0]))
    if world is not None:
        out += c.execute(
            "SELECT rank, id, start_time FROM runs WHERE parent = ? AND rank IS NOT NULL AND rank < ?"
            " ORDER BY rank",
            (rid, world),
        ).fetchall()
    return out


def console(
    c: sqlite3.Connection, entity: str, project: str, run_id: str, after_id: int, limit: int
) -> list[tuple[int, ConsoleLine]]:
    """Every rank's console lines after ``after_id`` in arrival order (ids are global, so one
    cursor serves every rank), at most ``limit``, each with its rank."""
    rows = {rid: rank for rank, rid, _ in rank_rows(c, entity, project, run_id)}
    if not rows:
        return []
    marks = ",".join("?" * len(rows))
    got = c.execute(
        f"SELECT run, id, seq, time, stream, line FROM console_lines WHERE run IN ({marks}) AND id > ?"
        " ORDER BY id LIMIT ?",
        (*rows, after_id, limit),
    ).fetchall()
    return [(rows[r[0]], ConsoleLine(*r[1:])) for r in got]


def member_row_ids(c: sqlite3.Connection, rid: int) -> list[tuple[int, str]]:
    """(row id, run_id) of a top row's member rows (for deleting the run)."""
    return c.execute("SELECT id, run_id FROM runs WHERE parent = ?", (rid,)).fetchall()
