"""The node directory: what the ranks of one node share on disk (docs/distributed.md).

``<root>/runstream/run-<YYYYMMDD_HHMMSS>-<id>[-node<k>]/`` holds ``node.json`` (the job, written
once by the first rank), ``sidecar.lock`` (held by the live node sidecar), ``logs/``, the node
writer's ``companion/``, and one complete run directory per rank, ``rank-<r>/``, whose
``sidecar.json`` tells the node sidecar where that rank's ring is.

The ranks of a node agree on the directory under ``flock(<root>/runstream/.node-<id>-<k>.lock)``:
the first creates it, the others (and later attempts of the same job) find it.  The lock is held
for a few file operations only; no rank waits on another for anything longer.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runstream.distributed.identity import Who
from runstream.errors import UsageError
from runstream.format.atomic import fsync_dir, write_json_atomic
from runstream.format.ring_layout import CONTROL_SIZE, RingMap
from runstream.rundir import FILES_DIR, JOURNAL_DIR, LOGS_DIR, runs_dir

NODE_JSON = "node.json"
SIDECAR_JSON = "sidecar.json"
NODE_LOCK = "sidecar.lock"
RANK_PREFIX = "rank-"
DEFAULT_RING_BUDGET = 64 * 1024 * 1024  # the default ring size of one process, shared by a node's ranks
MIN_RANK_RING = 4 * 1024 * 1024
PAGE = 4096
RENDEZVOUS_TIMEOUT = 30.0  # the lock is held for milliseconds; this long means a stuck filesystem
_NODE_DIR = re.compile(r"run-\d{8}_\d{6}-(?P<id>[A-Za-z0-9_-]+?)(?:-node(?P<node>\d+))?")


def node_dir_name(run_id: str, started: dt.datetime, node: int, node_count: int) -> str:
    """``run-<time>-<id>``, with ``-node<k>`` when the job spans several nodes."""
    suffix = f"-node{node}" if node_count > 1 else ""
    return f"run-{started:%Y%m%d_%H%M%S}-{run_id}{suffix}"


def is_node_dir(path: Path) -> bool:
    """True for a node directory (it has ``node.json``)."""
    return (Path(path) / NODE_JSON).is_file()


def rank_dirs(node_dir: Path) -> list[Path]:
    """The node directory's ``rank-<r>/`` directories, by rank."""
    found = []
    for p in Path(node_dir).iterdir():
        if p.name.startswith(RANK_PREFIX) and p.name[len(RANK_PREFIX) :].isdigit() and p.is_dir():
            found.append(p)
    return sorted(found, key=lambda p: int(p.name[len(RANK_PREFIX) :]))


def _lock(path: Path, timeout: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise UsageError(
                    f"could not take {path} within {timeout:.0f}s (a stuck rank holds it?)"
                ) from None
            time.sleep(0.005)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def find_node_dir(root: Path, run_id: str, who: Who) -> Path | None:
    """The newest node directory of run ``run_id`` for this node, made by this job (same job key
    in ``node.json``), or None."""
    base = runs_dir(root)
    suffix = f"-node{who.node}" if who.node_count > 1 else ""
    want = f"-{run_id}{suffix}"
    try:
        names = sorted(
            (n for n in os.listdir(base) if n.startswith("run-") and n.endswith(want)), reverse=True
        )
    except FileNotFoundError:
        return None
    for name in names:
        m = _NODE_DIR.fullmatch(name)
        if m is None or m["id"] != run_id:
            continue
        info = _read_json(base / name / NODE_JSON)
        if info is not None and info.get("job_key") == who.job_key and info.get("node") == who.node:
            return base / name
    return None


def rendezvous(root: Path, who: Who, run_id: str, entity: str, project: str) -> tuple[Path, bool]:
    """This node's directory for run ``run_id``, and whether this rank created it.

    Under the node lock: the newest matching directory of the same job is reused (ranks of one
    attempt, and later attempts); else a new one is made, with ``logs/`` and ``node.json``
    (written atomically), and every directory that gained an entry fsynced.

    Raises:
        UsageError: the lock could not be taken in ``RENDEZVOUS_TIMEOUT`` seconds, or a directory
            of that name exists without being this job's (a single-process run with the same id
            started in the same second).
        OSError: the directory could not be created.
    """
    base = runs_dir(root)
    base.mkdir(parents=True, exist_ok=True)
    fd = _lock(base / f".node-{run_id}-{who.node}.lock", RENDEZVOUS_TIMEOUT)
    try:
        found = find_node_dir(root, run_id, who)
        if found is not None:
            return found, False
        path = base / node_dir_name(run_id, dt.datetime.now(), who.node, who.node_count)
        try:
            path.mkdir()
        except FileExistsError:
            raise UsageError(
                f"{path} already exists and is not this job's node directory: another run with id "
                f"{run_id!r} started in the same second. Use a different id."
            ) from None
        fsync_dir(base)
        (path / LOGS_DIR).mkdir()
        info = {
            "id": run_id,
            "entity": entity,
            "project": project,
            "job_key": who.job_key,
            "node": who.node,
            "node_count": who.node_count,
            "world_size": who.world_size,
            "local_world_size": who.local_world_size,
            "launcher": who.launcher,
            "host": socket.gethostname(),
            "created": time.time(),
        }
        write_json_atomic(path / NODE_JSON, info)  # fsyncs the node directory too
        return path, True
    finally:
        os.close(fd)


def has_journal(run_dir: Path) -> bool:
    """True when ``run_dir/journal/`` holds anything (a segment)."""
    journal = Path(run_dir) / JOURNAL_DIR
    return journal.is_dir() and any(journal.iterdir())


def rank_dir(node_dir: Path, rank: int) -> tuple[Path, bool]:
    """``rank-<r>/`` with ``journal/``, ``files/`` and ``logs/``, made durably; and whether it
    already held a journal (a later attempt of this rank on this node: resumed locally)."""
    path = Path(node_dir) / f"{RANK_PREFIX}{rank}"
    existed = has_journal(path)
    if not path.is_dir():
        path.mkdir()
        fsync_dir(node_dir)
    for sub in (JOURNAL_DIR, FILES_DIR, LOGS_DIR):
        (path / sub).mkdir(exist_ok=True)
    fsync_dir(path)
    return path, existed


def write_sidecar_json(rank_path: Path, ring: Path, args: list[str], pid: int | None = None) -> None:
    """Tell the node sidecar about this rank's ring (after the ring exists): its path, the
    producer's pid and the pipeline's arguments (never the API key)."""
    info = {"ring": str(ring), "producer_pid": os.getpid() if pid is None else pid, "args": list(args)}
    write_json_atomic(Path(rank_path) / SIDECAR_JSON, info)


def rank_ring_size(local_world_size: int) -> int:
    """A rank's default ring: the one-process default shared by the node's ranks
    (``64 MiB // local_world_size``), at least 4 MiB, a whole number of pages."""
    size = max(MIN_RANK_RING, DEFAULT_RING_BUDGET // max(local_world_size, 1))
    return size - size % PAGE


def shm_ring_path(run_id: str) -> Path | None:
    """``/dev/shm/runstream-<id>-<pid>.ring``, or None where /dev/shm is missing or read-only."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"runstream-{run_id}-{os.getpid()}.ring"
    return None


def create_rank_ring(run_id: str, rank_path: Path, size: int, say: Callable[[str], None]) -> RingMap:
    """The rank's ring in /dev/shm, else in its rank directory (``ring-<pid>``): when /dev/shm is missing, or
    lacks the room (Docker's default is 64 MiB for the whole container), with one message."""
    shm = shm_ring_path(run_id)
    if shm is not None:
        try:
            st = os.statvfs(shm.parent)
            room = st.f_bavail * st.f_frsize
        except OSError:
            room = 0
        if room >= CONTROL_SIZE + size:
            try:
                return RingMap.create(shm, size)
            except OSError as e:  # lost the room to another rank meanwhile
                shm.unlink(missing_ok=True)
                reason = str(e)
        else:
            reason = f"{room} bytes free"
        say(
            f"/dev/shm lacks room for this rank's {size}-byte ring ({reason}); it is in "
            f"{rank_path / 'ring'} instead (a file on disk: log() is unchanged, the page cache serves it)"
        )
    # One file per process: a ring an earlier attempt of this rank left here may still be drained.
    return RingMap.create(rank_path / f"ring-{os.getpid()}", size)
