"""Starts the sidecar process and starts it again, for as long as the run is live, if it dies.

The training process never waits on the sidecar: ``log`` only writes the ring.  This module's
thread polls the child every ``POLL`` seconds, so a sidecar killed mid-run is replaced within
about that long, on the same ring and journal; the new one skips what the journal already has.

It never gives up while the training process lives: records wait in the ring (and are counted
when it overflows), and only a sidecar can move them to the journal, so a supervisor that stopped
restarting would turn every later record into an uncounted loss.  A sidecar that keeps dying is
restarted after a growing delay instead (``BACKOFF_FIRST`` doubling up to ``max_backoff``, reset
once one stays up ``STABLE_AFTER`` seconds), so a sidecar that cannot start does not spin a core.
After ``UNRELIABLE_AFTER`` deaths in a row, ``on_give_up`` tells the console capture not to wait
for a reader (prints must never block), while the restarts go on.

Concurrency contract: ``start``/``stop`` are called by the thread running ``init``/``finish``; the
watchdog thread is the only other user, and the two share ``_proc`` and the restart state under
``_lock``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runstream.settings import Settings

POLL = 0.25
BACKOFF_FIRST = 0.25  # the delay before the second restart in a row (the first is at once)
MAX_BACKOFF = 4.0  # the delay's cap; RUNSTREAM_SIDECAR_MAX_BACKOFF overrides it (docs/run-dir.md)
STABLE_AFTER = 10.0  # a sidecar that lived this long resets the delay
UNRELIABLE_AFTER = 5  # deaths in a row after which the console stops waiting for a sidecar
FINISH_DELAY = 0.5  # at finish, the longest wait before starting another sidecar
FINISH_TRIES = 5  # at finish, sidecars that may die in a row before finish stops waiting


def max_backoff() -> float:
    """The restart delay's cap: ``RUNSTREAM_SIDECAR_MAX_BACKOFF`` seconds, else ``MAX_BACKOFF``."""
    try:
        return max(float(os.environ.get("RUNSTREAM_SIDECAR_MAX_BACKOFF", "")), 0.0)
    except ValueError:
        return MAX_BACKOFF


def final_write_timeout(finish_timeout: float) -> float:
    """How long a sidecar keeps retrying a full or failing disk once the run is over: 40 % of the
    finish timeout (at most 30 s).  finish() closes the ring by 40 % of its timeout (``log``'s
    overflow waits no longer), so the sidecar still exits, having counted what it lost, with a
    fifth of the timeout to spare before finish() stops waiting for it."""
    return max(min(finish_timeout * 0.4, 30.0), 0.1)


class SidecarSupervisor:
    def __init__(
        self,
        ring_path: Path,
        run_dir: Path,
        settings: Settings,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        pass_fds: list[int] | None = None,
    ) -> None:
        self.extra_args = extra_args or []
        # fds every sidecar inherits: the console pipes' read ends and the tee fds (console.py)
        self.pass_fds = tuple(pass_fds or ())
        # Called once sidecars have died UNRELIABLE_AFTER times in a row: whatever waits for a
        # sidecar to read it (the console pipes) must stop waiting.  Restarts go on regardless.
        self.on_give_up: Callable[[], None] | None = None
        self.extra_env = extra_env or {}
        self.ring_path = ring_path
        self.run_dir = run_dir
        self.settings = settings
        self.restarts = 0  # sidecars started after the first
        self.failures = 0  # sidecars that died in a row (each lived under STABLE_AFTER seconds)
        self.max_backoff = max_backoff()
        self.loop = "uvloop"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0  # monotonic time the current sidecar was started
        self._due: float | None = None  # when the dead sidecar's successor is to be started
        self._gave_up = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "runstream_ingest.sidecar.main",
            "--ring", str(self.ring_path),
            "--run-dir", str(self.run_dir),
            "--producer-pid", str(os.getpid()),
            *self.pipeline_args(),
        ]  # fmt: skip
        # For fault tests and debugging: run the sidecar under a wrapper such as fiu-run or strace.
        wrapper = os.environ.get("RUNSTREAM_SIDECAR_WRAPPER")
        return [*shlex.split(wrapper), *cmd] if wrapper else cmd

    def pipeline_args(self) -> list[str]:
        """The sidecar's arguments after ``--ring``, ``--run-dir`` and ``--producer-pid``: tuning,
        then ``extra_args`` (server and identity when online, console).  A distributed rank
        writes them into its ``sidecar.json`` for the node sidecar (docs/distributed.md)."""
        s = self.settings
        return [
            "--batch-bytes", str(s.batch_bytes),
            "--batch-age", str(s.batch_age),
            "--fsync", s.fsync,
            "--fsync-interval", str(s.fsync_interval),
            "--memory", str(s.sidecar_memory),
            "--zstd-level", str(s.zstd_level),
            # A disk that stays full at finish is given up on in time for finish to report it.
            "--final-write-timeout", str(final_write_timeout(s.finish_timeout)),
            "--loop", self.loop,
            "--stats-interval", str(0.0 if s.disable_stats else s.stats_interval),
            *(["--disable-code"] if s.disable_code else []),
            *(["--disable-git"] if s.disable_git else []),
            *(["--save-code"] if s.save_code else []),
            *[arg for g in s.ignore_globs for arg in ("--ignore-glob", g)],
            *self.extra_args,
        ]  # fmt: skip

    def _spawn(self) -> subprocess.Popen[bytes]:
        err = open(self.run_dir / "logs" / "sidecar.stderr", "ab")  # noqa: SIM115 - child owns it
        try:
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # a terminal Ctrl-C must not kill it before it drains
                close_fds=True,
                pass_fds=self.pass_fds,
                env={**os.environ, **self.extra_env} if self.extra_env else None,
            )
        finally:
            err.close()
        self._started = time.monotonic()
        return proc

    def start(self) -> None:
        with self._lock:
            self._proc = self._spawn()
        self._thread = threading.Thread(target=self._watch, name="runstream-sidecar-watch", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc else None

    def backoff(self) -> float:
        """The delay before the next restart: none after a sidecar that lived a while, then
        ``BACKOFF_FIRST`` doubling per death in a row, up to ``max_backoff``."""
        if self.failures <= 1:
            return 0.0
        return float(min(BACKOFF_FIRST * 2 ** (self.failures - 2), self.max_backoff))

    def _died_locked(self, proc: subprocess.Popen[bytes], max_delay: float) -> None:
        """Note the death of ``proc`` (the current sidecar) and when its successor is due."""
        if self._due is not None:
            return  # already noted
        if time.monotonic() - self._started >= STABLE_AFTER:
            self.failures = 0
        self.failures += 1
        if proc.returncode == -signal.SIGABRT:
            self.loop = "asyncio"  # libuv aborts on some I/O errors; the stdlib loop doesn't
        delay = min(self.backoff(), max_delay)
        self._due = time.monotonic() + delay
        if self.failures <= 3 or delay < self.max_backoff:
            print(
                f"runstream: warning: the sidecar exited (code {proc.returncode}); "
                + ("starting a new one" if delay else "started a new one")
                + (f" in {delay:.2f}s" if delay else "")
                + " on the same ring and journal",
                file=sys.stderr,
            )
        if self.failures >= UNRELIABLE_AFTER and not self._gave_up:
            self._gave_up = True
            print(
                f"runstream: error: the sidecar keeps dying (exit {proc.returncode}, {self.failures} "
                f"times in a row); still starting a new one every {self.max_backoff:.1f}s at most. "
                f"Records wait in the ring until it fills (then they are counted as dropped); see "
                f"{self.run_dir / 'logs'}",
                file=sys.stderr,
            )
            if self.on_give_up is not None:
                self.on_give_up()

    def _restart_if_due_locked(self) -> None:
        if self._due is not None and time.monotonic() >= self._due:
            self._due = None
            self.restarts += 1
            self._proc = self._spawn()

    def _watch(self) -> None:
        while not self._stopping.wait(POLL):
            with self._lock:
                proc = self._proc
                if proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                if proc.returncode == 0:
                    return  # it drained a closed ring, or outlived its producer: its job is done
                self._died_locked(proc, self.max_backoff)
                self._restart_if_due_locked()

    def stop(self, timeout: float) -> int | None:
        """Wait for the sidecar to drain and exit (the ring must be closed first).

        A sidecar that dies meanwhile is replaced at once (after at most ``FINISH_DELAY``), as
        long as the deadline allows and until ``FINISH_TRIES`` have died in a row here: records
        still in the ring are kept only by a sidecar that drains them.

        Returns the last sidecar's exit code (0: everything was drained), or None if it is still
        running at the deadline (it goes on in the background and finishes on its own)."""
        deadline = time.monotonic() + timeout
        died_here = 0
        while time.monotonic() < deadline:
            with self._lock:
                proc = self._proc
            if proc is None:
                break
            try:
                code = proc.wait(timeout=min(0.05, max(deadline - time.monotonic(), 0.001)))
            except subprocess.TimeoutExpired:
                continue
            if code == 0:
                self._stopping.set()
                return code
            with self._lock:
                if self._proc is not proc:
                    continue  # the watchdog already started its successor
                died_here += 1
                if died_here >= FINISH_TRIES:
                    break  # it cannot run: finish counts what the ring still holds as lost
                self._died_locked(proc, FINISH_DELAY)
                due = self._due = min(self._due or 0.0, time.monotonic() + FINISH_DELAY)
            if due > deadline:
                break
            time.sleep(max(due - time.monotonic(), 0.0))
            with self._lock:
                if self._proc is proc:
                    self._restart_if_due_locked()
        self._stopping.set()
        with self._lock:
            proc = self._proc
        return proc.poll() if proc else None
