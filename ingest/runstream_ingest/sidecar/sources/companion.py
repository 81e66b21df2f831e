"""The sidecar's own writer: records the sidecar produces itself, beside the training process's.

System-metric samples, console lines read from the training process's pipes, the run's
environment (git, packages, GPUs) and uploaded files are made in the sidecar, but the ring has one
producer (the training process) and its seqs are the producer's.  So the sidecar writes these
records as a second writer of the same run, with everything a writer has of its own:

* a seq space starting at 1, continued across sidecar restarts (from the journal's last seq);
* a journal in ``<run dir>/companion/journal`` (same frame format: ``docs/journal-format.md``) and
  an upload marker ``<run dir>/companion/upload.json``;
* a gRPC stream whose writer id is the producer's plus ``COMPANION_SUFFIX`` and whose resume mode
  is ``"companion"``: the server attaches it to the run without ever reviving or refusing the run
  (``docs/protocol.md``, "Companion writers").

Records are buffered and cut into a frame when ``batch_bytes`` or ``batch_age`` is reached, as the
producer's are.  A record is in the journal (page cache) within ``batch_age`` of ``emit``, so a
``kill -9`` of the sidecar loses at most that much of it.

Concurrency contract: one owner, the sidecar's event loop; ``emit`` is called from that loop only
(a thread hands its records over with ``loop.call_soon_threadsafe``).  ``journal.sync`` may run on
an executor thread, as for the producer's journal.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from runstream.format import record as rec
from runstream.format.frame import CODEC_ZSTD, TYPE_BATCH, encode_frame
from runstream_ingest.sidecar.batcher import Compressor
from runstream_ingest.sidecar.journal import FsyncPolicy, JournalWriter

log = logging.getLogger("runstream.companion")

COMPANION_DIR = "companion"
COMPANION_SUFFIX = rec.COMPANION_WRITER_SUFFIX  # writer id = the producer's writer id + this
COMPANION_RESUME = "companion"
MEMORY_LIMIT = 32 << 20  # bytes held for a failing disk before emit() starts dropping


class Source(Protocol):
    """Something the sidecar records by itself (system metrics, console, environment, files).

    ``run`` is a task on the sidecar's loop from start until it is cancelled at exit; ``close`` is
    awaited before that, once the producer has finished or died, and writes the source's last
    records.  Both run on the sidecar's loop; a source emits through ``CompanionWriter.emit``."""

    async def run(self) -> None: ...

    async def close(self) -> None: ...


def companion_dir(run_dir: Path) -> Path:
    return run_dir / COMPANION_DIR


class CompanionWriter:
    def __init__(
        self,
        run_dir: Path,
        fsync: FsyncPolicy = "group",
        batch_bytes: int = 256 << 10,
        batch_age: float = 0.1,
        zstd_level: int = 3,
    ) -> None:
        self.dir = companion_dir(run_dir)
        self.journal = JournalWriter(self.dir / "journal", fsync=fsync, memory_limit=MEMORY_LIMIT)
        self.journal.open()
        self.seq = self.journal.last_seq  # the last seq handed out
        self.batch_bytes = batch_bytes
        self.batch_age = batch_age
        self.compressor = Compressor(zstd_level)
        self.dropped = 0  # records refused while the disk held more than MEMORY_LIMIT for us
        self.emitted = 0
        self.on_cut: list[Any] = []  # callables run after each frame reaches the journal
        self._parts: list[bytes] = []
        self._size = 0
        self._first_at = 0.0

    def emit(self, kind: int, value: Any, t: float | None = None, step: int = 0) -> None:
        """Queue one record; it reaches the journal within ``batch_age``."""
        if self.journal.over_limit:
            self.journal.retry()
            if self.journal.over_limit:
                self.dropped += 1  # counted in the run's stats record, never silent
                return
        self.seq += 1
        data = rec.encode(self.seq, kind, step, time.time() if t is None else t, rec.pack_body(value))
        if not self._parts:
            self._first_at = time.monotonic()
        self._parts.append(data)
        self._size += len(data)
        self.emitted += 1
        if self._size >= self.batch_bytes:
            self.cut()

    def due(self) -> bool:
        return bool(self._parts) and time.monotonic() - self._first_at >= self.batch_age

    def cut(self) -> None:
        """Everything queued becomes one frame in the journal."""
        if not self._parts:
            return
        last = self.seq
        first = last - len(self._parts) + 1
        payload = self.compressor.compress(b"".join(self._parts))
        self._parts, self._size = [], 0
        self.journal.append(encode_frame(TYPE_BATCH, CODEC_ZSTD, first, last, payload), first, last)
        for f in self.on_cut:
            f()

    def close(self) -> int:
        """Cut, write and fsync what is left; returns how many records could not be kept."""
        self.cut()
        self.journal.close()
        return self.journal.lost_records + self.dropped
