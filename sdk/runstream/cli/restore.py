"""``runstream restore RUN_PATH``: put the code of a run back in the current git repository.

    runstream restore acme/mnist/1akxj44n     # a run on the server (runstream.Api)
    runstream restore runstream/latest-run    # a run directory on this machine

makes a branch ``runstream/<run id>`` at the run's commit, applies the run's ``diff.patch`` (its
uncommitted changes to tracked files) and writes its config to ``config.yaml`` in the current
directory, so ``python <program> --config config.yaml``-style scripts start where the run did.

Every check comes before the first change: a dirty working tree, a commit this repository does
not have, a run without git information, an existing branch or an untracked ``config.yaml``
each stop it with a ``RestoreError`` naming the problem and nothing touched.  A patch that does
not apply is tried (``git apply --check``) on the new branch; if it fails, the previous branch is
checked out again and the new one deleted.

Concurrency contract: none; one call at a time, in the calling thread, on the current directory's
repository.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runstream.errors import Error, UsageError

PATCH = "diff.patch"
METADATA = "runstream-metadata.json"
GIT_TIMEOUT = 60.0


class RestoreError(Error):
    """The run cannot be restored here; the message says why and what to do."""


@dataclass
class RunCode:
    """What restore needs of a run, from its directory or from the server."""

    run_id: str
    where: str  # for messages: the run path or directory
    meta: dict[str, Any]
    config: dict[str, Any] | None
    config_text: str | None = None  # a local run's config.yaml as it is
    patch: Path | None = None
    missing_patch: str | None = None  # why a dirty run's patch is not available
    _tmp: list[tempfile.TemporaryDirectory[str]] = field(default_factory=list)

    @property
    def git(self) -> dict[str, Any] | None:
        g = self.meta.get("git")
        return g if isinstance(g, dict) and g.get("commit") else None


@dataclass
class Restored:
    branch: str
    commit: str
    patched: bool
    config: Path | None
    notes: list[str]


def load_local(run_dir: Path) -> RunCode:
    from runstream.rundir import resolve_run_dir

    d = resolve_run_dir(run_dir)
    files = d / "files"
    try:
        meta = json.loads((files / METADATA).read_text())
    except FileNotFoundError:
        meta = {}
    except (OSError, ValueError) as e:
        raise RestoreError(f"cannot read {files / METADATA}: {e}") from None
    try:
        run_id = str(json.loads((d / "run.json").read_text())["id"])
    except (OSError, ValueError, KeyError):
        run_id = d.name.rsplit("-", 1)[-1]
    config_file = files / "config.yaml"
    text = config_file.read_text() if config_file.is_file() else None
    code = RunCode(run_id, str(d), meta, None, config_text=text)
    patch = files / PATCH
    if patch.is_file():
        code.patch = patch
    elif (meta.get("git") or {}).get("dirty"):
        code.missing_patch = f"{patch} is missing"
    return code


def load_remote(path: str, host: str | None = None) -> RunCode:
    from runstream.read.api import Api, ApiError, NotFoundError

    api = Api(host)
    try:
        run = api.run(path)
    except NotFoundError as e:
        raise RestoreError(f"no run {path} on {api.host}: {e}") from None
    meta = dict(run.meta or {})
    code = RunCode(str(run.id), f"{path} on {api.host}", meta, dict(run.config or {}))
    if not (meta.get("git") or {}).get("dirty"):
        return code
    if not callable(getattr(type(run), "file", None)):
        code.missing_patch = "this version of the read API cannot download files"
        return code
    tmp = tempfile.TemporaryDirectory(prefix="runstream-restore-")
    code._tmp.append(tmp)
    try:
        code.patch = Path(run.file(PATCH).download(root=tmp.name, replace=True))
    except ApiError as e:
        code.missing_patch = f"the server has no {PATCH} for it ({e})"
    return code


def load(run_path: str, host: str | None = None) -> RunCode:
    """A run directory when ``run_path`` exists on disk, else ``entity/project/run_id``."""
    if Path(run_path).expanduser().exists():
        return load_local(Path(run_path))
    parts = [p for p in run_path.strip("/").split("/") if p]
    if len(parts) != 3 or run_path.startswith((".", "/", "~")):
        raise UsageError(
            f"{run_path!r} is neither a run directory on this machine nor a run path "
            "entity/project/run_id on the server"
        )
    return load_remote("/".join(parts), host)


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(
            ["git", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
            check=False,
        )
    except FileNotFoundError:
        raise RestoreError("git is not installed (or not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise RestoreError(f"git {' '.join(args)} took longer than {GIT_TIMEOUT:.0f}s") from None
    if check and r.returncode != 0:
        raise RestoreError(f"git {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def restore(
    code: RunCode,
    cwd: Path | None = None,
    branch: str | None = None,
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = _stderr,
) -> Restored:
    """Restore ``code`` into the repository around ``cwd``; see the module docstring."""
    cwd = (cwd or Path.cwd()).resolve()
    g = code.git
    if g is None:
        raise RestoreError(
            f"run {code.where} has no git information: it ran outside a git repository, with "
            "disable_code or disable_git, or before its environment was recorded"
        )
    commit = str(g["commit"])
    top = git(cwd, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise RestoreError(f"{cwd} is not inside a git repository; cd into a clone of {_remote(g)}")
    repo = Path(top.stdout.strip())
    dirty = git(repo, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    if dirty:
        shown = ", ".join(ln[3:] for ln in dirty[:5]) + (
            f" and {len(dirty) - 5} more" if len(dirty) > 5 else ""
        )
        raise RestoreError(
            f"the working tree of {repo} has uncommitted changes ({shown}); commit or stash them first"
        )
    if git(repo, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        raise RestoreError(
            f"commit {commit} is not in {repo}: run `git fetch` (the run's remote was {_remote(g)}) "
            "and try again"
        )
    branch = branch or f"runstream/{code.run_id}"
    if git(repo, "check-ref-format", "--branch", branch, check=False).returncode != 0:
        raise RestoreError(f"{branch!r} is not a valid branch name")
    if git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).returncode == 0:
        raise RestoreError(
            f"branch {branch} already exists; delete it (git branch -D {branch}) or pass --branch"
        )
    config_path = cwd / "config.yaml"
    has_config = code.config_text is not None or code.config is not None
    if has_config and config_path.exists() and not _tracked(repo, config_path):
        raise RestoreError(f"{config_path} exists and is not tracked by git; move it away first")

    previous = git(repo, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip()
    previous = previous or git(repo, "rev-parse", "HEAD").stdout.strip()
    git(repo, "checkout", "-q", "-b", branch, commit)
    patched = False
    if code.patch is not None and code.patch.stat().st_size:
        check = git(repo, "apply", "--check", str(code.patch), check=False)
        if check.returncode != 0:
            git(repo, "checkout", "-q", previous)
            git(repo, "branch", "-q", "-D", branch)
            raise RestoreError(
                f"the run's {PATCH} does not apply to commit {commit}: {check.stderr.strip()}; "
                f"nothing was changed ({previous} is checked out again)"
            )
        git(repo, "apply", str(code.patch))
        patched = True

    notes: list[str] = []
    if code.missing_patch:
        notes.append(
            f"warning: the run had uncommitted changes, but {code.missing_patch}: "
            f"branch {branch} holds the commit without them"
        )
    if g.get("untracked"):
        notes.append(
            f"note: the run's repository had {g['untracked']} untracked path(s); they are not restored"
        )
    written: Path | None = None
    if has_config:
        text = code.config_text
        if text is None:
            text = yaml.safe_dump(code.config, sort_keys=False, allow_unicode=True)
        config_path.write_text(text)
        written = config_path
    say(f"runstream: restored run {code.where} on branch {branch} at {commit[:12]}")
    if patched:
        say(f"runstream: applied its {PATCH} (uncommitted changes at the time of the run)")
    if written is not None:
        say(f"runstream: wrote its config to {written}")
    command = _command(code.meta)
    if command:
        say(f"runstream: it ran as: {command}")
    for n in notes:
        warn(f"runstream: {n}")
    return Restored(branch, commit, patched, written, notes)


def _tracked(repo: Path, path: Path) -> bool:
    return git(repo, "ls-files", "--error-unmatch", "--", str(path), check=False).returncode == 0


def _remote(g: dict[str, Any]) -> str:
    return str(g.get("remote") or "unknown")


def _command(meta: dict[str, Any]) -> str:
    program = meta.get("code_path") or meta.get("program")  # code_path: from the repo's root
    if not isinstance(program, str) or not program:
        return ""
    args = meta.get("args")
    return shlex.join(["python", program, *(map(str, args) if isinstance(args, list) else ())])


def main(run_path: str, host: str | None = None, branch: str | None = None) -> int:
    """``runstream restore``: exit 0 when restored, 1 (with the reason on stderr) when refused."""
    try:
        code = load(run_path, host)
        try:
            restore(code, branch=branch)
        finally:
            for t in code._tmp:
                t.cleanup()
    except Error as e:
        print(f"runstream: restore refused: {e}", file=sys.stderr)
        return 1
    return 0
