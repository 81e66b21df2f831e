"""Crashes with real processes: ``kill -9`` of the training process or of its sidecar, scripts
that end without ``finish`` or die of an exception."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import runstream
from tests.conftest import sidecars_under
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def script(tmp_path: Path, body: str) -> subprocess.Popen[bytes]:
    """Start a training script; its stderr goes to ``stderr.txt`` (read it with ``stderr``)."""
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    with open(tmp_path / "stderr.txt", "wb") as err:
        return subprocess.Popen(
            [sys.executable, str(path)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err
        )


def stderr(tmp_path: Path) -> str:
    return (tmp_path / "stderr.txt").read_text()


def run_dir(tmp_path: Path) -> Path:
    return (tmp_path / "runstream" / "latest-run").resolve()


def wait_sidecars_gone(tmp_path: Path, timeout: float = 60) -> None:
    wait_for(lambda: not sidecars_under(tmp_path), timeout, "the sidecar to drain and exit")


FULL_SPEED = """
    import os, runstream
    run = runstream.init(project="crash", mode="offline", settings={{"overflow_size": 0}})
    progress = os.open("progress", os.O_WRONLY | os.O_CREAT, 0o644)
    i = 0
    while True:
        run.log({{"i": i, "x": i * 0.5}})
        i += 1
        if i % 1000 == 0:
            # the last seq the producer knows is in the ring (records in the overflow don't count)
            os.pwrite(progress, b"%20d\\n" % run._writer.last_seq, 0)
        {extra}
"""


def last_progress(tmp_path: Path) -> int:
    try:
        text = (tmp_path / "progress").read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text else 0


def test_training_killed_mid_log_leaves_gapless_prefix_and_crashed_run(tmp_path: Path) -> None:
    proc = script(tmp_path, FULL_SPEED.format(extra=""))
    try:
        wait_for(lambda: last_progress(tmp_path) >= 200_000, 60, "200k rows logged")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        known = last_progress(tmp_path)
        wait_sidecars_gone(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    data = runstream.read_run(run_dir(tmp_path))
    steps = [r["i"] for r in data.history]
    assert steps == list(range(len(steps))), "the journal must hold a gapless prefix"
    # records: 1 run + 1 config before the rows; `known` counts every record in the ring
    assert len(steps) >= known - 2
    assert data.run["state"] == "crashed"
    assert data.journal["skipped_bytes"] == 0
    assert not Path(f"/dev/shm/runstream-{data.run['id']}-{proc.pid}.ring").exists()


def test_sidecar_killed_mid_run_is_replaced_and_journal_is_gapless(tmp_path: Path) -> None:
    n = 300_000
    proc = script(
        tmp_path,
        f"""
        import os, runstream
        run = runstream.init(project="crash", mode="offline")
        for i in range({n}):
            run.log({{"i": i}})
            if i == 50_000:
                open("halfway", "w").close()
            if i >= 50_000 and i % 1000 == 0 and not os.path.exists("go-on"):
                import time
                while not os.path.exists("go-on"):
                    time.sleep(0.001)  # hold here until the test has killed the sidecar
        run.finish()
        """,
    )
    try:
        wait_for((tmp_path / "halfway").exists, 60, "the script to get going")
        (victim,) = sidecars_under(tmp_path)
        victim.kill()
        killed_at = time.monotonic()
        victim.wait(5)
        wait_for(lambda: len(sidecars_under(tmp_path)) == 1, 5, "a replacement sidecar")
        noticed = time.monotonic() - killed_at
        (tmp_path / "go-on").touch()
        proc.wait(timeout=120)
        err = stderr(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert noticed < 1.0, f"replacement took {noticed:.2f}s"
    assert "started a new one" in err
    data = runstream.read_run(run_dir(tmp_path))
    assert [r["i"] for r in data.history] == list(range(n))
    assert data.run["state"] == "finished" and data.dropped == 0


def test_script_that_never_calls_finish_is_recorded_finished(tmp_path: Path) -> None:
    proc = script(
        tmp_path,
        """
        import runstream
        runstream.init(project="c", mode="offline")
        for i in range(100):
            runstream.log({"i": i})
        """,
    )
    proc.wait(timeout=60)
    assert proc.returncode == 0, stderr(tmp_path)
    data = runstream.read_run(run_dir(tmp_path))
    assert data.run["state"] == "finished" and data.run["exit_code"] == 0
    assert data.history_rows == 100
    assert not sidecars_under(tmp_path)


def test_script_dying_of_an_exception_is_recorded_failed_with_its_exit_code(tmp_path: Path) -> None:
    proc = script(
        tmp_path,
        """
        import runstream
        runstream.init(project="c", mode="offline")
        runstream.log({"i": 1})
        raise RuntimeError("boom")
        """,
    )
    proc.wait(timeout=60)
    assert proc.returncode == 1 and "RuntimeError: boom" in stderr(tmp_path)
    data = runstream.read_run(run_dir(tmp_path))
    assert data.run["state"] == "failed" and data.run["exit_code"] == 1
    assert data.history_rows == 1


def test_sys_exit_code_is_recorded(tmp_path: Path) -> None:
    proc = script(
        tmp_path,
        """
        import sys, runstream
        runstream.init(project="c", mode="offline")
        runstream.log({"i": 1})
        sys.exit(3)
        """,
    )
    proc.wait(timeout=60)
    assert proc.returncode == 3
    data = runstream.read_run(run_dir(tmp_path))
    assert data.run["state"] == "failed" and data.run["exit_code"] == 3


def test_sidecar_survives_ctrl_c_of_the_foreground_group_and_drains(tmp_path: Path) -> None:
    proc = script(
        tmp_path,
        """
        import os, runstream, time
        runstream.init(project="c", mode="offline")
        for i in range(1000):
            runstream.log({"i": i})
        open("ready", "w").close()
        time.sleep(60)
        """,
    )
    try:
        wait_for((tmp_path / "ready").exists, 60, "the script to log")
        (sidecar,) = sidecars_under(tmp_path)
        assert os.getpgid(sidecar.pid) != os.getpgid(proc.pid)  # its own session
        proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the script
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    wait_sidecars_gone(tmp_path)
    data = runstream.read_run(run_dir(tmp_path))
    assert data.history_rows == 1000
    assert data.run["state"] == "failed" and data.run["exit_code"] == 130
    assert psutil.pid_exists(sidecar.pid) is False
