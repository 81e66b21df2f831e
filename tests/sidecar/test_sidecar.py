"""The sidecar's loop in-process, under both asyncio's and uvloop's event loops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

import runstream
from runstream.format import record as rec
from runstream.format.ring_layout import W_CLOSED, W_JOURNALED, RingMap
from runstream.ring import RingWriter
from runstream_ingest.sidecar.main import Sidecar, parse_args

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoop:
    lp = LOOPS[request.param]()
    request.addfinalizer(lp.close)
    return lp


def make_run(tmp_path: Path, capacity: int = 16 << 20) -> tuple[Path, RingMap, RingWriter]:
    run_dir = tmp_path / "run"
    for sub in ("journal", "files", "logs"):
        (run_dir / sub).mkdir(parents=True)
    ring = RingMap.create(tmp_path / "ring", capacity)
    return run_dir, ring, RingWriter(ring, overflow_limit=1 << 26)


def sidecar(ring_path: Path, run_dir: Path, *extra: str) -> Sidecar:
    opts = parse_args(["--ring", str(ring_path), "--run-dir", str(run_dir), *extra])
    return Sidecar(RingMap.attach(ring_path), run_dir, opts)


def push(w: RingWriter, kind: int, value: object, step: int = 0) -> None:
    w.push(kind, step, 1000.0 + step, rec.pack_body(value))


def test_sidecar_journals_a_closed_ring_and_writes_config_and_summary(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    run_dir, ring, w = make_run(tmp_path)
    push(w, rec.KIND_RUN, {"id": "abcd1234", "name": "n", "project": "p", "start_time": 1000.0})
    push(w, rec.KIND_CONFIG, {"lr": 0.5})
    for i in range(20_000):
        push(w, rec.KIND_ROW, {"loss": 1.0 / (i + 1), "nested": {"x": i}}, step=i)
    push(w, rec.KIND_SUMMARY, {"set": {"best": 7}})
    push(w, rec.KIND_EXIT, {"exit_code": 0, "state": "finished"})
    assert w.overflow_bytes == 0  # everything is in the ring before it is closed
    w.close()
    sc = sidecar(tmp_path / "ring", run_dir, "--batch-bytes", "65536")
    assert loop.run_until_complete(sc.run()) == 0
    assert ring.words[W_JOURNALED] == 20_004 and ring.words[W_CLOSED] == 1
    data = runstream.read_run(run_dir)
    assert data.history_rows == 20_000 and data.history[-1]["nested/x"] == 19_999
    assert data.journal["frames"] > 5  # cut by size into several batches
    assert data.run["state"] == "finished" and data.config == {"lr": 0.5}
    summary = json.loads((run_dir / "files" / "summary.json").read_text())
    assert summary["best"] == 7 and summary["loss"] == 1.0 / 20_000
    assert "lr: 0.5" in (run_dir / "files" / "config.yaml").read_text()
    ring.close()


def test_restarted_sidecar_skips_records_the_journal_already_has(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """A sidecar killed after writing a batch but before releasing the ring leaves those records
    in the ring; its successor must not journal them twice."""
    run_dir, ring, w = make_run(tmp_path)
    for i in range(100):
        push(w, rec.KIND_ROW, {"i": i}, step=i)
    first = sidecar(tmp_path / "ring", run_dir)
    first.drain_once()
    first.cut()
    first.journal.close()
    ring.words[24] = 0  # as if it died before ``release`` reached shared memory
    for i in range(100, 150):
        push(w, rec.KIND_ROW, {"i": i}, step=i)
    w.close()
    second = sidecar(tmp_path / "ring", run_dir)
    assert second.reader.after_seq == 100
    loop.run_until_complete(second.run())
    rows = runstream.read_run(run_dir).history
    assert [r["i"] for r in rows] == list(range(150))
    ring.close()
