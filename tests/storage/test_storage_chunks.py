"""Column chunks: encode/decode round trips bit-exactly, damage is caught, stats are right, and
the uniform fast path builds exactly the columns the general path builds."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from runstream.format import record as rec
from runstream_ingest.server import decode as bt
from runstream_ingest.server.storage.history import chunk_arrays as ca
from runstream_ingest.server.storage.history import chunks as ck
from runstream_ingest.server.storage.history import columns as cl
from runstream_ingest.server.storage.interface import StorageError

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [
        math.nan,
        -math.nan,
        math.inf,
        -math.inf,
        -0.0,
        0.0,
        struct.unpack("<d", struct.pack("<Q", 0x7FF8DEADBEEF0001))[0],
    ]
)


def canon(v: Any) -> Any:
    """A value with its type, floats by their bits: NaN equals NaN, -0.0 differs from 0.0."""
    if type(v) is float:
        return ("f", struct.pack("<d", v))
    if isinstance(v, dict):
        return {k: canon(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [canon(x) for x in v]
    return (type(v).__name__, v)


@st.composite
def points(draw: st.DrawFn) -> tuple[list[int], list[float], list[Any]]:
    n = draw(st.integers(1, 60) | st.integers(ck.cc.CELL + 1, 3 * ck.cc.CELL + 10))  # no cells, or cells
    kind = draw(st.sampled_from(["consecutive", "strided", "constant", "any"]))
    first = draw(st.integers(-(2**40), 2**40))
    if kind == "consecutive":
        steps = list(range(first, first + n))
    elif kind == "strided":
        stride = draw(st.integers(2, 1000))
        steps = list(range(first, first + n * stride, stride))
    elif kind == "constant":
        steps = [first] * n
    else:
        steps = draw(st.lists(I64, min_size=n, max_size=n))
    times = draw(st.lists(FLOATS, min_size=n, max_size=n))
    vtype = draw(st.sampled_from(["float", "int", "bool", "mixed"]))
    value = {"float": FLOATS, "int": I64, "bool": st.booleans(), "mixed": FLOATS | I64 | st.booleans()}[vtype]
    values = draw(st.lists(value, min_size=n, max_size=n))
    return steps, times, values


@given(points())
@settings(max_examples=80, deadline=None)
def test_chunk_round_trip_is_bit_exact_and_keeps_types(pts: tuple[list[int], list[float], list[Any]]) -> None:
    steps, times, values = pts
    blob, _ = ck.encode_chunk(steps, times, values)
    got = ck.decode_chunk(blob)
    assert got.steps == steps
    assert canon(got.times) == canon(times)
    assert canon(got.values) == canon(values)


@given(points(), st.booleans())
@settings(max_examples=120, deadline=None)
def test_chunk_stats_match_a_brute_force_count(
    pts: tuple[list[int], list[float], list[Any]], vectorised: bool
) -> None:
    """By the Python path (small chunks) and the numpy one (large chunks; forced here)."""
    steps, times, values = pts
    with pytest.MonkeyPatch.context() as m:
        if vectorised:
            m.setattr(ck, "NUMPY_MIN", 0)
        _, s = ck.encode_chunk(steps, times, values)
    numbers = [float(v) for v in values]
    valid = [v for v in numbers if not math.isnan(v)]
    assert (s.count, s.nans) == (len(values), len(values) - len(valid))
    assert (s.first_step, s.last_step) == (steps[0], steps[-1])
    assert canon([s.first_time, s.last_time]) == canon([times[0], times[-1]])
    assert s.min == (min(valid) if valid else None)
    assert s.max == (max(valid) if valid else None)
    # Same values, same order: the sum is exact, ints summed as ints.
    total = float(sum(v for v in values if not (type(v) is float and math.isnan(v))))
    assert canon(s.sum) == canon(total) or (math.isnan(s.sum) and math.isnan(total))


@given(points(), st.data())
@settings(max_examples=120, deadline=None)
def test_a_damaged_chunk_raises_rather_than_returning_wrong_data(
    pts: tuple[list[int], list[float], list[Any]], data: st.DataObject
) -> None:
    blob, _ = ck.encode_chunk(*pts)
    how = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if how == "flip":
        pos = data.draw(st.integers(0, len(blob) - 1))
        bit = data.draw(st.integers(0, 7))
        bad = bytearray(blob)
        bad[pos] ^= 1 << bit
    elif how == "truncate":
        bad = bytearray(blob[: data.draw(st.integers(0, len(blob) - 1))])
    else:
        bad = bytearray(blob + data.draw(st.binary(min_size=1, max_size=20)))
    with pytest.raises(StorageError, match="chunk 7"):
        ck.decode_chunk(bytes(bad), "chunk 7")


def legacy(blob: bytes) -> bytes:
    """The chunk as written before chunks held cells ("RSC1"): the same without its cell section."""
    head = bytearray(blob[: ck.HEADER_SIZE])
    cells_len = struct.unpack_from("<I", head, 36)[0]
    head[0:4] = ck.MAGIC_V1
    struct.pack_into("<H", head, 10, 0)
    struct.pack_into("<I", head, 36, 0)
    body = blob[ck.HEADER_SIZE + cells_len :]
    struct.pack_into("<I", head, 4, rec.crc32c(body, rec.crc32c(bytes(head[ck.CRC_START :]))))
    return bytes(head) + body


def stored_cells(prefix: bytes) -> Any:
    """The cells stored in one chunk (None when it has none), named "chunk 7" in errors."""
    got = ca.read_records(prefix, "chunk 7")
    return None if got is None else ca.join_records([got])


def cells_equal(a: ca.Cells, b: ca.Cells) -> bool:
    return all(np.array_equal(x, y, equal_nan=x.dtype.kind == "f") for x, y in zip(a, b, strict=True))


@given(points())
@settings(max_examples=80, deadline=None)
def test_stored_cells_are_the_cells_of_the_decoded_points_and_old_chunks_read_alike(
    pts: tuple[list[int], list[float], list[Any]],
) -> None:
    """Cells are stored in chunks of more than CELL points, equal bit for bit to what the read
    side computes from the points (the fallback for chunks written before cells were stored),
    by step and by time; such an old chunk ("RSC1") decodes to the same points and has no cells."""
    steps, times, values = pts
    blob, _ = ck.encode_chunk(steps, times, values)
    stored = stored_cells(blob[: ca.prefix_len(len(values))])
    old = legacy(blob)
    assert stored_cells(old) is None
    assert canon(ck.decode_chunk(old)) == canon(ck.decode_chunk(blob))
    if len(values) <= ck.cc.CELL:
        assert stored is None and old[4:] == blob[4:]  # a small chunk differs by its magic only
        return
    assert stored is not None and blob[:4] == ck.MAGIC
    s, t, v = ca.decode_columns(old, "chunk 7", True, True)
    by_step, by_time = ca.cells_of(s, v), ca.cells_of(t, v)
    x0, x1 = stored.step_min.astype(np.float64), stored.step_max.astype(np.float64)
    assert cells_equal(by_step, ca.Cells(x0, x1, *stored[4:]))
    assert cells_equal(by_time, ca.Cells(stored.time_min, stored.time_max, *stored[4:]))


@given(points(), st.data())
@settings(max_examples=120, deadline=None)
def test_damaged_cells_raise_and_damage_elsewhere_leaves_them_right(
    pts: tuple[list[int], list[float], list[Any]], data: st.DataObject
) -> None:
    """Cells are read from a blob's first bytes only, checked by their own CRC: damage in the
    header or the cell section raises ChunkCorrupt naming the chunk; damage past them (or to the
    whole blob's CRC, which covers the rest) leaves the cells read exactly as written."""
    blob, _ = ck.encode_chunk(*pts)
    good = stored_cells(blob)
    assume(good is not None)
    assert good is not None
    end = ck.HEADER_SIZE + struct.unpack_from("<I", blob, 36)[0]
    bad = bytearray(blob)
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(0, min(end + 3, len(blob) - 1)) | st.integers(0, len(blob) - 1))
        bad[pos] ^= 1 << data.draw(st.integers(0, 7))
        touched = pos < 4 or ck.CRC_START <= pos < end
    else:
        cut = data.draw(st.integers(0, min(end + 3, len(blob) - 1)) | st.integers(0, len(blob) - 1))
        bad = bad[:cut]
        touched = cut < end
    try:
        got = stored_cells(bytes(bad[: ca.prefix_len(len(pts[2]))]))
    except StorageError as e:
        assert "chunk 7" in str(e)
        assert touched
        return
    assert not touched and got is not None
    assert all(np.array_equal(a, b, equal_nan=a.dtype.kind == "f") for a, b in zip(got, good, strict=True))


def test_consecutive_steps_cost_no_step_column() -> None:
    n = 4000
    explicit, _ = ck.encode_chunk([i * i for i in range(n)], [0.0] * n, [1.0] * n)
    strided, _ = ck.encode_chunk(list(range(10, 10 + n)), [0.0] * n, [1.0] * n)
    assert strided[9] == ck.XENC_STRIDE and explicit[9] == ck.XENC_EXPLICIT
    cells = struct.unpack_from("<I", strided, 36)[0]
    assert len(strided) - cells < 200  # header plus a few bytes of zstd for two constant columns
    assert cells < 2646 / 5  # 63 cells of 42 bytes: cells of constant values compress too
    assert ck.decode_chunk(strided).steps == list(range(10, 10 + n))


def test_values_that_cannot_go_in_a_chunk_are_refused() -> None:
    for bad in (["x"], [None], [2**63], [-(2**63) - 1], [[1]]):
        assert ck.value_type(bad) is None
        with pytest.raises(ValueError):
            ck.encode_chunk([0], [0.0], bad)


def test_encode_points_cuts_columns_evenly_below_the_chunk_limit() -> None:
    n = 20_000
    out = ck.encode_points(
        list(range(n)), [float(i) for i in range(n)], [float(i) for i in range(n)], ck.VT_F64
    )
    assert [s.count for _, s in out] == [4000] * 5
    assert [s.first_step for _, s in out] == [0, 4000, 8000, 12000, 16000]


# --- rows into columns -------------------------------------------------------------------------
SCALAR = (
    FLOATS
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.booleans()
    | st.none()
    | st.text(max_size=5)
    | st.lists(st.integers(0, 9), max_size=3)
)
KEYS = st.sampled_from(["loss", "acc", "lr", "a/b", "_step", "n"])


@st.composite
def bodies(draw: st.DrawFn) -> list[dict[Any, Any]]:
    """Row bodies: often uniform (same keys, same encodings), sometimes not."""
    n = draw(st.integers(1, 40))
    if draw(st.booleans()):
        keys = draw(st.lists(KEYS, unique=True, max_size=5))
        kinds = [draw(st.sampled_from(["f", "fixint", "u8", "i64", "b", "i16"])) for _ in keys]
        gen = {
            "f": FLOATS,
            "fixint": st.integers(-32, 127),
            "u8": st.integers(128, 255),
            "i64": st.integers(-(2**63), -(2**31) - 1),
            "b": st.booleans(),
            "i16": st.integers(-(2**15), -129),
        }
        return [{k: draw(gen[kind]) for k, kind in zip(keys, kinds, strict=True)} for _ in range(n)]
    rows = []
    for _ in range(n):
        row: dict[Any, Any] = {k: draw(SCALAR) for k in draw(st.lists(KEYS, unique=True, max_size=4))}
        if draw(st.integers(0, 9)) == 0:
            row["nest"] = {"x": draw(SCALAR), "y": {"z": draw(FLOATS)}}
        if draw(st.integers(0, 19)) == 0:
            row[7] = 1.5  # a non-str key, as RunState turns it into "7"
        rows.append(row)
    return rows


def model_columns(dicts: list[dict[Any, Any]]) -> dict[str, list[tuple[int, Any]]]:
    """Per key, (row index, value) as RunState would see the rows."""
    out: dict[str, list[tuple[int, Any]]] = {}
    for i, d in enumerate(dicts):
        for k, v in cl._row_dict(d).items():
            if k not in ck.RESERVED:
                out.setdefault(k, []).append((i, v))
    return out


def columns_as_points(cols: cl.Columns) -> dict[str, list[tuple[int, Any]]]:
    out: dict[str, list[tuple[int, Any]]] = {}
    for k, c in cols.numeric.items():
        steps, values = (list(x.tolist() if hasattr(x, "tolist") else x) for x in (c.steps, c.values))
        out.setdefault(k, []).extend(zip(steps, values, strict=True))
    for k, s, _, v in cols.other:
        out.setdefault(k, []).append((s, v))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in out.items()}


@given(bodies())
@settings(max_examples=150, deadline=None)
def test_columns_hold_every_value_of_every_row_as_the_offline_reader_sees_it(
    dicts: list[dict[Any, Any]],
) -> None:
    steps = list(range(len(dicts)))
    times = [1000.0 + i for i in steps]
    packed = [rec.pack_body(d) for d in dicts]
    general = cl.build_columns(steps, times, [msgpack.unpackb(b, strict_map_key=False) for b in packed])
    model = model_columns(dicts)
    assert canon(columns_as_points(general)) == canon(model)
    assert canon(general.last) == canon({k: v[-1][1] for k, v in model.items()})
    fast = cl.uniform_columns(packed, steps, times)
    if fast is not None:
        assert canon(columns_as_points(fast)) == canon(model)
        assert canon(fast.last) == canon(general.last)
        assert fast.order == general.order
        for k, c in fast.numeric.items():
            assert c.vtype == general.numeric[k].vtype
    # The numpy path, out of a decoded batch (forced for any size).
    batch = b"".join(rec.encode(i + 1, rec.KIND_ROW, i, 1000.0 + i, b) for i, b in enumerate(packed))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(bt, "NUMPY_BYTES", 0)
        m.setattr(cl, "NUMPY_MIN", 0)
        cols, malformed, dropped = cl.batch_columns(bt.decode_batch(batch, 1, len(packed)), -1)
    assert cols is not None and (malformed, dropped) == ([], 0)
    assert canon(columns_as_points(cols)) == canon(model)
    assert canon(cols.last) == canon(general.last)
    assert cols.order == general.order
    assert {k: c.vtype for k, c in cols.numeric.items()} == {k: c.vtype for k, c in general.numeric.items()}


def test_uniform_rows_of_floats_take_the_fast_path() -> None:
    rng = random.Random(1)
    packed = [
        rec.pack_body({"loss": rng.random(), "acc": rng.random(), "ok": True, "epoch": 3}) for _ in range(100)
    ]
    cols = cl.uniform_columns(packed, list(range(100)), [0.0] * 100)
    assert cols is not None
    assert cols.numeric["epoch"].values[-1] == 3 and type(cols.numeric["epoch"].values[-1]) is int
    assert cols.numeric["ok"].values[0] is True


def test_train_and_eval_rows_take_the_fast_path_and_merge_in_row_order() -> None:
    dicts = [{"loss": i / 10, "lr": 0.1, **({"val": i} if i % 4 == 0 else {})} for i in range(12)]
    dicts[5]["lr"] = 1  # an int among floats: the key becomes MIXED
    cols = cl.uniform_columns([rec.pack_body(d) for d in dicts], list(range(12)), [0.0] * 12)
    assert cols is not None
    assert cols.order == ["loss", "lr", "val", "_timestamp"]
    assert list(cols.numeric["loss"].values) == [i / 10 for i in range(12)]
    assert list(cols.numeric["val"].steps) == [0, 4, 8] and list(cols.numeric["val"].values) == [0, 4, 8]
    lr = cols.numeric["lr"]
    assert lr.vtype == ck.VT_MIXED and canon(list(lr.values)) == canon([d["lr"] for d in dicts])


def test_same_length_rows_with_other_keys_leave_the_fast_path() -> None:
    packed = [rec.pack_body({"acc_a": 1.0}), rec.pack_body({"acc_b": 2.0})]
    assert len(packed[0]) == len(packed[1])
    assert cl.uniform_columns(packed, [0, 1], [0.0, 1.0]) is None
    mixed = [rec.pack_body({"x": True}), rec.pack_body({"x": 1})]  # one byte each, bool vs fixint
    assert cl.uniform_columns(mixed, [0, 1], [0.0, 1.0]) is None


def test_rows_at_or_below_the_last_step_are_counted_not_kept() -> None:
    records = [
        rec.Record(i + 1, rec.KIND_ROW, 0, step, 0.0, rec.pack_body({"x": i}))
        for i, step in enumerate([5, 6, 6, 4, 9])
    ]
    cols, malformed, dropped = cl.rows_to_columns(records, last_step=5)
    assert cols is not None and not malformed
    assert cols.steps == [6, 9] and dropped == 3
    assert list(cols.numeric["x"].values) == [1, 4]


def test_rows_whose_body_is_not_a_map_are_handed_back_as_malformed() -> None:
    records = [
        rec.Record(1, rec.KIND_ROW, 0, 0, 0.0, rec.pack_body({"x": 1.0})),
        rec.Record(2, rec.KIND_ROW, 0, 1, 0.0, rec.pack_body([1, 2])),
        rec.Record(3, rec.KIND_ROW, 0, 2, 0.0, b"\xc1"),  # never-used msgpack byte
        rec.Record(4, rec.KIND_ROW, 0, 3, 0.0, rec.pack_body({"x": 2.0})),
    ]
    cols, malformed, dropped = cl.rows_to_columns(records, last_step=-1)
    assert cols is not None and dropped == 0
    assert [r.seq for r in malformed] == [2, 3]
    assert cols.steps == [0, 3]


@given(st.lists(st.integers(1, ck.CHUNK_MAX), max_size=60), st.booleans())
def test_compaction_plans_merge_only_adjacent_small_chunks_within_the_limit(
    sizes: list[int], final: bool
) -> None:
    metas = list(enumerate(sizes))
    groups = ck.plan_merges(metas, final)
    seen: set[int] = set()
    for g in groups:
        ids = [i for i, _ in g]
        assert len(g) > 1 and ids == list(range(ids[0], ids[0] + len(ids)))  # adjacent
        assert all(n < ck.COMPACT_MIN for _, n in g)
        total = sum(n for _, n in g)
        assert total <= ck.CHUNK_MAX and (final or total >= ck.COMPACT_MIN)
        assert not seen & set(ids)
        seen |= set(ids)


# --- decoding a received batch -----------------------------------------------------------------
@st.composite
def damaged_batches(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A batch of records of mixed sizes and kinds (runs of equal sizes, as training loops
    make), then perhaps damaged: a flipped byte, cut or added bytes, a wrong seq or range."""
    first = draw(st.integers(1, 2**40))
    sizes = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 40)), min_size=1, max_size=6))
    out, seq = [], first
    for size, count in sizes:
        for _ in range(count):
            kind = draw(st.sampled_from([rec.KIND_ROW, rec.KIND_ROW, rec.KIND_RUN, rec.KIND_EXIT, 9]))
            out.append(
                rec.encode(
                    seq, kind, seq * 2, float(seq), bytes(draw(st.binary(min_size=size, max_size=size)))
                )
            )
            seq += 1
    data, last = bytearray(b"".join(out)), seq - 1
    how = draw(st.sampled_from(["none", "flip", "cut", "append", "seq", "range", "pad"]))
    if how == "flip":
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=60))
    elif how == "seq":
        last += draw(st.sampled_from([-1, 1]))
    elif how == "range":
        first += draw(st.sampled_from([-1, 1]))
    elif how == "pad":  # a ring padding record in the middle, with a valid CRC
        pos = sum(map(len, out[: draw(st.integers(0, len(out) - 1))]))
        length = struct.unpack_from("<I", data, pos)[0]
        data[pos + 16] = rec.KIND_PAD
        struct.pack_into("<I", data, pos + 4, rec.crc32c(bytes(data[pos + 8 : pos + 40 + length])))
    return bytes(data), first, last


@given(damaged_batches())
@settings(max_examples=300, deadline=None)
def test_decode_batch_accepts_and_refuses_exactly_what_parse_batch_does(case: tuple[bytes, int, int]) -> None:
    """The server's vectorised decoder against the reference parser: the same records, or the
    same error message naming the same place."""
    data, first, last = case
    try:
        want: list[rec.Record] | str = rec.parse_batch(data, first, last)
    except rec.BatchError as e:
        want = str(e)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(bt, "NUMPY_BYTES", 0)
        try:
            got: list[rec.Record] | str = list(bt.decode_batch(data, first, last))
        except rec.BatchError as e:
            got = str(e)
    if first < 1:  # seqs outside SQLite's integers: the server's decoder refuses before parsing
        assert isinstance(want, str) and got == f"batch seqs {first}..{last} are outside 1..2**63-1"
        return
    assert got == want


def test_a_decoded_batch_is_a_sequence_of_records_and_slices_share_its_buffer() -> None:
    data = b"".join(rec.encode(s, rec.KIND_ROW, s, 0.5 * s, rec.pack_body({"x": s})) for s in range(1, 2001))
    batch = bt.decode_batch(data, 1, 2000)
    assert isinstance(batch, bt.RecordBatch) and len(batch) == 2000
    assert batch[5] == rec.Record(6, rec.KIND_ROW, 0, 6, 3.0, rec.pack_body({"x": 6}))
    tail = batch[1500:]
    assert (
        isinstance(tail, bt.RecordBatch)
        and tail.data is batch.data
        and [r.seq for r in tail] == list(range(1501, 2001))
    )
    joined = bt.join_records([batch[:700], batch[700:]])
    assert list(joined) == list(batch)
    with pytest.raises(rec.BatchError, match="outside"):
        bt.decode_batch(data, 2**63, 2**63 + 1999)
