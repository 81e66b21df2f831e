"""Starts the sidecar process and starts it again if it dies while the run is live.

The training process never waits on the sidecar: ``log`` only writes the ring.  This module's
thread polls the child every ``POLL`` seconds, so a sidecar killed mid-run is replaced within
about that long, on the same ring and journal; the new one skips what the journal already has.

Concurrency contract: ``start``/``stop`` are called by the thread running ``init``/``finish``; the
watchdog thread is the only other user, and the two share ``_proc`` under ``_lock``.
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
MAX_RESTARTS = 20


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
        self.on_give_up: Callable[[], None] | None = None  # called once no sidecar will run again
        self.extra_env = extra_env or {}
        self.ring_path = ring_path
        self.run_dir = run_dir
        self.settings = settings
        self.restarts = 0
        self.loop = "uvloop"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def command(self) -> list[str]:
        s = self.settings
        cmd = [
            sys.executable,
            "-m",
            "runstream_ingest.sidecar.main",
            "--ring", str(self.ring_path),
            "--run-dir", str(self.run_dir),
            "--producer-pid", str(os.getpid()),
            "--batch-bytes", str(s.batch_bytes),
            "--batch-age", str(s.batch_age),
            "--fsync", s.fsync,
            "--fsync-interval", str(s.fsync_interval),
            "--memory", str(s.sidecar_memory),
            "--zstd-level", str(s.zstd_level),
            "--loop", self.loop,
            "--stats-interval", str(0.0 if s.disable_stats else s.stats_interval),
            *(["--disable-code"] if s.disable_code else []),
            *(["--disable-git"] if s.disable_git else []),
            *(["--save-code"] if s.save_code else []),
            *[arg for g in s.ignore_globs for arg in ("--ignore-glob", g)],
            *self.extra_args,
        ]  # fmt: skip
        # For fault tests and debugging: run the sidecar under a wrapper such as fiu-run or strace.
        wrapper = os.environ.get("RUNSTREAM_SIDECAR_WRAPPER")
        return [*shlex.split(wrapper), *cmd] if wrapper else cmd

    def _spawn(self) -> subprocess.Popen[bytes]:
        err = open(self.run_dir / "logs" / "sidecar.stderr", "ab")  # noqa: SIM115 - child owns it
        try:
            return subprocess.Popen(
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

    def start(self) -> None:
        with self._lock:
            self._proc = self._spawn()
        self._thread = threading.Thread(target=self._watch, name="runstream-sidecar-watch", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc else None

    def _watch(self) -> None:
        while not self._stopping.wait(POLL):
            with self._lock:
                proc = self._proc
                if proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                if proc.returncode == 0:
                    return  # it drained a closed ring, or outlived its producer: its job is done
                if self.restarts >= MAX_RESTARTS:
                    print(
                        f"runstream: error: the sidecar keeps dying (exit {proc.returncode}); giving up "
                        f"after {self.restarts} restarts. Records stay in the ring until it fills; see "
                        f"{self.run_dir / 'logs'}",
                        file=sys.stderr,
                    )
                    if self.on_give_up is not None:
                        self.on_give_up()
                    return
                self.restarts += 1
                if proc.returncode == -signal.SIGABRT:
                    self.loop = "asyncio"  # libuv aborts on some I/O errors; the stdlib loop doesn't
                print(
                    f"runstream: warning: the sidecar exited (code {proc.returncode}); started a new one "
                    "on the same ring and journal",
                    file=sys.stderr,
                )
                self._proc = self._spawn()

    def stop(self, timeout: float) -> int | None:
        """Wait for the sidecar to drain and exit (the ring must be closed first).

        Returns its exit code, or None if it is still running at the deadline (it goes on in the
        background and finishes on its own)."""
        deadline = time.monotonic() + timeout
        # Keep the watchdog alive while waiting: a sidecar that dies during the final drain is
        # restarted too, and the new one finishes the job.
        while time.monotonic() < deadline:
            with self._lock:
                proc = self._proc
            if proc is None:
                break
            try:
                code = proc.wait(timeout=min(0.05, max(deadline - time.monotonic(), 0.001)))
            except subprocess.TimeoutExpired:
                continue
            if code == 0 or self.restarts >= MAX_RESTARTS:
                self._stopping.set()
                return code
            time.sleep(POLL * 1.5)  # let the watchdog start its successor
        self._stopping.set()
        with self._lock:
            proc = self._proc
        return proc.poll() if proc else None
