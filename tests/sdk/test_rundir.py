"""The run directory layout, the latest-run link, resolving user-given paths, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from runstream import rundir
from runstream.errors import UsageError
from runstream.format import atomic

T0 = datetime(2026, 11, 25, 10, 55, 0)
T1 = datetime(2026, 11, 25, 10, 56, 30)


def test_create_run_dir_layout(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet"  # missing parents are created
    run_dir = rundir.create_run_dir(root, "ab12cd34", T0)
    assert run_dir == root / "runstream" / "run-20261125_105500-ab12cd34"
    assert sorted(p.name for p in run_dir.iterdir()) == ["files", "journal", "logs"]
    assert rundir.is_run_dir(run_dir)


def test_create_run_dir_fsyncs_each_parent_that_gained_an_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = rundir.fsync_dir

    def spy(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(rundir, "fsync_dir", spy)
    run_dir = rundir.create_run_dir(tmp_path, "ab12cd34", T0)
    assert synced == [tmp_path, tmp_path / "runstream", run_dir]


def test_create_run_dir_refuses_an_existing_dir(tmp_path: Path) -> None:
    rundir.create_run_dir(tmp_path, "ab12cd34", T0)
    with pytest.raises(UsageError, match=r"run-20261125_105500-ab12cd34.*already exists"):
        rundir.create_run_dir(tmp_path, "ab12cd34", T0)


def test_latest_link_is_relative_and_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = rundir.create_run_dir(tmp_path, "aaaaaaaa", T0)
    second = rundir.create_run_dir(tmp_path, "bbbbbbbb", T1)
    link = tmp_path / "runstream" / "latest-run"
    rundir.update_latest_link(tmp_path, first)
    assert os.readlink(link) == first.name  # relative: the tree can be moved or copied

    # The old link must stay in place until a single rename swaps in the new one.
    real_replace = os.replace
    seen: list[str] = []

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(os.readlink(link))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    rundir.update_latest_link(tmp_path, second)
    monkeypatch.undo()
    assert seen == [first.name]
    assert os.readlink(link) == second.name
    assert rundir.resolve_run_dir(link) == second.resolve()
    assert sorted(p.name for p in (tmp_path / "runstream").iterdir()) == sorted(
        ["latest-run", first.name, second.name]
    )  # no temp links left behind


def test_without_symlinks_latest_run_txt_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = rundir.create_run_dir(tmp_path, "ab12cd34", T0)

    def no_symlinks(*args: object, **kwargs: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    rundir.update_latest_link(tmp_path, run_dir)  # does not raise
    monkeypatch.undo()
    assert (tmp_path / "runstream" / "latest-run.txt").read_text().strip() == run_dir.name
    assert rundir.resolve_run_dir(tmp_path) == run_dir.resolve()
    # once symlinks work again, the link replaces the stale text file
    rundir.update_latest_link(tmp_path, run_dir)
    assert not (tmp_path / "runstream" / "latest-run.txt").exists()


def test_update_latest_link_never_raises(tmp_path: Path) -> None:
    rundir.update_latest_link(tmp_path / "missing", tmp_path / "missing" / "runstream" / "run-x")


def test_resolve_run_dir_accepts_every_documented_form(tmp_path: Path) -> None:
    old = rundir.create_run_dir(tmp_path, "aaaaaaaa", T0)
    new = rundir.create_run_dir(tmp_path, "bbbbbbbb", T1)
    rundir.update_latest_link(tmp_path, new)
    expected = new.resolve()
    assert rundir.resolve_run_dir(old) == old.resolve()
    assert rundir.resolve_run_dir(str(new)) == expected
    assert rundir.resolve_run_dir(tmp_path / "runstream" / "latest-run") == expected
    assert rundir.resolve_run_dir(tmp_path / "runstream") == expected
    assert rundir.resolve_run_dir(tmp_path) == expected


def test_resolve_run_dir_without_a_link_picks_the_newest(tmp_path: Path) -> None:
    rundir.create_run_dir(tmp_path, "bbbbbbbb", T0)
    newest = rundir.create_run_dir(tmp_path, "aaaaaaaa", T1)
    assert rundir.resolve_run_dir(tmp_path) == newest.resolve()


def test_resolve_run_dir_errors_name_the_path_and_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nowhere.*does not exist"):
        rundir.resolve_run_dir(tmp_path / "nowhere")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UsageError, match=r"plain.*not a run directory.*journal/"):
        rundir.resolve_run_dir(plain)
    (tmp_path / "runstream").mkdir()
    (tmp_path / "runstream" / "latest-run").symlink_to("run-gone")
    with pytest.raises(UsageError, match=r"run-gone.*does not exist"):
        rundir.resolve_run_dir(tmp_path / "runstream" / "latest-run")
    with pytest.raises(UsageError, match="not a run directory"):
        rundir.resolve_run_dir(tmp_path)


def test_find_run_dirs_sorted_oldest_first(tmp_path: Path) -> None:
    assert rundir.find_run_dirs(tmp_path) == []
    b = rundir.create_run_dir(tmp_path, "bbbbbbbb", T1)
    a = rundir.create_run_dir(tmp_path, "zzzzzzzz", T0)
    rundir.update_latest_link(tmp_path, b)
    (tmp_path / "runstream" / "notes.txt").write_text("not a run")
    assert rundir.find_run_dirs(tmp_path) == [a, b]


def test_atomic_writes(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic.write_json_atomic(target, {"loss": 0.5, "when": T0, "bad": float("nan")})
    assert json.loads(target.read_text()) == {
        "loss": 0.5,
        "when": str(T0),
        "bad": pytest.approx(float("nan"), nan_ok=True),
    }
    atomic.write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_an_atomic_write_of_a_secret_is_never_readable_by_others_even_under_umask_0(tmp_path: Path) -> None:
    target = tmp_path / "credentials.json"
    target.write_text("old")
    target.chmod(0o644)
    old_umask = os.umask(0)
    try:
        atomic.write_text_atomic(target, '{"key": "s3cret"}\n', mode=0o600)
        atomic.write_text_atomic(tmp_path / "plain.txt", "x")
    finally:
        os.umask(old_umask)
    assert target.stat().st_mode & 0o777 == 0o600  # the replacement's mode, not the old file's
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666  # no mode: the umask decides


def test_failed_atomic_write_keeps_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("old: 1\n")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        atomic.write_text_atomic(target, "new: 2\n")
    monkeypatch.undo()
    assert target.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_script_run_again_where_runs_left_a_runstream_folder_still_imports_runstream(
    tmp_path: Path,
) -> None:
    # The first run leaves ./runstream/ (run dirs, latest-run).  Python puts the script's folder
    # first on sys.path, and a package-less folder of that name must not shadow the real package.
    script = tmp_path / "train.py"
    script.write_text(
        "import runstream\n"
        "with runstream.init(project='p', mode='offline', settings={'silent': True}) as run:\n"
        "    run.log({'loss': 1.0})\n"
    )
    for attempt in (1, 2):
        done = subprocess.run(
            [sys.executable, str(script)],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"run {attempt}: {done.stderr}"
        assert (tmp_path / "runstream" / "latest-run").exists()
