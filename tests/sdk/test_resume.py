"""Resuming a run from its local directory, with W&B's ``resume=`` rules."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import runstream

pytestmark = pytest.mark.usefixtures("finish_active_run")


def test_resume_allow_continues_steps_merges_config_and_keeps_summary(tmp_path: Path) -> None:
    run = runstream.init(id="resume01", mode="offline", dir=tmp_path, config={"lr": 0.1})
    for i in range(3):
        run.log({"loss": i})
    run.summary["best"] = 1
    run.finish()
    again = runstream.init(id="resume01", resume="allow", mode="offline", dir=tmp_path, config={"bs": 8})
    assert again.dir == run.dir and again.step == 3 and again.config.lr == 0.1
    again.log({"loss": 9})
    again.finish()
    data = runstream.read_run(run.dir)
    assert [r["_step"] for r in data.history] == [0, 1, 2, 3]
    assert data.config == {"lr": 0.1, "bs": 8} and data.summary["best"] == 1
    assert data.summary["loss"] == 9 and data.run["state"] == "finished"


def test_resume_allow_without_a_previous_run_starts_a_new_one(tmp_path: Path) -> None:
    run = runstream.init(id="fresh001", resume="allow", mode="offline", dir=tmp_path)
    assert run.id == "fresh001" and run.step == 0


def test_resume_must_without_a_previous_run_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(runstream.UsageError, match=r'resume="must".*nothere'):
        runstream.init(id="nothere", resume="must", mode="offline", dir=tmp_path)


def test_resume_never_with_an_existing_run_fails_clearly(tmp_path: Path) -> None:
    runstream.init(id="taken001", mode="offline", dir=tmp_path).finish()
    with pytest.raises(runstream.UsageError, match=r'resume="never".*taken001'):
        runstream.init(id="taken001", resume="never", mode="offline", dir=tmp_path)


def test_resume_auto_picks_up_the_last_crashed_run_of_this_directory(tmp_path: Path) -> None:
    crash = textwrap.dedent(
        """
        import os, runstream
        run = runstream.init(mode="offline")
        for i in range(10):
            run.log({"i": i})
        os.kill(os.getpid(), 9)
        """
    )
    subprocess.run([sys.executable, "-c", crash], cwd=tmp_path, check=False, timeout=60)
    latest = (tmp_path / "runstream" / "latest-run").resolve()
    from tests.faults.test_crash import wait_sidecars_gone

    wait_sidecars_gone(tmp_path)
    assert runstream.read_run(latest).run["state"] == "crashed"
    run = runstream.init(resume="auto", mode="offline", dir=tmp_path)
    assert Path(run.dir) == latest and run.step == 10
    run.log({"i": 10})
    run.finish()
    data = runstream.read_run(latest)
    assert [r["i"] for r in data.history] == list(range(11)) and data.run["state"] == "finished"
