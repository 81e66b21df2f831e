"""``runstream offline`` / ``runstream online``: a per-directory default that later runs honour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import runstream

pytestmark = pytest.mark.usefixtures("finish_active_run")


def set_mode(mode: str, where: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", mode, "--dir", str(where)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and mode in out.stdout, out.stderr


def test_runstream_offline_makes_later_runs_in_that_directory_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNSTREAM_HOST", "http://127.0.0.1:9")  # would be online otherwise
    set_mode("offline", tmp_path)
    run = runstream.init(project="d", dir=tmp_path)
    assert run._online is None
    run.finish()
    assert "streaming" not in capsys.readouterr().err
    set_mode("online", tmp_path)
    run = runstream.init(project="d", dir=tmp_path, settings={"finish_timeout": 5})
    assert run._online is not None and run._online.url == "http://127.0.0.1:9"
    run.finish()


def test_an_explicit_mode_argument_beats_the_directory_default(tmp_path: Path) -> None:
    set_mode("offline", tmp_path)
    run = runstream.init(project="d", dir=tmp_path, mode="disabled")
    assert type(run).__name__ == "DisabledRun"
    run.finish()
    assert not (tmp_path / "runstream" / "latest-run").exists()
