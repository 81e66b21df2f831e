"""The runs ``runstream.Api`` returns: ``Runs`` (a lazy, paged list) and ``ApiRun``.

Concurrency contract: both belong to the thread that uses them (they cache pages and edits).
"""

from __future__ import annotations

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

    def history_keys(self) -> list[str]:
        return list(self._api._get(self._url + "/keys")["keys"])

    def series(
        self,
        keys: Sequence[str],
        buckets: int = 1000,
        x_axis: str = "_step",
        min: float | None = None,
        max: float | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Per key, the columns of its buckets: ``x``, ``x_last``, ``min``, ``max``, ``mean``,
        ``count`` and ``exact`` (docs/http-api.md, "series")."""
        out: dict[str, dict[str, Any]] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), KEYS_PER_REQUEST):
            got = self._api._get(
                self._url + "/series",
                keys=",".join(keys[i : i + KEYS_PER_REQUEST]),
                buckets=buckets,
                x_axis=x_axis,
                min=min,
                max=max,
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
            keys: The history keys to fetch.  Default: every key of the run (one request more).
            samples: The most buckets per key.
            x_axis: ``"_step"``, ``"_runtime"`` or ``"_timestamp"``.
            pandas: Return a pandas DataFrame (when pandas is installed) rather than a list of
                dicts.
            stats: Add ``<key>:min``, ``<key>:max`` and ``<key>:count`` per bucket, so spikes
                that the mean smooths over stay visible.

        Returns:
            A DataFrame with the columns ``x_axis`` and then the keys, or, with
            ``pandas=False`` or without pandas, the same rows as dicts sorted by ``x_axis``.

        Raises:
            InvalidRequestError: The server refused a key, ``samples`` or ``x_axis``.
            ApiError: As ``Api`` (one request per 50 keys, each bounded by the ``Api``'s
                timeout).
        """
        if keys is None:
            keys = [k for k in self.history_keys() if k not in RESERVED and k != x_axis]
        by_x: dict[Any, dict[str, Any]] = {}
        got = self.series(keys, samples, x_axis)
        summary = self._data.get("summary") or {}
        # Keys the series cannot chart (no numeric point), or whose last value is not a number:
        # their other values (media pointers, strings...) are read as logged.
        others = [k for k in keys if not (got.get(k) or {}).get("x") or not _is_number(summary.get(k, 0))]
        for key, s in got.items():
            for i, x in enumerate(s["x"]):
                row = by_x.setdefault(x, {x_axis: x})
                mean = s["mean"][i]
                row[key] = math.nan if mean is None else mean
                if stats:
                    row[f"{key}:min"], row[f"{key}:max"] = s["min"][i], s["max"][i]
                    row[f"{key}:count"] = s["count"][i]
        if others:
            self._sample_others(others, samples, x_axis, by_x)
        rows = [by_x[x] for x in sorted(by_x)]
        if pandas:
            try:
                pd = importlib.import_module("pandas")  # optional: no stubs needed
            except ImportError:
                return rows
            return pd.DataFrame(rows, columns=[x_axis, *_columns(keys, stats)])
        return rows

    def _sample_others(
        self, keys: Sequence[str], samples: int, x_axis: str, by_x: dict[Any, dict[str, Any]]
    ) -> None:
        """Into ``by_x``: of each key's values that are not numbers, at most ``samples``, evenly
        spaced over its rows (the first and the last always), each at its row's ``x_axis``."""
        found: dict[str, list[tuple[Any, Any]]] = {k: [] for k in keys}
        for i in range(0, len(keys), KEYS_PER_REQUEST):
            part = keys[i : i + KEYS_PER_REQUEST]
            for row in self.scan_history(keys=part, page_size=MAX_PAGE):
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
    ) -> Iterator[dict[str, Any]]:
        """Every history row as logged, in step order, fetched a page at a time while iterated.

        Args:
            keys: Only these keys (each row still has ``_step``, ``_timestamp`` and
                ``_runtime``); rows holding none of them are left out.  Default: every key.
            min_step, max_step: Inclusive bounds on ``_step``.
            page_size: Rows per request, 1 to 10000.

        Yields:
            One dict per row: ``_step``, ``_timestamp``, ``_runtime`` and the row's values.

        Raises:
            InvalidRequestError, NotFoundError, ApiError: From the request for the page being
                read (as ``Api``), raised by the iteration, not by this call.

        A generator: no request is made until the first row is asked for, and each further page
        is one blocking request, made when the previous page has been consumed.
        """
        step = min_step
        while True:
            page = self._api._get(
                self._url + "/history",
                keys=",".join(keys) if keys else None,
                min_step=step,
                max_step=max_step,
                page_size=page_size,
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
        self, keys: Sequence[str] | None = None, min_time: float | None = None, max_time: float | None = None
    ) -> list[dict[str, Any]]:
        """The run's system-metric samples in time order, ``{"_timestamp": t, "system/cpu": ...}``
        (every key, or ``keys``; docs/system-metrics.md lists them)."""
        got = self._api._get(
            self._url + "/system",
            keys=",".join(keys) if keys else None,
            min_time=min_time,
            max_time=max_time,
        )
        return list(got["samples"])


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
