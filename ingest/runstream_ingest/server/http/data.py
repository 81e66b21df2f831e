"""A run's data over HTTP (docs/http-api.md): history pages, downsampled series for charts (one
run or several, for compare views), its keys, console output, system metrics and files.

Concurrency contract: as ``api.py`` (handlers on the event loop, storage reads on the
``readers`` pool).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from runstream.format.fold import json_safe
from runstream_ingest.server.http.ranks import (
    MEMBER_MARK,
    band_json,
    console_json,
    node_param,
    rank_param,
    ranks_series_json,
)
from runstream_ingest.server.http.util import (
    MAX_PAGE,
    bad,
    error,
    float_param,
    int_param,
    list_param,
    respond,
    series_json,
)
from runstream_ingest.server.storage.history import series as sr
from runstream_ingest.server.storage.interface import RunNotFound, RunQueries, Storage

T = TypeVar("T")
MAX_KEYS = 50  # per series request: a chart panel's worth and then some
MAX_RUNS = 100  # per compare request
DEFAULT_BUCKETS = 1000


class RunData:
    """Handlers mixed into ``HttpApi``, which provides what is declared here."""

    storage: Storage
    readers: ThreadPoolExecutor

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    def _q(self) -> RunQueries:
        raise NotImplementedError

    def _where(self, request: web.Request) -> tuple[str, str, str]:
        raise NotImplementedError

    def _authorise(self, request: web.Request, entity: str | None) -> Any:
        raise NotImplementedError

    async def _need_run(self, entity: str, project: str, run_id: str) -> None:
        if await self._read(self.storage.get_run, entity, project, run_id) is None:
            raise error(404, "NOT_FOUND", f"no run {entity}/{project}/{run_id}")

    async def _target(
        self, entity: str, project: str, run_id: str, rank: Any = None, node: int | None = None
    ) -> str:
        """The run_id of the row holding ``rank`` or ``node``'s own writer (docs/distributed.md):
        the run's own for neither (or rank 0); a 404 naming what the run has otherwise."""
        if not rank and node is None:
            return run_id
        try:
            return await self._read(self._q().member_id, entity, project, run_id, rank, node)
        except RunNotFound as e:  # RankNotFound too: its message says which ranks there are
            raise error(404, "NOT_FOUND", str(e)) from None

    async def get_history(self, request: web.Request) -> web.Response:
        """One page of rows in step order; ``next_min_step`` continues (absent on the last page)."""
        entity, project, run_id = self._where(request)
        keys = list_param(request, "keys", 10_000) or None  # "?keys=,," means every key
        min_step = int_param(request, "min_step", None, None, None)
        max_step = int_param(request, "max_step", None, None, None)
        page = int_param(request, "page_size", 1000, 1, MAX_PAGE)
        await self._need_run(entity, project, run_id)
        row_id = await self._target(entity, project, run_id, rank_param(request))

        def first_page() -> list[dict[str, Any]]:
            pages = self.storage.scan_history(entity, project, row_id, keys, min_step, max_step, page)
            return next(iter(pages), [])

        rows = await self._read(first_page)
        body: dict[str, Any] = {"rows": json_safe(rows)}
        if len(rows) == page:
            body["next_min_step"] = rows[-1]["_step"] + 1
        return respond(body)

    def _series_args(self, request: web.Request) -> tuple[list[str], int, str, float | None, float | None]:
        keys = list_param(request, "keys", MAX_KEYS)
        if not keys:
            raise bad("keys is required: the comma-separated history keys to chart")
        buckets = int_param(request, "buckets", DEFAULT_BUCKETS, 1, sr.MAX_BUCKETS)
        x_axis = request.query.get("x_axis") or "_step"
        if x_axis not in sr.X_AXES:
            raise bad(f"x_axis must be one of {', '.join(sr.X_AXES)}, not {x_axis!r}")
        lo, hi = float_param(request, "min"), float_param(request, "max")
        if lo is not None and hi is not None and lo > hi:
            raise bad(f"min={lo} is above max={hi}")
        return keys, buckets, x_axis, lo, hi

    async def get_series(self, request: web.Request) -> web.Response:
        """The keys downsampled into ``buckets`` over one x range: per bucket min, max, mean and
        count (every point when there are no more than ``buckets``).  ``ranks=all``: each rank's
        series; ``ranks=band``: the mean, min and max across ranks (docs/http-api.md)."""
        entity, project, run_id = self._where(request)
        keys, buckets, x_axis, lo, hi = self._series_args(request)
        ranks = request.query.get("ranks") or None
        if ranks not in (None, "all", "band"):
            raise bad(f"ranks must be 'all' (each rank's series) or 'band' (across ranks), not {ranks!r}")
        rank = rank_param(request)
        if ranks is not None and rank is not None:
            raise bad("give rank (one rank's series) or ranks (all of them), not both")
        path = f"{entity}/{project}/{run_id}"
        try:
            if ranks is not None:
                q = self._q()
                lo2, hi2, per = await self._read(
                    q.rank_series, entity, project, run_id, keys, buckets, x_axis, lo, hi
                )
                series = (
                    ranks_series_json(per, keys)
                    if ranks == "all"
                    else band_json(per, keys, lo2, hi2, buckets, x_axis == "_step")
                )
                body = {"path": path, "x_axis": x_axis, "buckets": buckets, "ranks": ranks, "series": series}
                return respond(body)
            row_id = await self._target(entity, project, run_id, rank)
            out = await self._read(self._q().series, entity, project, row_id, keys, buckets, x_axis, lo, hi)
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        return respond(
            {"path": path, "x_axis": x_axis, "buckets": buckets,
             "series": {k: series_json(s) for k, s in out.items()}}
        )  # fmt: skip

    async def get_multi_series(self, request: web.Request) -> web.Response:
        """The same keys of several runs (a compare view); a run that does not exist comes back
        as an error entry, the others as they are."""
        entity, project = request.match_info["entity"], request.match_info["project"]
        self._authorise(request, entity)
        runs = list_param(request, "runs", MAX_RUNS)
        if not runs:
            raise bad("runs is required: the comma-separated run ids to compare")
        keys, buckets, x_axis, lo, hi = self._series_args(request)

        def read_all() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for run_id in runs:
                try:
                    if MEMBER_MARK in run_id:  # a member row is no run of its own
                        raise RunNotFound(f"{entity}/{project}/{run_id}")
                    got = self._q().series(entity, project, run_id, keys, buckets, x_axis, lo, hi)
                except RunNotFound as e:
                    out[run_id] = {"error": "NOT_FOUND", "message": str(e)}
                    continue
                out[run_id] = {"series": {k: series_json(s) for k, s in got.items()}}
            return out

        return respond({"x_axis": x_axis, "buckets": buckets, "runs": await self._read(read_all)})

    async def get_history_keys(self, request: web.Request) -> web.Response:
        entity, project, run_id = self._where(request)
        row_id = await self._target(entity, project, run_id, rank_param(request))
        try:
            keys = await self._read(self.storage.history_keys, entity, project, row_id)
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        return respond({"keys": keys})

    async def get_console(self, request: web.Request) -> web.Response:
        """Console lines in arrival order; ``rank=N`` one rank's, ``rank=all`` every rank's
        (each line with its ``rank``)."""
        entity, project, run_id = self._where(request)
        after = int_param(request, "after_id", 0, 0, None)
        limit = int_param(request, "limit", 1000, 1, MAX_PAGE)
        rank = rank_param(request, ("all",))
        try:
            if rank == "all":
                both = await self._read(self._q().rank_console, entity, project, run_id, after, limit)
                return respond(console_json(both, limit))
            row_id = await self._target(entity, project, run_id, rank)
            lines = await self._read(self.storage.console, entity, project, row_id, after, limit)
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        label = {} if rank is None else {"rank": rank}
        body: dict[str, Any] = {
            "lines": [
                {"id": ln.id, "seq": ln.seq, "time": ln.time, "stream": ln.stream, "line": ln.line, **label}
                for ln in lines
            ]
        }
        if len(lines) == limit:
            body["next_after_id"] = lines[-1].id
        return respond(body)

    async def get_system(self, request: web.Request) -> web.Response:
        """System samples: by default the node-wide ones (of rank 0's node for a distributed
        run); ``node=K`` node K's; ``rank=N`` rank N's own process stats."""
        entity, project, run_id = self._where(request)
        keys = list_param(request, "keys", 1000) or None
        lo, hi = float_param(request, "min_time"), float_param(request, "max_time")
        rank, node = rank_param(request), node_param(request)
        if rank is not None and node is not None:
            raise bad("give rank (a rank's process stats) or node (a node's system metrics), not both")
        try:
            if rank is None and node is None:
                row_id = await self._read(self._q().system_id, entity, project, run_id)
            else:
                row_id = await self._target(entity, project, run_id, rank, node)
            rows = await self._read(self.storage.system_metrics, entity, project, row_id, keys, lo, hi)
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        return respond({"samples": json_safe(rows)})

    async def get_files(self, request: web.Request) -> web.Response:
        entity, project, run_id = self._where(request)
        row_id = await self._target(entity, project, run_id, rank_param(request))
        try:
            files = await self._read(self.storage.files, entity, project, row_id)
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        fields = ("path", "sha256", "size", "policy", "time")
        return respond({"files": [{k: getattr(f, k) for k in fields} for f in files]})
