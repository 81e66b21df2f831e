"""A distributed run over HTTP (docs/http-api.md, "Distributed runs"; docs/distributed.md): the
run JSON's rank fields, ``?rank=`` / ``?ranks=`` / ``?node=`` parameters, the cross-rank band of
a chart and the merged console.

A distributed run is one run id; its ranks and nodes are hidden member rows on the server
(``storage/sqlite/members.py``) that no path names: the routes take the rank as a parameter.

Pure functions over what the storage returned: any thread (handlers call them on the loop).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web

from runstream.format.fold import json_safe
from runstream_ingest.server.http.util import bad, error, series_json
from runstream_ingest.server.storage.history.series import Series
from runstream_ingest.server.storage.interface import MEMBER_SEP, ConsoleLine, MemberInfo, RunInfo

MEMBER_MARK = MEMBER_SEP  # member rows' run ids hold it; no run name may (docs/http-api.md, "Names")
FAILED = ("crashed", "failed")


def check_run_id(entity: str, project: str, run_id: str) -> None:
    """404 for a member row's own id: only the run's id is a path; ranks are a parameter."""
    if MEMBER_MARK in run_id:
        raise error(404, "NOT_FOUND", f"no run {entity}/{project}/{run_id}")


def rank_param(request: web.Request, allow: Sequence[str] = ()) -> int | str | None:
    """``?rank=``: None when absent, a rank (an integer >= 0), or one of ``allow`` ("all")."""
    raw = request.query.get("rank")
    if raw is None or raw == "":
        return None
    if raw in allow:
        return raw
    try:
        rank = int(raw)
    except ValueError:
        also = "".join(f" or {a!r}" for a in allow)
        raise bad(f"rank must be a rank number (0, 1, ...){also}, not {raw!r}") from None
    if rank < 0:
        raise bad(f"rank must be 0 or more, not {rank}")
    return rank


def node_param(request: web.Request) -> int | None:
    raw = request.query.get("node")
    if raw is None or raw == "":
        return None
    try:
        node = int(raw)
    except ValueError:
        raise bad(f"node must be a node index (0, 1, ...), not {raw!r}") from None
    if node < 0:
        raise bad(f"node must be 0 or more, not {node}")
    return node


def job_sizes(info: RunInfo) -> dict[str, int]:
    """world_size and node_count of any run: 1 and 1 for a single process."""
    return {"world_size": info.world_size or 1, "node_count": info.node_count or 1}


# --- the run JSON ------------------------------------------------------------------------------
def _job_state(states: Iterable[str]) -> str:
    """The job's state over its ranks' (the server's rule for the top row)."""
    seen = set(states)
    for s in ("running", "crashed", "failed"):
        if s in seen:
            return s
    return "finished"


def _number(v: Any) -> bool:
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and not (isinstance(v, float) and math.isnan(v))
    )


def aggregates(summaries: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Of every summary key that is a number (not NaN, not a bool) in some rank's summary: mean,
    min, max and count over the ranks holding one."""
    values: dict[str, list[float]] = {}
    for s in summaries:
        for k, v in s.items():
            if _number(v):
                values.setdefault(k, []).append(v)
    out = {}
    for k in sorted(values):
        vs = values[k]
        out[k] = {"mean": sum(vs) / len(vs), "min": min(vs), "max": max(vs), "count": len(vs)}
    return out


def distributed_json(info: RunInfo, members: Sequence[MemberInfo]) -> dict[str, Any]:
    """The fields a distributed run's JSON gains: ranks, nodes, first_failure, rank_states,
    rank_aggregates (docs/http-api.md)."""
    ranks = sorted((m for m in members if m.rank is not None), key=lambda m: m.rank or 0)
    writers = {m.node: m for m in members if m.rank is None and m.node is not None}
    rank_list = [
        {"rank": m.rank, "node": m.node, "local_rank": m.local_rank, "host": m.host, "state": m.state,
         "exit_code": m.exit_code, "created_at": m.created_at, "finished_at": m.finished_at,
         "heartbeat_at": m.heartbeat_at, "last_step": m.last_step, "row_count": m.row_count,
         "ended_by": m.ended_by}
        for m in ranks
    ]  # fmt: skip
    nodes = []
    for k in sorted({m.node for m in ranks if m.node is not None} | set(writers)):
        on = [m for m in ranks if m.node == k]
        own = writers.get(k)
        host = own.host if own is not None and own.host else next((m.host for m in on if m.host), None)
        nodes.append(
            {
                "node": k,
                "host": host,
                # a node runs while one of its ranks does; without ranks, its own writer's state
                "state": _job_state(m.state for m in on) if on else own.state if own else "running",
                "heartbeat_at": max(m.heartbeat_at for m in [*on, *([own] if own else [])]),
            }
        )
    failed = [m for m in ranks if m.state in FAILED]
    first = min(failed, key=lambda m: (m.finished_at is None, m.finished_at or 0.0, m.rank), default=None)
    states = {s: 0 for s in ("finished", "running", "failed", "crashed")}
    for m in ranks:
        states[m.state] = states.get(m.state, 0) + 1
    world = info.world_size or len(ranks)
    states["missing"] = max(world - len(ranks), 0)
    return {
        "ranks": rank_list,
        "nodes": nodes,
        "first_failure": None
        if first is None
        else {
            "rank": first.rank,
            "node": first.node,
            "state": first.state,
            "exit_code": first.exit_code,
            "time": first.finished_at,
            "last_step": first.last_step,
        },
        "rank_states": states,
        "rank_aggregates": json_safe(aggregates(m.summary for m in ranks)),
    }


# --- series of every rank, and their band --------------------------------------------------------
def ranks_series_json(
    per_rank: Sequence[tuple[int, dict[str, Series]]], keys: Sequence[str]
) -> dict[str, Any]:
    """Per key, each rank's series (``series_json`` with ``"rank"``), by rank."""
    return {k: [{"rank": rank, **series_json(out[k])} for rank, out in per_rank if k in out] for k in keys}


def _index(x: float, lo: float, hi: float, n: int, integer: bool) -> int:
    """The bucket of x as the downsampler cuts [lo, hi] into n (``series._Acc.index``)."""
    if integer:
        span = math.floor(hi) - math.ceil(lo) + 1
        i = (math.floor(x) - math.ceil(lo)) * n // max(span, 1)
    else:
        width = (hi - lo) / n if hi > lo else 1.0
        i = math.floor((x - lo) / width)
    return min(max(i, 0), n - 1)


def band_json(
    per_rank: Sequence[tuple[int, dict[str, Series]]],
    keys: Sequence[str],
    lo: float | None,
    hi: float | None,
    n: int,
    integer: bool,
) -> dict[str, dict[str, Any]]:
    """Per key, the mean, min and max across ranks at each x: at each step when every rank's
    series is exact on the step axis (ranks aligned on equal steps), else in each of the n
    buckets of [lo, hi]
    that every rank's series was cut into.  ``mean`` is the mean of the ranks' means (each rank
    counts once), ``min``/``max`` the extremes of every point, ``count`` the points and
    ``rank_count`` how many ranks had a value there."""
    out = {}
    for k in keys:
        series = [s[k] for _, s in per_rank if k in s and s[k].x]
        # Equal steps line ranks up (DDP ranks log in lockstep); equal times never do, so time
        # axes always use the common buckets.
        exact = integer and all(s.exact for s in series)
        # slot -> per rank: [x, x_last, min, max, weighted sum, valid count, count]
        slots: dict[Any, list[list[Any]]] = {}
        for s in series:
            mine: dict[Any, list[Any]] = {}
            for i, x in enumerate(s.x):
                xl, mn, mx, mean, cnt = s.x_last[i], s.min[i], s.max[i], s.mean[i], s.count[i]
                if exact:
                    slot: Any = x
                else:
                    mid = (x + xl) / 2
                    slot = _index(mid, lo if lo is not None else x, hi if hi is not None else xl, n, integer)
                valid = cnt if mean is not None else 0
                a = mine.get(slot)
                if a is None:
                    mine[slot] = [x, xl, mn, mx, (mean or 0.0) * valid, valid, cnt]
                    continue
                a[0], a[1] = min(a[0], x), max(a[1], xl)
                if mn is not None:
                    a[2] = mn if a[2] is None else min(a[2], mn)
                    a[3] = mx if a[3] is None else max(a[3], mx)
                a[4] += (mean or 0.0) * valid
                a[5] += valid
                a[6] += cnt
            for slot, a in mine.items():
                slots.setdefault(slot, []).append(a)
        cols: dict[str, list[Any]] = {
            c: [] for c in ("x", "x_last", "min", "max", "mean", "count", "rank_count")
        }
        for slot in sorted(slots):
            got = slots[slot]
            means = [a[4] / a[5] for a in got if a[5]]
            mins = [a[2] for a in got if a[2] is not None]
            maxs = [a[3] for a in got if a[3] is not None]
            cols["x"].append(min(a[0] for a in got))
            cols["x_last"].append(max(a[1] for a in got))
            cols["min"].append(min(mins) if mins else None)
            cols["max"].append(max(maxs) if maxs else None)
            cols["mean"].append(sum(means) / len(means) if means else None)
            cols["count"].append(sum(a[6] for a in got))
            cols["rank_count"].append(len(got))
        out[k] = {"exact": exact, **json_safe(cols)}
    return out


# --- the console of every rank -----------------------------------------------------------------
def console_json(lines: Sequence[tuple[int, ConsoleLine]], limit: int) -> dict[str, Any]:
    """A page of every rank's lines: in time order within the page, each with its rank; pages
    continue in arrival order (``next_after_id``), so following a live run misses no line."""
    ordered = sorted(lines, key=lambda rl: (rl[1].time, rl[1].id))
    body: dict[str, Any] = {
        "lines": [
            {"id": ln.id, "seq": ln.seq, "time": ln.time, "stream": ln.stream, "line": ln.line, "rank": rank}
            for rank, ln in ordered
        ]
    }
    if len(lines) == limit:
        body["next_after_id"] = max(ln.id for _, ln in lines)
    return body
