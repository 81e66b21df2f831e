"""The shared-memory ring between the training process (producer) and its sidecar (consumer).

Design note (byte diagram, worked example and the memory-ordering argument: docs/ring-format.md)
------------------------------------------------------------------------------------------------
* Single producer, single consumer, lock-free.  The producer's ``push`` takes no lock, makes no
  syscall and hands nothing to a thread: it is plain stores into an ``mmap`` of a file in
  ``/dev/shm`` (``time.time()`` goes through the vDSO, not a syscall).
* ``head`` and ``tail`` are byte counters that only grow; ``head - tail`` bytes are in use and
  ``counter % capacity`` is a position.  Only the producer stores ``head``; only the consumer
  stores ``tail``.  Each sits on its own cache line in the control block.
* A record (format in ``runstream.format.record``) never straddles the end of the data area: when
  it would, the producer fills the rest with a PAD record (or, when fewer than 40 bytes remain,
  leaves them and both sides skip them), and writes the record at offset 0.
* Publication is ``head`` being stored *after* the record's bytes.  The consumer also checks each
  record's CRC-32C and that its ``seq`` is the next expected one, so a record whose bytes are not
  yet all visible (aarch64 may make the ``head`` store visible first) is simply not accepted yet,
  and stale bytes from an earlier lap can never pass for a new record.
* Back-pressure: when the ring lacks room, records wait in a bounded in-process overflow (FIFO).
  While the overflow is non-empty every new record queues behind it, so order is kept; later
  ``push`` calls and ``drain_overflow`` (from ``finish``) move it into the ring.  Past the bound a
  record is dropped and counted in the control block, where the sidecar reads it.

* Two writers, one byte format: ``PyRingWriter`` is pure Python; ``NativeRingWriter`` is the same
  class on top of the C extension ``runstream._ringfast``, whose ``push`` does the whole common
  case in one call (header, body copy, hardware CRC-32C, release store of ``head``) and hands
  every other case to the Python slow path.  ``RingWriter`` is the native one when the extension
  imports (``NATIVE``) and ``RUNSTREAM_PURE_PYTHON`` is not set; both write identical bytes.

Concurrency contract: a ``RingWriter`` belongs to one thread at a time of the training process (the
thread that calls ``log``); the consumer is ``runstream_ingest.sidecar.ring_reader.RingReader`` in
another process.  Nothing else may write the mapping.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runstream.errors import RecordTooLargeError
from runstream.format.record import CRC_START, HEADER, HEADER_SIZE, KIND_PAD, crc32c
from runstream.format.ring_layout import (
    MAX_RECORD,
    W_CLOSED,
    W_DROPPED,
    W_DROPPED_BYTES,
    W_FIRST_SEQ,
    W_HEAD,
    W_OVERFLOW_BYTES,
    W_OVERFLOW_PEAK,
    W_TAIL,
    RingMap,
    max_record,
)


def default_ring_path(run_id: str, run_dir: Path) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"runstream-{run_id}-{os.getpid()}.ring"
    return run_dir / "ring"


class PyRingWriter:
    """Producer side: publishes records into the ring, or into the overflow when it is full."""

    def __init__(self, ring: RingMap, overflow_limit: int, first_seq: int = 1) -> None:
        self.ring = ring
        self._data = ring.data
        self._words = ring.words
        self._cap = ring.capacity
        self._max = max_record(ring.capacity)
        self._head = ring.words[W_HEAD]
        self._tail = ring.words[W_TAIL]  # last tail seen; re-read only when short of room
        self._seq = first_seq
        ring.words[W_FIRST_SEQ] = first_seq
        self._overflow: deque[tuple[int, int, float, bytes, int]] = deque()
        self._overflow_bytes = 0
        self._overflow_limit = overflow_limit
        self._pack_into = HEADER.pack_into
        self._pack_crc = struct.Struct("<I").pack_into
        self.on_first_drop: Callable[[], None] | None = None  # called once, at the first drop

    # The hot path: a record that fits before the end of the data area, with room by the cached
    # ``tail`` and nothing queued.  Every line costs ~50-100 ns; keep it flat.
    def push(self, kind: int, step: int, t: float, body: bytes) -> None:
        n = len(body)
        size = (HEADER_SIZE + 7 + n) & -8
        head = self._head
        cap = self._cap
        pos = head % cap
        if self._overflow or pos + size > cap or cap - (head - self._tail) < size or size > self._max:
            self._push_slow(kind, step, t, body, size)
            return
        data = self._data
        seq = self._seq
        self._pack_into(data, pos, n, 0, seq, kind, 0, step, t)
        end = pos + HEADER_SIZE + n
        data[pos + HEADER_SIZE : end] = body
        self._pack_crc(data, pos + 4, crc32c(data[pos + CRC_START : end]))
        self._seq = seq + 1
        self._head = head = head + size
        self._words[W_HEAD] = head  # publish: this store comes after the record's bytes

    def _push_slow(self, kind: int, step: int, t: float, body: bytes, size: int) -> None:
        if self._overflow or size > self._max or not self._put(kind, step, t, body, size):
            self._queue(kind, step, t, body, size)

    def push_parts(self, kind: int, step: int, t: float, parts: list[Any]) -> None:
        """``push`` of a record whose body is ``parts`` (bytes-like, one after another), copied
        straight into the ring: a media payload is not first joined into one more copy.  The
        overflow, when it is needed, gets the joined bytes."""
        views = [memoryview(p).cast("B") if not isinstance(p, bytes) else p for p in parts]
        n = sum(len(v) for v in views)
        size = (HEADER_SIZE + 7 + n) & -8
        if self._overflow or size > self._max or not self._put(kind, step, t, views, size):
            self._queue(kind, step, t, b"".join(views), size)

    _push_parts_slow = push_parts  # the C push_parts hands what it does not take to this

    def _put(self, kind: int, step: int, t: float, body: bytes | list[Any], size: int) -> bool:
        """Place one record, wrapping and re-reading ``tail`` as needed; False when no room.
        ``body`` is the bytes, or a list of byte views to copy in one after another."""
        cap = self._cap
        head = self._head
        pos = head % cap
        room = cap - pos
        need = size if size <= room else room + size  # a record never straddles the end
        if cap - (head - self._tail) < need:
            self._tail = self._words[W_TAIL]
            if cap - (head - self._tail) < need:
                return False
        data = self._data
        if size > room:
            if room >= HEADER_SIZE:
                self._pack_into(data, pos, 0, 0, self._seq, KIND_PAD, 0, 0, 0.0)
                self._pack_crc(data, pos + 4, crc32c(data[pos + CRC_START : pos + HEADER_SIZE]))
            pos = 0
        parts = body if isinstance(body, list) else (body,)
        n = sum(len(p) for p in parts)
        # The header first: a bad argument (a kind past 255...) raises before a byte is written.
        self._pack_into(data, pos, n, 0, self._seq, kind, 0, step, t)
        end = pos + HEADER_SIZE
        for part in parts:
            data[end : end + len(part)] = part
            end += len(part)
        self._pack_crc(data, pos + 4, crc32c(data[pos + CRC_START : end]))
        self._seq += 1
        self._head = head + need
        self._words[W_HEAD] = self._head  # publish: this store comes after the record's bytes
        return True

    def _queue(self, kind: int, step: int, t: float, body: bytes, size: int) -> None:
        if size > self._max:
            raise RecordTooLargeError(
                f"a record of {size} bytes is larger than runstream accepts ({self._max} bytes: half "
                f"the {self._cap}-byte ring, at most {MAX_RECORD}); log less per call, or raise "
                "settings ring_size if the ring is the limit"
            )
        self.drain_overflow()
        if not self._overflow and self._put(kind, step, t, body, size):
            return
        if self._overflow_bytes + size > self._overflow_limit:
            w = self._words
            w[W_DROPPED] = w[W_DROPPED] + 1
            w[W_DROPPED_BYTES] = w[W_DROPPED_BYTES] + size
            if self.on_first_drop is not None:
                warn, self.on_first_drop = self.on_first_drop, None
                warn()
            return
        self._overflow.append((kind, step, t, body, size))
        self._overflow_bytes += size
        self._words[W_OVERFLOW_BYTES] = self._overflow_bytes
        self._words[W_OVERFLOW_PEAK] = max(self._words[W_OVERFLOW_PEAK], self._overflow_bytes)

    def drain_overflow(self) -> bool:
        """Move queued records into the ring, oldest first.  True when the overflow is empty."""
        q = self._overflow
        while q:
            kind, step, t, body, size = q[0]
            if not self._put(kind, step, t, body, size):
                break
            q.popleft()
            self._overflow_bytes -= size
        self._words[W_OVERFLOW_BYTES] = self._overflow_bytes
        return not q

    def abandon_overflow(self) -> int:
        """Give up on what is still queued (finish timed out): count it as dropped."""
        n = len(self._overflow)
        if n:
            w = self._words
            w[W_DROPPED] = w[W_DROPPED] + n
            w[W_DROPPED_BYTES] = w[W_DROPPED_BYTES] + self._overflow_bytes
            self._overflow.clear()
            self._overflow_bytes = 0
            w[W_OVERFLOW_BYTES] = 0
        return n

    @property
    def overflow_bytes(self) -> int:
        return self._overflow_bytes

    @property
    def last_seq(self) -> int:
        """Seq of the last record published into the ring (not counting the overflow)."""
        return self._seq - 1

    def count(self, word: int, n: int = 1) -> None:
        """Add to one of the producer-owned counters (e.g. W_STEP_REGRESSIONS)."""
        self._words[word] = self._words[word] + n

    def close(self) -> None:
        """Mark the ring closed: the producer will publish nothing more."""
        self._words[W_CLOSED] = 1


# The C fast path (sdk/runstream/_ringfast.c), unless it is missing or RUNSTREAM_PURE_PYTHON is set.
# Its WriterCore holds ``_head``, ``_tail``, ``_seq``, ``_cap``, ``_max``, ``_overflow_bytes``,
# ``_data`` and ``_words`` as C slots, so PyRingWriter's methods (the slow path) read and write the
# same state the C ``push`` uses; it calls ``_push_slow`` for whatever it does not handle.
NativeRingWriter: type[PyRingWriter] | None = None
if os.environ.get("RUNSTREAM_PURE_PYTHON", "") in ("", "0"):
    try:
        from runstream import _ringfast
    except ImportError:
        pass
    else:

        class _NativeRingWriter(_ringfast.WriterCore, PyRingWriter):
            """PyRingWriter whose ``push`` is ``_ringfast.WriterCore.push``."""

        NativeRingWriter = _NativeRingWriter

NATIVE = NativeRingWriter is not None
if TYPE_CHECKING:
    RingWriter = PyRingWriter
else:
    RingWriter = NativeRingWriter or PyRingWriter
