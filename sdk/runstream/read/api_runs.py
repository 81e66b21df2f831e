"""The runs ``runstream.Api`` returns: ``Runs`` (a lazy, paged list) and ``ApiRun``.

Concurrency contract: both belong to the thread that uses them (they cache pages and edits).
"""

from __future__ import annotations

import heapq
import importlib
import json
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from runstream.errors import UsageError

if TYPE_CHECKING:
    from runstream.files import ApiFile
    from runstream.read.api import Api

EDITABLE = ("name", "tags", "notes")
RESERVED = ("_step", "_timestamp", "_runtime")
KEYS_PER_REQUEST = 50  # the server's limit per series request
MAX_PAGE = 10_000  # the server's most rows per history page


class Runs:
    """A project's runs matching a filter, fetched a page at a time as they are used."""

    def __init__(
        self,
        api: Api,
        entity: str,
        project: str,
        filters: dict[str, Any] | None,
        order: str,
        per_page: int,
        search: str | None,
    ) -> None:
        self._api, self.entity, self.project = api, entity, project
        self.filters, self.order, self.per_page, self.search = filters, order, per_page, search
        self._pages: dict[int, list[ApiRun]] = {}
        self._total: int | None = None

    def _page(self, n: int) -> list[ApiRun]:
        if n not in self._pages:
            got = self._api._get(
                f"/api/v1/runs/{self.entity}/{self.project}",
                filters=json.dumps(self.filters) if self.filters else None,
                order=self.order or None,
                search=self.search,
                limit=self.per_page,
                offset=n * self.per_page,
            )
            self._total = int(got["total"])
            self._pages[n] = [ApiRun(self._api, r) for r in got["runs"]]
        return self._pages[n]

    def __len__(self) -> int:
        if self._total is None:
            self._page(0)
        assert self._total is not None
        return self._total

    def __iter__(self) -> Iterator[ApiRun]:
        n = 0
        while True:
            page = self._page(n)
            yield from page
            if len(page) < self.per_page:
                return
            n += 1

    def __getitem__(self, i: int) -> ApiRun:
        if i < 0:
            i += len(self)
        page = self._page(i // self.per_page) if i >= 0 else []
        if not 0 <= i % self.per_page < len(page):
            raise IndexError(f"run {i} of {len(self)}")
        return page[i % self.per_page]

    def __repr__(self) -> str:
        return f"<runstream.Runs {self.entity}/{self.project} ({len(self)})>"

    def groups(self, by: str, metrics: Sequence[str] = ()) -> list[dict[str, Any]]:
        """These runs grouped by ``by`` (``config.optimizer``), with the count, mean, min and max
        of each of ``metrics`` (``summary.acc``) per group."""
        got = self._api._get(
            f"/api/v1/groups/{self.entity}/{self.project}",
            by=by,
            metrics=",".join(metrics) or None,
            filters=json.dumps(self.filters) if self.filters else None,
            search=self.search,
        )
        return list(got["groups"])


class ApiRun:
    """A run as the server has it.  ``name``, ``tags`` and ``notes`` may be changed and saved
    with ``update()``; every other field of docs/http-api.md's run object reads as an attribute
    (``run.config``, ``run.summary``, ``run.state``, ``run.created_at``...)."""

    def __init__(self, api: Api, data: dict[str, Any]) -> None:
        self._api = api
        self._load(data)

    def _load(self, data: dict[str, Any]) -> None:
        self._data = data
        self._saved = {k: json.dumps(data.get(k)) for k in EDITABLE}
        self.name: str | None = data.get("name")
        self.tags: list[str] = list(data.get("tags") or [])
        self.notes: str | None = data.get("notes")

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_data"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"<runstream.ApiRun {self._data['path']} ({self._data['state']})>"

    @property
    def _url(self) -> str:
        return f"/api/v1/runs/{self._data['path']}"

    def refresh(self) -> ApiRun:
        """Read the run again (its state, summary...); unsaved edits are dropped."""
        self._load(self._api._get(self._url))
        return self

    def update(self) -> ApiRun:
        """Save the edited ``name``, ``tags`` and ``notes`` (only those changed since read)."""
        if not isinstance(self.tags, list) or not all(isinstance(t, str) for t in self.tags):
            raise UsageError(f"run.tags must be a list of strings, not {self.tags!r}")
        edits = {k: getattr(self, k) for k in EDITABLE if json.dumps(getattr(self, k)) != self._saved[k]}
        if edits:
            self._load(self._api._request("PATCH", self._url, edits))
        return self

    def delete(self) -> None:
        """Delete the run and all its data on the server (not while it is running)."""
        self._api._request("DELETE", self._url)

    # --- distributed runs (docs/distributed.md, "Reading a distributed run back") -------------
    @property
    def world_size(self) -> int:
        """How many ranks (processes) the run's job had: 1 for a single-process run."""
        return int(self._data.get("world_size") or 1)

    @property
    def node_count(self) -> int:
        """How many nodes (machines) the run's job ran on: 1 for a single-process run."""
        return int(self._data.get("node_count") or 1)

    @property
    def ranks(self) -> list[dict[str, Any]]:
        """Each rank that has reported, by rank: ``rank``, ``node``, ``local_rank``, ``host``,
        ``state``, ``exit_code``, ``created_at``, ``finished_at``, ``heartbeat_at``,
        ``last_step``, ``row_count``, ``ended_by`` (docs/http-api.md).  ``[]`` for a
        single-process run.  As read with the run (``refresh()`` reads it again)."""
        return list(self._data.get("ranks") or [])

    @property
    def rank_aggregates(self) -> dict[str, dict[str, Any]]:
        """Per numeric summary key, its ``mean``, ``min``, ``max`` and ``count`` over the ranks'
        summaries (``{}`` for a single-process run)."""
        return dict(self._data.get("rank_aggregates") or {})

    def rank_summary(self, rank: int) -> dict[str, Any]:
        """Rank ``rank``'s own summary (rank 0's is ``run.summary``), read now (one request).

        Raises:
            UsageError: ``rank`` is not an int >= 0.
            NotFoundError: The run has no such rank, or it has not reported yet (the message
                says which ranks the run has).
            ApiError: As ``Api``.
        """
        got = self._api._get(self._url, **_rank_query(rank, all_ok=False))
        return dict(got.get("summary") or {})

    def _ranks_seen(self) -> list[int]:
        return [int(r["rank"]) for r in self.ranks] or [0]

    def history_keys(self, rank: int | None = None) -> list[str]:
        """The history keys of the run (of rank ``rank`` when given), in first-logged order."""
        return list(self._api._get(self._url + "/keys", **_rank_query(rank, all_ok=False))["keys"])

    def series(
        self,
        keys: Sequence[str],
        buckets: int = 1000,
        x_axis: str = "_step",
        min: float | None = None,
        max: float | None = None,
        rank: int | str | None = None,
    ) -> dict[str, Any]:
        """Per key, the columns of its buckets: ``x``, ``x_last``, ``min``, ``max``, ``mean``,
        ``count`` and ``exact`` (docs/http-api.md, "series").  ``rank``: that rank's (default
        rank 0, as W&B); ``"all"``: per key a list of every rank's, each with ``"rank"``;
        ``"band"``: per key the mean, min and max across ranks."""
        out: dict[str, Any] = {}
        keys = list(dict.fromkeys(keys))
        if rank in ("all", "band"):
            which: dict[str, Any] = {"ranks": rank}
        else:
            which = _rank_query(rank, all_ok=False)
        for i in range(0, len(keys), KEYS_PER_REQUEST):
            got = self._api._get(
                self._url + "/series",
                keys=",".join(keys[i : i + KEYS_PER_REQUEST]),
                buckets=buckets,
                x_axis=x_axis,
                min=min,
                max=max,
                **which,
            )
            out.update(got["series"])
        return out

    def history(
        self,
        keys: Sequence[str] | None = None,
        samples: int = 500,
        x_axis: str = "_step",
        pandas: bool = True,
        stats: bool = False,
        rank: int | str | None = None,
    ) -> Any:
        """The run's history, downsampled on the server: quick for plotting any run length.

        Each key's points are cut into at most ``samples`` buckets along ``x_axis``; a row is a
        bucket, whose ``x_axis`` value is its first point's and whose value for each key is the
        mean of the key's points there (keys logged at different steps may give different
        buckets, hence more rows).  A key with no more than ``samples`` points comes back
        exactly, one row per point.  For every row as logged, use :meth:`scan_history`.

        Values that are not numbers (media pointers such as ``{"_type": "image-file", ...}``,
        histograms, tables, strings) cannot be averaged: of each key, at most ``samples`` of
        them come back as logged, evenly spaced over the rows holding them (the first and the
        last always), each in the row of its own ``x_axis`` value.  Reading them scans the rows
        that hold them (one request per 10,000).

        Args:
            keys: The history keys to fetch.  Default: every key of the run (of rank ``rank``;
                rank 0's for ``"all"``), one request more.
            samples: The most buckets per key.
            x_axis: ``"_step"``, ``"_runtime"`` or ``"_timestamp"``.
            pandas: Return a pandas DataFrame (when pandas is installed) rather than a list of
                dicts.
            stats: Add ``<key>:min``, ``<key>:max`` and ``<key>:count`` per bucket, so spikes
                that the mean smooths over stay visible.
            rank: For a distributed run, whose rows: None or 0 rank 0's (what W&B shows), a
                rank number that rank's, ``"all"`` every rank's, each row with a ``_rank``
                column (all ranks cut into the same buckets, rows sorted by ``x_axis`` then
                ``_rank``).

        Returns:
            A DataFrame with the columns ``x_axis`` (and ``_rank``) and then the keys, or, with
            ``pandas=False`` or without pandas, the same rows as dicts sorted by ``x_axis``.

        Raises:
            UsageError: ``rank`` is not None, an int >= 0 or ``"all"``.
            NotFoundError: The run has no such rank (the message says which it has).
            InvalidRequestError: The server refused a key, ``samples`` or ``x_axis``.
            ApiError: As ``Api`` (one request per 50 keys, each bounded by the ``Api``'s
                timeout).
        """
        _rank_query(rank, all_ok=True)  # checked before any request
        every = rank == "all"
        one = None if isinstance(rank, str) else rank
        if keys is None:
            keys = [k for k in self.history_keys(one) if k not in RESERVED and k != x_axis]
        by_rank: dict[int, dict[Any, dict[str, Any]]] = {}
        got = self.series(keys, samples, x_axis, rank=rank)
        per_rank: list[tuple[int, dict[str, Any]]]
        if every:
            seen = sorted({s["rank"] for ss in got.values() for s in ss})
            per_rank = [(r, {k: s for k, ss in got.items() for s in ss if s["rank"] == r}) for r in seen]
        else:
            per_rank = [(int(rank or 0), got)]
        # rank 0's summary is the run's; another rank's last values are not at hand (any key
        # without a numeric point is still read as logged)
        summary = (self._data.get("summary") or {}) if not rank else {}
        for r, series in per_rank:
            by_x = by_rank.setdefault(r, {})
            # Keys the series cannot chart (no numeric point), or whose last value is not a
            # number: their other values (media pointers, strings...) are read as logged.
            others = [
                k for k in keys if not (series.get(k) or {}).get("x") or not _is_number(summary.get(k, 0))
            ]
            for key, s in series.items():
                for i, x in enumerate(s["x"]):
                    row = by_x.setdefault(x, {x_axis: x})
                    mean = s["mean"][i]
                    row[key] = math.nan if mean is None else mean
                    if stats:
                        row[f"{key}:min"], row[f"{key}:max"] = s["min"][i], s["max"][i]
                        row[f"{key}:count"] = s["count"][i]
            if others:
                self._sample_others(others, samples, x_axis, by_x, r if every else one)
        rows = []
        for x, r in sorted((x, r) for r, by_x in by_rank.items() for x in by_x):
            rows.append({x_axis: x, "_rank": r, **by_rank[r][x]} if every else by_rank[r][x])
        if pandas:
            try:
                pd = importlib.import_module("pandas")  # optional: no stubs needed
            except ImportError:
                return rows
            first = [x_axis, "_rank"] if every else [x_axis]
            return pd.DataFrame(rows, columns=[*first, *_columns(keys, stats)])
        return rows

    def _sample_others(
        self,
        keys: Sequence[str],
        samples: int,
        x_axis: str,
        by_x: dict[Any, dict[str, Any]],
        rank: int | str | None = None,
    ) -> None:
        """Into ``by_x``: of each key's values that are not numbers, at most ``samples``, evenly
        spaced over its rows (the first and the last always), each at its row's ``x_axis``."""
        found: dict[str, list[tuple[Any, Any]]] = {k: [] for k in keys}
        for i in range(0, len(keys), KEYS_PER_REQUEST):
            part = keys[i : i + KEYS_PER_REQUEST]
            for row in self.scan_history(keys=part, page_size=MAX_PAGE, rank=rank):
                x = row.get(x_axis)
                for k in part:
                    if k in row and not _is_number(row[k]):
                        found[k].append((x, row[k]))
        for k, points in found.items():
            n = len(points)
            if n > samples:
                points = (
                    [points[(i * (n - 1)) // (samples - 1)] for i in range(samples)]
                    if samples > 1
                    else points[-1:]
                )
            for x, v in points:
                by_x.setdefault(x, {x_axis: x})[k] = v

    def scan_history(
        self,
        keys: Sequence[str] | None = None,
        min_step: int | None = None,
        max_step: int | None = None,
        page_size: int = 1000,
        rank: int | str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every history row as logged, in step order, fetched a page at a time while iterated.

        Args:
            keys: Only these keys (each row still has ``_step``, ``_timestamp`` and
                ``_runtime``); rows holding none of them are left out.  Default: every key.
            min_step, max_step: Inclusive bounds on ``_step``.
            page_size: Rows per request, 1 to 10000.
            rank: For a distributed run, whose rows: None or 0 rank 0's (W&B's rows), a rank
                number that rank's, ``"all"`` every rank's, merged in step order (rank order
                within a step), each with ``_rank``.

        Yields:
            One dict per row: ``_step``, ``_timestamp``, ``_runtime`` (and ``_rank``) and the
            row's values.

        Raises:
            UsageError: At once, for a ``rank`` that is not None, an int >= 0 or ``"all"``.
            InvalidRequestError, NotFoundError, ApiError: From the request for the page being
                read (as ``Api``), raised by the iteration, not by this call.

        A generator: no request is made until the first row is asked for, and each further page
        is one blocking request, made when the previous page has been consumed (with
        ``rank="all"``, one page per rank is held at a time).
        """
        which = _rank_query(rank, all_ok=True)
        if rank == "all":
            return self._scan_all(keys, min_step, max_step, page_size)
        return self._scan(keys, min_step, max_step, page_size, which)

    def _scan_all(
        self, keys: Sequence[str] | None, min_step: int | None, max_step: int | None, page_size: int
    ) -> Iterator[dict[str, Any]]:
        def labelled(r: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
            for row in self._scan(keys, min_step, max_step, page_size, _rank_query(r, all_ok=False)):
                yield row["_step"], r, {**row, "_rank": r}

        for _, _, row in heapq.merge(*(labelled(r) for r in self._ranks_seen())):
            yield row

    def _scan(
        self,
        keys: Sequence[str] | None,
        min_step: int | None,
        max_step: int | None,
        page_size: int,
        which: dict[str, Any],
    ) -> Iterator[dict[str, Any]]:
        step = min_step
        while True:
            page = self._api._get(
                self._url + "/history",
                keys=",".join(keys) if keys else None,
                min_step=step,
                max_step=max_step,
                page_size=page_size,
                **which,
            )
            yield from page["rows"]
            if "next_min_step" not in page:
                return
            step = page["next_min_step"]

    def files(self) -> list[ApiFile]:
        """The files kept with the run (``runstream.save``, config.yaml, summary.json...)."""
        from runstream.files import run_files

        return run_files(self)

    def file(self, name: str) -> ApiFile:
        """One of them by its path under files/ (``NotFoundError`` if the run has no such file)."""
        from runstream.files import run_file

        return run_file(self, name)

    def system(
        self,
        keys: Sequence[str] | None = None,
        min_time: float | None = None,
        max_time: float | None = None,
        rank: int | None = None,
        node: int | None = None,
    ) -> list[dict[str, Any]]:
        """The run's system-metric samples in time order, ``{"_timestamp": t, "system/cpu": ...}``
        (every key, or ``keys``; docs/system-metrics.md lists them).  For a distributed run the
        default is the node-wide metrics of rank 0's node; ``node=K`` node K's, ``rank=N``
        rank N's own process stats."""
        if node is not None and (not isinstance(node, int) or isinstance(node, bool) or node < 0):
            raise UsageError(f"node must be an int >= 0, not {node!r}")
        got = self._api._get(
            self._url + "/system",
            keys=",".join(keys) if keys else None,
            min_time=min_time,
            max_time=max_time,
            node=node,
            **_rank_query(rank, all_ok=False),
        )
        return list(got["samples"])


def _rank_query(rank: Any, all_ok: bool) -> dict[str, Any]:
    """The ``rank`` query parameter for ``rank`` (none for None); UsageError for a bad one."""
    if rank is None:
        return {}
    if rank == "all" and all_ok:
        return {"rank": "all"}
    if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 0:
        return {"rank": rank}
    also = ' or "all"' if all_ok else ""
    raise UsageError(f"rank must be None, an int >= 0{also}, not {rank!r}")


def _is_number(v: Any) -> bool:
    """A value the server charts (a bool, an int, a float; None and NaN included)."""
    return v is None or isinstance(v, int | float)


def _columns(keys: Sequence[str], stats: bool) -> list[str]:
    out = []
    for k in keys:
        out.append(k)
        if stats:
            out += [f"{k}:min", f"{k}:max", f"{k}:count"]
    return out
