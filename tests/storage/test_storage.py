"""The storage interface, tested against every backend (a fixture parametrised over them).

The model is the offline reader: whatever a run's records fold into with
``runstream.format.fold.RunState`` (rows, summary, config, keys) is what the storage must give back.
Backend-specific checks (raw SQL, on-disk damage) are marked with the backend they need.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstream.format import record as rec
from runstream.format.fold import RunState
from runstream_ingest.server import decode as bt
from runstream_ingest.server.decode import decode_batch
from runstream_ingest.server.storage import open_storage
from runstream_ingest.server.storage.history import chunks as ck
from runstream_ingest.server.storage.history import columns as cl
from runstream_ingest.server.storage.interface import (
    KIND_CONSOLE,
    KIND_FILE,
    KIND_SYSTEM,
    SERVER_REGRESSIONS_KEY,
    BadBatch,
    BatchWrite,
    RunExists,
    RunInfo,
    RunNotFound,
    RunQuery,
    SequenceGap,
    Storage,
    StorageError,
)
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from runstream_ingest.server.storage.sqlite.query import SqliteQueries
from tests.storage.test_storage_chunks import FLOATS, canon

E, P = "ent", "proj"
BACKENDS = ["sqlite"]


@contextmanager
def numpy_everywhere() -> Iterator[None]:
    """Batches of any size take the numpy paths (decode, columns, chunk statistics), which
    otherwise only batches of a few hundred rows or more take."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(bt, "NUMPY_BYTES", 0)
        m.setattr(cl, "NUMPY_MIN", 0)
        m.setattr(ck, "NUMPY_MIN", 0)
        yield


RUN_IDS = itertools.count()  # fresh run ids for hypothesis examples sharing one database


@dataclass
class Backend:
    name: str
    open: Callable[..., Storage]  # open(clock=time.time): a new Storage on the same database
    path: Path | None = None  # sqlite only


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    opened: list[Storage] = []
    if request.param == "sqlite":
        path = tmp_path / "runstream.db"

        def make(clock: Callable[[], float] = time.time) -> Storage:
            s = SqliteStorage(path, clock=clock)
            opened.append(s)
            return s

        yield Backend("sqlite", make, path)
    for s in opened:
        s.close()


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.open()


class Feed:
    """Records of one writer, numbered from seq 1, as a sidecar would ship them."""

    def __init__(self, start_time: float = 1000.0) -> None:
        self.records: list[rec.Record] = []
        self.time = start_time

    def add(self, kind: int, body: Any, step: int = 0, t: float | None = None) -> rec.Record:
        self.time = self.time + 0.25 if t is None else t
        r = rec.Record(len(self.records) + 1, kind, 0, step, self.time, rec.pack_body(body))
        self.records.append(r)
        return r

    def run(self, **meta: Any) -> rec.Record:
        return self.add(rec.KIND_RUN, {"start_time": self.time, **meta})

    def row(self, step: int, data: dict[str, Any]) -> rec.Record:
        return self.add(rec.KIND_ROW, data, step)

    def rows(self, steps: Sequence[int], make: Callable[[int], dict[str, Any]]) -> None:
        for s in steps:
            self.row(s, make(s))

    def batch(self, first: int, last: int) -> tuple[int, int, list[rec.Record]]:
        return first, last, self.records[first - 1 : last]

    def decoded(self, first: int, last: int) -> tuple[int, int, Sequence[rec.Record]]:
        """The batch as the server gets it: encoded, then decoded by ``decode_batch``."""
        data = b"".join(
            rec.encode(r.seq, r.kind, r.step, r.time, r.body, r.flags) for r in self.records[first - 1 : last]
        )
        return first, last, decode_batch(data, first, last)

    def write(self, run: str = "r", first: int = 1, last: int | None = None, writer: str = "w") -> BatchWrite:
        last = len(self.records) if last is None else last
        return BatchWrite(E, P, run, writer, *self.decoded(first, last))

    def store(
        self, s: Storage, run: str = "r", writer: str = "w", first: int = 1, last: int | None = None
    ) -> Any:
        last = len(self.records) if last is None else last
        return s.store_batch(E, P, run, writer, *self.batch(first, last))

    def state(self) -> RunState:
        st_ = RunState()
        st_.feed(self.records)
        return st_


def history(s: Storage, run: str = "r", **kw: Any) -> list[dict[str, Any]]:
    return [row for page in s.scan_history(E, P, run, **kw) for row in page]


def run_info(s: Storage, run: str = "r") -> RunInfo:
    info = s.get_run(E, P, run)
    assert info is not None, f"run {run} is missing"
    return info


def training_feed(rows: int = 10) -> Feed:
    f = Feed()
    f.run(name="n", tags=["t1", "t2"], host="h", program="train.py", group="g", job_type="train", notes="hi")
    f.add(rec.KIND_CONFIG, {"lr": 0.1, "model": {"depth": 3}})
    f.rows(range(rows), lambda i: {"loss": 1.0 / (i + 1), "epoch": i // 4})
    return f


# --- open_run and resume rules -----------------------------------------------------------------
def test_open_run_creates_a_running_run_with_nothing_acked(storage: Storage) -> None:
    o = storage.open_run(E, P, "r", "w", "")
    assert (o.acked_seq, o.resumed, o.last_step, o.run_path) == (0, False, -1, f"{E}/{P}/r")
    info = storage.get_run(E, P, "r")
    assert info is not None and info.state == "running" and info.row_count == 0
    assert storage.list_projects(E) == [P]
    assert [r.run_id for r in storage.list_runs(E, P)] == ["r"]


def test_resume_must_without_the_run_raises_run_not_found(storage: Storage) -> None:
    with pytest.raises(RunNotFound, match=f"{E}/{P}/nope"):
        storage.open_run(E, P, "nope", "w", "must")
    assert storage.get_run(E, P, "nope") is None


def test_resume_never_refuses_a_run_holding_another_writers_data(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w1", "")
    training_feed(3).store(storage, writer="w1")
    with pytest.raises(RunExists, match="w1"):
        storage.open_run(E, P, "r", "w2", "never")


def test_resume_never_lets_a_writer_reconnect_and_allows_a_run_without_data(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w1", "never")
    assert storage.open_run(E, P, "r", "w2", "never").resumed  # w1 stored nothing yet
    training_feed(3).store(storage, writer="w1")
    assert storage.open_run(E, P, "r", "w1", "never").acked_seq == 5


def test_reopening_a_run_reports_acked_seq_last_step_and_resumed(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "allow")
    training_feed(7).store(storage)
    o = storage.open_run(E, P, "r", "w", "must")
    assert (o.acked_seq, o.resumed, o.last_step) == (9, True, 6)
    assert storage.open_run(E, P, "r", "w2", "allow").acked_seq == 0  # seqs are per writer


def test_a_new_writer_resumes_a_finished_run_as_running(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w1", "")
    f = training_feed(3)
    f.add(rec.KIND_EXIT, {"exit_code": 0, "state": "finished"})
    f.store(storage, writer="w1")
    assert run_info(storage).state == "finished"
    storage.open_run(E, P, "r", "w1", "")  # the same writer reconnecting changes nothing
    assert run_info(storage).state == "finished"
    storage.open_run(E, P, "r", "w2", "allow")
    info = storage.get_run(E, P, "r")
    assert info is not None and (info.state, info.exit_code, info.finished_at) == ("running", None, None)


def test_writing_to_a_run_never_opened_raises_run_not_found(storage: Storage) -> None:
    with pytest.raises(RunNotFound):
        training_feed(1).store(storage)
    with pytest.raises(RunNotFound):
        storage.heartbeat(E, P, "r", 1.0)
    with pytest.raises(RunNotFound):
        storage.scan_history(E, P, "r")


# --- exactly once ------------------------------------------------------------------------------
def test_the_same_batch_twice_is_stored_once_and_acked_again(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = training_feed(10)
    first = f.store(storage)
    again = f.store(storage)
    assert (first.duplicate, first.acked_seq, first.stored) == (False, 12, 12)
    assert (again.duplicate, again.acked_seq, again.stored) == (True, 12, 0)
    assert history(storage) == f.state().rows
    assert run_info(storage).row_count == 10


def test_an_overlapping_batch_after_a_restart_stores_only_the_new_records(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = training_feed(20)
    f.store(storage, first=1, last=12)
    r = f.store(storage, first=5, last=22)  # the client restarted and resent from seq 5
    assert (r.duplicate, r.acked_seq, r.stored) == (False, 22, 10)
    assert history(storage) == f.state().rows


def test_a_batch_after_a_gap_raises_sequence_gap_naming_the_seqs(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = training_feed(10)
    f.store(storage, first=1, last=4)
    with pytest.raises(SequenceGap, match=r"seq 7 .* is 5 .* 5\.\.6 are missing") as e:
        f.store(storage, first=7, last=12)
    assert (e.value.expected, e.value.got) == (5, 7)
    assert storage.open_run(E, P, "r", "w", "").acked_seq == 4


@pytest.mark.parametrize(
    ("first", "last", "seqs"),
    [(1, 3, [1, 2]), (1, 3, [1, 3, 2]), (2, 3, [1, 2]), (0, 0, [0]), (3, 2, []), (1, 3, [1, 2, 2])],
)
def test_a_batch_whose_records_do_not_match_its_range_raises_bad_batch(
    storage: Storage, first: int, last: int, seqs: list[int]
) -> None:
    storage.open_run(E, P, "r", "w", "")
    records = [rec.Record(s, rec.KIND_ROW, 0, s, 0.0, rec.pack_body({"x": 1})) for s in seqs]
    with pytest.raises(BadBatch, match=f"{E}/{P}/r"):
        storage.store_batch(E, P, "r", "w", first, last, records)
    assert run_info(storage).row_count == 0


def test_two_storages_racing_on_one_database_store_a_batch_once(backend: Backend) -> None:
    a, b = backend.open(), backend.open()
    a.open_run(E, P, "r", "w", "")
    f = training_feed(2000)
    results: list[Any] = []
    go = threading.Barrier(2)

    def store(s: Storage) -> None:
        go.wait()
        results.append(f.store(s))

    threads = [threading.Thread(target=store, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.duplicate for r in results) == [False, True]
    assert {r.acked_seq for r in results} == {2002}
    assert history(backend.open()) == f.state().rows


def test_a_batch_that_fails_half_way_leaves_nothing_behind(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = training_feed(10)
    f.store(storage, first=1, last=5)

    def crash(*a: Any, **k: Any) -> Any:
        raise OSError("simulated crash after the dedupe key was written")

    with monkeypatch.context() as m:
        m.setattr(ck, "encode_points", crash)
        with pytest.raises(OSError):
            f.store(storage, first=6, last=12)
    assert storage.open_run(E, P, "r", "w", "").acked_seq == 5
    assert len(history(storage)) == 3
    assert f.store(storage, first=6, last=12).stored == 7  # the retry stores it, once
    assert history(storage) == f.state().rows


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_database_refuses_a_replayed_batch_even_if_writer_progress_were_lost(backend: Backend) -> None:
    s = backend.open()
    s.open_run(E, P, "r", "w", "")
    f = training_feed(10)
    f.store(s)
    with closing(sqlite3.connect(str(backend.path))) as db, db:  # a progress row gone backwards (a bug)
        db.execute("UPDATE writers SET acked_seq = 0")
    assert f.store(backend.open()).duplicate  # the (run, writer, last_seq) key still refuses it
    assert history(s) == f.state().rows


# --- group commit ------------------------------------------------------------------------------
def test_a_group_commit_stores_each_batch_as_if_it_were_stored_alone(storage: Storage) -> None:
    """One transaction for many batches: duplicates, overlaps and gaps inside the group are
    decided in order, batch by batch, exactly as separate calls would decide them."""
    for run in ("a", "b"):
        storage.open_run(E, P, run, "w", "")
    fa, fb = training_feed(30), training_feed(10)
    results = storage.store_batches(
        [
            fa.write("a", 1, 10),
            fb.write("b", 1, 6),
            fa.write("a", 11, 20),
            fa.write("a", 1, 10),  # sent again: a duplicate of the first
            fa.write("a", 15, 25),  # overlaps what is stored by now
            fb.write("b", 9, 12),  # skips 7..8: a gap
            fa.write("nope", 1, 3),  # a run never opened
            fa.write("a", 26, 32),
        ]
    )
    assert [type(r).__name__ for r in results] == ["StoreResult"] * 5 + ["SequenceGap", "RunNotFound"] + [
        "StoreResult"
    ]
    assert [(r.duplicate, r.acked_seq, r.stored) for r in results if not isinstance(r, Exception)] == [
        (False, 10, 10), (False, 6, 6), (False, 20, 10), (True, 20, 0), (False, 25, 5), (False, 32, 7),
    ]  # fmt: skip
    assert history(storage, "a") == fa.state().rows
    assert history(storage, "b") == [r for r in fb.state().rows if r["_step"] < 4]  # seqs 3..6 are rows 0..3
    assert storage.open_run(E, P, "b", "w", "").acked_seq == 6
    assert storage.get_run(E, P, "nope") is None


def test_a_batch_that_fails_in_a_group_fails_alone(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    for run in ("a", "bad"):
        storage.open_run(E, P, run, "w", "")
    good, bad = training_feed(20), Feed()
    bad.rows(range(5), lambda i: {"loss": 666.0})
    real = ck.encode_points

    def fail_on_666(steps: Any, times: Any, values: Any, *a: Any) -> Any:
        if 666.0 in list(values):
            raise OSError("simulated failure while storing one batch")
        return real(steps, times, values, *a)

    monkeypatch.setattr(ck, "encode_points", fail_on_666)
    results = storage.store_batches([good.write("a", 1, 10), bad.write("bad"), good.write("a", 11, 22)])
    assert isinstance(results[1], OSError)
    assert [r.acked_seq for r in (results[0], results[2]) if not isinstance(r, Exception)] == [10, 22]
    assert history(storage, "a") == good.state().rows
    assert storage.open_run(E, P, "bad", "w", "").acked_seq == 0 and history(storage, "bad") == []
    monkeypatch.setattr(ck, "encode_points", real)
    (retry,) = storage.store_batches([bad.write("bad")])
    assert not isinstance(retry, Exception) and retry.stored == 5
    assert history(storage, "bad") == bad.state().rows


def test_a_failing_batch_among_its_runs_batches_fails_alone(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's batches are first tried as a whole; one failing makes them go one by one, so
    the ones before it are stored and the one after it is a gap, as if sent one at a time."""
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run()
    f.rows(range(30), lambda i: {"x": 666.0 if 10 <= i < 20 else float(i)})
    real = ck.encode_points

    def fail_on_666(steps: Any, times: Any, values: Any, *a: Any) -> Any:
        if 666.0 in list(values):
            raise OSError("simulated failure while storing one batch")
        return real(steps, times, values, *a)

    monkeypatch.setattr(ck, "encode_points", fail_on_666)
    ok, failed, gap = storage.store_batches([f.write("r", 1, 11), f.write("r", 12, 21), f.write("r", 22, 31)])
    assert not isinstance(ok, Exception) and ok.acked_seq == 11
    assert isinstance(failed, OSError) and isinstance(gap, SequenceGap) and gap.expected == 12
    assert history(storage) == f.state().rows[:10]


def test_batches_of_one_run_in_one_group_are_stored_once_as_a_whole(storage: Storage) -> None:
    """A group's batches of one run are folded in together (one set of chunks), and each is
    still its own dedupe key: resending any of them later is a duplicate."""
    storage.open_run(E, P, "r", "w", "")
    f = training_feed(3000)
    with numpy_everywhere():
        cuts = [(1, 700), (701, 1900), (1901, 3002)]
        results = storage.store_batches([f.write("r", a, b) for a, b in cuts])
        assert [(r.duplicate, r.acked_seq) for r in results if not isinstance(r, Exception)] == [
            (False, 700), (False, 1900), (False, 3002),
        ]  # fmt: skip
        assert all(f.store(storage, first=a, last=b).duplicate for a, b in cuts)
    assert history(storage) == f.state().rows
    assert run_info(storage).row_count == 3000


# --- metadata, summary, state ------------------------------------------------------------------
def test_summary_is_the_last_value_of_each_key_unless_pinned(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run(name="n")
    f.row(0, {"loss": 3.0, "acc": 0.1, "opt": {"lr": 0.1, "mom": {"beta": 0.9}}})
    f.add(rec.KIND_SUMMARY, {"set": {"best": {"loss": 3.0}}, "del": []})
    f.row(1, {"loss": 2.0, "opt": {"lr": 0.05}})
    f.add(rec.KIND_SUMMARY, {"del": ["acc"]})
    f.row(2, {"loss": 1.0, "acc": 0.5})  # acc stays out of the summary: it was deleted
    f.add(rec.KIND_SUMMARY, {"set": {"loss": -1.0}})  # pinned beats the last logged value
    f.add(rec.KIND_STATS, {"dropped_records": 4, "overflow_peak_bytes": 0})
    f.store(storage, last=4)
    f.store(storage, first=5)
    summary = run_info(storage).summary
    assert summary == f.state().summary
    assert summary["opt/lr"] == 0.05 and summary["opt/mom/beta"] == 0.9 and summary["best/loss"] == 3.0
    assert "acc" not in summary and summary["loss"] == -1.0 and summary["_runstream/dropped_records"] == 4


def test_config_and_run_metadata_are_folded_like_the_offline_reader(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = training_feed(2)
    f.add(rec.KIND_CONFIG, {"lr": 0.2, "bs": 32})
    f.add(rec.KIND_RUN, {"name": "renamed", "tags": ["x"]})
    f.store(storage)
    info = storage.get_run(E, P, "r")
    assert info is not None
    assert info.config == f.state().config == {"lr": 0.2, "model": {"depth": 3}, "bs": 32}
    assert (info.name, info.tags, info.host, info.program) == ("renamed", ["x"], "h", "train.py")
    assert (info.group, info.job_type, info.notes) == ("g", "train", "hi")
    assert (info.last_step, info.row_count) == (1, 2)


@pytest.mark.parametrize(
    ("body", "state", "code"),
    [
        ({"exit_code": 0, "state": "finished"}, "finished", 0),
        ({"exit_code": 3}, "failed", 3),
        ({"exit_code": None, "state": "crashed"}, "crashed", None),
    ],
)
def test_an_exit_record_sets_state_exit_code_and_finish_time(
    storage: Storage, body: dict[str, Any], state: str, code: int | None
) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = training_feed(2)
    exit_record = f.add(rec.KIND_EXIT, body)
    f.store(storage)
    info = storage.get_run(E, P, "r")
    assert info is not None
    assert (info.state, info.exit_code, info.finished_at) == (state, code, exit_record.time)
    assert info.state == f.state().state(running=False)


def test_stale_runs_are_marked_crashed_and_come_back_with_a_heartbeat(backend: Backend) -> None:
    now = [100.0]
    s = backend.open(clock=lambda: now[0])
    for run in ("a", "b", "done"):
        s.open_run(E, P, run, "w", "")
    f = Feed()
    f.add(rec.KIND_EXIT, {"exit_code": 0})
    f.store(s, run="done")
    now[0] = 200.0
    s.heartbeat(E, P, "b", 190.0)
    assert s.mark_stale_runs_crashed(older_than=150.0) == [f"{E}/{P}/a"]
    assert s.mark_stale_runs_crashed(older_than=150.0) == []
    a = s.get_run(E, P, "a")
    assert a is not None and a.state == "crashed" and a.finished_at == 100.0
    assert run_info(s, "done").state == "finished"
    s.heartbeat(E, P, "a", 210.0)  # it was only silent
    a = s.get_run(E, P, "a")
    assert a is not None and (a.state, a.finished_at, a.heartbeat_at) == ("running", None, 210.0)


def test_a_stored_batch_revives_a_run_marked_crashed_for_silence(backend: Backend) -> None:
    now = [100.0]
    s = backend.open(clock=lambda: now[0])
    s.open_run(E, P, "r", "w", "")
    assert s.mark_stale_runs_crashed(older_than=150.0) == [f"{E}/{P}/r"]
    now[0] = 300.0
    training_feed(2).store(s)
    info = s.get_run(E, P, "r")
    assert info is not None and (info.state, info.heartbeat_at) == ("running", 300.0)


# --- history -----------------------------------------------------------------------------------
def test_scan_history_pages_rows_in_step_order(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run()
    f.rows(range(0, 3000, 3), lambda i: {"x": i, "y": float(i) / 7})
    for first in range(1, len(f.records) + 1, 97):  # many small batches: many small chunks
        f.store(storage, first=first, last=min(first + 96, len(f.records)))
    pages = list(storage.scan_history(E, P, "r", page_size=128))
    assert [len(p) for p in pages] == [128] * 7 + [104]
    assert [row for p in pages for row in p] == f.state().rows


def test_scan_history_filters_keys_and_step_ranges(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run()
    f.rows(range(100), lambda i: {"loss": i * 0.5, **({"eval": i} if i % 10 == 0 else {}), "s": f"t{i}"})
    f.store(storage)
    rows = f.state().rows
    assert history(storage, keys=["eval"]) == [
        {k: r[k] for k in ("_step", "_timestamp", "_runtime", "eval")} for r in rows if "eval" in r
    ]
    got = history(storage, keys=["loss", "s", "missing"], min_step=15, max_step=42, page_size=5)
    assert got == [{k: v for k, v in r.items() if k != "eval"} for r in rows[15:43]]
    assert history(storage, keys=["_step"], min_step=98) == [
        {k: r[k] for k in ("_step", "_timestamp", "_runtime")} for r in rows[98:]
    ]
    assert history(storage, min_step=200) == []
    assert storage.history_keys(E, P, "r") == list(f.state().keys)


def test_values_keep_their_types_floats_their_bits(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run()
    odd = [float("nan"), float("inf"), -float("inf"), -0.0, 5e-324, 1.7976931348623157e308]
    for i, v in enumerate(odd):
        f.row(
            i,
            {
                "f": v,
                "i": 2**62 + i,
                "b": i % 2 == 0,
                "big": 2**63 + i,
                "neg": -(2**63),
                "m": [1.0, 2, True][i % 3],
            },
        )
    f.row(10, {"f": 1, "s": None, "l": [1, 2.5, "x"], "bytes": b"\x00\xff"})
    f.store(storage)
    assert canon(history(storage)) == canon(f.state().rows)
    assert canon(run_info(storage).summary) == canon(f.state().summary)


def test_step_regressions_are_counted_in_the_summary_not_stored(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w1", "")
    f = Feed()
    f.run()
    f.rows([0, 1, 2, 2, 5], lambda i: {"x": i})
    f.store(storage, writer="w1")
    storage.open_run(E, P, "r", "w2", "")
    g = Feed(start_time=2000.0)
    g.rows([4, 5, 6], lambda i: {"x": -i})  # a resumed writer that restarted behind the run
    g.store(storage, writer="w2")
    assert [r["_step"] for r in history(storage)] == [0, 1, 2, 5, 6]
    info = storage.get_run(E, P, "r")
    assert info is not None and info.summary[SERVER_REGRESSIONS_KEY] == 3 and info.summary["x"] == -6
    assert (info.last_step, info.row_count) == (6, 5)


def test_compaction_merges_small_chunks_and_keeps_every_point(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run()
    f.rows(range(5000), lambda i: {"a": i * 0.1, "b": i, **({"c": "x"} if i % 100 == 0 else {})})
    f.add(rec.KIND_EXIT, {"exit_code": 0})
    for first in range(1, len(f.records) + 1, 37):
        f.store(storage, first=first, last=min(first + 36, len(f.records)))
    before = history(storage)
    buckets_before = storage.series(E, P, "r", "a", 7)
    removed = storage.compact(E, P, "r")
    assert removed > 3 * 130  # ~136 small chunks per series merge into 2 or 3
    assert storage.compact(E, P, "r") == 0  # nothing left to merge
    assert history(storage) == before == f.state().rows
    after = storage.series(E, P, "r", "a", 7)  # the same, but for the order of summing
    assert [(b.first_step, b.last_step, b.min, b.max, b.count) for b in after] == [
        (b.first_step, b.last_step, b.min, b.max, b.count) for b in buckets_before
    ]
    assert [b.mean for b in after] == pytest.approx([b.mean for b in buckets_before])


def test_compaction_of_a_running_run_only_makes_chunks_worth_keeping(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run()

    def store_rows(steps: range) -> None:
        first = len(f.records) + 1
        f.rows(steps, lambda i: {"a": float(i)})
        for lo in range(first, len(f.records) + 1, 20):
            f.store(storage, first=lo, last=min(lo + 19, len(f.records)))

    f.store(storage)
    store_rows(range(300))
    assert storage.compact(E, P, "r") == 0  # 15 chunks of 20 per series: too few points yet
    store_rows(range(300, 2100))
    # 105 chunks per series: the first 103 (2,060 points) merge, the last 2 wait for more.
    assert storage.compact(E, P, "r") == 2 * 102
    f.add(rec.KIND_EXIT, {"exit_code": 0})
    f.store(storage, first=len(f.records))
    assert storage.compact(E, P, "r") == 2 * 1  # the run ended: the rest merge too
    assert history(storage) == f.state().rows


def test_series_shows_a_single_spike_among_100k_points_in_its_buckets_max(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run()
    f.rows(range(100_000), lambda i: {"loss": 1e6 if i == 54_321 else 0.5})
    for first in range(1, len(f.records) + 1, 20_000):
        f.store(storage, first=first, last=min(first + 19_999, len(f.records)))
    buckets = storage.series(E, P, "r", "loss", 100)
    assert len(buckets) == 100 and sum(b.count for b in buckets) == 100_000
    spiky = [b for b in buckets if b.max == 1e6]
    assert len(spiky) == 1 and spiky[0].first_step <= 54_321 <= spiky[0].last_step
    assert all(b.max == 0.5 and b.min == 0.5 and b.mean == 0.5 for b in buckets if b is not spiky[0])


@given(
    st.lists(FLOATS | st.integers(-5, 5) | st.booleans(), min_size=1, max_size=120),
    st.integers(1, 9),
    st.data(),
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_series_buckets_agree_with_a_brute_force_count(
    storage: Storage, values: list[Any], buckets: int, data: st.DataObject
) -> None:
    run = f"r{next(RUN_IDS)}"
    storage.open_run(E, P, run, "w", "")
    f = Feed()
    f.run()
    steps = sorted(set(data.draw(st.lists(st.integers(0, 500), min_size=len(values), max_size=len(values)))))
    for s, v in zip(steps, values, strict=False):
        f.row(s, {"v": v})
    cut = data.draw(st.integers(1, len(f.records)))
    f.store(storage, run=run, last=cut)
    if cut < len(f.records):
        f.store(storage, run=run, first=cut + 1)
    lo = data.draw(st.none() | st.integers(0, 300))
    hi = data.draw(st.none() | st.integers(200, 600))
    got = storage.series(E, P, run, "v", buckets, lo, hi)
    pts = [(s, float(v)) for s, v in zip(steps, values, strict=False)]
    a = lo if lo is not None else steps[0]
    b = hi if hi is not None else steps[len(pts) - 1]
    want: dict[int, list[tuple[int, float]]] = {}
    for s, v in pts:
        if a <= s <= b:
            want.setdefault((s - a) * buckets // (b - a + 1), []).append((s, v))
    assert [(x.first_step, x.last_step, x.count) for x in got] == [
        (p[0][0], p[-1][0], len(p)) for _, p in sorted(want.items())
    ]
    for x, (_, p) in zip(got, sorted(want.items()), strict=True):
        valid = [v for _, v in p if not math.isnan(v)]
        assert x.min == (min(valid) if valid else None) and x.max == (max(valid) if valid else None)
        mean = sum(valid) / len(valid) if valid else None
        assert (x.mean is None) == (mean is None)
        if x.mean is not None and mean is not None and all(abs(v) < 1e100 or math.isinf(v) for v in valid):
            # (huge finite values: the order of summing decides whether and where it overflows)
            assert math.isnan(x.mean) == math.isnan(mean)
            assert math.isnan(mean) or x.mean == pytest.approx(mean, rel=1e-9, abs=1e-9)


def test_series_reads_chunk_statistics_not_chunks_for_whole_buckets(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run()
    f.rows(range(16_000), lambda i: {"x": float(i % 1000)})
    f.store(storage)  # four chunks of 4,000 points
    decoded: list[str] = []
    real = ck.decode_chunk

    def counting(blob: bytes, what: str = "chunk") -> ck.Chunk:
        decoded.append(what)
        return real(blob, what)

    monkeypatch.setattr(ck, "decode_chunk", counting)
    (whole,) = storage.series(E, P, "r", "x", 1)
    assert decoded == [] and (whole.count, whole.min, whole.max, whole.mean) == (16_000, 0.0, 999.0, 499.5)
    four = storage.series(E, P, "r", "x", 4)
    assert decoded == [] and [b.first_step for b in four] == [0, 4000, 8000, 12000]
    (part,) = storage.series(E, P, "r", "x", 1, 1000, 8999)  # cuts the first and third chunks
    assert len(decoded) == 2 and (part.first_step, part.last_step, part.count) == (1000, 8999, 8000)


# --- the model test ----------------------------------------------------------------------------
ROW_VALUES = (
    FLOATS
    | st.integers(-(2**63), 2**64 - 1)
    | st.integers(-3, 300)
    | st.booleans()
    | st.none()
    | st.text(max_size=3)
    | st.lists(st.integers(0, 3), max_size=2)
)


@st.composite
def run_records(draw: st.DrawFn) -> tuple[Feed, list[int]]:
    f = Feed(start_time=draw(st.floats(0, 1e9)))
    f.run(name="m")
    step = draw(st.integers(0, 5))
    for _ in range(draw(st.integers(0, 12))):  # stretches of uniform rows or of arbitrary rows
        n = draw(st.integers(1, 30))
        if draw(st.booleans()):
            keys = draw(st.lists(st.sampled_from(["a", "b", "c/d", "e"]), unique=True, max_size=3))
            for _ in range(n):
                f.row(step, {k: draw(FLOATS) for k in keys})
                step += draw(st.integers(1, 3))
        else:
            for _ in range(n):
                row = {
                    k: draw(ROW_VALUES)
                    for k in draw(st.lists(st.sampled_from(["a", "b", "e", "s"]), unique=True))
                }
                if draw(st.integers(0, 7)) == 0:
                    row["nest"] = {"x": draw(ROW_VALUES)}
                f.row(step, row)
                step += draw(st.integers(1, 3))
        extra = draw(st.integers(0, 5))
        if extra == 1:
            f.add(rec.KIND_SUMMARY, {"set": {draw(st.sampled_from(["a", "z"])): draw(FLOATS)}})
        elif extra == 2:
            f.add(rec.KIND_SUMMARY, {"del": [draw(st.sampled_from(["a", "b", "z"]))]})
        elif extra == 3:
            f.add(rec.KIND_CONFIG, {draw(st.sampled_from(["lr", "bs"])): draw(ROW_VALUES)})
        elif extra == 4:
            f.add(rec.KIND_STATS, {"dropped_records": draw(st.integers(0, 3))})
    if draw(st.booleans()):
        f.add(rec.KIND_EXIT, {"exit_code": draw(st.integers(0, 2))})
    n = len(f.records)
    cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=6))) | {n})
    return f, cuts


@given(run_records(), st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_history_summary_and_keys_read_back_as_the_offline_reader_folds_them(
    backend: Backend, feed_cuts: tuple[Feed, list[int]], data: st.DataObject
) -> None:
    """Random rows (NaN, infinities, ints of every width, bools, missing keys, strings, None,
    nested dicts), stored in random batches, some sent twice, compacted at random moments.
    Batches go as lists of records, or as the server decodes them (numpy paths included), one
    call each or all in one group commit."""
    f, cuts = feed_cuts
    s = backend.open()
    run = f"r{next(RUN_IDS)}"
    s.open_run(E, P, run, "w", "")
    how = data.draw(st.sampled_from(["records", "decoded", "numpy", "grouped"]))
    with numpy_everywhere() if how in ("numpy", "grouped") else contextlib.nullcontext():
        group: list[BatchWrite] = []
        first = 1
        for last in cuts:
            resend = data.draw(st.integers(0, 3)) == 0
            if how == "grouped":
                group += [f.write(run, first, last)] * (2 if resend else 1)
            elif how == "records":
                f.store(s, run=run, first=first, last=last)
            else:
                s.store_batch(E, P, run, "w", *f.decoded(first, last))
            if resend and how != "grouped":
                assert f.store(s, run=run, first=first, last=last).duplicate
            if how != "grouped" and data.draw(st.integers(0, 2)) == 0:
                s.compact(E, P, run)
            first = last + 1
        if group:
            results = s.store_batches(group)
            assert not any(isinstance(r, Exception) for r in results), results
            assert [r.duplicate for r in results] == [  # type: ignore[union-attr]
                i > 0 and group[i] is group[i - 1] for i in range(len(group))
            ]
    model = f.state()
    page = data.draw(st.integers(1, 50))
    assert canon(history(s, run, page_size=page)) == canon(model.rows)
    info = s.get_run(E, P, run)
    assert info is not None
    assert canon(info.summary) == canon(model.summary)
    assert canon(info.config) == canon(model.config)
    assert info.state == model.state(running=True)
    assert info.row_count == model.row_count
    assert s.history_keys(E, P, run) == list(model.keys)


# --- other record kinds ------------------------------------------------------------------------
def test_console_system_and_file_records_are_stored(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = training_feed(2)
    f.add(KIND_CONSOLE, {"stream": "stdout", "lines": ["epoch 1", "epoch 2"]})
    f.add(KIND_SYSTEM, {"system/cpu": 12.5, "system/gpu": {"0": {"util": 90}}}, t=5000.0)
    f.add(KIND_CONSOLE, {"stream": "stderr", "lines": ["warning"]})
    f.add(KIND_SYSTEM, {"system/cpu": 13.0}, t=5010.0)
    f.add(KIND_FILE, {"path": "model.pt", "sha256": "ab" * 32, "size": 123, "policy": "end"})
    f.store(storage)
    lines = storage.console(E, P, "r")
    assert [(x.stream, x.line) for x in lines] == [
        ("stdout", "epoch 1"),
        ("stdout", "epoch 2"),
        ("stderr", "warning"),
    ]
    assert [x.line for x in storage.console(E, P, "r", after_id=lines[1].id)] == ["warning"]
    assert storage.system_metrics(E, P, "r") == [
        {"_timestamp": 5000.0, "system/cpu": 12.5, "system/gpu/0/util": 90},
        {"_timestamp": 5010.0, "system/cpu": 13.0},
    ]
    assert storage.system_metrics(E, P, "r", keys=["system/cpu"], min_time=5005) == [
        {"_timestamp": 5010.0, "system/cpu": 13.0}
    ]
    (file,) = storage.files(E, P, "r")
    assert (file.path, file.size, file.policy) == ("model.pt", 123, "end")
    assert history(storage) == f.state().rows  # none of it is history


def test_unknown_and_malformed_records_do_not_block_the_stream(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = training_feed(2)
    f.add(42, {"from": "the future"})
    f.records.append(rec.Record(len(f.records) + 1, rec.KIND_CONFIG, 0, 0, 1.0, b"\xc1"))
    f.row(2, {"loss": 0.1})
    r = f.store(storage)
    assert (r.duplicate, r.acked_seq) == (False, len(f.records))
    assert len(history(storage)) == 3


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_unknown_and_malformed_records_are_kept_raw(backend: Backend) -> None:
    s = backend.open()
    s.open_run(E, P, "r", "w", "")
    f = training_feed(1)
    f.add(42, {"from": "the future"})
    f.add(rec.KIND_ROW, [1, 2], step=1)  # a row that is not a map
    f.store(s)
    with closing(sqlite3.connect(str(backend.path))) as db, db:
        kept = db.execute("SELECT seq, kind, reason FROM raw_records ORDER BY seq").fetchall()
    assert kept == [(4, 42, "unknown kind 42"), (5, rec.KIND_ROW, "malformed row body")]


# --- the run editor (SqliteQueries: the dashboard's edits and deletes) --------------------------
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_person_s_edits_win_over_the_program_s_later_run_records(backend: Backend) -> None:
    """Renamed and retagged in the dashboard while it runs, a run stays so when the program
    sends its metadata again (a resume, a second RUN record): the edit sticks, as in W&B.  What
    the person did not edit (notes here) still follows the program, and the sidecar's environment
    (a RUN record of its own writer with environment keys only) merges in beside the edit."""
    s = backend.open()
    assert isinstance(s, SqliteStorage)
    q = SqliteQueries(s)
    s.open_run(E, P, "r", "w", "")
    f = training_feed(2)
    f.store(s)
    q.update_run(E, P, "r", {"name": "mine", "tags": ["keep"]})
    f.add(rec.KIND_RUN, {"name": "program's", "tags": ["t9"], "notes": "from the program"})
    f.row(2, {"loss": 0.1})
    f.store(s, first=len(f.records) - 1)
    env = Feed()
    env.add(rec.KIND_RUN, {"git": {"commit": "abc"}, "os": "Linux"})
    s.open_run(E, P, "r", "w" + rec.COMPANION_WRITER_SUFFIX, "companion")
    env.store(s, writer="w" + rec.COMPANION_WRITER_SUFFIX)
    s.open_run(E, P, "r", "w2", "allow")  # the program resumed: a new writer, its RUN record again
    again = Feed()
    again.run(name="resumed", tags=["t1"], notes="resumed")
    again.store(s, writer="w2")
    info = run_info(s)
    assert (info.name, info.tags, info.notes) == ("mine", ["keep"], "resumed")
    assert info.meta["git"] == {"commit": "abc"} and info.meta["host"] == "h"
    assert info.meta["name"] == "mine" and not any(k.startswith("_runstream/") for k in info.meta)
    page = q.query_runs(E, P, RunQuery(limit=10))
    assert [(r.name, r.tags) for r in page.runs] == [("mine", ["keep"])]
    assert [r.run_id for r in q.query_runs(E, P, RunQuery(search="keep")).runs] == ["r"]
    q.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_deleted_run_leaves_no_cached_ids_behind(backend: Backend) -> None:
    """SQLite reuses a deleted run's row id: a run created after the delete gets it, and the
    deleted run's path created again must not be taken for that one (nor its series for theirs)."""
    s = backend.open()
    assert isinstance(s, SqliteStorage)
    q = SqliteQueries(s)
    s.open_run(E, P, "a", "w", "")
    old = Feed()
    old.row(0, {"loss": 9.0, "gone": 1})
    old.add(rec.KIND_EXIT, {"exit_code": 0})
    old.store(s, run="a")
    q.delete_run(E, P, "a")
    assert s.get_run(E, P, "a") is None
    for run, value in (("b", 2.0), ("a", 1.0)):
        s.open_run(E, P, run, "w", "")
        f = Feed()
        f.row(0, {"loss": value})
        f.store(s, run=run)
    assert [r["loss"] for r in history(s, "b")] == [2.0] and [r["loss"] for r in history(s, "a")] == [1.0]
    assert "gone" not in s.history_keys(E, P, "a")
    q.close()


# --- durability, damage, concurrency -----------------------------------------------------------
def test_reopening_the_database_reads_everything_back(backend: Backend) -> None:
    s = backend.open()
    s.open_run(E, P, "r", "w", "")
    f = training_feed(500)
    f.add(rec.KIND_SUMMARY, {"set": {"best": 1}})
    f.add(rec.KIND_EXIT, {"exit_code": 0})
    f.store(s, last=100)
    f.store(s, first=101)
    before = s.get_run(E, P, "r")
    s.close()
    again = backend.open()
    assert again.get_run(E, P, "r") == before
    assert history(again) == f.state().rows
    assert again.open_run(E, P, "r", "w", "").acked_seq == len(f.records)
    assert again.history_keys(E, P, "r") == list(f.state().keys)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_commits_are_fsynced_in_wal_mode(backend: Backend) -> None:
    s = backend.open()
    assert isinstance(s, SqliteStorage)
    assert s._w.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._w.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_corrupted_chunk_raises_a_storage_error_naming_it(backend: Backend) -> None:
    s = backend.open()
    s.open_run(E, P, "r", "w", "")
    training_feed(10).store(s)
    with closing(sqlite3.connect(str(backend.path))) as db, db:
        cid, blob = db.execute(
            "SELECT c.id, c.data FROM chunks c JOIN series s ON s.id = c.series WHERE s.name = 'loss'"
        ).fetchone()
        bad = bytearray(blob)
        bad[-3] ^= 0x10
        db.execute("UPDATE chunks SET data = ? WHERE id = ?", (bytes(bad), cid))
    with pytest.raises(StorageError, match=f"run {E}/{P}/r key 'loss' chunk {cid}: CRC"):
        history(s)
    assert history(s, keys=["epoch"])  # other keys still read


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_compaction_leaves_a_damaged_chunk_alone_and_merges_the_rest(backend: Backend) -> None:
    s = backend.open()
    s.open_run(E, P, "r", "w", "")
    f = training_feed(30)
    f.add(rec.KIND_EXIT, {"exit_code": 0})
    for first in range(1, len(f.records) + 1, 8):
        f.store(s, first=first, last=min(first + 7, len(f.records)))
    with closing(sqlite3.connect(str(backend.path))) as db, db:
        cid, blob = db.execute(
            "SELECT c.id, c.data FROM chunks c JOIN series s ON s.id = c.series WHERE s.name = 'loss'"
        ).fetchone()
        db.execute("UPDATE chunks SET data = ? WHERE id = ?", (blob[:-1], cid))
    with pytest.raises(StorageError, match=f"key 'loss' chunk {cid}"):
        s.compact(E, P, "r")
    assert history(s, keys=["epoch"]) == [
        {k: r[k] for k in ("_step", "_timestamp", "_runtime", "epoch")} for r in f.state().rows
    ]
    with closing(sqlite3.connect(str(backend.path))) as db:
        per_key = dict(
            db.execute(
                "SELECT s.name, count(*) FROM chunks c JOIN series s ON s.id = c.series GROUP BY s.name"
            )
        )
    assert per_key == {"epoch": 1, "_timestamp": 1, "loss": 4}  # loss: the damaged chunk and its group


def test_readers_on_other_threads_see_whole_batches_only(storage: Storage) -> None:
    storage.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run()
    f.rows(range(20 * 500), lambda i: {"x": float(i), "y": i})
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                rows = history(storage, keys=["x", "y"])
                assert [r["_step"] for r in rows] == list(range(len(rows)))
                assert all(len(r) == 5 for r in rows)
                seen.append(len(rows))
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    f.store(storage, last=1)
    for first in range(2, len(f.records) + 1, 500):
        f.store(storage, first=first, last=first + 499)
    done.set()
    for t in readers:
        t.join()
    assert not errors
    assert all(n % 500 == 0 for n in seen)


def test_open_storage_opens_sqlite_by_url_or_path(tmp_path: Path) -> None:
    for where in (f"sqlite://{tmp_path}/a.db", str(tmp_path / "b.db")):
        s = open_storage(where)
        try:
            assert isinstance(s, SqliteStorage) and s.open_run(E, P, "r", "w", "").acked_seq == 0
        finally:
            s.close()
    assert (tmp_path / "a.db").exists() and (tmp_path / "b.db").exists()
    with pytest.raises(StorageError, match="PostgreSQL"):
        open_storage("postgresql://localhost/runstream")


def test_list_runs_pages_newest_first(backend: Backend) -> None:
    now = [0.0]
    s = backend.open(clock=lambda: now[0])
    for i in range(5):
        now[0] = float(i)
        s.open_run(E, P, f"r{i}", "w", "")
    s.open_run(E, "other", "x", "w", "")
    assert [r.run_id for r in s.list_runs(E, P)] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r.run_id for r in s.list_runs(E, P, limit=2, offset=1)] == ["r3", "r2"]
    assert s.list_runs(E, P, offset=10**20) == [] and s.list_runs(E, P, limit=0) == []
    assert s.list_projects(E) == ["other", P]
    assert s.list_projects("nobody") == []
