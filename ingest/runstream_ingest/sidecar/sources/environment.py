"""The run's code and environment, recorded once by the run's first sidecar.

What a person needs to reproduce a run: the machine (OS, Python, user, CPUs, GPUs), the installed
packages, the git state of the code (commit, branch, remote, uncommitted changes) and, when asked
for, the entry-point script.  Collected in the sidecar, never in the training process, on an
executor thread (git and ``importlib.metadata`` take tens to hundreds of milliseconds), and kept
in the run's ``files/``::

    files/runstream-metadata.json   everything below, plus the SDK's program/args/host/pid
    files/requirements.txt          name==version of every installed distribution, sorted
    files/diff.patch                ``git diff HEAD --binary``: tracked files' uncommitted changes
    files/code/<path>               the entry-point script (save_code), at its path in the repo

The environment keys also go to the run's metadata as one RUN record of the companion writer
(never ``name``/``tags``/``notes``, which are the user's; never the SDK's own keys ``host``,
``program``, ``args``, ``python``, ``pid``, which its RUN record already carries).

Untracked files are not in ``diff.patch`` (they are often data sets, outputs or secrets); their
number (an untracked directory counts once) is ``git.untracked``, so a reader knows the patch
does not hold everything.  ``git.dirty`` means tracked files differ from HEAD.

The sidecar inherits the training process's working directory (the supervisor starts it without
``cwd``), so git runs where the user ran the script.  A marker, ``companion/context.json``, names
the producer (``run.json``'s pid and creation time) it was done for, written once the RUN record
is in the companion journal: a restarted sidecar of the same training process does not redo it
(one killed before the marker is redone: at worst the same RUN record twice, which merges to the
same metadata); a local resume (a new producer) records its own environment.

Concurrency contract: ``run`` and ``close`` run on the sidecar's loop; ``collect`` runs on one
executor thread and touches only the filesystem and subprocesses, never the companion writer.
"""

from __future__ import annotations

import asyncio
import getpass
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from runstream.format import record as rec
from runstream.format.atomic import write_json_atomic, write_text_atomic
from runstream_ingest.sidecar.sources.companion import CompanionWriter, companion_dir

log = logging.getLogger("runstream.context")

MARKER = "context.json"  # in the companion directory
METADATA = "runstream-metadata.json"
GIT_TIMEOUT = 10.0  # seconds per git command (a huge repo's status, a hung credential helper...)
DIFF_TIMEOUT = 60.0
CLOSE_WAIT = 30.0  # at exit, how long the sidecar waits for a collection still in progress
# What git must not do on our behalf: take the index lock the user's own git may want, page, ask
# for credentials, or run the user's external diff and textconv drivers.
GIT_ENV = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "LC_ALL": "C"}


class RunContext:
    """A ``companion.Source`` that records the code and environment once per producer."""

    def __init__(
        self,
        run_dir: Path,
        companion: CompanionWriter,
        disable_code: bool = False,
        disable_git: bool = False,
        save_code: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.companion = companion
        self.git = not (disable_code or disable_git)
        self.save_code = save_code and not disable_code
        self.cwd = cwd or working_dir()
        self._done = asyncio.Event()
        self._started = False

    async def run(self) -> None:
        if self._started:  # close() ran it already
            return
        self._started = True
        try:
            loop = asyncio.get_running_loop()
            got = await loop.run_in_executor(None, self.collect)
            if got is not None:
                self.emit(got)
                await loop.run_in_executor(None, self._mark)
        except Exception:  # the environment is an extra: never a reason to stop the sidecar
            log.exception("recording the run's code and environment")
        finally:
            self._done.set()

    async def close(self) -> None:
        # A short run ends while git is still working: its environment is worth a short wait.
        try:
            if not self._started:  # the producer was gone before our task first ran: do it now
                await asyncio.wait_for(self.run(), CLOSE_WAIT)
            else:
                await asyncio.wait_for(self._done.wait(), CLOSE_WAIT)
        except asyncio.TimeoutError:
            log.warning("the run's environment was not collected within %.0fs", CLOSE_WAIT)

    def emit(self, meta: dict[str, Any]) -> None:
        # Timed at init (run.json's "created"): the companion's stream may reach the server before
        # the producer's, and a run's start time is its first RUN record's.
        created = read_run_json(self.run_dir).get("created")
        self.companion.emit(
            rec.KIND_RUN, meta, t=float(created) if isinstance(created, (int, float)) else None
        )
        self.companion.cut()  # in the journal before the marker says it is done

    # --- the marker: once per producer --------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        run = read_run_json(self.run_dir)
        return {"pid": run.get("pid"), "created": run.get("created")}

    def done_already(self) -> bool:
        try:
            marker = json.loads((companion_dir(self.run_dir) / MARKER).read_text())
        except (OSError, ValueError):
            return False
        return bool(marker == self._identity())

    def _mark(self) -> None:
        write_json_atomic(companion_dir(self.run_dir) / MARKER, self._identity())

    # --- collection (executor thread) ---------------------------------------------------------
    def collect(self) -> dict[str, Any] | None:
        """Write the files and return the RUN record's body; None when this producer's sidecar
        did it already."""
        if self.done_already():
            return None
        run = read_run_json(self.run_dir)
        files = self.run_dir / "files"
        meta = environment()
        gpu = gpu_inventory()
        if gpu:
            meta["gpu"] = gpu
        cwd = self.cwd
        program = program_path(run.get("program"), cwd) if cwd else None
        repo = git_root(cwd) if self.git and cwd else None
        if repo is not None:
            meta["git"] = git_state(repo, files / "diff.patch")
        if program is not None:
            meta["code_path"] = code_path(program, repo, cwd or program.parent)
            if self.save_code:
                dest = files / "code" / meta["code_path"]
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(program, dest)
                except OSError as e:
                    log.warning("could not save the code %s: %s", program, e)
        try:
            write_text_atomic(files / "requirements.txt", requirements())
        except OSError as e:
            log.warning("could not write requirements.txt: %s", e)
        sdk_keys = {k: run[k] for k in ("program", "args", "host", "pid") if k in run}
        try:
            write_json_atomic(files / METADATA, {**sdk_keys, "python": platform.python_version(), **meta})
        except OSError as e:
            log.warning("could not write %s: %s", METADATA, e)
        return meta


def read_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        got = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def environment() -> dict[str, Any]:
    """The machine and interpreter.  The sidecar runs the training process's ``sys.executable``."""
    try:
        user: str | None = getpass.getuser()
    except (KeyError, OSError):  # a container without a passwd entry for our uid
        user = None
    physical: int | None = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:
        pass
    return {
        "os": platform.platform(),
        "executable": sys.executable,
        "python_implementation": platform.python_implementation(),
        "user": user,
        "cpu_count": physical,
        "cpu_count_logical": os.cpu_count(),
    }


def gpu_inventory() -> dict[str, Any]:
    """``{"count", "name", "driver", "cuda", "devices"}``, or ``{}`` without NVML or GPUs."""
    from runstream_ingest.sidecar.sources import nvml

    inv = nvml.inventory()
    devices = inv.get("gpus") or []
    if not devices:
        return {}
    names = list(dict.fromkeys(str(d.get("name") or "") for d in devices))
    out = {"count": len(devices), "name": ", ".join(n for n in names if n), "devices": devices}
    out.update({k: inv[k] for k in ("driver", "cuda") if k in inv})
    return out


def requirements() -> str:
    """``name==version`` per distribution the interpreter sees, sorted; where one name is
    installed twice, the one found first on ``sys.path`` (the one ``import`` gets).  The sidecar's
    ``sys.path`` is the training process's but for its first entry (the working directory, not
    the script's directory) and whatever the script added itself."""
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "".join(seen[k] + "\n" for k in sorted(seen))


def working_dir() -> Path | None:
    """The training process's working directory (inherited), or None if it was deleted."""
    try:
        return Path.cwd()
    except OSError:
        log.warning("the working directory is gone: no git state or code for this run")
        return None


def program_path(program: Any, cwd: Path) -> Path | None:
    """The entry-point script as a file, or None (``python -c``, a REPL, a notebook)."""
    if not isinstance(program, str) or not program or program in ("-c", "-m"):
        return None
    path = (cwd / program).resolve()
    return path if path.is_file() else None


def code_path(program: Path, repo: Path | None, cwd: Path) -> str:
    """Where the script is: relative to the repo's root, else to the working directory, else
    its bare name (never a path that climbs out of ``files/code``)."""
    for base in (repo, cwd.resolve()):
        if base is not None and program.is_relative_to(base):
            return program.relative_to(base).as_posix()
    return program.name


# --- git --------------------------------------------------------------------------------------------
def git(cwd: Path, *args: str, timeout: float = GIT_TIMEOUT, why: bool = False) -> str | None:
    """A git command's stdout, or None when git is missing, fails or takes too long (with
    ``why``, a failure's message goes to the sidecar's log)."""
    try:
        r = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **GIT_ENV},
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.info("git %s: %s", " ".join(args), e)
        return None
    if r.returncode != 0:
        if why:
            log.info("git %s: %s", " ".join(args), r.stderr.decode(errors="replace").strip())
        return None
    return r.stdout.decode(errors="replace").strip()


def git_root(cwd: Path) -> Path | None:
    top = git(cwd, "rev-parse", "--show-toplevel", why=True)  # "not a git repository", "dubious ownership"
    return Path(top).resolve() if top else None


def git_state(repo: Path, patch: Path) -> dict[str, Any]:
    """Commit, branch, remote (credentials stripped), dirty flag, untracked count; the diff of
    tracked files against HEAD goes to ``patch`` (removed when there is none)."""
    commit = git(repo, "rev-parse", "--verify", "-q", "HEAD")  # None before the first commit
    branch = git(repo, "symbolic-ref", "--short", "-q", "HEAD")  # None when detached
    remote_name = "origin"
    remotes = (git(repo, "remote") or "").split()
    if remotes and "origin" not in remotes:
        remote_name = remotes[0]
    url = git(repo, "remote", "get-url", remote_name) if remotes else None
    status = git(repo, "status", "--porcelain", "--untracked-files=normal")
    lines = [ln for ln in (status or "").splitlines() if ln]
    untracked: int | None = sum(1 for ln in lines if ln.startswith("??"))
    dirty: bool | None = len(lines) > (untracked or 0)
    if status is None:  # git status failed or timed out: unknown, not clean
        untracked = dirty = None
    state: dict[str, Any] = {
        "commit": commit,
        "branch": branch,
        "remote": strip_credentials(url) if url else None,
        "dirty": dirty,
        "untracked": untracked,
        "root": str(repo),
    }
    if commit and dirty is not False:
        state["diff_bytes"] = write_diff(repo, patch)
    else:
        patch.unlink(missing_ok=True)
    return state


def write_diff(repo: Path, patch: Path) -> int | None:
    """``git diff HEAD`` streamed into ``patch`` (never held in memory); its size, or None."""
    patch.parent.mkdir(parents=True, exist_ok=True)
    tmp = patch.with_name(patch.name + ".tmp")
    args = ["git", "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", "--no-textconv"]
    try:
        with open(tmp, "wb") as out:
            r = subprocess.run(
                args,
                cwd=repo,
                stdout=out,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                timeout=DIFF_TIMEOUT,
                env={**os.environ, **GIT_ENV},
                check=False,
            )
        if r.returncode != 0:
            log.warning("git diff failed: %s", r.stderr.decode(errors="replace").strip())
            tmp.unlink(missing_ok=True)
            return None
        os.replace(tmp, patch)
        return patch.stat().st_size
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not write diff.patch: %s", e)
        tmp.unlink(missing_ok=True)
        return None


def strip_credentials(url: str) -> str:
    """A remote URL without what authenticates it: ``https://user:token@host/x`` becomes
    ``https://host/x`` (a token is often the user part alone).  ``ssh://git@host/x`` keeps its
    user (not a secret) but loses any password; scp-like ``git@host:x`` is kept as it is."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    keep_user = parts.scheme in ("ssh", "git+ssh", "ssh+git") and user
    netloc = f"{user}@{hostport}" if keep_user else hostport
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
