"""A batch's history rows into per-key columns (steps, timestamps, values), ready for chunks.

Three ways, fastest first:

* ``batch_columns``: rows of a ``RecordBatch`` (the server's decoded batch).  Training loops log
  the same keys with the same value encodings every step, so rows whose bodies have one length
  usually share one layout: the first body is parsed as a template, every body is checked
  against it with numpy (the bytes outside the values must be equal), and each key's values are
  read as one big-endian numpy column out of the batch buffer.  No dict, no object per row.
* ``uniform_columns``: the same idea on a list of ``bytes`` bodies, with strided byte slices.
* ``build_columns``: msgpack-decoded row dicts, the general case (nested maps, non-str keys,
  strings and other values that are not chunk values).

Each falls back to the next when the rows are not what it handles; all three give the same
``Columns`` (a property test holds them equal).  Pure functions: any thread.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter, lt
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from runstream.format import record as rec
from runstream.format.fold import flatten
from runstream_ingest.server.decode import RecordBatch
from runstream_ingest.server.storage.history.chunks import (
    I64_MAX,
    I64_MIN,
    NUMERIC,
    NUMPY_MIN,
    RESERVED,
    VT_BOOL,
    VT_F64,
    VT_I64,
    VT_MIXED,
    value_type,
)

Vector = Any  # a list, an array.array or a numpy array: the columns of the three paths


@dataclass(slots=True)
class Column:
    steps: Vector  # ints
    times: Vector  # floats
    values: Vector
    vtype: int


@dataclass(slots=True)
class Columns:
    """A batch's rows by key.  ``order`` lists every key in first-logged order, with
    "_timestamp" (the series that says a row exists) after the first row's keys."""

    steps: Vector
    times: Vector
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


# --- the numpy path, straight out of a decoded batch --------------------------------------------


def batch_columns(batch: RecordBatch, last_step: int) -> tuple[Columns | None, list[rec.Record], int]:
    """``rows_to_columns`` for the ROW records of a ``RecordBatch``: the same result, by the
    numpy path when every group of same-length bodies shares one layout (else the general way)."""
    n = len(batch)
    if not n:
        return None, [], 0
    if n < NUMPY_MIN:
        return rows_to_columns(batch.records(), last_step)
    steps = batch.step
    top = np.maximum.accumulate(steps)
    if not (steps[0] > last_step and (n == 1 or bool((steps[1:] > top[:-1]).all()))):
        # A row is kept when its step is above every step stored or kept before it.
        before = np.empty(n, np.int64)
        before[0] = last_step
        np.maximum(top[:-1], last_step, out=before[1:])
        keep = steps > before
        kept = int(np.count_nonzero(keep))
        if not kept:
            return None, [], n
        rows = batch.select(keep)
    else:
        kept, rows = n, batch
    cols = _layout_columns(rows)
    if cols is None:
        return rows_to_columns(batch.records(), last_step)
    return cols, [], n - kept


def _layout_columns(b: RecordBatch) -> Columns | None:
    lens = b.body_len
    groups: list[npt.NDArray[np.intp] | None]
    if bool((lens == lens[0]).all()):
        groups = [None]  # None: every row
    else:
        uniq, inv = np.unique(lens, return_inverse=True)
        if len(uniq) > MAX_LAYOUTS:
            return None
        groups = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    found: dict[str, list[tuple[int, Vector, int]]] = {}
    seen: dict[str, tuple[int, int]] = {}
    for g, idx in enumerate(groups):
        cols = _matrix_columns(b, idx)
        if cols is None:
            return None
        first_row = 0 if idx is None else int(idx[0])
        for pos, (key, values, vtype) in enumerate(cols):
            if key not in RESERVED:
                found.setdefault(key, []).append((g, values, vtype))
                if key not in seen or seen[key][0] > first_row:
                    seen[key] = (first_row, pos)
    steps, times = b.step, b.time
    order = sorted(seen, key=seen.__getitem__)
    out = Columns(steps, times, {}, [], {}, order)
    out.order.insert(sum(1 for k in order if seen[k][0] == 0), "_timestamp")
    for key, parts in found.items():
        if len(parts) == 1:
            g, values, vtype = parts[0]
            idx = groups[g]
            ks, kt = (steps, times) if idx is None else (steps[idx], times[idx])
        else:  # the key is in several groups: back into row order
            where = np.concatenate([groups[g] for g, _, _ in parts])
            perm = np.argsort(where, kind="stable")
            vtypes = {vt for _, _, vt in parts}
            if len(vtypes) == 1:
                values, vtype = np.concatenate([v for _, v, _ in parts])[perm], vtypes.pop()
            else:  # ints and floats, or bools and ints: Python values keep their types
                joined = list(chain.from_iterable(v.tolist() for _, v, _ in parts))
                values, vtype = list(map(joined.__getitem__, perm.tolist())), VT_MIXED
            ks, kt = steps[where[perm]], times[where[perm]]
        out.numeric[key] = Column(ks, kt, values, vtype)
        last = values[-1]
        out.last[key] = last.item() if isinstance(last, np.generic) else last
    return out


def _body_matrix(b: RecordBatch, idx: npt.NDArray[np.intp] | None, width: int) -> npt.NDArray[np.uint8]:
    """The bodies of rows ``idx`` (all when None), each ``width`` bytes, as an (n, width) array:
    a view into the buffer when the bodies are evenly spaced (they usually are), else a copy."""
    offs = b.body_off if idx is None else b.body_off[idx]
    m = len(offs)
    if m > 1:
        d = int(offs[1] - offs[0])
        if d >= width and bool((np.diff(offs) == d).all()):
            start = int(offs[0])
            view: npt.NDArray[np.uint8] = np.lib.stride_tricks.as_strided(
                b.u8[start:], shape=(m, width), strides=(d, 1), writeable=False
            )
            return view
    rows: npt.NDArray[np.uint8] = b.u8[offs[:, None] + np.arange(width)]
    return rows


def _matrix_columns(b: RecordBatch, idx: npt.NDArray[np.intp] | None) -> list[tuple[str, Vector, int]] | None:
    """(key, values, vtype) per key of rows whose bodies all share the first one's layout, or None."""
    i0 = 0 if idx is None else int(idx[0])
    o0, width = int(b.body_off[i0]), int(b.body_len[i0])
    tmpl = _template(b.data[o0 : o0 + width])
    if tmpl is None:
        return None
    m = _body_matrix(b, idx, width)
    pos = 0
    for _, off, _, size in [*tmpl, ("", width, "", 0)]:
        if off > pos and not bool((m[:, pos:off] == m[0, pos:off]).all()):
            return None  # some body differs outside its values: another layout
        pos = off + size
    out: list[tuple[str, Vector, int]] = []
    for key, off, code, size in tmpl:
        values: Vector
        if code == _FIXINT:
            raw = m[:, off]
            if not bool(((raw < 0x80) | (raw >= 0xE0)).all()):
                return None
            values, vtype = raw.view(np.int8).astype(np.int64), VT_I64
        elif code == _BOOL:
            raw = m[:, off]
            if not bool(((raw == 0xC2) | (raw == 0xC3)).all()):
                return None
            values, vtype = raw == 0xC3, VT_BOOL
        else:
            # A strided big-endian view of the value bytes: astype gathers and swaps in one pass.
            col = m[:, off : off + size].view(np.dtype(code).newbyteorder(">"))[:, 0]
            if code == "d":
                values, vtype = col.astype(np.float64), VT_F64
            else:
                if code == "Q" and int(col.max()) > I64_MAX:
                    return None
                values, vtype = col.astype(np.int64), VT_I64
        out.append((key, values, vtype))
    return out
