"""Downsampling a history series into N buckets from its chunks, so that no spike is ever hidden.

A chart of a million points needs a thousand buckets, each with the min, max, mean and count of
the points it covers: the mean is the line, min..max the shaded band, and one spike among a
million points is still the max of its bucket.  The bytes returned depend on N only.

The work depends on N as far as the chunk layout allows (docs/http-api.md, "Downsampling").  Each
chunk in the range is taken at the coarsest grain that is still finer than ``SNAP_SPAN`` bucket
widths, and a grain's statistics go to the bucket holding its midpoint:

* whole, from the statistics stored beside it (count, NaNs, min, max, sum): its blob is not even
  read.  10^7 points in 1,000 buckets are ~2,500 rows of statistics;
* by cells of 64 points (``chunk_cells.py``), read from the front of the chunk's blob without
  decompressing it (chunks written before cells were stored are decoded, their cells computed),
  then kept in a cache: 10^6 points in 1,000 buckets cost ~16,000 cells per request;
* point by point, when even cells are too coarse (a series of fewer than ~32 points per bucket,
  cheap because short) and for the chunks the requested range's ends cut through;
* every point, exactly, when the range holds no more points than buckets.

A grain taken whole can reach a little past its bucket's nominal range, so every bucket reports
the x of its first and last point, which charts use; buckets stay in order and never overlap.

Wall-time and relative-time axes bucket on the chunks' first and last times; the SDK stamps rows
as they are logged, so times follow steps.  Points decoded one by one are placed by their own
time even when times go back.

Pure functions: the caller runs the SQL (``sqlite/query.py``) and hands over chunk rows and a way
to fetch blobs; any thread may call them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from runstream_ingest.server.storage.history import chunk_arrays as ca
from runstream_ingest.server.storage.history import chunk_cells as cc

X_AXES = ("_step", "_runtime", "_timestamp")
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
SNAP_SPAN = 2.0  # a chunk or cell spanning at most this many bucket widths is taken whole
MAX_BUCKETS = 10_000

F64 = npt.NDArray[np.float64]


class ChunkRow(NamedTuple):
    """A chunk's row of statistics (the ``chunks`` table, without the blob)."""

    id: int
    first_step: int
    last_step: int
    first_time: float
    last_time: float
    points: int
    nans: int
    min: float | None  # None: every value NaN
    max: float | None
    sum: float | None  # None: NaN (the chunk holds both infinities)


@dataclass(slots=True)
class Series:
    """One key's buckets as columns (a chart's arrays).  ``exact``: one entry per point, so
    ``min == max == mean`` is the point's value (None for NaN) and ``count`` is 1."""

    key: str
    exact: bool
    x: list[float] = field(default_factory=list)  # x of the bucket's first point
    x_last: list[float] = field(default_factory=list)  # x of its last point
    min: list[float | None] = field(default_factory=list)  # of non-NaN values; None when all NaN
    max: list[float | None] = field(default_factory=list)
    mean: list[float | None] = field(default_factory=list)  # NaN when it holds +inf and -inf
    count: list[int] = field(default_factory=list)  # points, NaN included


@dataclass(frozen=True, slots=True)
class Axis:
    """How a chunk's x is read: steps, or times minus ``offset`` (run start for _runtime)."""

    name: str
    offset: float = 0.0

    @property
    def steps(self) -> bool:
        return self.name == "_step"


@dataclass(frozen=True, slots=True)
class YMap:
    """How a chunk's values become y: as stored, or a derived key of the ``_timestamp`` series
    (``_runtime`` = time - start: its statistics shift; ``_step``: decoded)."""

    shift: float = 0.0
    from_steps: bool = False


class _Acc:
    """Per-bucket running statistics over n buckets of [lo, hi] (nominal width ``width``)."""

    def __init__(self, lo: float, hi: float, n: int, integer: bool) -> None:
        self.lo, self.n, self.integer = lo, n, integer
        self.span = (hi - lo + 1) if integer else (hi - lo)
        self.width = self.span / n if self.span > 0 else 1.0
        self.count = np.zeros(n, np.int64)
        self.valid = np.zeros(n, np.int64)
        self.mn = np.full(n, np.inf)
        self.mx = np.full(n, -np.inf)
        self.sum = np.zeros(n)
        self.x0 = np.full(n, np.inf)
        self.x1 = np.full(n, -np.inf)

    def add_cells(self, c: ca.Cells) -> None:
        """Cells (or whole chunks as cells), each into the bucket of its midpoint."""
        if not len(c.points):
            return
        mid = (c.x0 + c.x1) / 2
        b = self.index(np.floor(mid) if self.integer else mid)
        if len(b) > 1 and np.any(b[1:] < b[:-1]):
            order = np.argsort(b, kind="stable")
            b, c = b[order], ca.Cells._make(a[order] for a in c)
        starts = np.concatenate(([0], np.flatnonzero(b[1:] != b[:-1]) + 1))
        u = b[starts]
        self.count[u] += np.add.reduceat(c.points, starts)
        self.valid[u] += np.add.reduceat(c.valid, starts)
        self.mn[u] = np.minimum(self.mn[u], np.minimum.reduceat(c.mn, starts))
        self.mx[u] = np.maximum(self.mx[u], np.maximum.reduceat(c.mx, starts))
        self.sum[u] += np.add.reduceat(c.sum, starts)
        self.x0[u] = np.minimum(self.x0[u], np.minimum.reduceat(c.x0, starts))
        self.x1[u] = np.maximum(self.x1[u], np.maximum.reduceat(c.x1, starts))

    def _exact_int(self) -> bool:
        return self.integer and abs(self.span) * self.n < 2**62

    def index(self, x: Any) -> Any:
        """Bucket of each x (an array or a scalar) in [lo, hi]."""
        if self._exact_int():
            i = (np.asarray(x, np.int64) - int(self.lo)) * self.n // int(self.span)
        else:
            i = np.floor((np.asarray(x, np.float64) - self.lo) / self.width).astype(np.int64)
        return np.minimum(np.maximum(i, 0), self.n - 1)

    def starts(self) -> Any:
        """The least x of each bucket (as ``index`` draws them), ascending."""
        i = np.arange(self.n, dtype=np.int64)
        if self._exact_int():
            return int(self.lo) + (i * int(self.span) + self.n - 1) // self.n
        return self.lo + i * self.width

    def add_points(self, x: Any, v: F64) -> None:
        """Points, split bucket by bucket in C: x in order is cut where the bucket starts fall
        (``searchsorted``), then one ``reduceat`` per statistic."""
        if len(x) == 0:
            return
        if len(x) > 1 and np.any(x[1:] < x[:-1]):  # times that went back: sort the points
            order = np.argsort(x, kind="stable")
            x, v = x[order], v[order]
        pos = np.searchsorted(x, self.starts()) if self.n > 1 else np.zeros(1, np.int64)
        pos[0] = 0  # below the first start only through float rounding: bucket 0, as ``index``
        ends = np.append(pos[1:], len(x))
        u = np.flatnonzero(pos < ends)
        starts, counts = pos[u], ends[u] - pos[u]
        nan = np.isnan(v)
        if nan.any():
            valid = counts - np.add.reduceat(nan.astype(np.int64), starts)
            vmin = np.where(nan, np.inf, v)
            vmax = np.where(nan, -np.inf, v)
            vsum = np.where(nan, 0.0, v)
        else:
            valid, vmin, vmax, vsum = counts, v, v, v
        self.count[u] += counts
        self.valid[u] += valid
        self.mn[u] = np.minimum(self.mn[u], np.minimum.reduceat(vmin, starts))
        self.mx[u] = np.maximum(self.mx[u], np.maximum.reduceat(vmax, starts))
        self.sum[u] += np.add.reduceat(vsum, starts)
        self.x0[u] = np.minimum(self.x0[u], x[starts])
        self.x1[u] = np.maximum(self.x1[u], x[starts + counts - 1])

    def series(self, key: str, integer_x: bool) -> Series:
        keep = np.flatnonzero(self.count)
        valid = self.valid[keep]
        has = valid > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum[keep] / np.where(has, valid, 1)
        conv: Callable[[Any], list[Any]] = (lambda a: a.astype(np.int64).tolist()) if integer_x else _floats
        return Series(
            key,
            False,
            conv(self.x0[keep]),
            conv(self.x1[keep]),
            _masked(self.mn[keep], has),
            _masked(self.mx[keep], has),
            _masked(mean, has),
            self.count[keep].tolist(),
        )


def _floats(a: Any) -> list[float]:
    out: list[float] = np.asarray(a, np.float64).tolist()
    return out


def _masked(a: F64, has: Any) -> list[float | None]:
    vals: list[float | None] = a.tolist()
    if not has.all():
        for i in np.flatnonzero(~has).tolist():
            vals[i] = None
    return vals


def _col(rows: Sequence[ChunkRow], i: int, dtype: Any) -> Any:
    """Field ``i`` of every row as an array (None, a NaN statistic, reads as NaN)."""
    return np.fromiter(map(itemgetter(i), rows), dtype, len(rows))


def spans(rows: Sequence[ChunkRow], axis: Axis) -> tuple[Any, Any]:
    """Each row's x range as two arrays (int64 steps, or float64 times in the axis's units):
    a series of 10^7 points has thousands of chunks, too many for a Python loop per request."""
    if axis.steps:
        return _col(rows, 1, np.int64), _col(rows, 2, np.int64)
    t0, t1 = _col(rows, 3, np.float64) - axis.offset, _col(rows, 4, np.float64) - axis.offset
    return np.minimum(t0, t1), np.maximum(t0, t1)


def rows_as_cells(rows: Sequence[ChunkRow], a: Any, b: Any, y: YMap) -> ca.Cells:
    """Whole chunks as one cell each (x from ``a`` to ``b``), from the statistics stored beside them."""
    count = _col(rows, 5, np.int64)
    valid = count - _col(rows, 6, np.int64)
    mn, mx = _col(rows, 7, np.float64), _col(rows, 8, np.float64)  # NaN: every value NaN
    mn[np.isnan(mn)], mx[np.isnan(mx)] = np.inf, -np.inf
    # Stored sums are of the non-NaN values (0 when there are none); NULL is +inf plus -inf.
    sm = _col(rows, 9, np.float64) - y.shift * valid
    x0, x1 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ca.Cells(x0, x1, count, valid, mn - y.shift, mx - y.shift, sm)


def stored_as_cells(s: cc.StoredCells, axis: Axis, y: YMap) -> ca.Cells:
    """Chunks' stored cells in this axis's x and this key's y (``y.from_steps`` is not)."""
    if axis.steps:
        x0, x1 = s.step_min.astype(np.float64), s.step_max.astype(np.float64)
    else:  # subtracting keeps the order, so these are the min and max of each cell's x
        x0, x1 = s.time_min - axis.offset, s.time_max - axis.offset
    mn, mx, sm = s.mn, s.mx, s.sum
    if y.shift:
        mn, mx, sm = mn - y.shift, mx - y.shift, sm - y.shift * s.valid
    return ca.Cells(x0, x1, s.points, s.valid, mn, mx, sm)


def bounds(rows: Sequence[ChunkRow], axis: Axis) -> tuple[float, float] | None:
    """The x range the rows cover (None when there are none)."""
    if not rows:
        return None
    a, b = spans(rows, axis)
    return a.min().item(), b.max().item()


# +inf and -inf in one sum make NaN, and huge values overflow to inf: both are answers here (a NaN
# mean, an infinite sum), not mistakes, so numpy is told not to warn of them.
@np.errstate(invalid="ignore", over="ignore")
def downsample(
    key: str,
    rows: Sequence[ChunkRow],
    fetch: Callable[[Sequence[int]], dict[int, bytes]],
    n: int,
    axis: Axis,
    lo: float,
    hi: float,
    y: YMap = YMap(),
    what: str = "series",
    cache: ca.CellCache | None = None,
    fetch_prefix: Callable[[Sequence[ChunkRow]], dict[int, bytes]] | None = None,
) -> Series:
    """The points of ``rows`` (a series' chunks overlapping [lo, hi], any order) with x in
    [lo, hi], in ``n`` buckets, or exact when there are no more than ``n`` of them.
    ``fetch(chunk_ids)`` returns those chunks' blobs; only chunks that are decoded are fetched.
    ``fetch_prefix(rows)``: at least the first ``chunk_arrays.prefix_len(row.points)`` bytes of
    those chunks' blobs, where their stored cells are.  With a ``cache``, the cells used are kept
    there for the next request."""
    if not 1 <= n <= MAX_BUCKETS:
        raise ValueError(f"buckets must be in [1, {MAX_BUCKETS}], not {n}")
    a, b = spans(rows, axis)
    if axis.steps:  # steps are integers: compared exactly, with the range's integer ends
        lo_x: Any = min(max(math.ceil(lo), I64_MIN), I64_MAX)
        hi_x: Any = min(max(math.floor(hi), I64_MIN), I64_MAX)
    else:
        lo_x, hi_x = lo, hi
    near = (b >= lo_x) & (a <= hi_x)
    within = near & (a >= lo_x) & (b <= hi_x)
    cut = [rows[i] for i in np.flatnonzero(near & ~within).tolist()]
    ins = np.flatnonzero(within)
    inside = [rows[i] for i in ins.tolist()]

    def decode(rs: Sequence[ChunkRow]) -> Iterator[tuple[ChunkRow, Any, F64]]:
        blobs = fetch([r.id for r in rs]) if rs else {}
        for r in rs:
            steps, times, values = ca.decode_columns(
                blobs[r.id], f"{what} chunk {r.id}", axis.steps or y.from_steps, not axis.steps
            )
            x = steps if axis.steps else times - axis.offset
            v = steps.astype(np.float64) if y.from_steps else (values - y.shift if y.shift else values)
            yield r, x, v

    points: list[tuple[Any, F64]] = []  # (x, y) of points in range
    for _, x, v in decode(cut):
        keep = (x >= lo) & (x <= hi)
        points.append((x[keep], v[keep]))
    if int(_col(inside, 5, np.int64).sum()) + sum(len(x) for x, _ in points) <= n:  # short: every point
        points += [(x, v) for _, x, v in decode(inside)]
        return _exact(key, points, axis.steps)
    acc = _Acc(lo, hi, n, axis.steps)
    limit = SNAP_SPAN * acc.width
    wide = b[ins].astype(np.float64) - a[ins].astype(np.float64)
    # Taken whole from their statistics; through their cells; point by point.
    whole = wide <= limit if not y.from_steps else np.zeros(len(ins), bool)
    by_cells = ~whole & (wide * ca.CELL / np.maximum(_col(inside, 5, np.int64), 1) <= limit)
    fine = [inside[i] for i in np.flatnonzero(by_cells).tolist()]
    coarse = [inside[i] for i in np.flatnonzero(~whole & ~by_cells).tolist()]
    cells = []
    if whole.any():
        w = ins[whole]
        cells.append(rows_as_cells([rows[i] for i in w.tolist()], a[w], b[w], y))
    stored: list[ca.CellRecords] = []  # read from the chunks (any axis, any y but steps)
    missing = []
    for r in fine:
        c = None
        if cache is not None:
            c = cache.get(r) if not y.from_steps else None  # y = steps: not in the records
            c = c or cache.get((r, axis, y))  # computed from the points
        if isinstance(c, ca.CellRecords):
            stored.append(c)
        elif c is not None:
            cells.append(c)
        else:
            missing.append(r)
    if missing and fetch_prefix is not None and not y.from_steps:
        prefixes = fetch_prefix(missing)
        unstored = []
        for r in missing:
            got = ca.read_records(prefixes[r.id], f"{what} chunk {r.id}")
            if got is None:  # written before chunks held cells: decoded below
                unstored.append(r)
                continue
            stored.append(got)
            if cache is not None:
                cache.put(r, got)
        missing = unstored
    if stored:
        cells.append(stored_as_cells(ca.join_records(stored), axis, y))
    todo = set(missing)
    for r, x, v in decode(missing + coarse):
        if r in todo:
            c = ca.cells_of(x, v)
            if cache is not None:
                cache.put((r, axis, y), c)
            cells.append(c)
        else:
            points.append((x, v))
    if cells:
        acc.add_cells(ca.join_cells(cells))
    points = [p for p in points if len(p[0])]
    if points:  # one pass over all points, in x order: numpy's cost per call dwarfs a chunk's work
        points.sort(key=lambda p: p[0][0])
        acc.add_points(np.concatenate([x for x, _ in points]), np.concatenate([v for _, v in points]))
    return acc.series(key, axis.steps)


def _exact(key: str, parts: list[tuple[Any, F64]], integer_x: bool) -> Series:
    if not parts:
        return Series(key, True)
    x = np.concatenate([p[0] for p in parts])
    v = np.concatenate([p[1] for p in parts])
    order = np.argsort(x, kind="stable")
    x, v = x[order], v[order]
    xs: list[Any] = x.astype(np.int64).tolist() if integer_x else _floats(x)
    vals: list[float | None] = v.tolist()
    nan = np.isnan(v)
    if nan.any():
        for i in np.flatnonzero(nan).tolist():
            vals[i] = None
    return Series(key, True, xs, list(xs), vals, list(vals), list(vals), [1] * len(xs))
