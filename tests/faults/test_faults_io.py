"""Real I/O errors inside a real sidecar: write() and fsync() failing under a real run.

The faults are injected from outside the code under test, into the real system calls of the
sidecar process:

* ``fiu-run -x`` (Debian package fiu-utils) preloads libfiu's POSIX wrappers; given as
  ``RUNSTREAM_SIDECAR_WRAPPER`` it makes the sidecar's ``write()`` or ``fsync()`` calls fail with
  EIO (``failinfo=5``).  fiu-run execs the sidecar, so the sidecar is still the training
  process's child.
* ``strace --inject`` (Debian package strace) makes chosen ``fsync()`` calls fail with EIO,
  either attached (``-p``) to the running sidecar, or as the wrapper the sidecar starts under
  (strace forks: the sidecar is then strace's child).

Whatever fails, training must not notice, and every row must end up in the journal exactly once.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.format.fs import OsFileSystem
from runstream.format.journal_read import ScannedFrame, read_journal, scan_segment
from runstream.format.ring_layout import (
    W_HEAD,
    W_JOURNAL_ERRORS,
    W_JOURNALED_SEQ,
    W_SIDECAR_PID,
    W_SYNCED_SEQ,
    W_TAIL,
)
from tests.support.procs import (
    Script,
    alive,
    is_live_sidecar,
    poll,
    ring_words,
    runstream_inspect,
    start_script,
)

pytestmark = pytest.mark.slow

ROWS = 20_000

# Logs ``rows`` rows per "go" command; its pace (a pause every 20 rows, as a training step would
# make) lets the sidecar cut many small batches rather than a few big ones.
TRAIN = """
import sys, time
import runstream

cfg = _json.loads(sys.argv[1])
run = runstream.init(project="faults", dir=cfg["root"], config={"n": cfg["rows"]}, settings=cfg["settings"])
emit("ready", run_dir=run.dir)
perf = time.perf_counter
max_log = 0.0
step = 0
for n in cfg["phases"]:
    wait_for("go")
    for _ in range(n):
        row = {"loss": 1.0 / (step + 1), "acc": step / cfg["rows"], "i": step, "tag": "x" * (step % 17)}
        t0 = perf()
        run.log(row)
        dt = perf() - t0
        if dt > max_log:
            max_log = dt
        step += 1
        if step % 20 == 0:
            time.sleep(0.001)
    emit("logged", rows=step, max_log=max_log)
wait_for("finish")
runstream.finish()
emit("finished", rows=step, max_log=max_log)
"""


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:  # not a skip: make install provides it, so a missing tool is a broken setup
        pytest.fail(f"{tool} is not installed: install the Debian package {package} (make install does)")
    return path


def words(script: Script, run_dir: Path) -> list[int]:
    w = ring_words(run_dir)
    assert w is not None, f"the run's ring is gone while the script still runs\n{script.diag()}"
    return w


def all_taken(script: Script, run_dir: Path, synced_past: int | None = None) -> list[int]:
    """Wait until the sidecar has taken every published record from the ring (it releases ring
    space only for records the journal writer has: on disk, or held in memory for a retry) and,
    with ``synced_past``, until everything written is synced and the synced seq is past it."""

    def check() -> list[int] | None:
        w = words(script, run_dir)
        if w[W_TAIL] != w[W_HEAD]:
            return None
        if synced_past is not None and not w[W_SYNCED_SEQ] == w[W_JOURNALED_SEQ] > synced_past:
            return None
        return w

    what = "every record taken from the ring" + (f" and synced past seq {synced_past}" if synced_past else "")
    return poll(what, check, timeout=15, diag=script.diag)


def start(tmp_path: Path, settings: dict[str, Any], phases: list[int], wrapper: str | None = None) -> Script:
    root = tmp_path / "root"
    root.mkdir()
    args = {
        "root": str(root),
        "rows": sum(phases),
        "phases": phases,
        "settings": {"silent": True, "finish_timeout": 20, **settings},
    }
    env = {"RUNSTREAM_SIDECAR_WRAPPER": wrapper} if wrapper else {}
    return start_script(TRAIN, tmp_path, root, args, env)


def finish(script: Script, restarts_ok: bool = False) -> dict[str, Any]:
    """Have the script finish its run and exit; check that it and its sidecar are gone."""
    script.send("finish")
    done = script.expect("finished", timeout=30)
    assert script.wait(30) == 0, script.diag()
    assert not script.leftovers(), script.leftovers()
    assert not [p for p in script.sidecar_pids if is_live_sidecar(p, script.root)]  # gone
    if not restarts_ok:  # the sidecar never died and was replaced: it handled the I/O errors
        assert "sidecar exited" not in script.stderr(), script.diag()
    # log() never blocked: a generous bound (a call takes microseconds) that a log() waiting on
    # the disk or on the sidecar would blow through.
    assert done["max_log"] < 0.05, f"a log() call took {done['max_log'] * 1000:.1f} ms"
    return done


def assert_every_row_once(run_dir: Path, rows: int = ROWS) -> runstream.RunData:
    data = runstream.read_run(run_dir)
    assert data.run["state"] == "finished"
    steps = [r["_step"] for r in data.history]
    assert steps == list(range(rows)), (
        f"{len(steps)} rows; first missing: {sorted(set(range(rows)) - set(steps))[:5]}"
    )
    assert all(r["i"] == r["_step"] for r in data.history)
    assert data.dropped == 0
    shown = json.loads(runstream_inspect(run_dir, "--json"))
    assert shown["history"]["rows"] == rows
    assert shown["dropped"] == 0
    assert shown["run"]["state"] == "finished"
    return data


def test_write_eio_from_fiu_is_retried_and_every_row_journaled(tmp_path: Path) -> None:
    fiu = need("fiu-run", "fiu-utils")
    # 5% of the sidecar's write() calls fail with EIO; -f '' turns off fiu's control fifos.
    # Every write() fails that way, libuv's own included: libuv aborts the process when one of the
    # writes it makes while uvloop creates its event loop fails (about 1 start in 30 here), and
    # when the write() to its eventfd that wakes the loop from another thread fails.  Neither is
    # a disk error, so: fsync="always", which makes no such wake-ups (group commit runs on an
    # executor thread), and a sidecar that died at start, before taking any record, may be
    # replaced.  A replacement after records were taken would show as missing rows below.
    wrapper = shlex.join(
        [fiu, "-x", "-f", "", "-c", "enable_random name=posix/io/rw/write,probability=0.05,failinfo=5"]
    )
    with start(tmp_path, {"batch_bytes": 2048, "fsync": "always"}, [ROWS], wrapper) as script:
        run_dir = script.watch_run(script.expect("ready")["run_dir"])
        script.send("go")
        script.expect("logged", timeout=60)
        final = all_taken(script, run_dir)
        assert final[W_JOURNAL_ERRORS] > 0, "no write failed: fiu injected nothing"
        finish(script, restarts_ok=True)
    assert_every_row_once(run_dir)


def test_fsync_eio_mid_run_continues_in_a_fresh_segment_without_loss(tmp_path: Path) -> None:
    strace = need("strace", "strace")
    half = ROWS // 2
    with start(tmp_path, {"fsync": "group", "fsync_interval": 0.1}, [half, ROWS - half]) as script:
        run_dir = script.watch_run(script.expect("ready")["run_dir"])
        script.send("go")
        script.expect("logged", timeout=60)
        # A healthy first half: all of it durable, in one segment.
        w = all_taken(script, run_dir, synced_past=half)  # the rows, after the run and config records
        synced_before = w[W_SYNCED_SEQ]
        assert sorted(p.name for p in (run_dir / "journal").iterdir()) == ["seg-000001.rsj"]

        # The next two fsyncs of every sidecar thread fail with EIO: the group commit of the
        # segment, then the directory fsync of the fresh segment its frames are rewritten into.
        sidecar = w[W_SIDECAR_PID]
        err = tmp_path / "strace.stderr"
        cmd = [strace, "-f", "-p", str(sidecar), "-o", "/dev/null", "-e", "trace=fsync"]
        cmd += ["-e", "inject=fsync:error=EIO:when=1..2"]
        with open(err, "wb") as f:
            tracer = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
        try:
            poll("strace to attach", lambda: "attached" in err.read_text(), 10, diag=err.read_text)
            script.send("go")
            script.expect("logged", timeout=60)
            log_path = run_dir / "logs" / "sidecar.log"
            poll(
                "the fsync failure and the recovery in sidecar.log",
                lambda: re.search(
                    r"journal fsync failed.*\n(.*\n)*.*journal .* recovered", log_path.read_text()
                ),
                timeout=15,
                diag=script.diag,
            )
            # Everything is durable again, the second half included.
            all_taken(script, run_dir, synced_past=synced_before + (ROWS - half) - 1)
        finally:
            tracer.send_signal(signal.SIGINT)  # strace detaches and exits
            tracer.wait(10)
        finish(script)

    data = assert_every_row_once(run_dir)
    segments = sorted((run_dir / "journal").glob("seg-*.rsj"))
    assert len(segments) >= 2, [p.name for p in segments]
    assert data.journal["segments"] == len(segments)
    # The failed segment was abandoned, not written again: writing went on in fresh segments,
    # which start with copies of records the failed fsync had not made durable.
    fs = OsFileSystem()
    spans = []  # each segment's (lowest, highest) record seq
    for p in segments:
        frames = [f.header for f in scan_segment(fs, str(p)) if isinstance(f, ScannedFrame)]
        if frames:
            spans.append((min(h.first_seq for h in frames), max(h.last_seq for h in frames)))
    assert spans[0][1] < max(hi for _, hi in spans), "nothing written after the failed segment"
    assert any(lo <= spans[0][1] for lo, _ in spans[1:]), "no record of the failed segment rewritten"
    journal = read_journal(run_dir / "journal")
    assert sum(1 for _ in journal.iter_records()) == data.journal["records"]
    assert journal.duplicate_records > 0  # the rewritten copies, skipped by seq


def test_sidecar_under_a_forking_wrapper_does_not_take_it_for_a_dead_producer(tmp_path: Path) -> None:
    # strace forks the sidecar: its parent is strace, not the training process.  That must not
    # read as "my producer died" (the sidecar would record a crash, drain and exit mid-run).
    strace = need("strace", "strace")
    wrapper = shlex.join([strace, "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null", "-e", "trace=fsync"])
    half = ROWS // 2
    with start(tmp_path, {}, [half, ROWS - half], wrapper) as script:
        run_dir = script.watch_run(script.expect("ready")["run_dir"])
        script.send("go")
        script.expect("logged", timeout=60)
        all_taken(script, run_dir)
        sidecar = words(script, run_dir)[W_SIDECAR_PID]
        # Still there after the second half (over half a second of logging: several of its
        # liveness checks), and still the same process.
        script.send("go")
        script.expect("logged", timeout=60)
        all_taken(script, run_dir)
        assert alive(sidecar) and words(script, run_dir)[W_SIDECAR_PID] == sidecar
        finish(script)
    assert_every_row_once(run_dir)


def test_fsync_eio_from_the_sidecar_start_does_not_stop_journaling(tmp_path: Path) -> None:
    # Every fsync of the sidecar fails, from its first (at journal open) on: a disk that cannot
    # make anything durable.  Rows can still be written and read back; the sidecar must not die
    # over it (it would be restarted into the same failure, again and again, and journal nothing).
    fiu = need("fiu-run", "fiu-utils")
    wrapper = shlex.join([fiu, "-x", "-f", "", "-c", "enable name=posix/io/sync/fsync,failinfo=5"])
    with start(tmp_path, {}, [ROWS], wrapper) as script:
        run_dir = script.watch_run(script.expect("ready")["run_dir"])
        script.send("go")
        script.expect("logged", timeout=60)
        all_taken(script, run_dir)
        finish(script)
    assert_every_row_once(run_dir)
    log_text = (run_dir / "logs" / "sidecar.log").read_text()
    assert re.search(r"fsync.*(errno 5|Input/output error)", log_text), log_text[-3000:]
