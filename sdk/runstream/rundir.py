"""The on-disk layout of runs (described in ``docs/run-dir.md``).

``root`` below is always the user's root directory (``Settings.root_dir``); runs live in
``<root>/runstream/``.  Everything that creates a name fsyncs the directory that gained it, so a
run directory that exists after a power cut also has its ``journal/`` and its parent's entry.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import datetime
from pathlib import Path

from runstream.errors import UsageError
from runstream.format.atomic import fsync_dir, write_text_atomic

log = logging.getLogger(__name__)

RUNS_DIRNAME = "runstream"
LATEST_LINK = "latest-run"
LATEST_TXT = "latest-run.txt"  # written instead of the link where symlinks are unavailable
JOURNAL_DIR = "journal"
FILES_DIR = "files"
LOGS_DIR = "logs"
RUN_JSON = "run.json"
SIDECAR_LOCK = "sidecar.lock"
CONFIG_YAML = f"{FILES_DIR}/config.yaml"
SUMMARY_JSON = f"{FILES_DIR}/summary.json"
SIDECAR_LOG = f"{LOGS_DIR}/sidecar.log"


def runs_dir(root: Path) -> Path:
    """``<root>/runstream``: where run directories and the ``latest-run`` link live."""
    return Path(root) / RUNS_DIRNAME


def run_dir_name(run_id: str, started: datetime) -> str:
    return f"run-{started:%Y%m%d_%H%M%S}-{run_id}"


# --- creating ---------------------------------------------------------------------------------
def create_run_dir(root: Path, run_id: str, started: datetime) -> Path:
    """Create ``<root>/runstream/run-<time>-<id>/`` with ``journal/``, ``files/`` and ``logs/``.

    Raises :class:`UsageError` if that directory already exists (the same id started twice in
    one second): two runs must never share a journal.
    """
    base = runs_dir(root)
    _makedirs_durable(base)
    run_dir = base / run_dir_name(run_id, started)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise UsageError(
            f"run directory {str(run_dir)!r} already exists: another run with id {run_id!r} "
            "started in the same second. Use a different id."
        ) from None
    fsync_dir(base)
    for sub in (JOURNAL_DIR, FILES_DIR, LOGS_DIR):
        (run_dir / sub).mkdir()
    fsync_dir(run_dir)
    return run_dir


def _makedirs_durable(path: Path) -> None:
    if path.is_dir():
        return
    _makedirs_durable(path.parent)
    try:
        path.mkdir()
    except FileExistsError:  # created concurrently by another run: fine if it is a directory
        if not path.is_dir():
            raise
        return
    fsync_dir(path.parent)


def update_latest_link(root: Path, run_dir: Path) -> None:
    """Point ``<root>/runstream/latest-run`` at ``run_dir`` (a relative symlink, swapped in with one
    rename, so readers see the old or the new target, never nothing).  Where symlinks do not work,
    write ``latest-run.txt`` holding the run directory's name instead.  Never raises: the link is
    a convenience and must not fail a run."""
    base = runs_dir(root)
    target = os.path.relpath(run_dir, base)
    tmp = base / f".{LATEST_LINK}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.symlink(target, tmp)
        try:
            os.replace(tmp, base / LATEST_LINK)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(base)
    except (OSError, NotImplementedError) as e:
        log.debug("cannot make %s symlink (%s); writing %s", LATEST_LINK, e, LATEST_TXT)
        try:
            write_text_atomic(base / LATEST_TXT, target + "\n")
        except OSError as e2:
            log.warning("cannot record the latest run in %s: %s", base, e2)
        return
    (base / LATEST_TXT).unlink(missing_ok=True)  # a stale one would disagree with the link


# --- finding ----------------------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    return (Path(path) / JOURNAL_DIR).is_dir()


def find_run_dirs(root: Path) -> list[Path]:
    """The run directories under ``<root>/runstream``, oldest first (names start with the time)."""
    base = runs_dir(root)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.name.startswith("run-") and p.is_dir())


def resolve_run_dir(path: str | os.PathLike[str]) -> Path:
    """The run directory meant by ``path``, with symlinks resolved.

    ``path`` may be a run directory, a ``latest-run`` link, a ``<root>/runstream`` directory or a
    ``<root>`` directory (both meaning their latest run).  Raises :class:`UsageError` otherwise.
    """
    p = Path(path).expanduser()
    expected = (
        "expected a run directory (one containing journal/), a latest-run link, "
        "a runstream/ directory, or a directory containing runstream/latest-run"
    )
    if p.is_symlink() and not p.exists():
        raise UsageError(f"{str(p)!r} is a link to {os.readlink(p)!r}, which does not exist")
    if not p.exists():
        raise UsageError(f"{str(p)!r} does not exist; {expected}")
    if is_run_dir(p):
        return p.resolve()
    _not_a_node_dir(p)
    for base in (p, runs_dir(p)):
        latest = _latest_in(base)
        if latest is not None:
            _not_a_node_dir(latest)
            if not is_run_dir(latest):
                raise UsageError(
                    f"{str(base)!r} names {str(latest)!r} as its latest run, which is not a run directory"
                )
            return latest.resolve()
    raise UsageError(f"{str(p)!r} is not a run directory; {expected}")


def _not_a_node_dir(path: Path) -> None:
    """A distributed run's node directory holds one run directory per rank, not one run: say so."""
    if (path / "node.json").is_file():
        raise UsageError(
            f"{str(path)!r} is the node directory of a distributed run: each rank's run directory is "
            f"in it as rank-<r>/ (`runstream inspect {path}` lists them)"
        )


def _latest_in(base: Path) -> Path | None:
    """What ``base`` (a ``runstream/`` directory) says is its latest run, if anything."""
    link = base / LATEST_LINK
    if link.is_symlink() or link.exists():
        return link
    txt = base / LATEST_TXT
    if txt.is_file():
        return base / txt.read_text(encoding="utf-8").strip()
    # No marker (e.g. it could not be written): the newest run by name is what it would say.
    runs = [r for r in find_run_dirs(base.parent) if is_run_dir(r)] if base.name == RUNS_DIRNAME else []
    return runs[-1] if runs else None
