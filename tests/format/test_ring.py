"""The shared-memory ring: model check, damage, back-pressure, and two real processes."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from runstream.errors import RecordTooLargeError
from runstream.format import record as rec
from runstream.format.ring_layout import (
    CONTROL_SIZE,
    MIN_CAPACITY,
    W_DROPPED,
    W_OVERFLOW_PEAK,
    W_SKIPPED_BYTES,
    W_TAIL,
    RingMap,
)
from runstream.ring import RingWriter
from runstream_ingest.sidecar.ring_reader import STUCK_TIMEOUT, RingReader


def ring_file() -> Path:
    d = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    fd, name = tempfile.mkstemp(prefix="rs-test-", suffix=".ring", dir=d)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def body_of(n: int, size: int) -> bytes:
    """A distinct, checkable body: the record number, then filler derived from it."""
    return struct.pack("<Q", n) + bytes((n + i) % 251 for i in range(size))


def read_all(reader: RingReader, budget: int = 1 << 30) -> list[rec.Record]:
    out = []
    for span in reader.poll(budget):
        out.extend(rec.iter_records(span.data))
    return out


def drain(writer: RingWriter, reader: RingReader) -> list[bytes]:
    """Read and release until ring and overflow are both empty; the bodies, in order."""
    got: list[bytes] = []
    while True:
        writer.drain_overflow()
        more = read_all(reader)
        reader.release()
        got += [r.body for r in more]
        if not more and not writer.overflow_bytes:
            return got


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RingModel(RuleBasedStateMachine):
    """The real ring against a list: every record pushed and not dropped is read exactly once, in
    order, whatever the sizes, wrap-arounds, full ring and interleaving of reads."""

    @initialize(
        capacity=st.sampled_from([MIN_CAPACITY, MIN_CAPACITY + 8, 3 * MIN_CAPACITY // 2]),
        overflow=st.sampled_from([0, 4096, 1 << 20]),
    )
    def setup(self, capacity: int, overflow: int) -> None:
        self.path = ring_file()
        self.ring = RingMap.create(self.path, capacity)
        self.writer = RingWriter(self.ring, overflow)
        self.reader = RingReader(RingMap.attach(self.path))
        self.expected: list[bytes] = []  # pushed, not dropped, not yet read
        self.n = 0
        self.dropped = 0

    def teardown(self) -> None:
        if hasattr(self, "ring"):
            self.reader.ring.close()
            self.ring.close()
            self.path.unlink()

    @rule(size=st.one_of(st.integers(0, 64), st.integers(0, 9000), st.integers(20000, 32000)))
    def push(self, size: int) -> None:
        body = body_of(self.n, size)
        self.n += 1
        before = self.ring.words[W_DROPPED]
        self.writer.push(rec.KIND_ROW, self.n, 1.0, body)
        if self.ring.words[W_DROPPED] > before:
            self.dropped += 1
        else:
            self.expected.append(body)

    @rule(budget=st.integers(1, 200_000), release=st.booleans())
    def read(self, budget: int, release: bool) -> None:
        got = read_all(self.reader, budget)
        bodies = [r.body for r in got]
        assert bodies == self.expected[: len(bodies)]
        del self.expected[: len(bodies)]
        seqs = [r.seq for r in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        if release:
            self.reader.release()

    @rule()
    def drain_overflow(self) -> None:
        self.writer.drain_overflow()

    @precondition(lambda self: hasattr(self, "ring"))
    @invariant()
    def counters_agree(self) -> None:
        assert self.ring.words[W_DROPPED] == self.dropped
        assert self.writer.overflow_bytes <= self.ring.words[W_OVERFLOW_PEAK]

    @rule()
    def drain_everything(self) -> None:
        while True:
            self.writer.drain_overflow()
            got = read_all(self.reader)
            self.reader.release()
            assert [r.body for r in got] == self.expected[: len(got)]
            del self.expected[: len(got)]
            if not got and not self.writer.overflow_bytes:
                break
        assert self.expected == []  # nothing pushed and kept is ever lost


RingModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
test_ring_matches_model = RingModel.TestCase


def test_everything_pushed_is_read_once_in_order_after_full_drain() -> None:
    path = ring_file()
    ring = RingMap.create(path, MIN_CAPACITY)
    try:
        writer = RingWriter(ring, overflow_limit=1 << 24)
        reader = RingReader(RingMap.attach(path))
        got: list[bytes] = []
        sent = [body_of(i, (i * 7919) % 5000) for i in range(2000)]
        for i, b in enumerate(sent):
            writer.push(rec.KIND_ROW, i, 0.0, b)
            if i % 13 == 0:
                got += [r.body for r in read_all(reader)]
                reader.release()
        got += drain(writer, reader)
        assert got == sent
        assert ring.words[W_DROPPED] == 0
    finally:
        ring.close()
        path.unlink()


def test_full_ring_and_overflow_drop_newest_and_count_them() -> None:
    path = ring_file()
    ring = RingMap.create(path, MIN_CAPACITY)
    try:
        writer = RingWriter(ring, overflow_limit=8192)
        sent = [body_of(i, 1000) for i in range(200)]  # ~210 KB into 64 KiB + 8 KiB
        for i, b in enumerate(sent):
            writer.push(rec.KIND_ROW, i, 0.0, b)
        dropped = ring.words[W_DROPPED]
        assert dropped > 0
        reader = RingReader(RingMap.attach(path))
        got = drain(writer, reader)
        assert got == sent[: len(got)]  # what survived is the oldest prefix, in order
        assert len(got) + dropped == len(sent)
    finally:
        ring.close()
        path.unlink()


def test_record_larger_than_half_the_ring_is_refused_clearly() -> None:
    path = ring_file()
    ring = RingMap.create(path, MIN_CAPACITY)
    try:
        writer = RingWriter(ring, overflow_limit=1 << 24)
        with pytest.raises(RecordTooLargeError, match="ring_size"):
            writer.push(rec.KIND_ROW, 0, 0.0, b"x" * MIN_CAPACITY)
        writer.push(rec.KIND_ROW, 0, 0.0, b"y" * (MIN_CAPACITY // 2 - 48))  # the limit still fits
        assert writer.last_seq == 1
    finally:
        ring.close()
        path.unlink()


@given(
    sizes=st.lists(st.integers(0, 3000), min_size=2, max_size=40),
    victim=st.integers(0, 10_000),
    offset=st.integers(0, 10_000),
    after=st.integers(1, 5),
)
@settings(max_examples=80, deadline=None)
def test_reader_never_accepts_a_damaged_record_and_resyncs_after_timeout(
    sizes: list[int], victim: int, offset: int, after: int
) -> None:
    path = ring_file()
    ring = RingMap.create(path, MIN_CAPACITY * 2)
    clock = FakeClock()
    try:
        writer = RingWriter(ring, overflow_limit=0)
        positions = []
        sent = []
        for i, size in enumerate(sizes):
            positions.append(ring.words[8] % ring.capacity)
            b = body_of(i, size)
            writer.push(rec.KIND_ROW, i, 0.0, b)
            sent.append(b)
        assume(ring.words[W_DROPPED] == 0)
        v = victim % len(sent)
        rec_size = rec.padded(len(sent[v]))
        flip_at = positions[v] + offset % (rec.HEADER_SIZE + len(sent[v]))
        ring.data[flip_at] ^= 0xFF
        assert rec_size > 0
        reader = RingReader(RingMap.attach(path), clock=clock)
        got = [r.body for r in read_all(reader)]
        assert got == sent[:v]  # everything before the damage, nothing from it on
        clock.now += STUCK_TIMEOUT / 2
        assert read_all(reader) == []  # still waiting: it could be a slow store
        clock.now += STUCK_TIMEOUT
        assert read_all(reader) == []  # gives up on the damaged bytes ...
        assert ring.words[W_SKIPPED_BYTES] > 0
        fresh = [body_of(1000 + i, 10) for i in range(after)]
        for b in fresh:
            writer.push(rec.KIND_ROW, 0, 0.0, b)
        assert [r.body for r in read_all(reader)] == fresh  # ... and resyncs on the next records
    finally:
        ring.close()
        path.unlink()


def test_attach_refuses_a_file_that_is_not_a_ring(tmp_path: Path) -> None:
    p = tmp_path / "junk"
    p.write_bytes(b"x" * (CONTROL_SIZE + MIN_CAPACITY))
    with pytest.raises(ValueError, match="not a runstream ring"):
        RingMap.attach(p)


PRODUCER = textwrap.dedent(
    """
    import struct, sys, time
    from pathlib import Path
    from runstream.ring import RingMap, RingWriter
    ring = RingMap.attach(Path(sys.argv[1]))
    w = RingWriter(ring, overflow_limit=1 << 30)
    n = int(sys.argv[2])
    for i in range(n):
        w.push(3, i, 0.0, struct.pack("<Q", i) * (1 + i % 7))
        if i % 4096 == 0:
            w.drain_overflow()
    while not w.drain_overflow():
        time.sleep(0.001)
    w.close()
    """
)


def iter_bodies(reader: RingReader, ring: RingMap) -> Iterator[rec.Record]:
    while True:
        spans = reader.poll(1 << 20)
        for span in spans:
            yield from rec.iter_records(span.data)
        reader.release()
        if not spans and ring.words[16] and reader.pending <= 0:
            return


@pytest.mark.slow
def test_two_processes_move_a_million_records_intact_and_in_order() -> None:
    n = 1_000_000
    path = ring_file()
    ring = RingMap.create(path, 1 << 20)  # small: forces thousands of wraps and full-ring waits
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, str(path), str(n)])
    try:
        reader = RingReader(RingMap.attach(path))
        expect = 0
        for r in iter_bodies(reader, ring):
            assert r.seq == expect + 1
            assert r.body == struct.pack("<Q", expect) * (1 + expect % 7)
            expect += 1
        assert proc.wait(timeout=120) == 0
        assert expect == n
        assert ring.words[W_DROPPED] == 0
    finally:
        proc.kill()
        proc.wait()
        ring.close()
        path.unlink()


def test_release_frees_only_up_to_a_span_and_never_moves_the_tail_back() -> None:
    """Spans held back for their media stay in the ring until their own batch is journaled."""
    path = ring_file()
    ring = RingMap.create(path, MIN_CAPACITY)
    try:
        writer = RingWriter(ring, overflow_limit=0)
        reader = RingReader(RingMap.attach(path))
        writer.push(rec.KIND_ROW, 0, 0.0, b"a" * 100)
        (first,) = reader.poll(1 << 20)
        writer.push(rec.KIND_ROW, 1, 0.0, b"b" * 100)
        (held,) = reader.poll(1 << 20)
        reader.release(first.end)
        assert ring.words[W_TAIL] == first.end < held.end == reader.cursor
        reader.release(0)  # a span from before: the tail stays
        assert ring.words[W_TAIL] == first.end
        reader.release(held.end)
        assert ring.words[W_TAIL] == held.end
    finally:
        ring.close()
        path.unlink()


def test_push_parts_writes_the_same_record_as_push_of_the_joined_body() -> None:
    path = ring_file()
    ring = RingMap.create(path, MIN_CAPACITY)
    try:
        writer = RingWriter(ring, overflow_limit=1 << 20)
        reader = RingReader(RingMap.attach(path))
        parts = [b"head", memoryview(bytes(range(200))), bytearray(b"tail")]
        joined = b"".join(bytes(p) for p in parts)
        got: list[rec.Record] = []
        for i in range(1000):  # laps the 64 KiB ring: wraps, and the overflow when the reader lags
            writer.push_parts(rec.KIND_MEDIA, i, 1.5, parts)
            if i % 300 == 0:
                got += read_all(reader)
                reader.release()
        while not writer.drain_overflow() or reader.pending:
            got += read_all(reader)
            reader.release()
        assert [r.step for r in got] == list(range(1000))
        assert all(r.body == joined and r.kind == rec.KIND_MEDIA and r.time == 1.5 for r in got)
        assert ring.words[W_DROPPED] == 0
    finally:
        ring.close()
        path.unlink()
