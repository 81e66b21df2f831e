"""A full disk under a real run: training goes on, the sidecar rides it out, and loss is counted.

The run directory is on a real 4 MiB tmpfs.  A training script (a real subprocess, with a real
sidecar) logs rows of random floats (zstd cannot shrink them much); the test fills the tmpfs
with a filler file, lets the script log far more than the sidecar may hold in memory, then
deletes the filler while the script is still running and has it log more.  Needs root for
``mount``; skipped, with the reason, where that is not possible.

Failures covered: training slowed or stopped by a full disk; rows held in unbounded memory; a
sidecar killed while it holds rows for the disk losing them uncounted; and, on a disk that stays
full to the end, the sidecar never exiting (it waited for the disk with the ring closed), its
loss said only in logs/sidecar.log, the finish line counting the rows it had held as journaled,
``inspect`` and the summary showing no loss, and the exit record dropped with the overflow (the
run read as crashed).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

import runstream
from runstream.format import record as rec
from runstream.format.fold import LOSS_KEYS, STATS_KEYS
from runstream.format.ring_layout import W_DROPPED, W_HEAD, W_JOURNAL_ERRORS, W_SIDECAR_PID, W_TAIL
from tests.support.disk import CannotMount, small_tmpfs
from tests.support.procs import (
    Script,
    alive,
    is_live_sidecar,
    poll,
    ring_words,
    running_script,
    runstream_inspect,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]

KiB = 1024
MiB = 1024 * KiB
DISK = "4m"
WIDTH = 32  # floats per row
WARMUP_ROWS = 200  # journaled before the disk fills
FULL_ROWS = 40_000  # logged while the disk is full: ~18 MB in the ring, far above every bound
AFTER_ROWS = 1_000  # logged once space is back
SETTINGS = {
    "sidecar_memory": 1 * MiB,
    "ring_size": 256 * KiB,
    "overflow_size": 256 * KiB,
    "batch_bytes": 64 * KiB,
    "fsync": "group",
    "finish_timeout": 20,
    "silent": True,
}

TRAIN = """
import os, random, sys, time
import runstream

cfg = _json.loads(sys.argv[1])
run = runstream.init(project="faults", dir=cfg["root"], config={"w": cfg["width"]}, settings=cfg["settings"])
emit("ready", run_dir=run.dir)
rnd = random.random
perf = time.perf_counter
keys = [f"f{i}" for i in range(cfg["width"])]
max_log = 0.0
step = 0
for name, n in cfg["phases"]:
    wait_for("go " + name)
    for _ in range(n):
        row = {k: rnd() for k in keys}
        row["i"] = step
        t0 = perf()
        run.log(row)
        dt = perf() - t0
        if dt > max_log:
            max_log = dt
        step += 1
    emit("logged", phase=name, rows=step, max_log=max_log)
wait_for("finish")
runstream.finish()
emit("finished", rows=step, max_log=max_log)
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs of ``DISK`` bytes, unmounted (lazily if still busy) at teardown."""
    try:
        with small_tmpfs(tmp_path / "disk", str(DISK)) as mnt:
            yield mnt
    except CannotMount as e:
        pytest.skip(str(e))


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (256 * KiB, 4 * KiB, 512, 1):
            block = os.urandom(chunk)
            while True:
                try:
                    n = f.write(block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
                written += n or 0
                if not n:
                    break
    return written


LOST_SUMMARY_KEYS = {STATS_KEYS[k] for k in LOSS_KEYS}


def ring_row_bytes() -> int:
    """Bytes one row of the script's shape takes in the ring (header included, 8-aligned)."""
    row = {f"f{i}": random.random() for i in range(WIDTH)} | {"i": 12345}
    return (rec.HEADER_SIZE + len(msgpack.packb(row)) + 7) & -8


def compressed_row_bytes() -> float:
    """Bytes one such row takes in a journal frame (zstd level 3, as the sidecar's default)."""
    rows = [{f"f{i}": random.random() for i in range(WIDTH)} | {"i": n} for n in range(2000)]
    batch = b"".join(
        rec.encode(n + 1, rec.KIND_ROW, n, 1.7e9 + n / 1000, msgpack.packb(r), 0) for n, r in enumerate(rows)
    )
    return len(zstandard.ZstdCompressor(level=3).compress(batch)) / len(rows)


def words(script: Script, run_dir: Path) -> list[int]:
    w = ring_words(run_dir)
    assert w is not None, f"the run's ring is gone\n{script.diag()}"
    return w


def ring_drained(script: Script, run_dir: Path) -> bool:
    w = words(script, run_dir)
    return w[W_TAIL] == w[W_HEAD]


def start_warm(script: Script) -> tuple[Path, int]:
    """Wait for the run, have the script log its warm-up rows, wait until they are in the
    journal; returns the run directory and the sidecar's pid."""
    run_dir = script.watch_run(script.expect("ready")["run_dir"])
    script.send("go warmup")
    script.expect("logged")
    poll(
        "the warm-up rows in the journal",
        lambda: runstream.read_run(run_dir).history_rows == WARMUP_ROWS,
        timeout=15,
        diag=script.diag,
    )
    sidecar = poll("the sidecar's pid in the ring", lambda: words(script, run_dir)[W_SIDECAR_PID], 10)
    script.track()
    return run_dir, sidecar


def fill_disk(disk: Path) -> Path:
    filler = disk / "filler"
    assert fill(filler) > 0
    st = os.statvfs(disk)
    assert st.f_bavail == 0, f"the tmpfs still has {st.f_bavail} free blocks"
    return filler


def finish(script: Script) -> dict[str, Any]:
    """Have the script finish its run; check it exited cleanly, its sidecars with it, and that
    log() never blocked: a generous bound (a call takes microseconds) that a log() waiting on the
    disk or on the sidecar would blow through."""
    script.send("finish")
    done = script.expect("finished", timeout=30)
    assert script.wait(30) == 0, script.diag()
    assert not script.leftovers(), f"{script.leftovers()}\n{script.diag()}"
    assert not [p for p in script.sidecar_pids if is_live_sidecar(p, script.root)]  # gone
    assert done["max_log"] < 0.05, f"a log() call took {done['max_log'] * 1000:.1f} ms"
    return done


def check_rows_and_losses(run_dir: Path, total: int) -> tuple[list[int], int]:
    """The journal holds rows in order, each once, with gaps only where rows were lost, and every
    lost row is counted (read_run, summary, runstream inspect).  Returns the steps journaled
    and the number lost."""
    data = runstream.read_run(run_dir)
    assert data.run["state"] == "finished"
    steps = [r["_step"] for r in data.history]
    assert all(r["i"] == r["_step"] for r in data.history)
    assert steps == sorted(set(steps)), "rows out of order or repeated"
    assert set(steps) <= set(range(total))
    missing = total - len(steps)
    assert data.dropped == missing, (
        f"{missing} rows missing but {data.dropped} counted as lost ({data.stats})"
    )
    if missing:
        lost = {k: v for k, v in data.summary.items() if k.startswith("_runstream/")}
        assert lost, "the loss is not in the summary"
    shown = json.loads(runstream_inspect(run_dir, "--json"))
    assert shown["dropped"] == missing
    assert shown["history"]["rows"] == len(steps)
    text = runstream_inspect(run_dir)
    assert re.search(rf"^dropped\s+{missing}\b", text, re.M), text
    return steps, missing


def test_full_disk_training_goes_on_rows_held_in_bounded_memory_and_loss_counted(
    tmp_path: Path, small_disk: Path
) -> None:
    phases = [["warmup", WARMUP_ROWS], ["full", FULL_ROWS], ["after", AFTER_ROWS]]
    args = {"root": str(small_disk), "width": WIDTH, "settings": SETTINGS, "phases": phases}
    with running_script(TRAIN, tmp_path, small_disk, args) as script:
        # 1. A healthy start: the warm-up rows reach the journal.
        run_dir, sidecar = start_warm(script)

        # 2. The disk fills up; the script logs ~18 MB at full speed, and goes on doing so.
        filler = fill_disk(small_disk)
        script.send("go full")
        assert script.expect("logged", timeout=60)["rows"] == WARMUP_ROWS + FULL_ROWS
        poll(
            "the sidecar hitting the full disk",
            lambda: words(script, run_dir)[W_JOURNAL_ERRORS] > 0,
            timeout=15,
            diag=script.diag,
        )
        # The sidecar stopped taking records once it held sidecar_memory: the ring and the
        # overflow filled up and the rest was dropped, and counted.
        assert words(script, run_dir)[W_DROPPED] > 0, "nothing dropped: the sidecar took ~18 MB"
        assert alive(sidecar) and words(script, run_dir)[W_SIDECAR_PID] == sidecar, "the sidecar died"

        # 3. Space comes back while the script is still running: the sidecar writes what it held
        # and drains the ring again.
        filler.unlink()
        poll(
            "the ring drained once space was back",
            lambda: ring_drained(script, run_dir),
            15,
            diag=script.diag,
        )
        script.send("go after")
        script.expect("logged")
        finish(script)
        assert not is_live_sidecar(sidecar, script.root)

    # 4. What was logged is in the journal, in order, with gaps only where rows were dropped,
    # and every dropped row is counted.
    total = WARMUP_ROWS + FULL_ROWS + AFTER_ROWS
    steps, missing = check_rows_and_losses(run_dir, total)
    assert missing > 0
    # Nothing lost around the episode: every warm-up row, and the first row logged onto the full
    # disk (the sidecar held it in memory until space came back).
    assert steps[: WARMUP_ROWS + 1] == list(range(WARMUP_ROWS + 1))
    # What the sidecar held was bounded: sidecar_memory (plus one batch and one ring poll) of
    # compressed rows, plus what a full ring and a full overflow hold, plus what a group commit of
    # the warm-up rows freed.  Holding everything would be 40000 rows, more than the disk takes.
    held = [s for s in steps if WARMUP_ROWS <= s < WARMUP_ROWS + FULL_ROWS]
    in_memory = SETTINGS["sidecar_memory"] + SETTINGS["batch_bytes"] + 64 * KiB
    in_ring = SETTINGS["ring_size"] + SETTINGS["overflow_size"]
    bound = in_memory / compressed_row_bytes() + in_ring / ring_row_bytes() + WARMUP_ROWS
    assert len(held) <= 1.2 * bound, f"{len(held)} rows of the full-disk phase held, bound {bound:.0f}"
    assert [s for s in steps if s >= WARMUP_ROWS + FULL_ROWS], "nothing logged after the disk came back"

    # 5. One error report per streak, not one per retry, and the recovery is reported.
    log_text = (run_dir / "logs" / "sidecar.log").read_text()
    failures = re.findall(r"journal \w+ failed on .*", log_text)
    assert len(failures) == 1, f"{len(failures)} failure reports in sidecar.log:\n{log_text[-3000:]}"
    assert "No space left on device" in failures[0] or "errno 28" in failures[0]
    assert len(re.findall(r"journal .* recovered", log_text)) == 1, log_text[-3000:]


def test_sidecar_killed_while_holding_rows_for_a_full_disk_loses_none_uncounted(
    tmp_path: Path, small_disk: Path
) -> None:
    # The sidecar frees ring space for records its journal writer holds in memory while the disk
    # is full.  If it then dies (OOM killer, kill -9, a crash), its successor starts from the ring
    # and the journal: what only the dead one held is gone.  It may be lost; it may not be lost
    # without being counted.
    held_rows = 2_000  # well under sidecar_memory: the sidecar takes them all from the ring
    phases = [["warmup", WARMUP_ROWS], ["full", held_rows], ["after", AFTER_ROWS]]
    settings = SETTINGS | {"ring_size": 4 * MiB}  # room for them all: none dropped by the producer
    args = {"root": str(small_disk), "width": WIDTH, "settings": settings, "phases": phases}
    with running_script(TRAIN, tmp_path, small_disk, args) as script:
        run_dir, sidecar = start_warm(script)
        filler = fill_disk(small_disk)
        script.send("go full")
        script.expect("logged")
        poll(
            "the sidecar to take the rows from the ring and fail to write them",
            lambda: ring_drained(script, run_dir) and words(script, run_dir)[W_JOURNAL_ERRORS] > 0,
            timeout=15,
            diag=script.diag,
        )
        assert runstream.read_run(run_dir).history_rows == WARMUP_ROWS  # held in memory only

        os.kill(sidecar, signal.SIGKILL)

        def replaced() -> int | None:
            pid = words(script, run_dir)[W_SIDECAR_PID]
            return pid if pid != sidecar and alive(pid) else None

        successor = poll("the supervisor to start another sidecar", replaced, timeout=15, diag=script.diag)
        script.track()
        filler.unlink()
        script.send("go after")
        script.expect("logged")
        finish(script)
        assert not is_live_sidecar(successor, script.root)

    _, missing = check_rows_and_losses(run_dir, WARMUP_ROWS + held_rows + AFTER_ROWS)
    assert missing > 0
    # ... and finish() says so (a warning, shown even with silent=True), as it does for drops.
    journaled, lost = finish_line_figures(script.stderr())
    assert lost == missing and journaled + lost == WARMUP_ROWS + held_rows + AFTER_ROWS + 3


def finish_line_figures(stderr: str) -> tuple[int, int]:
    """The records journaled and lost, as the line printed at finish gives them."""
    m = re.search(r"(\d+) records journaled in .*?, (\d+) lost\b", stderr)
    assert m, f"no journaled/lost figures in the finish line:\n{stderr[-3000:]}"
    return int(m.group(1)), int(m.group(2))


def test_finish_line_overstates_journaled_on_a_disk_that_stays_full(tmp_path: Path, small_disk: Path) -> None:
    # The disk fills up and never comes back.  The sidecar held what it could in memory, and at
    # exit lost it: the loss was said only in logs/sidecar.log, while the finish line counted the
    # rows it had held as journaled and inspect showed none lost (the loss counters reached the
    # journal before that loss was known, or never, on a disk with no room for them).
    phases = [["warmup", WARMUP_ROWS], ["full", FULL_ROWS]]
    settings = SETTINGS | {"silent": False, "finish_timeout": 12}
    args = {"root": str(small_disk), "width": WIDTH, "settings": settings, "phases": phases}
    with running_script(TRAIN, tmp_path, small_disk, args) as script:
        run_dir, _ = start_warm(script)
        fill_disk(small_disk)
        script.send("go full")
        script.expect("logged", timeout=60)
        poll(
            "the sidecar hitting the full disk",
            lambda: words(script, run_dir)[W_JOURNAL_ERRORS] > 0,
            timeout=15,
            diag=script.diag,
        )
        finish(script)  # the disk is still full

    total = WARMUP_ROWS + FULL_ROWS
    steps, missing = check_rows_and_losses(run_dir, total)
    assert missing > 0
    data = runstream.read_run(run_dir)
    assert data.summary.get("_runstream/sidecar_lost_records"), data.summary  # what the sidecar held
    assert sum(v for k, v in data.summary.items() if k in LOST_SUMMARY_KEYS) == missing, data.summary
    # The finish line: journaled + lost == logged, and each figure the true one.  The records are
    # the rows plus the run, config and exit records, which are kept.
    journaled, lost = finish_line_figures(script.stderr())
    assert lost == missing, script.stderr()[-3000:]
    assert journaled == len(steps) + 3, script.stderr()[-3000:]
    assert journaled + lost == total + 3
