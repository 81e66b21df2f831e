"""History as column chunks: per-key columns of points into checksummed, compressed blobs.

A chunk holds consecutive points of one series (one run, one key): their steps, timestamps and
values, compressed with zstd, plus statistics (count, NaN count, min, max, sum, first, last) that
the backend keeps in its own columns so charts can be drawn without decompressing, and the same
statistics per cell of 64 points (``chunk_cells.py``) in the blob, in front of the compressed
points, so a chart can read them without the rest.  The byte format is in ``docs/storage.md``
("Chunk"); in short::

    header  := magic "RSC2" | crc32c:u32 | vtype:u8 | xenc:u8 | cell:u16 | count:u32
               | first_step:i64 | stride:i64 | raw_len:u32 | cells_len:u32      (40 bytes)
    cells   := cells_len bytes (none when cell = 0): chunk_cells.section
    payload := zstd( [steps i64 x count]  times f64 x count  values  [tags u8 x count] )

``crc32c`` covers every byte after itself, so damage anywhere past the magic is caught before the
payload is trusted; the cell section has a CRC of its own (and of the header) for readers that
read only that far.  "RSC1" chunks (written before cells were stored) are the same without
cells: they read alike, and charts compute their cells from the points.

8-byte columns are byte-shuffled (all first bytes, then all second bytes...) so that slowly
changing numbers compress well (a numpy transpose does that in C).

Values keep their Python type: a chunk is all floats (F64, bit-exact, NaN and infinities
included), all ints (I64), all bools (BOOL) or MIXED (8 raw bytes per point plus a type tag).
Ints outside int64 and non-numbers (str, None, lists, bytes) are not chunk values; the column
builder (``columns.py``) hands them back as ``other`` points for the backend's value table.

Everything here is pure functions over their arguments; zstd contexts are per thread, so any
thread may encode or decode.
"""

from __future__ import annotations

import math
import struct
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import zstandard

from runstream.format import record as rec
from runstream_ingest.server.storage.history import chunk_cells as cc
from runstream_ingest.server.storage.interface import StorageError

MAGIC = b"RSC2"
MAGIC_V1 = b"RSC1"  # no cells: read alike (the ``cell`` and ``cells_len`` fields are 0)
HEADER = struct.Struct("<4sIBBHIqqII")
HEADER_SIZE = HEADER.size  # 40
assert HEADER_SIZE == 40
CRC_START = 8

VT_F64, VT_I64, VT_BOOL, VT_MIXED = 1, 2, 3, 4
XENC_EXPLICIT, XENC_STRIDE = 0, 1  # steps stored, or step_i = first_step + i * stride
TAG_FLOAT, TAG_INT, TAG_BOOL = 0, 1, 2
_TAGS = {float: TAG_FLOAT, int: TAG_INT, bool: TAG_BOOL}
NUMERIC = frozenset(_TAGS)

CHUNK_MAX = 4096  # points per chunk: a batch's column is cut into pieces of at most this many
COMPACT_MIN = 2048  # chunks smaller than this are merged with their neighbours by compaction
ZSTD_LEVEL = 1  # level 3 gains ~5% size on history at ~1.6x the cost on the write path
CELLS_ZSTD_LEVEL = -1
NUMPY_MIN = 256  # below this many points numpy's cost per call outweighs its speed per point

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
RESERVED = frozenset(("_step", "_timestamp", "_runtime"))  # set from the record header, as RunState does

_local = threading.local()


class ChunkCorrupt(StorageError):
    """A chunk blob failed its checks; nothing of it is returned."""


@dataclass(slots=True)  # not frozen: made for every chunk written, and frozen costs 3x to make
class ChunkStats:
    count: int
    nans: int
    first_step: int
    last_step: int
    first_time: float
    last_time: float
    min: float | None  # None when every value is NaN
    max: float | None
    sum: float  # of the non-NaN values; NaN when they hold both infinities
    first: float
    last: float


class Chunk(NamedTuple):
    steps: list[int]
    times: list[float]
    values: list[Any]


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    ctx: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = (zstandard.ZstdCompressor(level=ZSTD_LEVEL), zstandard.ZstdDecompressor())
    return ctx


def _zstd_cells() -> zstandard.ZstdCompressor:
    """Cells are small and read whole: zstd's fast level -1 costs half what level 1 does there,
    for 2% more bytes."""
    zc: zstandard.ZstdCompressor | None = getattr(_local, "cells", None)
    if zc is None:
        zc = _local.cells = zstandard.ZstdCompressor(level=CELLS_ZSTD_LEVEL)
    return zc


def shuffle8(raw: bytes | npt.NDArray[Any]) -> bytes:
    """All first bytes of the 8-byte words, then all second bytes...: slowly changing numbers
    compress well."""
    return np.frombuffer(raw, np.uint8).reshape(-1, 8).T.tobytes()


def unshuffle8(buf: bytes | memoryview, n: int) -> bytearray:
    out = bytearray(8 * n)
    for i in range(8):
        out[i::8] = buf[i * n : (i + 1) * n]
    return out


def value_type(values: Sequence[Any]) -> int | None:
    """The chunk type for these values, or None when some cannot go in a chunk."""
    types = set(map(type, values))
    if types <= {float}:
        return VT_F64
    if not types <= NUMERIC:
        return None
    if int in types:
        ints = values if types == {int} else [v for v in values if type(v) is int]
        if min(ints) < I64_MIN or max(ints) > I64_MAX:
            return None
        if types == {int}:
            return VT_I64
    return VT_BOOL if types == {bool} else VT_MIXED


def stats(steps: Sequence[int], times: Sequence[float], values: Sequence[Any], vtype: int) -> ChunkStats:
    """Statistics of a chunk's points, exactly as Python computes them on the values: ``sum``
    adds left to right (floats) or exactly (ints), NaN is left out of min, max and sum."""
    n = len(values)
    mn: float | None
    mx: float | None
    if vtype == VT_MIXED or n < NUMPY_MIN:
        if not isinstance(values, list):  # Python numbers: their sum is the reference
            values = values.tolist() if hasattr(values, "tolist") else list(values)
        s = sum(values)
        nans = 0
        finite: Sequence[Any] = values
        if math.isnan(s):  # NaN somewhere, or both infinities: find out which
            finite = [v for v in values if not math.isnan(v)]
            nans = n - len(finite)
            s = sum(finite)
        mn, mx = (float(min(finite)), float(max(finite))) if finite else (None, None)
        total, first, last = float(s), float(values[0]), float(values[-1])
    elif vtype == VT_F64:
        v = np.asarray(values, np.float64)
        with np.errstate(all="ignore"):  # inf - inf is NaN and overflow is inf, as in Python
            # add.accumulate is sequential, as Python's sum of floats (add.reduce pairs, so its
            # last bits differ); Python starts at 0, which turns a -0.0 total into 0.0.
            total = float(np.add.accumulate(v)[-1]) + 0.0
            nans = 0
            if math.isnan(total):
                isnan = np.isnan(v)
                nans = int(np.count_nonzero(isnan))
                if nans:
                    v = v[~isnan]
                    total = float(np.add.accumulate(v)[-1]) + 0.0 if len(v) else 0.0
        mn, mx = (float(v.min()), float(v.max())) if len(v) else (None, None)
        first, last = float(values[0]), float(values[-1])
    else:  # ints and bools: exact
        v = np.asarray(values, np.int64)
        lo, hi = int(v.min()), int(v.max())
        exact = max(-lo, hi) * n < 2**63  # no int64 overflow possible
        total = float(int(v.sum()) if exact else sum(v.tolist()))
        nans, mn, mx = 0, float(lo), float(hi)
        first, last = float(int(v[0])), float(int(v[-1]))
    return ChunkStats(
        n, nans, int(steps[0]), int(steps[-1]), float(times[0]), float(times[-1]), mn, mx, total, first, last
    )


def _mixed_bits(v: Any) -> int:
    if type(v) is float:
        bits: int = struct.unpack("<q", struct.pack("<d", v))[0]
        return bits
    return int(v)


class XPart(NamedTuple):
    """A chunk's steps and times, encoded once per batch and shared by every key that has them."""

    xenc: int
    first: int
    stride: int
    data: bytes  # [steps] times, shuffled: the start of the payload
    cells: cc.XCells | None  # the x of the chunk's cells; None when it gets no cells


def _x_part(steps: Sequence[int], times: Sequence[float]) -> XPart:
    n, first = len(steps), int(steps[0])
    stride = int(steps[1]) - first if n > 1 else 0
    t = np.asarray(times, np.float64)
    tbytes = shuffle8(t)
    # The common case (consecutive steps) stores no steps.  A progression whose last term does
    # not fit int64 (nor its stride) cannot be the steps, and is not computed.
    same = n == 1
    if not same and I64_MIN <= stride <= I64_MAX and I64_MIN <= first + stride * (n - 1) <= I64_MAX:
        if n < NUMPY_MIN:
            steps = steps if isinstance(steps, list) else steps.tolist()  # type: ignore[attr-defined]
            same = steps == (list(range(first, first + n * stride, stride)) if stride else [first] * n)
        else:
            same = np.array_equal(np.asarray(steps, np.int64), first + stride * np.arange(n, dtype=np.int64))
    cells = cc.x_cells(steps, t, not same) if n > cc.CELL else None
    if same:
        return XPart(XENC_STRIDE, first, stride, tbytes, cells)
    return XPart(XENC_EXPLICIT, first, 0, shuffle8(np.asarray(steps, np.int64)) + tbytes, cells)


def _as_f64(values: Sequence[Any], vtype: int) -> npt.NDArray[np.float64]:
    """Values as the read side sees them: ints through int64, bools as 0 and 1."""
    if vtype == VT_I64:
        return np.asarray(values, np.int64).astype(np.float64)
    return np.asarray(values, np.float64)


def encode_chunk(
    steps: Sequence[int],
    times: Sequence[float],
    values: Sequence[Any],
    vtype: int | None = None,
    x: XPart | None = None,
) -> tuple[bytes, ChunkStats]:
    """One chunk of 1..2**32-1 numeric points (``value_type`` must accept ``values``); ``x``:
    the steps and times already encoded by ``_x_part`` (shared by every key of a batch).
    Columns may be lists or numpy arrays (then ``vtype`` must be given).  Chunks of more than
    ``CELL`` points get cells."""
    n = len(values)
    if not 0 < n == len(steps) == len(times) < 2**32:
        raise ValueError(f"chunk columns differ in length or are empty: {len(steps)}, {len(times)}, {n}")
    if vtype is None:
        vtype = value_type(values)
        if vtype is None:
            raise ValueError("chunk values must be int64, float or bool")
    xenc, first, stride, xbytes, xcells = x or _x_part(steps, times)
    if vtype == VT_F64:
        vbytes = shuffle8(np.asarray(values, np.float64))
    elif vtype == VT_I64:
        vbytes = shuffle8(np.asarray(values, np.int64))
    elif vtype == VT_BOOL:
        vbytes = np.asarray(values, np.bool_).tobytes()
    else:
        vbytes = shuffle8(array("q", map(_mixed_bits, values)).tobytes())
        vbytes += bytes(map(_TAGS.__getitem__, map(type, values)))
    raw = xbytes + vbytes
    body = _zstd()[0].compress(raw)
    st = stats(steps, times, values, vtype)
    sec_body = b""
    if xcells is not None:
        # Finite values no CELL of which can overflow (most metrics): no NaN or overflow checks.
        lo, hi = st.min, st.max
        clean = not st.nans and lo is not None and hi is not None and max(-lo, hi) * cc.CELL < 1e308
        sec_body = cc.section_body(xcells, _as_f64(values, vtype), _zstd_cells(), clean)
    cell = cc.CELL if sec_body else 0
    cells_len = 4 + len(sec_body) if cell else 0  # the section: its CRC, then the body
    head = bytearray(HEADER.pack(MAGIC, 0, vtype, xenc, cell, n, first, stride, len(raw), cells_len))
    fields = memoryview(head)[CRC_START:]
    sec = cc.section(fields, sec_body) if cell else b""
    crc = rec.crc32c(body, rec.crc32c(sec, rec.crc32c(fields)))
    struct.pack_into("<I", head, 4, crc)
    return bytes(head) + sec + body, st


class Header(NamedTuple):
    vtype: int
    xenc: int
    cell: int
    points: int
    first_step: int
    stride: int
    raw_len: int
    cells_len: int

    @property
    def payload_at(self) -> int:
        return HEADER_SIZE + self.cells_len


def check_header(mv: memoryview, what: str) -> Header:
    """The header of the chunk ``mv``, checked with the whole blob (magic, CRC, layout,
    lengths); ChunkCorrupt naming ``what`` otherwise."""
    if len(mv) < HEADER_SIZE:
        raise ChunkCorrupt(f"{what}: {len(mv)} bytes is shorter than a chunk header")
    magic, crc, *fields = HEADER.unpack_from(mv)
    h = Header(*fields)
    if magic not in (MAGIC, MAGIC_V1):
        raise ChunkCorrupt(f"{what}: bad magic {bytes(magic)!r}")
    if rec.crc32c(mv[CRC_START:]) != crc:
        raise ChunkCorrupt(f"{what}: CRC-32C mismatch (the blob is damaged)")
    known = h.vtype in (VT_F64, VT_I64, VT_BOOL, VT_MIXED) and h.xenc in (XENC_EXPLICIT, XENC_STRIDE)
    if not known or h.points == 0:
        raise ChunkCorrupt(f"{what}: unknown layout vtype={h.vtype} xenc={h.xenc} count={h.points}")
    if h.raw_len != _raw_len(h.vtype, h.xenc, h.points):
        raise ChunkCorrupt(f"{what}: payload length {h.raw_len} does not fit {h.points} points")
    # A section holds its CRC, zlen and at most the uncompressed arrays.
    most = cc.SECTION_HEAD.size + cc.records_len(h.points, h.xenc == XENC_EXPLICIT, h.cell)
    fits = cc.SECTION_HEAD.size < h.cells_len <= most if h.cell else h.cells_len == 0
    if (magic == MAGIC_V1 and h.cell) or not fits:
        raise ChunkCorrupt(f"{what}: cell section of {h.cells_len} bytes does not fit {h.points} points")
    if len(mv) <= h.payload_at:
        raise ChunkCorrupt(f"{what}: {len(mv)} bytes leaves no room for the points")
    return h


def payload(mv: memoryview, h: Header, what: str) -> bytes:
    """The decompressed payload of a chunk whose header ``check_header`` accepted."""
    try:
        raw = _zstd()[1].decompress(mv[h.payload_at :], max_output_size=h.raw_len)
    except zstandard.ZstdError as e:
        raise ChunkCorrupt(f"{what}: zstd: {e}") from None
    if len(raw) != h.raw_len:
        raise ChunkCorrupt(f"{what}: payload is {len(raw)} bytes, header says {h.raw_len}")
    return raw


def _raw_len(vtype: int, xenc: int, n: int) -> int:
    size = 8 * n  # times
    if xenc == XENC_EXPLICIT:
        size += 8 * n
    return size + {VT_F64: 8 * n, VT_I64: 8 * n, VT_BOOL: n, VT_MIXED: 9 * n}[vtype]


def decode_chunk(blob: bytes | memoryview, what: str = "chunk") -> Chunk:
    """The points of a chunk; ChunkCorrupt (naming ``what``) if any check fails."""
    mv = memoryview(blob)
    h = check_header(mv, what)
    n, vtype, xenc, first, stride = h.points, h.vtype, h.xenc, h.first_step, h.stride
    raw = payload(mv, h, what)
    pos = 0

    def col(code: str) -> list[Any]:
        nonlocal pos
        a = array(code)
        a.frombytes(unshuffle8(memoryview(raw)[pos : pos + 8 * n], n))
        pos += 8 * n
        return a.tolist()

    if xenc == XENC_EXPLICIT:
        steps = col("q")
    else:
        steps = list(range(first, first + n * stride, stride)) if stride else [first] * n
    times = col("d")
    if vtype == VT_F64:
        values = col("d")
    elif vtype == VT_I64:
        values = col("q")
    elif vtype == VT_BOOL:
        values = list(map(bool, raw[pos : pos + n]))
    else:
        bits = raw[pos : pos + 8 * n]
        ints, floats = array("q"), array("d")
        shuffled = unshuffle8(bits, n)
        ints.frombytes(shuffled)
        floats.frombytes(shuffled)
        tags = raw[pos + 8 * n :]
        if not set(tags) <= {TAG_FLOAT, TAG_INT, TAG_BOOL}:
            raise ChunkCorrupt(f"{what}: unknown value tag")
        values = [
            f if t == TAG_FLOAT else (i if t == TAG_INT else bool(i))
            for t, i, f in zip(tags, ints.tolist(), floats.tolist(), strict=True)
        ]
    return Chunk(steps, times, values)


def encode_points(
    steps: Sequence[int],
    times: Sequence[float],
    values: Sequence[Any],
    vtype: int | None = None,
    shared: dict[tuple[int, int, int, int], XPart] | None = None,
) -> list[tuple[bytes, ChunkStats]]:
    """A series' points as chunks of at most CHUNK_MAX, cut evenly (20,000 -> 5 x 4,000).

    ``shared`` (one dict per batch, while its columns are alive) keeps encoded steps and times
    by the identity of their lists: the keys of a batch mostly share them, so they are encoded
    once, not once per key."""
    n = len(values)
    pieces = -(-n // CHUNK_MAX)
    out = []
    for p in range(pieces):
        lo, hi = n * p // pieces, n * (p + 1) // pieces
        s, t = steps[lo:hi], times[lo:hi]
        x = None
        if shared is not None:
            key = (id(steps), id(times), lo, hi)
            x = shared.get(key)
            if x is None:
                x = shared[key] = _x_part(s, t)
        out.append(encode_chunk(s, t, values[lo:hi], vtype, x))
    return out


def plan_merges(metas: Sequence[tuple[int, int]], final: bool) -> list[list[tuple[int, int]]]:
    """Groups of adjacent (id, count) chunks to merge: small ones (< COMPACT_MIN) together up to
    CHUNK_MAX; a group is merged if it has two chunks or more and (``final`` or) reaches
    COMPACT_MIN."""
    groups: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    total = 0

    def close() -> None:
        nonlocal cur, total
        if len(cur) > 1 and (final or total >= COMPACT_MIN):
            groups.append(cur)
        cur, total = [], 0

    for m in metas:
        if m[1] >= COMPACT_MIN:
            close()
            continue
        if total + m[1] > CHUNK_MAX:
            close()
        cur.append(m)
        total += m[1]
        if total >= COMPACT_MIN:
            close()
    close()
    return groups
