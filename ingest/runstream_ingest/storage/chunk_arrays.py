"""Chunks as numpy arrays for the read side: decoding a chunk's columns, and "cells", the
statistics of each run of ``CELL`` consecutive points of a decoded chunk, kept in a bounded cache.

Cells make a chart's series cost what its bucket count costs, not its length, once a chunk has
been read: a 1,000-bucket view of a million points needs ~1,000 points per bucket, and a chunk's
2,000-4,000 points cut into cells of 64 give buckets their exact min, max, mean and count at that
grain without decoding the chunk again (``series.py`` says how cells are assigned to buckets).

Concurrency contract: ``decode_columns`` and ``cells_of`` are pure functions (any thread);
``CellCache`` may be shared by every reading thread (one lock around its dict).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import zstandard

from runstream import records as rec

from . import chunks as ck

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
CELL = 64  # points per cell: 1/32 to 1/64 of a chunk, finer than any chart needs from a long series


def decode_columns(blob: bytes, what: str, want_steps: bool, want_times: bool) -> tuple[Any, Any, F64]:
    """(steps int64 | None, times float64 | None, values float64) of a chunk, checked as
    ``chunks.decode_chunk`` checks it (ChunkCorrupt naming ``what``), unshuffled by numpy."""
    mv = memoryview(blob)
    if len(mv) < ck.HEADER_SIZE:
        raise ck.ChunkCorrupt(f"{what}: {len(mv)} bytes is shorter than a chunk header")
    magic, crc, vtype, xenc, _, n, first, stride, raw_len, _ = ck.HEADER.unpack_from(mv)
    if magic != ck.MAGIC:
        raise ck.ChunkCorrupt(f"{what}: bad magic {bytes(magic)!r}")
    if rec.crc32c(mv[ck.CRC_START :]) != crc:
        raise ck.ChunkCorrupt(f"{what}: CRC-32C mismatch (the blob is damaged)")
    if vtype == ck.VT_MIXED:  # a tag per point: the general decoder
        c = ck.decode_chunk(blob, what)
        steps = np.asarray(c.steps, np.int64) if want_steps else None
        times = np.asarray(c.times, np.float64) if want_times else None
        return steps, times, np.asarray(c.values, np.float64)
    known = vtype in (ck.VT_F64, ck.VT_I64, ck.VT_BOOL) and xenc in (ck.XENC_EXPLICIT, ck.XENC_STRIDE)
    if not known or n == 0:
        raise ck.ChunkCorrupt(f"{what}: unknown layout vtype={vtype} xenc={xenc} count={n}")
    if raw_len != ck._raw_len(vtype, xenc, n):
        raise ck.ChunkCorrupt(f"{what}: payload length {raw_len} does not fit {n} points")
    try:
        raw = ck._zstd()[1].decompress(mv[ck.HEADER_SIZE :], max_output_size=raw_len)
    except zstandard.ZstdError as e:
        raise ck.ChunkCorrupt(f"{what}: zstd: {e}") from None
    if len(raw) != raw_len:
        raise ck.ChunkCorrupt(f"{what}: payload is {len(raw)} bytes, header says {raw_len}")
    buf = np.frombuffer(raw, np.uint8)

    def col(pos: int, dtype: str) -> Any:
        # Byte k of every value is plane k: strided stores put them back (4x a transposing copy).
        out = np.empty(8 * n, np.uint8)
        planes = buf[pos : pos + 8 * n].reshape(8, n)
        for k in range(8):
            out[k::8] = planes[k]
        return out.view(dtype)

    pos = 0
    steps = None
    if xenc == ck.XENC_EXPLICIT:
        steps = col(0, "<i8") if want_steps else None
        pos = 8 * n
    elif want_steps:
        steps = first + stride * np.arange(n, dtype=np.int64)
    times = col(pos, "<f8") if want_times else None
    pos += 8 * n
    values: F64
    if vtype == ck.VT_F64:
        values = col(pos, "<f8")
    elif vtype == ck.VT_I64:
        values = col(pos, "<i8").astype(np.float64)
    else:
        values = buf[pos : pos + n].astype(np.float64)
    return steps, times, values


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
    """The cells of one chunk's points (x may be steps or times, in the chunk's own order)."""
    n = len(v)
    starts = np.arange(0, n, CELL)
    count = np.diff(np.append(starts, n))
    nan = np.isnan(v)
    if nan.any():
        valid = count - np.add.reduceat(nan.astype(np.int64), starts)
        vmin, vmax, vsum = np.where(nan, np.inf, v), np.where(nan, -np.inf, v), np.where(nan, 0.0, v)
    else:
        valid, vmin, vmax, vsum = count, v, v, v
    xf = np.asarray(x, np.float64)
    return Cells(
        np.minimum.reduceat(xf, starts),
        np.maximum.reduceat(xf, starts),
        count,
        valid,
        np.minimum.reduceat(vmin, starts),
        np.maximum.reduceat(vmax, starts),
        np.add.reduceat(vsum, starts),
    )


def join_cells(parts: list[Cells]) -> Cells:
    return Cells._make(np.concatenate([p[i] for p in parts]) for i in range(len(Cells._fields)))


class CellCache:
    """Cells by chunk identity, least recently used first out past ``max_bytes``.

    A key must change when the chunk's points do: callers use the chunk's id with all its stored
    statistics (steps, times, count, NaNs, min, max, sum) and how x and y were read.  Ids are
    reused only after a delete; a reused id with every statistic equal would need the same number
    of points over the same steps and times with the same min, max and sum."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._d: OrderedDict[Hashable, Cells] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> Cells | None:
        with self._lock:
            c = self._d.get(key)
            if c is not None:
                self._d.move_to_end(key)
            return c

    def put(self, key: Hashable, cells: Cells) -> None:
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
