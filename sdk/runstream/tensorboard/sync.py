"""``init(sync_tensorboard=True)``: what TensorBoard writers write goes into the run as well.

The writers' classes are patched (:mod:`runstream.tensorboard.hooks`) so that each new writer
tells :class:`TensorBoardSync` its log directory.  A background thread (``runstream-tensorboard``)
polls those directories, tails their event files and converts the events (decoding PNGs,
building histograms) into rows, which wait in a bounded queue.  The rows are logged on the run's
own thread, because the ring has a single producer: each call the training code makes into a
patched writer (``add_scalar``, ``add_image``... end in the writer's ``add_event``) first logs
the rows that are ready, which costs a ``log`` call each and never a read; and ``finish``
flushes the writers, reads every file to its end and logs the rest.

Concurrency contract: ``add_logdir`` may be called from any thread; ``drain`` logs only on the
thread that called ``init``; ``finish`` runs on the thread that finishes the run.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any

from runstream.tensorboard.convert import Tally
from runstream.tensorboard.reader import EventFileTail, StepLogger, find_event_files, namespace_for

POLL_SECONDS = 1.0  # how often new event files and new records are looked for
# Rows waiting for the run's thread; past this the tail thread stops reading (the files wait on
# disk).  Rows may hold images, so this is kept small: a writer call on the run's thread empties it.
MAX_READY = 1024
READ_BATCH = 256  # records per file per pass, so one busy file does not starve the others
FINISH_TIMEOUT = 30.0  # finish gives up reading after this long (the rest is counted as left)


class TensorBoardSync:
    """Tails the event files of the log directories writers report, into ``run``.

    Args:
        run: The active :class:`runstream.Run`.
        root_logdir: Keys of event files under it are prefixed by their directory relative to
            it.  ``None``: the first log directory is the root; a later one outside it is
            prefixed by its path relative to the two's common parent.
        say: Prints a line to the user (runstream's quiet setting applies).
    """

    def __init__(self, run: Any, root_logdir: str | None = None, say: Any = None) -> None:
        self.run = run
        self.root = Path(root_logdir).resolve() if root_logdir else None
        self._say = say or (lambda msg: None)
        self._owner = threading.get_ident()
        self._lock = threading.Lock()  # guards _dirs between writers' threads and the tail thread
        self._dirs: dict[Path, Path] = {}  # log dir -> the root its namespaces are relative to
        self._tails: dict[Path, EventFileTail] = {}
        self._ready: collections.deque[tuple[int, dict[str, Any], str]] = collections.deque()
        self._logger = StepLogger(run)
        self.tally = Tally()  # counted on the tail thread (and in finish, once it has stopped)
        self.refused = 0  # rows run.log refused, counted on the run's thread
        self.log_errors = 0  # failed passes of the tail thread
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runstream-tensorboard", daemon=True)
        self._thread.start()

    def add_logdir(self, logdir: str) -> None:
        """Watch ``logdir`` (a writer just opened it); safe from any thread, never blocks on I/O."""
        d = Path(logdir).resolve()
        with self._lock:
            if d in self._dirs:
                return
            if self.root is not None:
                root = self.root
            elif not self._dirs:
                root = d
            else:
                first = next(iter(self._dirs))
                root = first if d.is_relative_to(first) else _common_parent(first, d)
            self._dirs[d] = root
        self._wake.set()

    # --- the tail thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as e:  # never let a bad file end syncing; say it once
                self.log_errors += 1
                if self.log_errors == 1:
                    self._say(f"tensorboard sync: {type(e).__name__}: {e}")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _discover(self) -> None:
        with self._lock:
            dirs = list(self._dirs.items())
        for d, root in dirs:
            for path in find_event_files(d) if d.is_dir() else []:
                if path not in self._tails:
                    self._tails[path] = EventFileTail(path, namespace_for(path, root))

    def _poll(self) -> None:
        self._discover()
        for tail in list(self._tails.values()):
            while len(self._ready) < MAX_READY and not self._stop.is_set():
                before = tail.reader.offset
                ns = tail.namespace
                self._ready.extend(
                    (step, values, ns) for step, values in tail.rows(self.tally, limit=READ_BATCH)
                )
                if tail.reader.offset == before:
                    break

    # --- the run's thread ----------------------------------------------------------------------
    def drain(self) -> None:
        """Log the rows that are ready, when called on the run's thread (else nothing)."""
        if self._ready and threading.get_ident() == self._owner:
            self._log_ready()

    def _log_ready(self) -> None:
        while self._ready:
            step, values, ns = self._ready.popleft()
            try:
                self._logger.log(step, values, ns)
            except Exception:  # a row the run refuses must not break training: counted
                self.refused += 1

    def finish(self, flush_writers: Any = None, timeout: float = FINISH_TIMEOUT) -> None:
        """Stop the tail thread, read every event file to its end and log what is left.

        Args:
            flush_writers: Called first, to make writers put what they hold on disk.
            timeout: Seconds to spend reading at most; files not read to the end by then are
                named in the closing message.

        Blocking: up to ``timeout`` (plus the tail thread's current pass) reading files.
        """
        if flush_writers is not None:
            try:
                flush_writers()
            except Exception as e:  # a writer that cannot flush loses its own unwritten events
                self._say(f"tensorboard sync: flushing a writer failed: {type(e).__name__}: {e}")
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._log_ready()
        if self._thread.is_alive():  # stuck in a read (a hung filesystem): its files are its own
            self._say(f"tensorboard sync: the reading thread did not stop within {timeout:.0f}s; not read: "
                      f"{', '.join(str(p) for p in self._tails)}")  # fmt: skip
            return
        deadline = time.monotonic() + timeout
        self._discover()
        unread = []
        for path, tail in self._tails.items():
            if time.monotonic() < deadline:
                for step, values in tail.rows(self.tally, final=True):
                    try:
                        self._logger.log(step, values, tail.namespace)
                    except Exception:
                        self.refused += 1
                    if time.monotonic() > deadline:
                        break
            if tail.reader.offset < tail.reader.size():
                unread.append(str(path))
        if self.refused:
            self.tally.skipped["rows the run refused"] += self.refused
        damaged = sum(t.reader.stats.damaged for t in self._tails.values())
        if damaged:
            self.tally.skipped["damaged records"] += damaged
        if self.tally.skipped or unread:
            msg = f"tensorboard sync: {self.tally.describe()}"
            if unread:
                msg += f"; not read to the end within {timeout:.0f}s: {', '.join(unread)}"
            self._say(msg)


def _common_parent(a: Path, b: Path) -> Path:
    parts = []
    for x, y in zip(a.parts, b.parts, strict=False):
        if x != y:
            break
        parts.append(x)
    return Path(*parts) if parts else Path("/")
