"""Distributed runs on the SQLite write side: registering a job's writers and the job's state
(docs/storage.md, "Distributed runs"; docs/distributed.md, "On the server").

A distributed run is one *top row* (the run the user sees; rank 0's records fold into it) and
hidden *member rows* with ``parent`` = the top row's id: rank r >= 1 as run_id ``"<id>~r<r>"`` and
node k's own writer as ``"<id>~n<k>"``.  Each row is folded by the ordinary ingest path, so steps,
summary, regressions and lost counts stay per rank.  Only the states are tied together:

- a rank row's own state lives in ``state``, rank 0's in the top row's ``own_state``;
- the top row's ``state`` is the JOB's, recomputed (``recompute``) whenever a rank's own state
  changes: ``running`` while any rank is, else ``crashed`` if any rank crashed, else ``failed`` if
  any failed, else ``finished``;
- a node row's ``state`` is the same rule over the ranks of that node (its writer never ends the
  node: a node ends when its ranks do).

Concurrency contract: these functions run inside ``SqliteStorage``'s write transaction on its one
writer thread; registration is a find-or-insert in that transaction, so streams of many ranks
opening at once are serialised by it and never race into duplicates.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from runstream.format import record as rec
from runstream_ingest.server.storage.interface import (
    MEMBER_SEP,
    Member,
    RunExists,
    RunNotFound,
    StorageError,
    run_path,
)
from runstream_ingest.server.storage.sqlite.schema import pack

if TYPE_CHECKING:
    from runstream_ingest.server.storage.sqlite.backend import SqliteStorage

# Columns that say which kind of row a run row is (``state_column``).
ROW_KIND = "SELECT parent, rank, world_size FROM runs WHERE id = ?"


def state_column(parent: int | None, rank: int | None, world_size: int | None) -> str | None:
    """The column holding a row's own state: ``state`` (single-process runs and rank rows),
    ``own_state`` (a distributed top row, whose ``state`` is the job's), or None (a node row,
    whose state is derived from its ranks')."""
    if parent is None:
        return "state" if world_size is None else "own_state"
    return "state" if rank is not None else None


def top_of(c: sqlite3.Connection, rid: int) -> int | None:
    """The top row of a distributed run's row ``rid`` (itself for a top row), or None for a
    single-process run."""
    parent, _, world_size = c.execute(ROW_KIND, (rid,)).fetchone()
    if parent is not None:
        return int(parent)
    return rid if world_size is not None else None


def combine(states: Iterable[str]) -> str | None:
    """The state of a set of ranks (None: no ranks)."""
    seen = set(states)
    if not seen:
        return None
    for s in ("running", "crashed", "failed"):
        if s in seen:
            return s
    return "finished"


def recompute(c: sqlite3.Connection, top: int) -> None:
    """Set the job's state on the top row and each node row's state from the ranks' own states.
    Ranks at or past the job's (latest) world size are left out: an elastic restart with fewer
    ranks leaves rows of ranks that are no longer part of the job."""
    world, own, node0 = c.execute(
        "SELECT world_size, own_state, node FROM runs WHERE id = ?", (top,)
    ).fetchone()
    if world is None:
        return
    ranks: list[tuple[Any, str]] = [(node0, own or "running")]
    ranks += c.execute(
        "SELECT node, state FROM runs WHERE parent = ? AND rank IS NOT NULL AND rank < ?", (top, world)
    ).fetchall()
    job = combine(s for _, s in ranks) or "running"
    c.execute("UPDATE runs SET state = ? WHERE id = ? AND state != ?", (job, top, job))
    for nid, node in c.execute(
        "SELECT id, node FROM runs WHERE parent = ? AND rank IS NULL", (top,)
    ).fetchall():
        st = combine(s for n, s in ranks if n == node) or "running"
        c.execute("UPDATE runs SET state = ? WHERE id = ? AND state != ?", (st, nid, st))


def insert_run(c: sqlite3.Connection, project: int, run_id: str, now: float, **cols: Any) -> int:
    """A new run row, state 'running', with empty fold blobs and the extra ``cols``."""
    names = ["project", "run_id", "state", "created_at", "heartbeat_at", "meta", "config", "summary",
             "latest", "pinned", "unpinned", "stats", "tags", *cols]  # fmt: skip
    empty_map, empty_list = pack({}), pack([])
    values = [project, run_id, "running", now, now, *[empty_map] * 5, empty_list, empty_map, empty_list]
    values += cols.values()
    marks = ",".join("?" * len(values))
    return int(
        c.execute(f"INSERT INTO runs({','.join(names)}) VALUES ({marks}) RETURNING id", values).fetchone()[0]
    )


def others(c: sqlite3.Connection, rid: int, writer_id: str) -> list[str]:
    """Writers of row ``rid`` other than ``writer_id`` that stored data (companions aside): what
    resume 'never' refuses."""
    return sorted(
        w
        for (w, acked) in c.execute("SELECT writer_id, acked_seq FROM writers WHERE run = ?", (rid,))
        if w != writer_id and acked > 0 and not w.endswith(rec.COMPANION_WRITER_SUFFIX)
    )


def register(
    store: SqliteStorage,
    c: sqlite3.Connection,
    entity: str,
    project: str,
    run_id: str,
    writer_id: str,
    resume: str,
    member: Member,
    now: float,
) -> tuple[int, str, bool]:
    """Find or make the job's top row and this member's row; returns (row id, row run_id,
    resumed).  The caller registers the writer on the row and revives it (``resume_row``) when the
    row existed.  RunNotFound ("must" and no run), RunExists ("never" and a single-process run
    with another writer's data holds the id)."""
    path = run_path(entity, project, run_id)
    dist = {"world_size": member.world_size, "node_count": member.node_count}
    top = store._find_run(c, entity, project, run_id)
    if top is None:
        if resume == "must":
            raise RunNotFound(path)
        pid = store._name_id(
            c, "projects", "entity,name", (store._name_id(c, "entities", "name", (entity,)), project)
        )
        # A member before rank 0 makes a placeholder: rank 0's own state 'running' until it reports.
        top = insert_run(c, pid, run_id, now, rank=0, own_state="running", **dist)
    else:
        parent, world_size = c.execute("SELECT parent, world_size FROM runs WHERE id = ?", (top,)).fetchone()
        if parent is not None:  # run ids never hold MEMBER_SEP: a damaged database
            raise StorageError(f"run {path} is a member row of another run")
        if world_size is None:  # a single-process run with this id becomes the job's top row
            if resume == "never" and (theirs := others(c, top, writer_id)):
                raise RunExists(path, theirs)
            c.execute("UPDATE runs SET rank = 0, own_state = state WHERE id = ?", (top,))
    host = member.host or None
    if not member.node_writer and member.rank == 0:
        row, row_id, existed = top, run_id, True
        c.execute(
            "UPDATE runs SET node = ?, local_rank = ?, host = coalesce(host, ?) WHERE id = ?",
            (member.node, member.local_rank, host, top),
        )
    else:
        row_id = member.row_id(run_id)
        found = store._find_run(c, entity, project, row_id)
        existed = found is not None
        if found is None:
            pid = c.execute("SELECT project FROM runs WHERE id = ?", (top,)).fetchone()[0]
            rank, local = (None, None) if member.node_writer else (member.rank, member.local_rank)
            row = insert_run(
                c, pid, row_id, now, parent=top, rank=rank, node=member.node, local_rank=local, host=host
            )
            store._run_ids[(entity, project, row_id)] = row
        else:
            row = found
            c.execute("UPDATE runs SET host = coalesce(host, ?) WHERE id = ?", (host, row))
    known = {w for (w,) in c.execute("SELECT writer_id FROM writers WHERE run = ?", (row,))}
    if writer_id not in known:
        # A new writer (a new attempt) says how large the job is now; a reconnecting one, perhaps
        # of an earlier attempt still draining, does not.
        c.execute("UPDATE runs SET world_size = ?, node_count = ? WHERE id = ?", (*dist.values(), top))
    if existed:
        resume_row(c, path, row, writer_id, resume, now)
    return row, row_id, existed and bool(known)


def resume_row(c: sqlite3.Connection, path: str, rid: int, writer_id: str, resume: str, now: float) -> None:
    """A writer opens an existing row: "never" refuses another writer's data (RunExists); a new
    writer revives the row (it runs again until its own EXIT), a returning one only revives a
    row the janitor (not an EXIT) declared crashed; a companion (the sidecar's own writer, whose
    last console lines may well arrive after the EXIT) never changes the state."""
    if resume == "never" and (theirs := others(c, rid, writer_id)):
        raise RunExists(path, theirs)
    col = state_column(*c.execute(ROW_KIND, (rid,)).fetchone())
    if resume != "companion" and col is not None:
        new = (
            c.execute("SELECT 1 FROM writers WHERE run = ? AND writer_id = ?", (rid, writer_id)).fetchone()
            is None
        )
        revive = "1" if new else "ended_by = 'stale'"
        c.execute(
            f"UPDATE runs SET {col} = 'running', ended_by = NULL, exit_code = NULL, finished_at = NULL"
            f" WHERE id = ? AND ({revive})",
            (rid,),
        )
    c.execute("UPDATE runs SET heartbeat_at = max(heartbeat_at, ?) WHERE id = ?", (now, rid))


def check_run_id(run_id: str) -> None:
    if MEMBER_SEP in run_id:
        raise ValueError(
            f"run_id {run_id!r} holds {MEMBER_SEP!r}, which names member rows of distributed runs"
        )
