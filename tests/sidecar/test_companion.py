"""The sidecar's companion writer: its own seqs and journal, and a server that attaches it to the
run without ever changing the run's state (docs/protocol.md, "Companion writers")."""

from __future__ import annotations

from pathlib import Path

import pytest

from runstream.format import record as rec
from runstream.format.journal_read import read_journal
from runstream_ingest.server.storage.interface import RunExists
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from runstream_ingest.sidecar.sources.companion import CompanionWriter, companion_dir
from tests.storage.test_storage import E, Feed, P, run_info

COMPANION = "w" + rec.COMPANION_WRITER_SUFFIX


def journal_records(run_dir: Path) -> list[rec.Record]:
    out: list[rec.Record] = []
    for frame in read_journal(companion_dir(run_dir) / "journal").iter_frames():
        out.extend(rec.iter_records(frame.batch))
    return out


def test_companion_seqs_continue_after_a_restarted_sidecar(tmp_path: Path) -> None:
    w = CompanionWriter(tmp_path)
    w.emit(rec.KIND_SYSTEM, {"system/cpu": 1.0}, t=10.0)
    w.emit(rec.KIND_CONSOLE, {"stream": "stdout", "lines": ["hello"]}, t=11.0)
    assert w.close() == 0
    w2 = CompanionWriter(tmp_path)  # the next sidecar of the same run
    w2.emit(rec.KIND_SYSTEM, {"system/cpu": 2.0}, t=12.0)
    w2.close()
    got = journal_records(tmp_path)
    assert [r.seq for r in got] == [1, 2, 3]
    assert [r.kind for r in got] == [rec.KIND_SYSTEM, rec.KIND_CONSOLE, rec.KIND_SYSTEM]
    assert got[1].value() == {"stream": "stdout", "lines": ["hello"]} and got[1].time == 11.0


def test_companion_records_wait_at_most_batch_age_before_the_journal(tmp_path: Path) -> None:
    w = CompanionWriter(tmp_path, batch_age=0.0)
    cuts: list[int] = []
    w.on_cut.append(lambda: cuts.append(w.seq))
    w.emit(rec.KIND_SYSTEM, {"system/cpu": 1.0})
    assert w.due()  # the sidecar's loop cuts whatever is due on every pass
    w.cut()
    assert cuts == [1] and not w.due()
    assert [r.seq for r in journal_records(tmp_path)] == [1]  # written before close
    w.close()


def test_a_big_burst_is_cut_into_frames_of_about_batch_bytes(tmp_path: Path) -> None:
    w = CompanionWriter(tmp_path, batch_bytes=4096)
    for i in range(200):
        w.emit(rec.KIND_CONSOLE, {"stream": "stdout", "lines": [f"line {i} " + "x" * 100]})
    w.close()
    batches = list(read_journal(companion_dir(tmp_path) / "journal").iter_frames())
    assert len(batches) > 5
    assert [r.seq for b in batches for r in rec.iter_records(b.batch)] == list(range(1, 201))


def test_companion_lines_after_the_producers_exit_leave_the_run_finished(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "db.sqlite")
    s.open_run(E, P, "r", "w", "")
    f = Feed()
    f.run(name="n")
    f.add(rec.KIND_EXIT, {"exit_code": 0, "state": "finished"})
    f.store(s)
    assert run_info(s).state == "finished"
    o = s.open_run(E, P, "r", COMPANION, "companion")
    assert o.resumed and o.acked_seq == 0
    c = Feed()
    c.add(rec.KIND_CONSOLE, {"stream": "stderr", "lines": ["last words"]})
    c.store(s, writer=COMPANION)
    info = run_info(s)
    assert (info.state, info.exit_code) == ("finished", 0)
    assert [ln.line for ln in s.console(E, P, "r")] == ["last words"]


def test_a_companion_that_connects_first_creates_the_run_its_producer_then_opens(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "db.sqlite")
    s.open_run(E, P, "r", COMPANION, "companion")
    c = Feed()
    c.add(rec.KIND_SYSTEM, {"system/cpu": 5.0})
    c.store(s, writer=COMPANION)
    # resume="never" refuses a run holding another writer's records: its own companion's don't count
    o = s.open_run(E, P, "r", "w", "never")
    assert o.acked_seq == 0
    assert run_info(s).state == "running"


def test_resume_never_still_refuses_a_run_another_producer_wrote(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "db.sqlite")
    s.open_run(E, P, "r", "w1", "")
    f = Feed()
    f.run(name="n")
    f.store(s, writer="w1")
    with pytest.raises(RunExists):
        s.open_run(E, P, "r", "w2", "never")
