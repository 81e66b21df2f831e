"""Chunks as numpy arrays for the read side: decoding a chunk's columns, and "cells", the
statistics of each run of ``CELL`` consecutive points of a chunk, kept in a bounded cache.

Cells make a chart's series cost what its bucket count costs, not its length: a 1,000-bucket view
of a million points needs ~1,000 points per bucket, and a chunk's 2,000-4,000 points cut into
cells of 64 give buckets their exact min, max, mean and count at that grain (``series.py`` says
how cells are assigned to buckets).  Chunks carry their cells (``chunk_cells.py``):
``read_records`` reads them from the front of the blob without decompressing the points.
Chunks written before that have none, and ``cells_of`` computes them from the decoded points,
with the same functions the writer uses.

Concurrency contract: ``decode_columns``, ``read_records``, ``join_records`` and ``cells_of`` are
pure functions (any thread); ``CellCache`` may be shared by every reading thread (one lock around its dict).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from runstream_ingest.server.storage.history import chunk_cells as cc
from runstream_ingest.server.storage.history import chunks as ck

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
CELL = cc.CELL


def decode_columns(blob: bytes, what: str, want_steps: bool, want_times: bool) -> tuple[Any, Any, F64]:
    """(steps int64 | None, times float64 | None, values float64) of a chunk, checked as
    ``chunks.decode_chunk`` checks it (ChunkCorrupt naming ``what``), unshuffled by numpy."""
    mv = memoryview(blob)
    h = ck.check_header(mv, what)
    if h.vtype == ck.VT_MIXED:  # a tag per point: the general decoder
        c = ck.decode_chunk(blob, what)
        steps = np.asarray(c.steps, np.int64) if want_steps else None
        times = np.asarray(c.times, np.float64) if want_times else None
        return steps, times, np.asarray(c.values, np.float64)
    n, first, stride = h.points, h.first_step, h.stride
    buf = np.frombuffer(ck.payload(mv, h, what), np.uint8)

    def col(pos: int, dtype: str) -> Any:
        # Byte k of every value is plane k: strided stores put them back (4x a transposing copy).
        out = np.empty(8 * n, np.uint8)
        planes = buf[pos : pos + 8 * n].reshape(8, n)
        for k in range(8):
            out[k::8] = planes[k]
        return out.view(dtype)

    pos = 0
    steps = None
    if h.xenc == ck.XENC_EXPLICIT:
        steps = col(0, "<i8") if want_steps else None
        pos = 8 * n
    elif want_steps:
        steps = first + stride * np.arange(n, dtype=np.int64)
    times = col(pos, "<f8") if want_times else None
    pos += 8 * n
    values: F64
    if h.vtype == ck.VT_F64:
        values = col(pos, "<f8")
    elif h.vtype == ck.VT_I64:
        values = col(pos, "<i8").astype(np.float64)
    else:
        values = buf[pos : pos + n].astype(np.float64)
    return steps, times, values


def prefix_len(points: int) -> int:
    """Bytes from the start of a chunk of ``points`` points that hold at least its header and
    cells (their records stored uncompressed, steps included: the most they take)."""
    return ck.HEADER_SIZE + cc.SECTION_HEAD.size + cc.records_len(points, True, CELL)


class CellRecords(NamedTuple):
    """One chunk's stored cells, checked: its records, decompressed, and what reading them
    needs (``chunk_cells.parse_sections``)."""

    explicit_steps: bool
    cell: int
    points: int
    first_step: int
    stride: int
    raw: bytes

    @property
    def nbytes(self) -> int:
        return len(self.raw) + 100  # and the tuple around it


def read_records(prefix: bytes, what: str) -> CellRecords | None:
    """The cells stored in a chunk, from the first ``prefix_len`` bytes (or more) of its blob;
    None when it has none (an "RSC1" chunk, or one of ``CELL`` points or fewer).  The header and
    the cell section are checked (ChunkCorrupt naming ``what``); the compressed points are not
    read, so damage there is found by whatever reads them."""
    mv = memoryview(prefix)
    if len(mv) < ck.HEADER_SIZE:
        raise ck.ChunkCorrupt(f"{what}: {len(mv)} bytes is shorter than a chunk header")
    # The cell section's CRC covers the header's fields: once it matches, they are as written.
    magic, _, _, xenc, cell, n, first, stride, _, cells_len = ck.HEADER.unpack_from(mv)
    if magic not in (ck.MAGIC, ck.MAGIC_V1):
        raise ck.ChunkCorrupt(f"{what}: bad magic {bytes(magic)!r}")
    if magic == ck.MAGIC_V1 or not cell:
        if cell or cells_len:
            raise ck.ChunkCorrupt(f"{what}: cell section of {cells_len} bytes does not fit the header")
        return None
    end = ck.HEADER_SIZE + cells_len
    if len(mv) < end or cells_len < cc.SECTION_HEAD.size or n == 0:
        raise ck.ChunkCorrupt(f"{what}: {len(mv)} bytes is shorter than its cells")
    explicit = xenc == ck.XENC_EXPLICIT
    raw = cc.check_section(
        mv[ck.HEADER_SIZE : end], mv[ck.CRC_START : ck.HEADER_SIZE], n, cell, explicit, ck._zstd()[1]
    )
    if isinstance(raw, str):
        raise ck.ChunkCorrupt(f"{what}: {raw}")
    return CellRecords(explicit, cell, n, first, stride, raw)


def join_records(recs: Sequence[CellRecords]) -> cc.StoredCells:
    """The cells of many chunks, joined, with a few numpy calls per record layout (one or two in
    practice: steps stored or not) whatever the number of chunks."""
    layouts: dict[tuple[bool, int], list[CellRecords]] = {}
    for r in recs:
        layouts.setdefault((r.explicit_steps, r.cell), []).append(r)
    parts = []
    for (explicit, cell), rs in layouts.items():
        counts, firsts, strides = (
            np.array(a, np.int64) for a in zip(*((r.points, r.first_step, r.stride) for r in rs), strict=True)
        )
        parts.append(cc.parse_sections([r.raw for r in rs], explicit, cell, counts, firsts, strides))
    if len(parts) == 1:
        return parts[0]
    return cc.StoredCells._make(np.concatenate(a) for a in zip(*parts, strict=True))


class Cells(NamedTuple):
    """Per cell of a decoded chunk, in x order: first and last x, points, non-NaN points, min and
    max of the non-NaN values (+inf/-inf when none), their sum (NaN when +inf and -inf meet)."""

    x0: F64
    x1: F64
    points: I64
    valid: I64
    mn: F64
    mx: F64
    sum: F64

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self)


def cells_of(x: Any, v: F64) -> Cells:
    """The cells of one chunk's points (x may be steps or times, in the chunk's own order),
    computed as the writer computes stored cells."""
    starts = cc.starts_of(len(v), CELL)
    count = np.diff(np.append(starts, len(v)))
    nans, mn, mx, sm = cc.value_cells(v, starts)
    xf = np.asarray(x, np.float64)
    x0, x1 = np.minimum.reduceat(xf, starts), np.maximum.reduceat(xf, starts)
    return Cells(x0, x1, count, count - nans, mn, mx, sm)


def join_cells(parts: list[Cells]) -> Cells:
    return Cells._make(np.concatenate([p[i] for p in parts]) for i in range(len(Cells._fields)))


class CellCache:
    """Cells by chunk identity (a chunk's ``CellRecords``, or ``Cells`` computed from its points
    and how x and y were read), least recently used first out past ``max_bytes``.

    A key must change when the chunk's points do: callers use the chunk's id with all its stored
    statistics (steps, times, count, NaNs, min, max, sum).  Ids are reused only after a delete; a
    reused id with every statistic equal would need the same number of points over the same
    steps and times with the same min, max and sum."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._d: OrderedDict[Hashable, Cells | CellRecords] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> Cells | CellRecords | None:
        with self._lock:
            c = self._d.get(key)
            if c is not None:
                self._d.move_to_end(key)
            return c

    def put(self, key: Hashable, cells: Cells | CellRecords) -> None:
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._d[key] = cells
            self._bytes += cells.nbytes
            while self._bytes > self.max_bytes and self._d:
                self._bytes -= self._d.popitem(last=False)[1].nbytes

    def __len__(self) -> int:
        return len(self._d)
