"""The shared-memory ring's layout: the control block's words and the mapping both sides open.

Byte diagram, worked example and the memory-ordering argument: docs/ring-format.md.  The producer
is ``runstream.ring`` (in the training process), the consumer ``runstream_ingest.sidecar.ring_reader``
(in the sidecar); each owns the words its comments name, and nothing else writes the mapping.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from runstream.format.record import ALIGN

# --- control block (docs/ring-format.md, "Control block") -------------------------------------
MAGIC = b"RSRING\x00\x01"
VERSION = 1
CONTROL_SIZE = 4096  # the data area starts here, page-aligned
_WORDS = struct.Struct("<8sIIQQ")  # magic, version, control size, capacity, producer pid

# u64 word indexes into the control block
W_HEAD = 8  # byte 64: producer-owned cache line
# word 9 is reserved (was: records published; the seq already says it)
W_DROPPED = 10  # records dropped because ring and overflow were both full
W_DROPPED_BYTES = 11
W_OVERFLOW_BYTES = 12  # bytes waiting in the overflow right now
W_OVERFLOW_PEAK = 13
W_STEP_REGRESSIONS = 14  # rows dropped because their step went backwards
W_MEDIA_DROPPED = 15  # media values dropped in the producer (spill bound reached, unreadable file)
W_MEDIA_STAGED = 19  # bytes of media payload the producer staged on disk (docs/media.md, "Spill")
W_CLOSED = 16  # byte 128: 1 once the producer has published its last record
W_TAIL = 24  # byte 192: consumer-owned cache line
W_SIDECAR_PID = 25
W_JOURNALED = 26  # records the current sidecar gave the journal writer (each sidecar counts from 0)
W_JOURNALED_SEQ = 27  # highest seq written to the journal
W_SYNCED_SEQ = 28  # highest seq covered by a successful fsync
W_JOURNAL_ERRORS = 29
W_SKIPPED_BYTES = 30  # ring bytes the consumer gave up on (damage: should never happen)
# records sidecars took from the ring and could not journal: held in memory for a failing disk
# and lost (kill -9), or given up on a disk that stayed full after the producer was gone
W_SIDECAR_LOST = 31
W_ACKED_SEQ = 32  # byte 256: highest seq the server has acknowledged (online runs)
W_MEDIA_FREED = 33  # bytes of staged media the sidecar has consumed (encoded and journaled)
W_MEDIA_FAILED = 34  # media the sidecar could not encode (bad data, a staged file gone)
# byte 280, distributed runs only (docs/distributed.md): the node sidecar sets it to exit_word(code)
# once this rank's pipeline is done (code 0: everything drained), as a one-rank sidecar's exit
# code says it; 0 while the pipeline runs.  finish() on a rank waits for it.
W_PIPELINE_EXIT = 35
W_FIRST_SEQ = 17  # byte 136: the seq of the producer's first record (1 unless resumed)
# byte 144: the exit code finish() gave, as exit_word(code); 0: none.  Set before the close, for the
# sidecar to write the exit record itself when the producer's could not get into the ring.
W_EXIT = 18


def exit_word(code: int) -> int:
    """``code`` (an int32, clamped) as the W_EXIT word: never 0, which means "no exit"."""
    return max(min(code, 2**31 - 1), -(2**31)) + 2**31 + 1


def exit_code_of(word: int) -> int | None:
    """The exit code a W_EXIT word holds, or None."""
    return word - 2**31 - 1 if word else None


MIN_CAPACITY = 64 * 1024
DEFAULT_CAPACITY = 64 * 1024 * 1024


MAX_RECORD = 8 * 1024 * 1024  # one record must fit a 16 MiB ingest message with room to spare


def loss_counters(words: Sequence[int]) -> dict[str, int]:
    """The control block's loss and back-pressure counters, named as the STATS record carries
    them (docs/ring-format.md, "Records"): what the sidecar, or the training process when no
    sidecar can run, writes into the journal at the end of a run."""
    return {
        "dropped_records": int(words[W_DROPPED]),
        "dropped_bytes": int(words[W_DROPPED_BYTES]),
        "overflow_peak_bytes": int(words[W_OVERFLOW_PEAK]),
        "step_regressions": int(words[W_STEP_REGRESSIONS]),
        "ring_skipped_bytes": int(words[W_SKIPPED_BYTES]),
        "sidecar_lost_records": int(words[W_SIDECAR_LOST]),
        "dropped_media": int(words[W_MEDIA_DROPPED]),
        "media_errors": int(words[W_MEDIA_FAILED]),
    }


def max_record(capacity: int) -> int:
    """Largest record (header and padding included) a ring of ``capacity`` accepts.

    A record must be contiguous, so one larger than half the ring could wait forever for a
    position that leaves room for it before the end; and it must fit one message to the server.
    """
    return min(capacity // 2, MAX_RECORD)


class RingMap:
    """An open mapping of a ring file: the bytes, plus u64 views of the control block."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        # Map every page now (~13 ms for 64 MiB) rather than take a minor fault per 4 KiB on the
        # producer's first lap: 63 per 1,000 logs, most of log's p99.
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        self.mm = mmap.mmap(fd, size, flags, mmap.PROT_READ | mmap.PROT_WRITE)
        self.buf = memoryview(self.mm)
        self.words = self.buf[:CONTROL_SIZE].cast("Q")
        _magic, _version, _control, capacity, pid = _WORDS.unpack_from(self.buf, 0)
        self.capacity: int = capacity
        self.producer_pid: int = pid
        self.data = self.buf[CONTROL_SIZE : CONTROL_SIZE + capacity]

    @classmethod
    def create(cls, path: Path, capacity: int) -> RingMap:
        if capacity < MIN_CAPACITY or capacity % ALIGN:
            raise ValueError(f"ring capacity {capacity} must be >= {MIN_CAPACITY} and a multiple of 8")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, CONTROL_SIZE + capacity)
            # Touch every page now (at init) so the hot path never takes a page fault that
            # allocates tmpfs memory; a machine short of /dev/shm fails here, loudly, not in log().
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, CONTROL_SIZE + capacity)
            header = _WORDS.pack(MAGIC, VERSION, CONTROL_SIZE, capacity, os.getpid())
            os.pwrite(fd, header, 0)
            return cls(path, fd, CONTROL_SIZE + capacity)
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, path: Path) -> RingMap:
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < CONTROL_SIZE:
                raise ValueError(f"{path} is not a runstream ring ({size} bytes)")
            head = os.pread(fd, _WORDS.size, 0)
            magic, version, control, capacity, _ = _WORDS.unpack(head)
            if magic != MAGIC or version != VERSION or control != CONTROL_SIZE:
                raise ValueError(f"{path} is not a runstream ring v{VERSION} (magic {magic!r})")
            if size != CONTROL_SIZE + capacity:
                raise ValueError(f"{path}: ring size {size} does not match its capacity {capacity}")
            return cls(path, fd, size)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.data.release()
        self.words.release()
        self.buf.release()
        self.mm.close()
