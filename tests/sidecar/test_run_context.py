"""A run records its code and environment by itself (issue 5 §3; docs/run-dir.md, "Code and
environment"): real training scripts in real git repositories, offline and online."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

import runstream
from runstream.format import record as rec
from runstream.format.journal_read import read_journal
from runstream.read.local import read_run
from runstream_ingest.sidecar.sources.companion import CompanionWriter, companion_dir
from runstream_ingest.sidecar.sources.environment import (
    RunContext,
    git_state,
    requirements,
    strip_credentials,
)
from tests.support import FAKE_NVML
from tests.support.browser import chromium, open_page
from tests.support.procs import SCRIPT_PRELUDE, alive, poll, sidecar_pid_in_ring, start_script
from tests.support.server import ServerProc

REMOTE = "https://alice:ghp_s3cret@example.com/acme/model.git"
TRAIN = """
import runstream
args = _json.loads(_sys.argv[1])
run = runstream.init(project="ctx", mode=args.get("mode", "offline"), dir=args["root"], config={"lr": 0.1})
emit("started", dir=run.dir, path=run.path)
if args.get("hold"):
    wait_for("finish")
run.log({"loss": 1.0})
run.finish()
emit("done")
"""


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def make_repo(path: Path, remote: str | None = REMOTE) -> Path:
    """A repository with the training script committed at train.py and one more tracked file."""
    path.mkdir(parents=True)
    sh(path, "git", "init", "-q", "-b", "main")
    sh(path, "git", "config", "user.name", "Test")
    sh(path, "git", "config", "user.email", "test@example.com")
    if remote:
        sh(path, "git", "remote", "add", "origin", remote)
    (path / "train.py").write_text(SCRIPT_PRELUDE + TRAIN)
    (path / "model.py").write_text("DEPTH = 10\n")
    (path / ".gitignore").write_text("train.stderr\n")  # start_script's log of the script's stderr
    sh(path, "git", "add", ".")
    sh(path, "git", "commit", "-q", "-m", "first")
    return path


def run_script(repo: Path, root: Path, env: dict[str, str] | None = None, **args: Any) -> Path:
    """Run train.py from ``repo`` (its working directory), runs under ``root``; the run dir."""
    with start_script(TRAIN, repo, root, {"root": str(root), **args}, env) as s:
        d = Path(s.expect("started", timeout=60)["dir"])
        s.watch_run(d)
        s.expect("done", timeout=60)
        assert s.wait() == 0, s.diag()
    return d


def companion_records(run_dir: Path, kind: int) -> list[dict[str, Any]]:
    out = []
    for r in read_journal(companion_dir(run_dir) / "journal").iter_records():
        if r.kind == kind:
            out.append(r.value())
    return out


def fake_gpu_env(tmp_path: Path) -> dict[str, str]:
    spec = {
        "driver": "550.54.15",
        "cuda": 12040,
        "gpus": [
            {"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i}", "memory_total": 85899345920} for i in (0, 1)
        ],
    }
    (tmp_path / "nvml.json").write_text(json.dumps(spec))
    return {"PYTHONPATH": str(FAKE_NVML), "RUNSTREAM_FAKE_NVML": str(tmp_path / "nvml.json")}


# --- pieces ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "stored"),
    [
        (REMOTE, "https://example.com/acme/model.git"),
        ("https://ghp_token@github.com/acme/model.git", "https://github.com/acme/model.git"),
        ("http://u:p@[::1]:8080/x.git", "http://[::1]:8080/x.git"),
        ("ssh://git:pw@example.com:2222/acme/model.git", "ssh://git@example.com:2222/acme/model.git"),
        ("git@github.com:acme/model.git", "git@github.com:acme/model.git"),
        ("https://github.com/acme/model.git", "https://github.com/acme/model.git"),
        ("/srv/git/model.git", "/srv/git/model.git"),
    ],
)
def test_remote_urls_are_stored_without_credentials(url: str, stored: str) -> None:
    assert strip_credentials(url) == stored


def test_a_clean_repository_has_no_patch_and_a_detached_head_no_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", remote=None)
    patch = tmp_path / "files" / "diff.patch"
    state = git_state(repo, patch)
    assert state["commit"] == sh(repo, "git", "rev-parse", "HEAD")
    assert (state["branch"], state["remote"], state["dirty"], state["untracked"]) == ("main", None, False, 0)
    assert not patch.exists()
    sh(repo, "git", "checkout", "-q", "--detach")
    assert git_state(repo, patch)["branch"] is None


def test_a_repository_without_commits_is_recorded_without_a_commit(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    sh(repo, "git", "init", "-q", "-b", "main")
    (repo / "a.py").write_text("x = 1\n")
    state = git_state(repo, tmp_path / "diff.patch")
    assert state["commit"] is None and state["branch"] == "main" and state["untracked"] == 1


def test_requirements_name_every_installed_distribution_once_sorted() -> None:
    lines = requirements().splitlines()
    assert f"runstream=={version('runstream')}" in lines
    assert f"pytest=={version('pytest')}" in lines
    names = [ln.split("==")[0].lower() for ln in lines]
    assert names == sorted(names) and len(names) == len(set(names))


def test_the_environment_is_recorded_once_per_training_process(tmp_path: Path) -> None:
    """A sidecar whose producer was gone before its task ran records at close; the next sidecar
    of the same producer (same run.json) does not; a local resume (a new run.json) does."""
    repo = make_repo(tmp_path / "repo")
    run_dir = tmp_path / "run"
    (run_dir / "files").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"pid": 1, "created": 1000.0, "program": "train.py"}))

    def sidecar(disable_git: bool = False) -> int:
        w = CompanionWriter(run_dir)
        ctx = RunContext(run_dir, w, disable_git=disable_git, cwd=repo)
        asyncio.run(ctx.close())  # never ran: close does it
        w.close()
        return w.emitted

    assert sidecar() == 1
    assert sidecar() == 0  # a restart of the same producer's sidecar
    (run_dir / "run.json").write_text(json.dumps({"pid": 2, "created": 2000.0, "program": "train.py"}))
    assert sidecar(disable_git=True) == 1
    got = companion_records(run_dir, rec.KIND_RUN)
    assert [("git" in m, m["code_path"]) for m in got] == [(True, "train.py"), (False, "train.py")]
    times = [r.time for r in read_journal(companion_dir(run_dir) / "journal").iter_records()]
    assert times == [1000.0, 2000.0]  # stamped at init, as the SDK's own RUN record


# --- real runs ---------------------------------------------------------------------------------------
def test_an_offline_run_records_git_state_diff_packages_and_machine(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = sh(repo, "git", "rev-parse", "HEAD")
    (repo / "model.py").write_text("DEPTH = 12  # uncommitted\n")  # a tracked file changed
    (repo / "extra.py").write_text("STAGED = True\n")
    sh(repo, "git", "add", "extra.py")  # a new file, staged
    (repo / "notes.txt").write_text("untracked\n")  # never in the patch
    env = {"RUNSTREAM_SAVE_CODE": "true", **fake_gpu_env(tmp_path)}
    d = run_script(repo, tmp_path / "out", env)

    [meta] = companion_records(d, rec.KIND_RUN)  # one RUN record, with environment keys only
    assert not {"name", "tags", "notes", "host", "program", "args", "pid"} & meta.keys()
    assert meta["git"] == {
        "commit": head,
        "branch": "main",
        "remote": "https://example.com/acme/model.git",
        "dirty": True,
        "untracked": 1,
        "root": str(repo.resolve()),
        "diff_bytes": (d / "files" / "diff.patch").stat().st_size,
    }
    assert meta["executable"] == sys.executable and meta["cpu_count_logical"] == os.cpu_count()
    assert meta["os"] and meta["user"] and meta["code_path"] == "train.py"
    gpu = meta["gpu"]
    assert (gpu["count"], gpu["name"], gpu["driver"], gpu["cuda"]) == (
        2,
        "NVIDIA H100 80GB HBM3",
        "550.54.15",
        "12.4",
    )

    patch = (d / "files" / "diff.patch").read_text()
    assert "+DEPTH = 12  # uncommitted" in patch and "+STAGED = True" in patch
    assert "notes.txt" not in patch
    assert "ghp_s3cret" not in (d / "files" / "runstream-metadata.json").read_text()
    reqs = (d / "files" / "requirements.txt").read_text().splitlines()
    assert f"runstream=={version('runstream')}" in reqs and f"pytest=={version('pytest')}" in reqs
    saved = json.loads((d / "files" / "runstream-metadata.json").read_text())
    assert saved["program"].endswith("train.py") and saved["git"]["commit"] == head
    assert (d / "files" / "code" / "train.py").read_bytes() == (repo / "train.py").read_bytes()
    # the run's own metadata is the SDK's: the environment record did not touch the name
    state = read_run(d)
    assert state.run["name"] and state.config == {"lr": 0.1}


def test_disable_code_turns_off_git_and_code_capture_but_not_the_environment(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "model.py").write_text("DEPTH = 12\n")
    env = {"RUNSTREAM_DISABLE_CODE": "true", "RUNSTREAM_SAVE_CODE": "true"}
    d = run_script(repo, tmp_path / "out", env)
    [meta] = companion_records(d, rec.KIND_RUN)
    assert "git" not in meta and "gpu" not in meta  # no NVML here without the fake
    assert meta["os"] and meta["executable"] == sys.executable
    files = d / "files"
    assert not (files / "diff.patch").exists() and not (files / "code").exists()
    assert (files / "requirements.txt").exists() and (files / "runstream-metadata.json").exists()


def test_a_restarted_sidecar_does_not_record_the_environment_again(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    root = tmp_path / "out"
    with start_script(TRAIN, repo, root, {"root": str(root), "hold": True}) as s:
        d = s.watch_run(s.expect("started", timeout=60)["dir"])
        poll("the environment to be recorded", (companion_dir(d) / "context.json").exists, 30, diag=s.diag)
        first = poll("the sidecar's pid", lambda: sidecar_pid_in_ring(d), 10, diag=s.diag)
        os.kill(first, signal.SIGKILL)
        second = poll(
            "a new sidecar",
            lambda: (p := sidecar_pid_in_ring(d)) not in (None, first) and alive(p) and p,
            30,
            diag=s.diag,
        )
        assert second
        s.send("finish")
        s.expect("done", timeout=60)
        assert s.wait() == 0, s.diag()
    assert (d / "logs" / "sidecar.log").read_text().count("sidecar up") == 2
    assert len(companion_records(d, rec.KIND_RUN)) == 1


@pytest.mark.browser
def test_an_online_run_shows_its_environment_in_the_api_and_on_the_overview(
    tmp_path: Path, server: ServerProc, request: pytest.FixtureRequest
) -> None:
    repo = make_repo(tmp_path / "repo")
    head = sh(repo, "git", "rev-parse", "HEAD")
    env = {"RUNSTREAM_HOST": server.url, **fake_gpu_env(tmp_path)}
    root = tmp_path / "out"
    with start_script(TRAIN, repo, root, {"root": str(root), "mode": "online"}, env) as s:
        started = s.expect("started", timeout=60)
        s.watch_run(started["dir"])
        s.expect("done", timeout=60)
        assert s.wait() == 0, s.diag()
    api = runstream.Api(server.url)
    run = poll(
        "the environment on the server", lambda: (r := api.run(started["path"])).meta.get("git") and r, 30
    )
    meta = run.meta
    assert meta["git"]["commit"] == head and meta["git"]["dirty"] is False
    assert meta["git"]["remote"] == "https://example.com/acme/model.git"
    assert meta["program"].endswith("train.py") and meta["os"] and meta["user"]
    assert run.name and run.state == "finished"  # the environment record left the SDK's keys alone
    names = {f.name for f in run.files()}  # the file uploader sends files/ at exit
    assert {"requirements.txt", "runstream-metadata.json"} <= names and "diff.patch" not in names

    with chromium() as browser, open_page(browser, request) as page:
        page.goto(f"{server.url}/#/r/{started['path']}?tab=overview")
        shown = {
            "env-git-commit": head,
            "env-git-branch": "main",
            "env-git-remote": "https://example.com/acme/model.git",
            "env-git-dirty": "clean",
            "env-os": meta["os"],
            "env-python": sys.executable,
            "env-user": meta["user"],
            "env-gpu": "2 \u00d7 NVIDIA H100 80GB HBM3 (driver 550.54.15, CUDA 12.4)",
            "env-code": "train.py",
            "env-command": "train.py",
        }
        for testid, text in shown.items():
            expect(page.get_by_test_id(testid)).to_contain_text(text)


def test_an_offline_runs_environment_and_files_reach_the_server_with_sync(
    tmp_path: Path, server: ServerProc
) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "model.py").write_text("DEPTH = 12\n")
    root = tmp_path / "out"
    with start_script(TRAIN, repo, root, {"root": str(root)}) as s:
        started = s.expect("started", timeout=60)
        s.watch_run(started["dir"])
        s.expect("done", timeout=60)
        assert s.wait() == 0, s.diag()
    env = {**os.environ, "RUNSTREAM_HOST": server.url}
    cmd = [sys.executable, "-m", "runstream.cli.main", "sync", started["dir"]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    run = runstream.Api(server.url).run(started["path"])
    assert (
        run.meta["git"]["commit"] == sh(repo, "git", "rev-parse", "HEAD") and run.meta["git"]["dirty"] is True
    )
    patch = run.file("diff.patch").download(root=tmp_path / "down")
    assert "+DEPTH = 12" in patch.read_text()
