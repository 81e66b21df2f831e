"""Stage 2 of the sidecar: gather spans of records into batches, cut by size and by age.

A batch is a run of whole records in the ring's record format (docs/ring-format.md), so building
one is concatenating spans.  Stage 3 compresses a cut batch with zstd into a journal frame.

Concurrency contract: one ``Batcher`` per sidecar, used by its event-loop thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from runstream_ingest.sidecar.ring_reader import Span


@dataclass(frozen=True)
class Batch:
    data: bytes
    count: int
    first_seq: int
    last_seq: int
    end: int = 0  # the ring reader's cursor past the batch's last record (RingReader.release)


class Batcher:
    def __init__(self, max_bytes: int, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._parts: list[bytes] = []
        self.size = 0
        self.count = 0
        self._first = 0
        self._last = 0
        self._opened = 0.0
        self._end = 0

    def add(self, span: Span) -> None:
        if not span.count:
            return
        if not self.count:
            self._first = span.first_seq
            self._opened = self._clock()
        self._parts.append(span.data)
        self.size += len(span.data)
        self.count += span.count
        self._last = span.last_seq
        self._end = span.end

    def due(self) -> bool:
        """A batch should be cut now: it is full, or its oldest record has waited long enough."""
        return self.count > 0 and (
            self.size >= self.max_bytes or self._clock() - self._opened >= self.max_age
        )

    def room(self) -> int:
        return max(self.max_bytes - self.size, 0)

    def cut(self) -> Batch | None:
        if not self.count:
            return None
        batch = Batch(b"".join(self._parts), self.count, self._first, self._last, self._end)
        self._parts = []
        self.size = self.count = 0
        return batch


class Compressor:
    """zstd, one context reused for every batch (contexts are costly to build)."""

    def __init__(self, level: int) -> None:
        self._z = zstandard.ZstdCompressor(level=level, write_content_size=True)

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._z.compress(data)
        return out
