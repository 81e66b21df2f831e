"""Downsampling for charts (server/storage/history/series.py through server/storage/sqlite/query.py;
docs/http-api.md, "Downsampling"): per bucket min, max, mean and count, so that no spike is ever hidden; exact
points for short series; a result whose size depends on the bucket count only; x by step, wall
time or relative time.  Runs are written through ``store_batch``, so chunks are laid out as real
ingest lays them out.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstream.format import record as rec
from runstream_ingest.server.storage.filters import QueryError
from runstream_ingest.server.storage.history import chunk_arrays as ca
from runstream_ingest.server.storage.history import chunks as ck
from runstream_ingest.server.storage.history import series as sr
from runstream_ingest.server.storage.interface import RunNotFound
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from runstream_ingest.server.storage.sqlite.query import SqliteQueries
from tests.storage.test_storage_chunks import legacy

E, P = "ent", "proj"
START = 1_000_000.0  # the run's start_time
DT = 0.01  # seconds between rows
MILLION = 1_000_000
SPIKE_STEP = 777_777
RUN_IDS = itertools.count()  # hypothesis examples share one database


def store_run(
    s: SqliteStorage,
    run: str,
    steps: range | list[int],
    make: Callable[[int], dict[str, Any]],
    *,
    batch: int = 20_000,
    time_of: Callable[[int], float] = lambda step: START + step * DT,
    meta: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    exit_code: int | None = 0,
    entity: str = E,
    project: str = P,
) -> None:
    """A run as a sidecar ships it: RUN and CONFIG records, rows in batches, then EXIT."""
    s.open_run(entity, project, run, "w", "")
    head = [
        rec.Record(1, rec.KIND_RUN, 0, 0, START, rec.pack_body({"start_time": START, **(meta or {})})),
        rec.Record(2, rec.KIND_CONFIG, 0, 0, START, rec.pack_body(config or {})),
    ]
    s.store_batch(entity, project, run, "w", 1, 2, head)
    seq = 3
    steps = list(steps)
    for a in range(0, len(steps), batch):
        part = steps[a : a + batch]
        recs = [
            rec.Record(seq + i, rec.KIND_ROW, 0, st_, time_of(st_), rec.pack_body(make(st_)))
            for i, st_ in enumerate(part)
        ]
        s.store_batch(entity, project, run, "w", seq, seq + len(recs) - 1, recs)
        seq += len(recs)
    if exit_code is not None:
        end = rec.Record(seq, rec.KIND_EXIT, 0, 0, START + 1e6, rec.pack_body({"exit_code": exit_code}))
        s.store_batch(entity, project, run, "w", seq, seq, [end])


def wave(step: int) -> float:
    return math.sin(step / 5000)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[SqliteStorage, SqliteQueries]]:
    s = SqliteStorage(tmp_path / "runstream.db")
    q = SqliteQueries(s)
    yield s, q
    q.close()
    s.close()


@pytest.fixture(scope="module")
def million(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteQueries]:
    """One run of 1,000,000 steps of "loss" (a slow wave, one spike) and "acc", and one of 10,000."""
    s = SqliteStorage(tmp_path_factory.mktemp("million") / "runstream.db")
    store_run(s, "long", range(MILLION), lambda i: {"loss": 1e6 if i == SPIKE_STEP else wave(i)})
    store_run(s, "short", range(10_000), lambda i: {"loss": wave(i)})
    q = SqliteQueries(s)
    yield q
    q.close()
    s.close()


def covering(series: sr.Series, x: float) -> int:
    """The bucket whose points span ``x``."""
    for i, (a, b) in enumerate(zip(series.x, series.x_last, strict=True)):
        if a <= x <= b:
            return i
    raise AssertionError(f"no bucket covers x={x}")


def counting_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """A list that grows by one at every call of ``chunk_arrays.<name>``."""
    calls: list[int] = []
    real = getattr(ca, name)

    def counting(*a: Any) -> Any:
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(ca, name, counting)
    return calls


# --- spikes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("x_axis", ["_step", "_timestamp", "_runtime"])
def test_a_single_spike_in_a_million_steps_is_the_max_of_its_bucket(
    million: SqliteQueries, x_axis: str
) -> None:
    out = million.series(E, P, "long", ["loss"], 1000, x_axis)["loss"]
    assert not out.exact
    assert sum(out.count) == MILLION
    spike_x = {"_step": SPIKE_STEP, "_timestamp": START + SPIKE_STEP * DT, "_runtime": SPIKE_STEP * DT}[
        x_axis
    ]
    i = covering(out, spike_x)
    assert out.max[i] == 1e6
    assert [m for m in out.max if m is not None and m > 1] == [1e6]  # only there
    assert max(m for m in out.mean if m is not None) < 1e6 / 100  # the mean line alone would hide it


def test_the_x_axis_by_time_reads_wall_and_relative_seconds(million: SqliteQueries) -> None:
    by = {a: million.series(E, P, "short", ["loss"], 100, a)["loss"] for a in sr.X_AXES}
    assert by["_step"].x[0] == 0 and by["_step"].x_last[-1] == 9999
    assert by["_timestamp"].x[0] == pytest.approx(START) and by["_runtime"].x[0] == pytest.approx(0)
    assert by["_runtime"].x_last[-1] == pytest.approx(9999 * DT)
    for a in ("_timestamp", "_runtime"):  # the same points, cut at the same places
        assert by[a].count == by["_step"].count and by[a].max == by["_step"].max


def test_min_and_max_bound_the_range_in_each_axis_s_own_units(million: SqliteQueries) -> None:
    steps = million.series(E, P, "long", ["loss"], 10, "_step", SPIKE_STEP - 50, SPIKE_STEP + 49)["loss"]
    rel = million.series(
        E, P, "long", ["loss"], 10, "_runtime", (SPIKE_STEP - 50) * DT, (SPIKE_STEP + 49) * DT
    )
    assert sum(steps.count) == 100 and steps.x[0] == SPIKE_STEP - 50 and max(steps.max) == 1e6
    assert sum(rel["loss"].count) == pytest.approx(100, abs=1)  # float edges: within a point
    assert max(m for m in rel["loss"].max if m is not None) == 1e6


# --- the size of the answer depends on the bucket count only -------------------------------------
@pytest.mark.parametrize("buckets", [1, 10, 1000])
def test_the_result_has_at_most_buckets_entries_whatever_the_run_length(
    million: SqliteQueries, buckets: int
) -> None:
    for run in ("short", "long"):
        out = million.series(E, P, run, ["loss"], buckets)["loss"]
        assert 0 < len(out.x) <= buckets
        assert all(len(col) == len(out.x) for col in (out.x_last, out.min, out.max, out.mean, out.count))


def test_long_series_are_read_from_chunk_statistics_without_decoding(
    million: SqliteQueries, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 buckets over a million points: every chunk lies inside a bucket's width, so not one
    blob is decoded; a range cut inside chunks decodes only the two chunks at its ends."""
    decoded = counting_calls(monkeypatch, "decode_columns")
    whole = million.series(E, P, "long", ["loss"], 100)["loss"]
    assert decoded == [] and sum(whole.count) == MILLION and max(whole.max) == 1e6
    part = million.series(E, P, "long", ["loss"], 100, "_step", 1234, 901_234)["loss"]
    assert len(decoded) == 2 and sum(part.count) == 900_001 and max(part.max) == 1e6


def test_a_long_chart_reads_stored_cells_and_decodes_no_chunk_even_the_first_time(
    million: SqliteQueries, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 buckets over a million points need finer grain than whole chunks: cells of 64
    points, stored in each chunk when it was written and read from the front of its blob, so even
    the first request after a start decodes no chunk; they are then kept, so the same chart again
    (a refresh, another x axis) reads no blob at all and comes back the same."""
    decoded = counting_calls(monkeypatch, "decode_columns")
    read = counting_calls(monkeypatch, "read_records")
    million.cells = ca.CellCache()
    first = million.series(E, P, "long", ["loss"], 1000)["loss"]
    assert decoded == [] and len(read) > 100 and sum(first.count) == MILLION
    read.clear()
    again = million.series(E, P, "long", ["loss"], 1000)["loss"]
    by_time = million.series(E, P, "long", ["loss"], 1000, "_runtime")["loss"]
    assert decoded == [] and read == [] and again == first and by_time.max == first.max
    half = million.series(E, P, "long", ["loss"], 500, "_step", 0, MILLION // 2 - 1)["loss"]
    assert decoded == [] and read == [] and sum(half.count) == MILLION // 2


@pytest.mark.parametrize("x_axis", sr.X_AXES)
def test_chunks_written_before_cells_were_stored_chart_the_same_and_decode_once(
    db: tuple[SqliteStorage, SqliteQueries], monkeypatch: pytest.MonkeyPatch, x_axis: str
) -> None:
    """A database from before chunks held cells ("RSC1" chunks) gives the very same chart: its
    chunks are decoded and their cells computed on the first request, then kept."""
    s, q = db
    spike = 123_456
    store_run(s, "r", range(200_000), lambda i: {"loss": 1e6 if i == spike else wave(i), "n": i % 7})
    want = q.series(E, P, "r", ["loss", "n"], 1000, x_axis)
    with closing(sqlite3.connect(s.path)) as c, c:  # as an older server wrote it
        c.create_function("legacy", 1, legacy)
        assert c.execute(
            "UPDATE chunks SET data = legacy(data) WHERE substr(data, 1, 4) = ?", (ck.MAGIC,)
        ).rowcount
    q.cells = ca.CellCache()
    decoded = counting_calls(monkeypatch, "decode_columns")
    got = q.series(E, P, "r", ["loss", "n"], 1000, x_axis)
    assert got == want and len(decoded) > 50 and max(m for m in got["loss"].max if m is not None) == 1e6
    decoded.clear()
    assert q.series(E, P, "r", ["loss", "n"], 1000, x_axis) == want and decoded == []


def test_a_chunk_whose_cells_are_damaged_is_refused_naming_it(
    db: tuple[SqliteStorage, SqliteQueries],
) -> None:
    """A read never returns data from damaged cells: the series fails with ChunkCorrupt naming the
    run, the key and the chunk; other keys still read."""
    s, q = db
    store_run(s, "r", range(100_000), lambda i: {"loss": wave(i), "acc": wave(i)})
    with closing(sqlite3.connect(s.path)) as c, c:
        cid, blob = c.execute(
            "SELECT c.id, c.data FROM chunks c JOIN series s ON s.id = c.series WHERE s.name = 'loss'"
            " ORDER BY c.first_step LIMIT 1 OFFSET 3"
        ).fetchone()
        bad = bytearray(blob)
        bad[ck.HEADER_SIZE + 20] ^= 0x10  # inside the cell section
        c.execute("UPDATE chunks SET data = ? WHERE id = ?", (bytes(bad), cid))
    with pytest.raises(
        ck.ChunkCorrupt, match=rf"run ent/proj/r key 'loss'.* chunk {cid}: CRC-32C mismatch in its cells"
    ):
        q.series(E, P, "r", ["loss"], 1000)
    assert sum(q.series(E, P, "r", ["acc"], 1000)["acc"].count) == 100_000


# --- exact points ----------------------------------------------------------------------------------
def test_a_short_series_comes_back_point_by_point(db: tuple[SqliteStorage, SqliteQueries]) -> None:
    s, q = db
    steps = [0, 1, 2, 10, 500, 501, 100_000]
    values = {0: 1.5, 1: math.nan, 2: -3, 10: True, 500: math.inf, 501: 0.25, 100_000: 7.0}
    store_run(s, "r", steps, lambda i: {"v": values[i]}, batch=3)
    out = q.series(E, P, "r", ["v"], len(steps))["v"]
    assert out.exact and out.x == steps and out.x_last == steps and out.count == [1] * len(steps)
    want = [1.5, None, -3.0, 1.0, math.inf, 0.25, 7.0]
    assert out.mean == want and out.min == want and out.max == want
    assert not q.series(E, P, "r", ["v"], len(steps) - 1)["v"].exact


@pytest.mark.parametrize("batch", [2, 5000])  # many small chunks (statistics) or one (decoded)
def test_a_bucket_holding_both_infinities_has_a_nan_mean_and_keeps_them_as_min_and_max(
    db: tuple[SqliteStorage, SqliteQueries], batch: int
) -> None:
    s, q = db
    values = [1.0, math.inf, math.nan, -math.inf, 2.0, 1e308, 1e308, 3.0, 4.0, 5.0]
    store_run(s, "r", range(len(values)), lambda i: {"v": values[i]}, batch=batch)
    out = q.series(E, P, "r", ["v"], 1)["v"]
    assert (out.count, out.min, out.max) == ([10], [-math.inf], [math.inf])
    assert out.mean[0] is not None and math.isnan(out.mean[0])


def test_keys_share_one_x_range_and_missing_keys_come_back_empty(
    db: tuple[SqliteStorage, SqliteQueries],
) -> None:
    s, q = db
    store_run(s, "r", range(1000), lambda i: {"a": i, **({"b": -i} if i >= 500 else {})})
    out = q.series(E, P, "r", ["a", "b", "nope", "_step", "_runtime"], 10)
    assert out["a"].x[0] == 0 and out["b"].x[0] == 500  # b starts half-way: its buckets are the last 5
    assert len(out["b"].x) == 5 and out["nope"].x == [] and out["nope"].exact
    assert out["_step"].max[-1] == 999 and out["_runtime"].max[-1] == pytest.approx(999 * DT)


def test_bad_arguments_and_unknown_runs_are_refused(db: tuple[SqliteStorage, SqliteQueries]) -> None:
    s, q = db
    store_run(s, "r", range(10), lambda i: {"a": i})
    with pytest.raises(QueryError, match="buckets"):
        q.series(E, P, "r", ["a"], 0)
    with pytest.raises(QueryError, match="x_axis"):
        q.series(E, P, "r", ["a"], 10, "epoch")
    with pytest.raises(RunNotFound):
        q.series(E, P, "nope", ["a"], 10)


# --- against brute force ---------------------------------------------------------------------------
values_st = st.one_of(
    st.floats(-1e6, 1e6), st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.integers(-100, 100)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    gaps=st.lists(st.integers(1, 400), min_size=1, max_size=3000),
    data=st.data(),
    buckets=st.integers(1, 60),
    batch=st.sampled_from([7, 500, 5000]),
)
def test_buckets_never_hide_a_point_whatever_the_layout(
    db: tuple[SqliteStorage, SqliteQueries], gaps: list[int], data: st.DataObject, buckets: int, batch: int
) -> None:
    """Every point in the range is counted once, lies within its bucket's [x, x_last] and within
    its [min, max]; buckets are in order and do not overlap; means are the means of their points."""
    s, q = db
    steps = [s_ - 1 for s_ in itertools.accumulate(gaps)]
    vals = data.draw(st.lists(values_st, min_size=len(steps), max_size=len(steps)))
    run = f"r{next(RUN_IDS)}"
    store_run(s, run, steps, dict(zip(steps, ({"v": v} for v in vals), strict=True)).__getitem__, batch=batch)
    lo = data.draw(st.integers(steps[0] - 10, steps[-1]))
    hi = data.draw(st.integers(lo, steps[-1] + 10))
    out = q.series(E, P, run, ["v"], buckets, "_step", lo, hi)["v"]
    pts = [(x, float(v)) for x, v in zip(steps, vals, strict=True) if lo <= x <= hi]
    assert sum(out.count) == len(pts)
    assert all(out.x_last[i] < out.x[i + 1] for i in range(len(out.x) - 1))
    for i in range(len(out.x)):
        mine = [v for x, v in pts if out.x[i] <= x <= out.x_last[i]]
        assert len(mine) == out.count[i]
        real = [v for v in mine if not math.isnan(v)]
        assert out.min[i] == (min(real) if real else None) and out.max[i] == (max(real) if real else None)
        if real and not (math.inf in real and -math.inf in real):
            assert out.mean[i] == pytest.approx(sum(real) / len(real), rel=1e-6, abs=1e-3)
