"""Stage 1 of the sidecar: read published records out of the shared-memory ring, in spans.

The byte format and the publication protocol are in docs/ring-format.md; the producer side is
``runstream.ring.RingWriter``.  The reader copies whole runs of validated records at once (a
span is contiguous up to the end of the data area), so a batch is built with one or two
``bytes`` copies per drain rather than one per record.

Reading does not free ring space: ``release`` does, and the sidecar calls it only once the
records it read are in the journal (or held by the journal writer), so a sidecar killed with
``kill -9`` leaves every unjournaled record in the ring for its successor.

Concurrency contract: one ``RingReader`` per ring, used by one thread (the sidecar's event loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runstream.format.record import CRC_START, HEADER, HEADER_SIZE, KIND_PAD, KIND_ROW, Record, crc32c
from runstream.format.ring_layout import W_HEAD, W_SKIPPED_BYTES, W_TAIL, RingMap

# A record below ``head`` that does not validate is normally one whose bytes are not visible yet
# (weakly ordered CPUs).  If it stays invalid this long it is damage: skip to ``head``.
STUCK_TIMEOUT = 1.0


@dataclass
class Span:
    """Records read in one ``poll``: their bytes (a run of records, as in a batch), how many, the
    seq range, the non-row records, which the sidecar also acts on, and the reader's cursor just
    past them (what ``release`` may free once they are journaled)."""

    data: bytes
    count: int
    first_seq: int
    last_seq: int
    control: list[Record] = field(default_factory=list)
    end: int = 0


class RingReader:
    def __init__(
        self,
        ring: RingMap,
        after_seq: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``after_seq``: records with seq <= this are already in the journal (a restarted
        sidecar passes the journal's last seq) and are skipped."""
        self.ring = ring
        self._data = ring.data
        self._words = ring.words
        self._cap = ring.capacity
        self.cursor = ring.words[W_TAIL]  # read position; ``tail`` trails it until ``release``
        self.after_seq = after_seq
        self.expected: int | None = None  # seq the next record must carry; None: not known yet
        self.skipped_bytes = 0
        self._clock = clock
        self._stuck_since: float | None = None

    @property
    def pending(self) -> int:
        """Bytes published but not yet read."""
        return int(self._words[W_HEAD]) - self.cursor

    def poll(self, max_bytes: int) -> list[Span]:
        """Read what has been published, up to about ``max_bytes``; at most two spans (the ring
        can wrap once within a poll)."""
        spans: list[Span] = []
        head = self._words[W_HEAD]
        budget = max_bytes
        while self.cursor < head and budget > 0:
            span = self._read_span(head, budget)
            if span is None:
                break
            if span.count:
                spans.append(span)
                budget -= len(span.data)
        return spans

    def _read_span(self, head: int, budget: int) -> Span | None:
        """Validate records from the cursor up to ``head``, the end of the data area or the
        budget, whichever comes first, and hand them out as one span."""
        cap, data, unpack = self._cap, self._data, HEADER.unpack_from
        start = pos = self.cursor % cap
        limit = min(cap, start + (head - self.cursor))
        keep_from = start  # bytes [keep_from, pos) are the records to hand out
        count = first = last = 0
        control: list[Record] = []
        wrapped = stuck = False
        while pos < limit and pos - start < budget:
            if cap - pos < HEADER_SIZE:  # too small for a header: both sides skip to offset 0
                wrapped = True
                break
            length, crc, seq, kind, flags, step, t = unpack(data, pos)
            end = pos + HEADER_SIZE + length
            if (
                end > cap
                or (self.expected is not None and seq != self.expected)
                or crc32c(data[pos + CRC_START : end]) != crc
            ):
                stuck = True
                break
            if kind == KIND_PAD:  # carries the seq of the record at offset 0
                self.expected = seq
                wrapped = True
                break
            self.expected = seq + 1
            size = (HEADER_SIZE + length + 7) & -8
            if seq <= self.after_seq:  # already journaled by an earlier sidecar: skip
                if not count:
                    keep_from = pos + size
            else:
                if not count:
                    first = seq
                count += 1
                last = seq
                if kind != KIND_ROW:
                    control.append(Record(seq, kind, flags, step, t, bytes(data[pos + HEADER_SIZE : end])))
            pos += size
        self.cursor += (cap if wrapped else pos) - start
        if stuck:
            self._on_stuck(head)
        else:
            self._stuck_since = None
        if not count:
            return None if pos == start and not wrapped else Span(b"", 0, 0, 0, end=self.cursor)
        return Span(bytes(data[keep_from:pos]), count, first, last, control, self.cursor)

    def _on_stuck(self, head: int) -> None:
        now = self._clock()
        if self._stuck_since is None:
            self._stuck_since = now
        elif now - self._stuck_since >= STUCK_TIMEOUT:
            # Damage, not a slow store: give up on everything published so far and resync on the
            # next record the producer publishes.  Counted and shown, never silent.
            self.skipped_bytes += head - self.cursor
            self._words[W_SKIPPED_BYTES] = self.skipped_bytes
            self.cursor = head
            self.expected = None
            self._stuck_since = None

    def release(self, upto: int | None = None) -> None:
        """Free the ring up to ``upto`` (a span's ``end``), or everything read so far: call it
        once those records are safely in the journal's hands.  Spans read but held back (media
        being encoded) stay in the ring until their own batch is journaled."""
        upto = self.cursor if upto is None else min(upto, self.cursor)
        # tail only grows: the producer reuses what is behind it
        self._words[W_TAIL] = max(self._words[W_TAIL], upto)


def open_reader(path: Path, after_seq: int = 0) -> RingReader:
    return RingReader(RingMap.attach(path), after_seq=after_seq)
