"""Cells: the statistics of each run of ``CELL`` consecutive points of a chunk, computed when the
chunk is written and stored at the front of its blob (docs/storage.md, "Cells").

A chart of a long series needs its points at a grain finer than whole chunks but far coarser
than points: a 1,000-bucket view of a million points wants ~1,000 points per bucket, and a chunk
of 2,000-4,000 points in cells of 64 gives buckets their min, max, mean and count at that grain.
Stored in the chunk, cells cost a chart the bytes of the cell section (read by prefix: the
compressed points are not even fetched) instead of decompressing every chunk on the first view.

A cell is one fixed-size record, so the sections of hundreds of chunks, joined, are one numpy
array of records: a chart reads them with a few numpy calls whatever the number of chunks.

The same functions compute cells at write time and, for chunks written before cells were stored,
from decoded points at read time (``chunk_arrays.py``), so both give the same numbers bit for bit.

Pure functions over their arguments: any thread.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import zstandard

from runstream.format import record as rec

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

CELL = 64  # points per cell: 1/32 to 1/64 of a chunk, finer than any chart needs from a long series
SECTION_HEAD = struct.Struct("<II")  # cells_crc, zlen (0: the records follow uncompressed)
_STATS = [("time_min", "<f8"), ("time_max", "<f8"), ("min", "<f8"), ("max", "<f8"), ("sum", "<f8"),
          ("nans", "<u2")]  # fmt: skip
# One record per cell, packed, little-endian; min and max step only when the chunk stores steps
# (a chunk whose steps are first_step + i * stride has them computed).
RECORD = {
    True: np.dtype([("step_min", "<i8"), ("step_max", "<i8"), *_STATS]),
    False: np.dtype(_STATS),
}
assert RECORD[True].itemsize == 58 and RECORD[False].itemsize == 42


def records_len(count: int, explicit_steps: bool, cell: int) -> int:
    """Bytes of the cell records of a chunk of ``count`` points (0: no cells), uncompressed."""
    return -(-count // cell) * RECORD[explicit_steps].itemsize if cell else 0


def starts_of(count: int, cell: int) -> I64:
    return np.arange(0, count, cell, dtype=np.int64)


def value_cells(v: F64, starts: I64, clean: bool = False) -> tuple[I64, F64, F64, F64]:
    """(NaN count, min, max, sum) of each cell of ``v``: min/max/sum of the non-NaN values,
    +inf/-inf/0 when a cell holds none; a sum of +inf and -inf is NaN.  ``clean``: the caller
    knows ``v`` holds no NaN and no infinity, and no sum of CELL values can overflow (the
    writer knows it from the chunk's statistics), so the checks for them are skipped."""
    if clean:
        mn, mx = np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)
        return np.zeros(len(starts), np.int64), mn, mx, np.add.reduceat(v, starts)
    nan = np.isnan(v)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf and overflow are answers here
        if nan.any():
            nans = np.add.reduceat(nan.astype(np.int64), starts)
            vmin, vmax, vsum = np.where(nan, np.inf, v), np.where(nan, -np.inf, v), np.where(nan, 0.0, v)
        else:
            nans = np.zeros(len(starts), np.int64)
            vmin = vmax = vsum = v
        mn, mx = np.minimum.reduceat(vmin, starts), np.maximum.reduceat(vmax, starts)
        return nans, mn, mx, np.add.reduceat(vsum, starts)


XCells = tuple[Any, Any, F64, F64]  # step min, step max (None: not stored), time min, time max


def x_cells(steps: Any, times: F64, explicit_steps: bool) -> XCells:
    """The x of a chunk's cells (shared by every key of a batch with these steps and times)."""
    starts = starts_of(len(times), CELL)
    tmin, tmax = np.minimum.reduceat(times, starts), np.maximum.reduceat(times, starts)
    if not explicit_steps:
        return None, None, tmin, tmax
    s = np.asarray(steps, np.int64)
    return np.minimum.reduceat(s, starts), np.maximum.reduceat(s, starts), tmin, tmax


def section_body(x: XCells, v: F64, zc: zstandard.ZstdCompressor, clean: bool = False) -> bytes:
    """The cell section after its CRC: ``zlen`` and the records of cells with x ``x`` and
    values ``v`` (``clean``: as ``value_cells`` says), compressed when that makes them smaller
    (constant metrics: ~1/5)."""
    smin, smax, tmin, tmax = x
    nans, mn, mx, sm = value_cells(v, starts_of(len(v), CELL), clean)
    out = np.empty(len(tmin), RECORD[smin is not None])
    if smin is not None:
        out["step_min"], out["step_max"] = smin, smax
    out["time_min"], out["time_max"], out["min"], out["max"], out["sum"], out["nans"] = (
        tmin,
        tmax,
        mn,
        mx,
        sm,
        nans,
    )
    raw = out.tobytes()
    frame = zc.compress(raw)
    if len(frame) < len(raw):
        return struct.pack("<I", len(frame)) + frame
    return struct.pack("<I", 0) + raw


def section(header_fields: bytes | memoryview, body: bytes) -> bytes:
    """The cell section: a CRC-32C of the header's bytes 8..39 and of ``body``, then ``body``.
    The section is checked on its own, so that it can be trusted when read without the rest."""
    return struct.pack("<I", rec.crc32c(body, rec.crc32c(header_fields))) + body


def check_section(
    sec: memoryview,
    header_fields: memoryview,
    count: int,
    cell: int,
    explicit_steps: bool,
    zd: zstandard.ZstdDecompressor,
) -> bytes | str:
    """A section's records (decompressed), or a string saying what is wrong: a CRC that does
    not match, a length that does not fit the chunk."""
    crc, zlen = SECTION_HEAD.unpack_from(sec)
    if rec.crc32c(sec[4:], rec.crc32c(header_fields)) != crc:
        return "CRC-32C mismatch in its cells (the blob is damaged)"
    size = records_len(count, explicit_steps, cell)
    body = sec[SECTION_HEAD.size :]
    if len(body) != (zlen or size):
        return f"cell section of {len(body)} bytes does not fit {count} points"
    if not zlen:
        return bytes(body)
    try:
        raw: bytes = zd.decompress(body, max_output_size=size)
    except zstandard.ZstdError as e:
        return f"cells: zstd: {e}"
    if len(raw) != size:
        return f"cells are {len(raw)} bytes, {count} points need {size}"
    return raw


class StoredCells(NamedTuple):
    """Cells as read from sections, in the chunks' point order: step and time ranges, points
    and non-NaN points, min and max of the non-NaN values (+inf/-inf when none), and their sum
    (NaN when +inf and -inf meet)."""

    step_min: I64
    step_max: I64
    time_min: F64
    time_max: F64
    points: I64
    valid: I64
    mn: F64
    mx: F64
    sum: F64


def parse_sections(
    raws: Sequence[bytes], explicit_steps: bool, cell: int, counts: I64, first: I64, stride: I64
) -> StoredCells:
    """The cells of chunks whose ``check_section`` records are ``raws`` (all with steps stored,
    or all without; ``counts`` points each, steps ``first + i * stride`` when not stored),
    joined in order."""
    r = np.frombuffer(b"".join(raws), RECORD[explicit_steps])
    ncells = -(-counts // cell)
    ends = np.cumsum(ncells)
    points = np.full(len(r), cell, np.int64)
    points[ends - 1] = counts - (ncells - 1) * cell  # each chunk's last cell holds the rest
    if explicit_steps:
        smin, smax = r["step_min"].astype(np.int64), r["step_max"].astype(np.int64)
    else:  # first_step + i * stride: the ends of each cell's progression, in either direction
        chunk = np.repeat(np.arange(len(counts)), ncells)
        index = (np.arange(len(r)) - np.repeat(ends - ncells, ncells)) * cell
        a = first[chunk] + stride[chunk] * index
        b = a + stride[chunk] * (points - 1)
        smin, smax = np.minimum(a, b), np.maximum(a, b)
    f8 = np.float64
    valid = points - r["nans"]
    return StoredCells(smin, smax, r["time_min"].astype(f8), r["time_max"].astype(f8), points, valid,
                       r["min"].astype(f8), r["max"].astype(f8), r["sum"].astype(f8))  # fmt: skip
