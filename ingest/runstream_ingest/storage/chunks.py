"""History as column chunks: rows of a batch into per-key columns, columns into checksummed blobs.

A chunk holds consecutive points of one series (one run, one key): their steps, timestamps and
values, compressed with zstd, plus statistics (count, NaN count, min, max, sum, first, last) that
the backend keeps in its own columns so charts can be drawn without decompressing.  The byte
format is in ``docs/storage.md`` ("Chunk"); in short::

    header  := magic "RSC1" | crc32c:u32 | vtype:u8 | xenc:u8 | 0:u16 | count:u32
               | first_step:i64 | stride:i64 | raw_len:u32 | 0:u32              (40 bytes)
    payload := zstd( [steps i64 x count]  times f64 x count  values  [tags u8 x count] )

``crc32c`` covers every byte after itself, so damage anywhere past the magic is caught before the
payload is trusted.  8-byte columns are byte-shuffled (all first bytes, then all second bytes...)
so that slowly changing numbers compress well; slicing ``bytes`` with a stride does that in C.

Values keep their Python type: a chunk is all floats (F64, bit-exact, NaN and infinities
included), all ints (I64), all bools (BOOL) or MIXED (8 raw bytes per point plus a type tag).
Ints outside int64 and non-numbers (str, None, lists, bytes) are not chunk values; the column
builder hands them back as ``other`` points for the backend's value table.

Everything here is pure functions over their arguments; zstd contexts are per thread, so any
thread may encode or decode.
"""

from __future__ import annotations

import math
import struct
import sys
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter, lt
from typing import Any, NamedTuple

import msgpack
import zstandard

from runstream import records as rec
from runstream.reader import flatten

from .base import StorageError

MAGIC = b"RSC1"
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

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
RESERVED = frozenset(("_step", "_timestamp", "_runtime"))  # set from the record header, as RunState does

_local = threading.local()


class ChunkCorrupt(StorageError):
    """A chunk blob failed its checks; nothing of it is returned."""


@dataclass(frozen=True, slots=True)
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


def shuffle8(raw: bytes) -> bytes:
    return b"".join([raw[i::8] for i in range(8)])


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


def stats(steps: Sequence[int], times: Sequence[float], values: Sequence[Any]) -> ChunkStats:
    s = sum(values)
    nans = 0
    finite: Sequence[Any] = values
    if math.isnan(s):  # NaN somewhere, or both infinities: find out which (rare, so the slow way)
        finite = [v for v in values if not math.isnan(v)]
        nans = len(values) - len(finite)
        s = sum(finite)
    return ChunkStats(
        count=len(values),
        nans=nans,
        first_step=steps[0],
        last_step=steps[-1],
        first_time=times[0],
        last_time=times[-1],
        min=float(min(finite)) if finite else None,
        max=float(max(finite)) if finite else None,
        sum=float(s),
        first=float(values[0]),
        last=float(values[-1]),
    )


def _array(code: str, seq: Sequence[Any]) -> array[Any]:
    return seq if isinstance(seq, array) and seq.typecode == code else array(code, seq)


def _mixed_bits(v: Any) -> int:
    if type(v) is float:
        bits: int = struct.unpack("<q", struct.pack("<d", v))[0]
        return bits
    return int(v)


XPart = tuple[int, int, int, bytes]  # (xenc, first_step, stride, encoded steps and times)


def _x_part(steps: Sequence[int], times: Sequence[float]) -> XPart:
    n, first = len(steps), steps[0]
    stride = steps[1] - first if n > 1 else 0
    tbytes = shuffle8(_array("d", times).tobytes())
    # A list compares with a list in C: the common case (consecutive steps) stores no steps.
    if n == 1 or list(steps) == (list(range(first, first + n * stride, stride)) if stride else [first] * n):
        return XENC_STRIDE, first, stride, tbytes
    return XENC_EXPLICIT, first, 0, shuffle8(array("q", steps).tobytes()) + tbytes


def encode_chunk(
    steps: Sequence[int],
    times: Sequence[float],
    values: Sequence[Any],
    vtype: int | None = None,
    x: XPart | None = None,
) -> tuple[bytes, ChunkStats]:
    """One chunk of 1..2**32-1 numeric points (``value_type`` must accept ``values``); ``x``:
    the steps and times already encoded by ``_x_part`` (shared by every key of a batch)."""
    n = len(values)
    if not 0 < n == len(steps) == len(times) < 2**32:
        raise ValueError(f"chunk columns differ in length or are empty: {len(steps)}, {len(times)}, {n}")
    if vtype is None:
        vtype = value_type(values)
        if vtype is None:
            raise ValueError("chunk values must be int64, float or bool")
    xenc, first, stride, xbytes = x or _x_part(steps, times)
    if vtype == VT_F64:
        vbytes = shuffle8(_array("d", values).tobytes())
    elif vtype == VT_I64:
        vbytes = shuffle8(_array("q", values).tobytes())
    elif vtype == VT_BOOL:
        vbytes = bytes(values)
    else:
        vbytes = shuffle8(array("q", map(_mixed_bits, values)).tobytes())
        vbytes += bytes(map(_TAGS.__getitem__, map(type, values)))
    raw = xbytes + vbytes
    body = _zstd()[0].compress(raw)
    head = bytearray(HEADER.pack(MAGIC, 0, vtype, xenc, 0, n, first, stride, len(raw), 0))
    crc = rec.crc32c(body, rec.crc32c(memoryview(head)[CRC_START:]))
    struct.pack_into("<I", head, 4, crc)
    return bytes(head) + body, stats(steps, times, values)


def _raw_len(vtype: int, xenc: int, n: int) -> int:
    size = 8 * n  # times
    if xenc == XENC_EXPLICIT:
        size += 8 * n
    return size + {VT_F64: 8 * n, VT_I64: 8 * n, VT_BOOL: n, VT_MIXED: 9 * n}[vtype]


def decode_chunk(blob: bytes | memoryview, what: str = "chunk") -> Chunk:
    """The points of a chunk; ChunkCorrupt (naming ``what``) if any check fails."""
    mv = memoryview(blob)
    if len(mv) < HEADER_SIZE:
        raise ChunkCorrupt(f"{what}: {len(mv)} bytes is shorter than a chunk header")
    magic, crc, vtype, xenc, _, n, first, stride, raw_len, _ = HEADER.unpack_from(mv)
    if magic != MAGIC:
        raise ChunkCorrupt(f"{what}: bad magic {bytes(magic)!r}")
    if rec.crc32c(mv[CRC_START:]) != crc:
        raise ChunkCorrupt(f"{what}: CRC-32C mismatch (the blob is damaged)")
    if vtype not in (VT_F64, VT_I64, VT_BOOL, VT_MIXED) or xenc not in (XENC_EXPLICIT, XENC_STRIDE) or n == 0:
        raise ChunkCorrupt(f"{what}: unknown layout vtype={vtype} xenc={xenc} count={n}")
    if raw_len != _raw_len(vtype, xenc, n):
        raise ChunkCorrupt(f"{what}: payload length {raw_len} does not fit {n} points")
    try:
        raw = _zstd()[1].decompress(mv[HEADER_SIZE:], max_output_size=raw_len)
    except zstandard.ZstdError as e:
        raise ChunkCorrupt(f"{what}: zstd: {e}") from None
    if len(raw) != raw_len:
        raise ChunkCorrupt(f"{what}: payload is {len(raw)} bytes, header says {raw_len}")
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


# --- rows into columns -------------------------------------------------------------------------
@dataclass(slots=True)
class Column:
    steps: Sequence[int]
    times: Sequence[float]
    values: Sequence[Any]  # a list, or an array from the uniform fast path
    vtype: int


@dataclass(slots=True)
class Columns:
    """A batch's rows by key.  ``order`` lists every key in first-logged order, with
    "_timestamp" (the series that says a row exists) after the first row's keys."""

    steps: list[int]
    times: list[float]
    numeric: dict[str, Column]
    other: list[tuple[str, int, float, Any]]  # (key, step, time, value)
    last: dict[str, Any]  # the last value of every key
    order: list[str]


def unpack_bodies(bodies: Sequence[bytes]) -> list[Any] | None:
    """Decode many msgpack bodies with one call: prefix an array header to their concatenation.
    None when some body is bad (the caller then goes record by record)."""
    n = len(bodies)
    if n < 16:
        head = bytes([0x90 | n])
    else:
        head = b"\xdc" + n.to_bytes(2, "big") if n < 65536 else b"\xdd" + n.to_bytes(4, "big")
    if not all(bodies):  # an empty body would let the next body's bytes shift into its place
        return None
    try:
        out: list[Any] = msgpack.unpackb(head + b"".join(bodies), raw=False, strict_map_key=False)
    except Exception:
        return None
    return out


def _row_dict(d: dict[Any, Any]) -> dict[str, Any]:
    """``RunState._row``'s normalisation: flatten nested dicts, keys as str."""
    row = flatten(d) if any(isinstance(v, dict) for v in d.values()) else d
    if not all(type(k) is str for k in row):
        row = {str(k): v for k, v in row.items()}
    return row


def build_columns(steps: list[int], times: list[float], dicts: Sequence[dict[Any, Any]]) -> Columns:
    """Per-key columns of rows (already in strictly increasing step order).

    Rows with the same keys in the same order (nearly all of them, in training loops) are
    transposed with one ``zip(*...)`` per group, in C; only groups holding nested dicts or
    non-str keys go row by row.
    """
    n = len(dicts)
    sigs = list(map(tuple, dicts))
    groups: dict[tuple[Any, ...], list[int] | None]
    if n and sigs.count(sigs[0]) == n:
        groups = {sigs[0]: None}  # None: every row
    else:
        groups = {}
        for i, sig in enumerate(sigs):
            g = groups.get(sig)
            if g is None:
                groups[sig] = [i]
            else:
                g.append(i)
    # key -> pieces of (row indexes or None for all, values); key -> (first row, place in row)
    pieces: dict[str, list[tuple[list[int] | None, Sequence[Any]]]] = {}
    seen: dict[str, tuple[int, int]] = {}
    for sig, idx in groups.items():
        rows = dicts if idx is None else [dicts[i] for i in idx]
        cols = list(zip(*map(dict.values, rows), strict=True)) if sig else []
        simple = all(type(k) is str for k in sig) and not any(dict in set(map(type, c)) for c in cols)
        if simple:
            first_row = 0 if idx is None else idx[0]
            for pos, (k, c) in enumerate(zip(sig, cols, strict=True)):
                if k in RESERVED:
                    continue
                pieces.setdefault(k, []).append((idx, c))
                if k not in seen or seen[k][0] > first_row:
                    seen[k] = (first_row, pos)
            continue
        per_key: dict[str, tuple[list[int], list[Any]]] = {}
        for j, d in enumerate(rows):
            i = j if idx is None else idx[j]
            for pos, (k, v) in enumerate(_row_dict(d).items()):
                if k in RESERVED:
                    continue
                ix, vs = per_key.setdefault(k, ([], []))
                ix.append(i)
                vs.append(v)
                if k not in seen or seen[k][0] > i:
                    seen[k] = (i, pos)
        for k, (ix, vs) in per_key.items():
            pieces.setdefault(k, []).append((ix, vs))

    order = sorted(seen, key=seen.__getitem__)
    first_keys = sum(1 for k in order if seen[k][0] == 0)
    order.insert(first_keys, "_timestamp")
    out = Columns(steps, times, {}, [], {}, order)
    for k, ps in pieces.items():
        idx_all: list[int] | None
        if len(ps) == 1:
            idx_all, vals = ps[0][0], list(ps[0][1])
        else:  # the key is in several groups: merge them back into row order
            where = chain.from_iterable(range(n) if i is None else i for i, _ in ps)
            merged = sorted(zip(where, chain.from_iterable(v for _, v in ps), strict=True), key=itemgetter(0))
            idx_all, vals = [i for i, _ in merged], [v for _, v in merged]
        out.last[k] = vals[-1]
        ks = steps if idx_all is None else list(map(steps.__getitem__, idx_all))
        kt = times if idx_all is None else list(map(times.__getitem__, idx_all))
        vtype = value_type(vals)
        if vtype is not None:
            out.numeric[k] = Column(ks, kt, vals, vtype)
            continue
        num_s: list[int] = []
        num_t: list[float] = []
        num_v: list[Any] = []
        for s, t, v in zip(ks, kt, vals, strict=True):
            if type(v) in NUMERIC and (type(v) is not int or I64_MIN <= v <= I64_MAX):
                num_s.append(s)
                num_t.append(t)
                num_v.append(v)
            else:
                out.other.append((k, s, t, v))
        if num_v:
            vt = value_type(num_v)
            assert vt is not None
            out.numeric[k] = Column(num_s, num_t, num_v, vt)
    return out


def rows_to_columns(
    records: Sequence[rec.Record], last_step: int
) -> tuple[Columns | None, list[rec.Record], int]:
    """ROW records into (columns or None when no row is kept, malformed records, regressions).

    Steps are the row key, so a row whose step is not above every step stored before it is not
    kept: it is counted in ``regressions``.  A record whose body is not a msgpack map is
    returned in ``malformed`` for the backend to keep raw.
    """
    steps = list(map(attrgetter("step"), records))
    if (
        steps
        and steps[0] > last_step
        and (steps == list(range(steps[0], steps[0] + len(steps))) or all(map(lt, steps, steps[1:])))
    ):
        kept: Sequence[rec.Record] = records
    else:
        kept, top = [], last_step
        for r in records:
            if r.step > top:
                kept.append(r)
                top = r.step
        steps = list(map(attrgetter("step"), kept))
    regressions = len(records) - len(kept)
    if not kept:
        return None, [], regressions
    bodies = list(map(attrgetter("body"), kept))
    times = list(map(attrgetter("time"), kept))
    cols = uniform_columns(bodies, steps, times)
    if cols is not None:
        return cols, [], regressions
    dicts = unpack_bodies(bodies)
    malformed: list[rec.Record] = []
    if dicts is None or set(map(type, dicts)) != {dict}:
        good, dicts = [], []
        for r in kept:
            try:
                d = r.value()
            except Exception:
                d = None
            if isinstance(d, dict):
                good.append(r)
                dicts.append(d)
            else:
                malformed.append(r)
        if not good:
            return None, malformed, regressions
        steps, times = list(map(attrgetter("step"), good)), list(map(attrgetter("time"), good))
    return build_columns(steps, times, dicts), malformed, regressions


# --- the uniform fast path ---------------------------------------------------------------------
# Training loops log the same keys with the same value types every step, so a batch's bodies are
# often byte-for-byte the same except inside the values.  Then msgpack need not run per row: the
# first body is parsed as a template, every body is checked against it with the value bytes
# masked out (one comparison in C), and each column's bytes are cut out of the joined bodies with
# strided slices.  Anything the template does not describe exactly goes the general way.
_FIXED = {0xCB: ("d", 8), 0xD0: ("b", 1), 0xD1: ("h", 2), 0xD2: ("i", 4), 0xD3: ("q", 8)}
_FIXED |= {0xCC: ("B", 1), 0xCD: ("H", 2), 0xCE: ("I", 4), 0xCF: ("Q", 8)}
_FIXED = {k: v for k, v in _FIXED.items() if array(v[0]).itemsize == v[1]}
_FIXINT, _BOOL = "fixint", "bool"
# 1 for bytes that are not a positive or negative fixint / not a bool.
_NOT_FIXINT = bytes(0 if b < 0x80 or b >= 0xE0 else 1 for b in range(256))
_NOT_BOOL = bytes(0 if b in (0xC2, 0xC3) else 1 for b in range(256))
_BOOL_VALUE = bytes(1 if b == 0xC3 else 0 for b in range(256))


def _template(body: bytes) -> list[tuple[str, int, str, int]] | None:
    """(key, offset of the value bytes, kind, size) per entry of a flat map body, or None."""
    b, n = body, len(body)
    if n and 0x80 <= b[0] <= 0x8F:
        count, pos = b[0] & 0x0F, 1
    elif n > 2 and b[0] == 0xDE:
        count, pos = int.from_bytes(b[1:3], "big"), 3
    else:
        return None
    out = []
    try:
        for _ in range(count):
            h = b[pos]
            if 0xA0 <= h <= 0xBF:
                size, pos = h & 0x1F, pos + 1
            elif h == 0xD9:
                size, pos = b[pos + 1], pos + 2
            else:
                return None
            key = b[pos : pos + size].decode()
            pos += size
            h = b[pos]
            if h in _FIXED:
                code, size = _FIXED[h]
                out.append((key, pos + 1, code, size))
                pos += 1 + size
            elif h < 0x80 or h >= 0xE0:
                out.append((key, pos, _FIXINT, 1))
                pos += 1
            elif h in (0xC2, 0xC3):
                out.append((key, pos, _BOOL, 1))
                pos += 1
            else:
                return None
    except (IndexError, UnicodeDecodeError):
        return None
    if pos != n or len({k for k, *_ in out}) != count:
        return None
    return out


def _uniform(bodies: Sequence[bytes]) -> list[tuple[str, Sequence[Any], int]] | None:
    """(key, values, vtype) per key of bodies that all share the first one's layout, or None."""
    n, width = len(bodies), len(bodies[0])
    tmpl = _template(bodies[0])
    if tmpl is None:
        return None
    joined = bytearray().join(bodies)
    # Every value's bytes, cut out before they are masked: planes[k] holds byte k of each.
    planes = {off: [joined[k::width] for k in range(off, off + size)] for _, off, _, size in tmpl}
    mask = bytearray(bodies[0])
    zeros = bytes(n)
    for _, off, _, size in tmpl:
        for k in range(off, off + size):
            joined[k::width] = zeros
            mask[k] = 0
    # n non-overlapping copies of a width-byte pattern in n * width bytes tile them exactly.
    if joined.count(mask) != n:
        return None
    out: list[tuple[str, Sequence[Any], int]] = []
    for key, off, code, size in tmpl:
        values: Any
        if code == _FIXINT:
            raw = planes[off][0]
            if 1 in raw.translate(_NOT_FIXINT):
                return None
            values, vtype = array("q", array("b", raw)), VT_I64
        elif code == _BOOL:
            raw = planes[off][0]
            if 1 in raw.translate(_NOT_BOOL):
                return None
            values, vtype = list(map(bool, raw.translate(_BOOL_VALUE))), VT_BOOL
        else:
            buf = bytearray(size * n)
            for k, plane in enumerate(planes[off]):
                buf[k::size] = plane
            a = array(code, buf)
            if size > 1 and sys.byteorder == "little":
                a.byteswap()  # msgpack is big-endian
            if code == "d":
                values, vtype = a, VT_F64
            else:
                if code == "Q" and max(a) > I64_MAX:
                    return None
                values, vtype = array("q", a), VT_I64
        out.append((key, values, vtype))
    return out


MAX_LAYOUTS = 16  # more distinct body lengths than this in a batch: the general path


def uniform_columns(bodies: Sequence[bytes], steps: list[int], times: list[float]) -> Columns | None:
    """Columns of bodies by the fast path, or None (use the general path).

    Bodies are grouped by length (a training loop's rows, and its every-N-steps eval rows, each
    have one layout); each group must share its first body's layout.  A key found in several
    groups is merged back into row order with one permutation per set of groups, in C.
    """
    n = len(bodies)
    lens = list(map(len, bodies))
    groups: list[list[int] | None]
    if lens.count(lens[0]) == n:
        groups = [None]  # None: every row
    else:
        by_len: dict[int, list[int]] = {}
        for i, length in enumerate(lens):
            by_len.setdefault(length, []).append(i)
        if len(by_len) > MAX_LAYOUTS:
            return None
        groups = list(by_len.values())
    # key -> [(group number, values, vtype)]; key -> (first row, place in its row)
    found: dict[str, list[tuple[int, Sequence[Any], int]]] = {}
    seen: dict[str, tuple[int, int]] = {}
    for g, idx in enumerate(groups):
        cols = _uniform(bodies if idx is None else [bodies[i] for i in idx])
        if cols is None:
            return None
        first_row = 0 if idx is None else idx[0]
        for pos, (key, values, vtype) in enumerate(cols):
            if key not in RESERVED:
                found.setdefault(key, []).append((g, values, vtype))
                if key not in seen or seen[key][0] > first_row:
                    seen[key] = (first_row, pos)
    order = sorted(seen, key=seen.__getitem__)
    out = Columns(steps, times, {}, [], {}, order)
    out.order.insert(sum(1 for k in order if seen[k][0] == 0), "_timestamp")
    perms: dict[tuple[int, ...], tuple[list[int], list[int]]] = {}
    for key, parts in found.items():
        if len(parts) == 1:
            g, values, vtype = parts[0]
            idx = groups[g]
            ks = steps if idx is None else list(map(steps.__getitem__, idx))
            kt = times if idx is None else list(map(times.__getitem__, idx))
        else:
            gs = tuple(g for g, _, _ in parts)
            if gs not in perms:  # rows of these groups in row order: a permutation of their concatenation
                rows = [i for g in gs for i in groups[g]]  # type: ignore[union-attr]
                perm = sorted(range(len(rows)), key=rows.__getitem__)
                perms[gs] = (list(map(rows.__getitem__, perm)), perm)
            rows_in_order, perm = perms[gs]
            joined = list(chain.from_iterable(v for _, v, _ in parts))
            values = list(map(joined.__getitem__, perm))
            vtypes = {vt for _, _, vt in parts}
            vtype = vtypes.pop() if len(vtypes) == 1 else VT_MIXED
            ks, kt = list(map(steps.__getitem__, rows_in_order)), list(map(times.__getitem__, rows_in_order))
        out.numeric[key] = Column(ks, kt, values, vtype)
        out.last[key] = values[-1]
    return out
