"""Keeps one node sidecar alive for the ranks of a node; each rank runs one ``NodeSupervisor``.

The node sidecar (``python -m runstream_ingest.sidecar.node --node-dir D``) holds
``flock(D/sidecar.lock)`` for its whole life.  Every rank's supervisor checks, every ``POLL``
seconds, whether it can take that lock with ``LOCK_NB``; if it can (no node sidecar alive), it
releases it and spawns one in a session of its own.  So the first rank starts the node sidecar,
and after a ``kill -9`` any surviving rank starts the next within about ``POLL`` seconds.

Spawns are serialised by ``flock(D/spawn.lock)`` (taken with ``LOCK_NB``: a rank that finds it
held leaves the start to the holder and looks again next time) and recorded in ``D/spawn.json``
(``{"pid", "time", "delay"}``): a rank does not spawn while the last spawned process is alive and
younger than ``SPAWN_GRACE`` seconds (it is still starting, and will take the lock), nor before
``time + delay`` (the spawner's restart back-off, after node sidecars that died young).  Two
spawns racing anyway are harmless: the second finds the lock held and exits 0.

``stop`` (at ``finish``) waits for this rank's ``W_PIPELINE_EXIT`` word, which the node sidecar
sets when this rank's pipeline is done; other ranks' pipelines are not waited for.

Concurrency contract: as ``runstream.supervisor.SidecarSupervisor``: ``start``/``stop`` on the
thread running ``init``/``finish``, the watchdog thread beside it; ``_lock`` guards ``_procs``
and the restart state.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runstream.format.atomic import write_json_atomic
from runstream.format.ring_layout import W_PIPELINE_EXIT, W_SIDECAR_PID, exit_code_of
from runstream.supervisor import BACKOFF_FIRST, FINISH_DELAY, FINISH_TRIES, STABLE_AFTER, max_backoff

MODULE = "runstream_ingest.sidecar.node"
POLL = 0.25
SPAWN_GRACE = 5.0  # a spawned node sidecar not holding the lock after this long is presumed stuck
SPAWN_LOCK = "spawn.lock"
SPAWN_JSON = "spawn.json"


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie is dead: it only waits to be reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def node_sidecar_alive(node_dir: Path) -> bool:
    """True while a node sidecar holds ``node_dir/sidecar.lock``."""
    try:
        fd = os.open(Path(node_dir) / "sidecar.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return False


class NodeSupervisor:
    """Makes sure a node sidecar drains this rank's ring; waits for its pipeline at finish.

    Args:
        node_dir: The node directory (holds ``sidecar.lock``, ``logs/``).
        words: The rank's ring control words (``RingMap.words``): ``W_PIPELINE_EXIT`` is read.
        args: The node sidecar's arguments after the module (``--node-dir D --loop ...``).
        env: Extra environment for a spawned node sidecar (``RUNSTREAM_API_KEY``).
    """

    def __init__(
        self, node_dir: Path, words: memoryview, args: list[str], env: dict[str, str] | None = None
    ) -> None:
        self.node_dir = Path(node_dir)
        self.words = words
        self.args = list(args)
        self.extra_env = env or {}
        self.on_give_up: Callable[[], None] | None = None  # the interface of SidecarSupervisor
        self.spawned = 0  # node sidecars this rank started
        self.failures = 0  # of those, died young in a row (exit code not 0)
        self.last_code: int | None = None  # exit code of the last of ours that exited
        self.max_backoff = max_backoff()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", MODULE, *self.args]
        # For fault tests and debugging, as for the one-process sidecar (runstream.supervisor).
        wrapper = os.environ.get("RUNSTREAM_SIDECAR_WRAPPER")
        return [*shlex.split(wrapper), *cmd] if wrapper else cmd

    def start(self) -> None:
        """Spawn the node sidecar if none is alive, then watch it from a daemon thread.

        Raises:
            OSError: the node sidecar process could not be created.
        Never waits for the node sidecar to start."""
        self.ensure()
        self._thread = threading.Thread(target=self._watch, name="runstream-node-sidecar-watch", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        """The live node sidecar's pid as its ring word says (else as ``spawn.json`` says), or None."""
        pid = int(self.words[W_SIDECAR_PID])
        if pid and pid_alive(pid):
            return pid
        info = self._spawn_info()
        pid = int(info.get("pid") or 0)
        return pid if pid and pid_alive(pid) else None

    def backoff(self) -> float:
        if self.failures <= 1:
            return 0.0
        return float(min(BACKOFF_FIRST * 2 ** (self.failures - 2), self.max_backoff))

    def _spawn_info(self) -> dict[str, float]:
        try:
            info = json.loads((self.node_dir / SPAWN_JSON).read_text())
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _reap(self) -> None:
        """Collect our node sidecars that exited, counting those that died young."""
        with self._lock:
            alive = []
            for proc in self._procs:
                code = proc.poll()
                if code is None:
                    alive.append(proc)
                    continue
                self.last_code = code
                if code == 0:
                    self.failures = 0  # lost the race to another, or done: not a failure
                elif time.monotonic() - proc._runstream_started < STABLE_AFTER:  # type: ignore[attr-defined]
                    self.failures += 1
                    if self.failures == 1 or self.failures % 5 == 0:
                        print(
                            f"runstream: warning: the node sidecar exited (code {code}); starting a new "
                            f"one (see {self.node_dir / 'logs'})",
                            file=sys.stderr,
                        )
                    if self.failures == 5 and self.on_give_up is not None:
                        self.on_give_up()
                else:
                    self.failures = 1
            self._procs = alive

    def ensure(self, max_delay: float | None = None) -> bool:
        """Spawn a node sidecar if none holds the lock and none is starting; True if we did.
        ``max_delay`` caps how long another rank's back-off is respected (at finish)."""
        self._reap()
        # Probing the lock takes it for an instant, and a node sidecar starting at that instant
        # would find it held and leave: so probe only when no node sidecar is known to be alive.
        ring_pid = int(self.words[W_SIDECAR_PID])
        if ring_pid and pid_alive(ring_pid):
            return False  # the node sidecar draining this ring (it holds the lock) lives
        if self._starting():
            return False
        if node_sidecar_alive(self.node_dir):
            return False
        fd = os.open(self.node_dir / SPAWN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another rank is starting one right now (never wait on a rank)
            if self._starting() or node_sidecar_alive(self.node_dir):
                return False
            info = self._spawn_info()
            now = time.time()
            started = float(info.get("time") or 0.0)
            delay = float(info.get("delay") or 0.0)
            if max_delay is not None:
                delay = min(delay, max_delay)
            if now < started + delay:
                return False  # the last spawner's back-off
            proc = self._spawn()
            write_json_atomic(
                self.node_dir / SPAWN_JSON,
                {"pid": proc.pid, "time": now, "delay": self.backoff(), "rank_pid": os.getpid()},
            )
            return True
        finally:
            os.close(fd)

    def _starting(self) -> bool:
        """The last node sidecar a rank started is alive and younger than ``SPAWN_GRACE``: it is
        starting (it takes the lock in a moment) or already running."""
        info = self._spawn_info()
        pid = int(info.get("pid") or 0)
        return bool(pid) and pid_alive(pid) and time.time() - float(info.get("time") or 0.0) < SPAWN_GRACE

    def _spawn(self) -> subprocess.Popen[bytes]:
        (self.node_dir / "logs").mkdir(exist_ok=True)
        err = open(self.node_dir / "logs" / "sidecar.stderr", "ab")  # noqa: SIM115 - child owns it
        try:
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # a Ctrl-C or the launcher's kill of the rank must not take it
                close_fds=True,
                env={**os.environ, **self.extra_env} if self.extra_env else None,
            )
        finally:
            err.close()
        proc._runstream_started = time.monotonic()  # type: ignore[attr-defined]
        with self._lock:
            self._procs.append(proc)
            self.spawned += 1
        return proc

    def _done(self) -> bool:
        return bool(self.words[W_PIPELINE_EXIT])

    def _watch(self) -> None:
        while not self._stopping.wait(POLL):
            if self._done():
                self._reap()
                continue  # our pipeline is over; other ranks watch for their own
            try:
                self.ensure()
            except OSError as e:  # fork failed, node dir gone: try again next time
                print(f"runstream: warning: cannot start the node sidecar: {e}", file=sys.stderr)

    def stop(self, timeout: float) -> int | None:
        """Wait for the node sidecar to finish this rank's pipeline (the ring must be closed).

        A node sidecar that dies meanwhile is replaced (after at most ``FINISH_DELAY``), as long
        as the deadline allows.  Returns this rank's pipeline exit code (0: everything was
        drained), the last exit code of the node sidecars this rank started when
        ``FINISH_TRIES`` of them died in a row without finishing it (none can run), or None at
        the deadline (the node sidecar goes on in the background)."""
        deadline = time.monotonic() + timeout
        next_check = 0.0
        failures_at_start = self.failures
        try:
            while True:
                if self._done():
                    return exit_code_of(int(self.words[W_PIPELINE_EXIT]))
                now = time.monotonic()
                if now >= deadline:
                    return None
                if now >= next_check:
                    next_check = now + POLL
                    try:
                        self.ensure(max_delay=FINISH_DELAY)
                    except OSError:
                        pass
                    if (
                        self.failures - failures_at_start >= FINISH_TRIES
                        and self.last_code
                        and not node_sidecar_alive(self.node_dir)
                        and not self._done()
                    ):
                        return self.last_code
                time.sleep(min(0.01, max(deadline - now, 0.0)))
        finally:
            self._stopping.set()
            self._reap()
