"""``runstream restore RUN_PATH``: a run's commit on a new branch, its diff.patch applied, its
config in config.yaml; and a clear refusal, with nothing changed, when that cannot be done."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.sidecar.test_run_context import TRAIN, make_repo, run_script, sh
from tests.support.procs import start_script
from tests.support.server import ServerProc


def restore(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env |= {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    cmd = [sys.executable, "-m", "runstream.cli.main", "restore", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=120, check=False)


def fake_run(
    tmp_path: Path, git: dict[str, object] | None, patch: str | None = None, run_id: str = "abc123"
) -> Path:
    """A run directory as a finished run leaves it (only what restore reads)."""
    d = tmp_path / "runs" / f"run-20260101_000000-{run_id}"
    (d / "journal").mkdir(parents=True)
    (d / "files").mkdir()
    (d / "run.json").write_text(json.dumps({"id": run_id, "program": "train.py", "args": ["--lr", "0.1"]}))
    meta = {"program": "train.py", "args": ["--lr", "0.1"], **({"git": git} if git else {})}
    (d / "files" / "runstream-metadata.json").write_text(json.dumps(meta))
    (d / "files" / "config.yaml").write_text("lr: 0.1\nmodel:\n  depth: 12\n")
    if patch is not None:
        (d / "files" / "diff.patch").write_text(patch)
    return d


def branches(repo: Path) -> list[str]:
    return sh(repo, "git", "branch", "--format=%(refname:short)").splitlines()


def head(repo: Path) -> str:
    return sh(repo, "git", "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def test_a_local_run_is_restored_on_a_new_branch_with_its_changes_and_config(
    tmp_path: Path, repo: Path
) -> None:
    commit = head(repo)
    (repo / "model.py").write_text("DEPTH = 12  # tried during the run\n")
    (repo / "extra.py").write_text("STAGED = True\n")
    sh(repo, "git", "add", "extra.py")
    run_dir = run_script(repo, tmp_path / "out")
    run_id = json.loads((run_dir / "run.json").read_text())["id"]
    # Afterwards the user moves on: changes dropped, a new commit on main.
    sh(repo, "git", "reset", "-q", "--hard")
    (repo / "model.py").write_text("DEPTH = 99\n")
    sh(repo, "git", "commit", "-q", "-am", "later work")

    r = restore(repo, str(run_dir))
    assert r.returncode == 0, r.stderr
    assert sh(repo, "git", "symbolic-ref", "--short", "HEAD") == f"runstream/{run_id}"
    assert head(repo) == commit
    assert (repo / "model.py").read_text() == "DEPTH = 12  # tried during the run\n"
    assert (repo / "extra.py").read_text() == "STAGED = True\n"
    assert yaml.safe_load((repo / "config.yaml").read_text()) == {"lr": 0.1}
    assert f"runstream/{run_id}" in r.stdout and "applied its diff.patch" in r.stdout
    assert "python train.py" in r.stdout  # how it ran
    assert sh(repo, "git", "show", "main:model.py") == "DEPTH = 99"  # main is where it was


def test_a_dirty_working_tree_is_refused_and_left_alone(tmp_path: Path, repo: Path) -> None:
    d = fake_run(tmp_path, {"commit": head(repo), "dirty": False})
    (repo / "model.py").write_text("DEPTH = 11\n")
    r = restore(repo, str(d))
    assert r.returncode == 1
    assert "uncommitted changes (model.py)" in r.stderr and "commit or stash" in r.stderr
    assert branches(repo) == ["main"] and (repo / "model.py").read_text() == "DEPTH = 11\n"
    assert not (repo / "config.yaml").exists()


def test_an_unknown_commit_is_refused_with_a_hint_to_fetch(tmp_path: Path, repo: Path) -> None:
    d = fake_run(
        tmp_path,
        {"commit": "0123456789abcdef0123456789abcdef01234567", "remote": "https://example.com/x.git"},
    )
    r = restore(repo, str(d))
    assert r.returncode == 1
    assert "commit 0123456789abcdef0123456789abcdef01234567 is not in" in r.stderr
    assert "git fetch" in r.stderr and "https://example.com/x.git" in r.stderr
    assert branches(repo) == ["main"]


def test_a_run_without_git_information_is_refused(tmp_path: Path, repo: Path) -> None:
    r = restore(repo, str(fake_run(tmp_path, None)))
    assert r.returncode == 1 and "has no git information" in r.stderr
    assert branches(repo) == ["main"]


def test_outside_a_repository_restore_is_refused(tmp_path: Path, repo: Path) -> None:
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    r = restore(elsewhere, str(fake_run(tmp_path, {"commit": head(repo)})))
    assert r.returncode == 1 and "is not inside a git repository" in r.stderr


def test_an_existing_branch_or_an_untracked_config_yaml_is_not_overwritten(
    tmp_path: Path, repo: Path
) -> None:
    d = fake_run(tmp_path, {"commit": head(repo)})
    sh(repo, "git", "branch", "runstream/abc123")
    r = restore(repo, str(d))
    assert r.returncode == 1 and "branch runstream/abc123 already exists" in r.stderr
    (repo / "config.yaml").write_text("mine: true\n")
    r = restore(repo, str(d), "--branch", "try-again")
    assert r.returncode == 1 and "config.yaml exists and is not tracked" in r.stderr
    assert (repo / "config.yaml").read_text() == "mine: true\n"
    assert sorted(branches(repo)) == ["main", "runstream/abc123"]


def test_a_patch_that_does_not_apply_leaves_the_repository_as_it_was(tmp_path: Path, repo: Path) -> None:
    before = head(repo)
    bad = "diff --git a/model.py b/model.py\n--- a/model.py\n+++ b/model.py\n@@ -1 +1 @@\n-NOT THERE\n+X\n"
    d = fake_run(tmp_path, {"commit": before, "dirty": True}, patch=bad)
    r = restore(repo, str(d))
    assert r.returncode == 1 and "diff.patch does not apply" in r.stderr and "nothing was changed" in r.stderr
    assert sh(repo, "git", "symbolic-ref", "--short", "HEAD") == "main" and head(repo) == before
    assert branches(repo) == ["main"] and not (repo / "config.yaml").exists()


def test_a_dirty_run_whose_patch_is_missing_is_restored_with_a_warning(tmp_path: Path, repo: Path) -> None:
    d = fake_run(tmp_path, {"commit": head(repo), "dirty": True, "untracked": 3})
    r = restore(repo, str(d))
    assert r.returncode == 0, r.stderr
    assert "warning: the run had uncommitted changes" in r.stderr and "diff.patch is missing" in r.stderr
    assert "3 untracked path(s)" in r.stderr
    assert sh(repo, "git", "symbolic-ref", "--short", "HEAD") == "runstream/abc123"


def test_a_run_path_that_is_neither_a_directory_nor_entity_project_id_is_refused(repo: Path) -> None:
    r = restore(repo, "./no/such")
    assert r.returncode == 1 and "neither a run directory on this machine nor a run path" in r.stderr


def test_a_run_on_the_server_is_restored_with_its_downloaded_patch_and_config(
    tmp_path: Path, repo: Path, server: ServerProc
) -> None:
    commit = head(repo)
    (repo / "model.py").write_text("DEPTH = 12  # tried during the run\n")
    root = tmp_path / "out"
    with start_script(
        TRAIN, repo, root, {"root": str(root), "mode": "online"}, {"RUNSTREAM_HOST": server.url}
    ) as s:
        started = s.expect("started", timeout=60)
        s.watch_run(started["dir"])
        s.expect("done", timeout=60)
        assert s.wait() == 0, s.diag()
    shutil.rmtree(started["dir"])  # only the server has the run now
    sh(repo, "git", "reset", "-q", "--hard")
    (repo / "model.py").write_text("DEPTH = 99\n")
    sh(repo, "git", "commit", "-q", "-am", "later work")
    path = started["path"]
    r = restore(repo, path, "--host", server.url)
    assert r.returncode == 0, r.stderr
    run_id = path.rsplit("/", 1)[1]
    assert sh(repo, "git", "symbolic-ref", "--short", "HEAD") == f"runstream/{run_id}"
    assert head(repo) == commit
    assert (repo / "model.py").read_text() == "DEPTH = 12  # tried during the run\n"
    assert yaml.safe_load((repo / "config.yaml").read_text()) == {"lr": 0.1}
    assert "applied its diff.patch" in r.stdout and not r.stderr
    missing = restore(repo, "acme/nothing/here", "--host", server.url)
    assert missing.returncode == 1 and "no run acme/nothing/here" in missing.stderr
