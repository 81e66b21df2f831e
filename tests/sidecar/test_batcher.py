"""Stage 2 of the sidecar, ``Batcher``, on its own: the contract in its docstring and in
docs/batch-format.md.

* A batch is the spans it was given, concatenated: whole records in the record format, byte for
  byte (never re-encoded), with the right count and first/last seq.
* It is due when it reaches ``max_bytes`` (``room()`` says how much more fits) or when its oldest
  record has waited ``max_age`` (by the clock the batcher is given: no sleeping here).
* Over many adds nothing is lost, duplicated or reordered, and a batch is cut as soon as it is
  due, so it overshoots the size limit by less than what the last add brought (by less than one
  record when spans are read within ``room()``, as the sidecar does).  Hypothesis checks both.
* A record larger than the batch size is not split: it goes out whole.

The sidecar's own loop (ring -> batches -> journal) is covered by tests/sidecar/test_sidecar.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstream.format import record as rec
from runstream.format.ring_layout import RingMap
from runstream.ring import RingWriter
from runstream_ingest.sidecar.batcher import Batch, Batcher
from runstream_ingest.sidecar.ring_reader import RingReader, Span


class Clock:
    """A clock the test moves by hand (the batcher's ``clock`` seam)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(seq: int, body_len: int) -> bytes:
    # Bodies differ per seq, so a record moved, dropped or repeated cannot go unnoticed.
    body = bytes((seq + i) % 251 for i in range(body_len))
    return rec.encode(seq, rec.KIND_ROW, seq, 0.5 * seq, body)


def span_of(records: list[bytes], first_seq: int) -> Span:
    return Span(b"".join(records), len(records), first_seq, first_seq + len(records) - 1)


def check_batch(batch: Batch) -> list[rec.Record]:
    """The batch is a gapless run of whole, valid records first_seq..last_seq (strict decode)."""
    got = rec.parse_batch(batch.data, batch.first_seq, batch.last_seq)
    assert batch.count == len(got) == batch.last_seq - batch.first_seq + 1
    return got


# --- the batch: concatenated spans ----------------------------------------------------------------
def test_a_batch_is_its_spans_concatenated_byte_for_byte_with_its_seq_range() -> None:
    records = [record(seq, n) for seq, n in zip(range(7, 13), (0, 1, 7, 8, 100, 3), strict=True)]
    spans = [span_of(records[:1], 7), span_of(records[1:4], 8), span_of(records[4:], 11)]
    b = Batcher(max_bytes=1 << 20, max_age=math.inf, clock=Clock())
    for s in spans:
        b.add(s)
    assert b.count == 6 and b.size == sum(map(len, records))
    batch = b.cut()
    assert batch is not None
    # Concatenation, not re-encoding: the very bytes the spans carried (padding included).
    assert batch.data == b"".join(s.data for s in spans)
    assert (batch.count, batch.first_seq, batch.last_seq) == (6, 7, 12)
    assert [r.seq for r in check_batch(batch)] == list(range(7, 13))


def test_cut_empties_the_batcher_and_the_next_batch_starts_at_the_next_seq() -> None:
    b = Batcher(max_bytes=1 << 20, max_age=math.inf, clock=Clock())
    assert b.cut() is None  # nothing to cut: no empty batch (an empty frame is invalid)
    b.add(span_of([record(1, 10), record(2, 10)], 1))
    first = b.cut()
    assert first is not None and (first.first_seq, first.last_seq) == (1, 2)
    assert (b.size, b.count, b.room(), b.due()) == (0, 0, 1 << 20, False)
    assert b.cut() is None
    b.add(span_of([record(3, 5)], 3))
    second = b.cut()
    assert second is not None and (second.first_seq, second.last_seq, second.count) == (3, 3, 1)
    assert second.data == record(3, 5)


def test_a_span_without_records_adds_nothing() -> None:
    # The ring reader hands out an empty span when it only skipped records an earlier sidecar
    # journaled: it must neither open a batch nor start its age.
    clock = Clock()
    b = Batcher(max_bytes=1 << 20, max_age=0.1, clock=clock)
    b.add(Span(b"", 0, 0, 0))
    assert (b.size, b.count, b.due(), b.cut()) == (0, 0, False, None)
    clock.now += 10.0
    b.add(span_of([record(5, 0)], 5))
    assert not b.due(), "the age counts from the first record, not from an empty span"
    batch = b.cut()
    assert batch is not None and (batch.first_seq, batch.last_seq) == (5, 5)


# --- cut by size --------------------------------------------------------------------------------
def test_a_batch_is_due_once_it_reaches_the_size_limit_and_room_says_how_far_off_it_is() -> None:
    r = record(1, 56)  # 96 bytes
    assert len(r) == 96
    b = Batcher(max_bytes=3 * 96, max_age=math.inf, clock=Clock())
    assert b.room() == 288
    b.add(span_of([r], 1))
    assert (b.room(), b.due()) == (192, False)
    b.add(span_of([record(2, 56)], 2))
    assert (b.room(), b.due()) == (96, False)
    b.add(span_of([record(3, 56)], 3))  # exactly at the limit: due
    assert (b.size, b.room(), b.due()) == (288, 0, True)
    b.add(span_of([record(4, 56)], 4))  # past it (the caller was late): still due, room 0
    assert (b.size, b.room(), b.due()) == (384, 0, True)
    batch = b.cut()
    assert batch is not None and batch.count == 4
    check_batch(batch)


# --- cut by age ---------------------------------------------------------------------------------
def test_a_batch_is_due_when_its_oldest_record_reaches_the_age_limit() -> None:
    # Times and ages are exact binary fractions, so the boundary is tested exactly.
    clock = Clock(50.0)
    b = Batcher(max_bytes=1 << 20, max_age=0.25, clock=clock)
    clock.now += 5.0
    assert not b.due(), "an empty batcher is never due, however long it waited"
    b.add(span_of([record(1, 8)], 1))  # opens the batch at t=55.0
    clock.now = 55.125
    b.add(span_of([record(2, 8)], 2))  # a later record does not restart the age
    clock.now = 55.24
    assert not b.due()
    clock.now = 55.25
    assert b.due()
    batch = b.cut()
    assert batch is not None and (batch.first_seq, batch.last_seq) == (1, 2)
    # The next batch is aged from its own first record, not from the one just cut.
    clock.now = 70.0
    b.add(span_of([record(3, 8)], 3))
    clock.now = 70.125
    assert not b.due()
    clock.now = 70.25
    assert b.due()


def test_a_zero_age_limit_makes_every_non_empty_batch_due_at_once() -> None:
    b = Batcher(max_bytes=1 << 20, max_age=0.0, clock=Clock())
    assert not b.due()
    b.add(span_of([record(1, 0)], 1))
    assert b.due()


# --- a record over the batch size ---------------------------------------------------------------
def test_a_record_larger_than_the_batch_size_is_cut_whole() -> None:
    big = record(2, 5000)
    b = Batcher(max_bytes=256, max_age=math.inf, clock=Clock())
    b.add(span_of([record(1, 16)], 1))
    assert b.room() > 0  # the sidecar reads at least one whole record into the room left ...
    b.add(span_of([big], 2))  # ... which may be a record far over the limit: never split
    assert b.due() and b.room() == 0
    batch = b.cut()
    assert batch is not None and batch.data == record(1, 16) + big
    assert [len(r.body) for r in check_batch(batch)] == [16, 5000]
    # Alone in a batch too.
    b.add(span_of([record(3, 9000)], 3))
    alone = b.cut()
    assert alone is not None and alone.data == record(3, 9000) and alone.count == 1


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[RingMap]:
    r = RingMap.create(tmp_path / "ring", 1 << 16)
    yield r
    r.close()


def test_ring_spans_read_within_room_make_batches_of_whole_records_a_big_one_included(
    ring: RingMap,
) -> None:
    """Stages 1 and 2 driven the way the sidecar's ``drain_once`` drives them: poll at most
    ``max(room(), 1)`` bytes, add, cut when full.  A record over the batch size (here 10 KiB
    against 1 KiB batches) comes out whole, in seq order with its neighbours."""
    w = RingWriter(ring, overflow_limit=1 << 20)
    sizes = [100] * 12 + [10_000] + [30] * 40 + [3000, 0, 0]
    for i, n in enumerate(sizes):
        w.push(rec.KIND_ROW, i, float(i), bytes([i % 256]) * n)
    reader = RingReader(ring)
    b = Batcher(max_bytes=1024, max_age=math.inf, clock=Clock())
    batches: list[Batch] = []
    while reader.pending:
        for span in reader.poll(max(b.room(), 1)):
            b.add(span)
            if b.size >= b.max_bytes:
                batches.append(b.cut())  # type: ignore[arg-type]
    tail = b.cut()
    if tail is not None:
        batches.append(tail)
    got = [r for batch in batches for r in check_batch(batch)]
    assert [len(r.body) for r in got] == sizes
    assert [r.seq for r in got] == list(range(1, len(sizes) + 1))
    for batch in batches[:-1]:
        last_record = rec.padded(len(check_batch(batch)[-1].body))
        assert len(batch.data) - last_record < 1024, "a record was added to a batch already full"
    assert any(len(batch.data) > 10_000 for batch in batches)


# --- properties ---------------------------------------------------------------------------------
@st.composite
def add_patterns(draw: st.DrawFn) -> tuple[list[int], list[int], list[float]]:
    """Record body sizes, how many records each add carries, and the clock step before each add."""
    sizes = draw(st.lists(st.integers(0, 700), min_size=1, max_size=120))
    groups: list[int] = []
    left = len(sizes)
    while left:
        n = draw(st.integers(1, min(left, 12)))
        groups.append(n)
        left -= n
    steps = draw(st.lists(st.floats(0.0, 0.3), min_size=len(groups), max_size=len(groups)))
    return sizes, groups, steps


@settings(max_examples=300, deadline=None)
@given(
    pattern=add_patterns(),
    max_bytes=st.integers(40, 4096),
    max_age=st.sampled_from([0.0, 0.05, 0.25, 1.0, math.inf]),
)
def test_batches_lose_nothing_repeat_nothing_and_are_cut_as_soon_as_due(
    pattern: tuple[list[int], list[int], list[float]], max_bytes: int, max_age: float
) -> None:
    sizes, groups, steps = pattern
    records = [record(seq, n) for seq, n in enumerate(sizes, start=1)]
    clock = Clock()
    b = Batcher(max_bytes, max_age, clock)
    batches: list[Batch] = []
    last_add: list[int] = []  # bytes brought by the add that made each batch due
    opened = 0.0  # when the open batch got its first record (the model of "oldest record")
    i = 0
    for n, dt in zip(groups, steps, strict=True):
        clock.now += dt
        if not b.count:
            opened = clock.now
        span = span_of(records[i : i + n], i + 1)
        i += n
        b.add(span)
        # due() against the model: full, or its oldest record is max_age old.
        expect_due = b.size >= max_bytes or clock.now - opened >= max_age
        assert b.due() == expect_due
        assert b.room() == max(max_bytes - b.size, 0)
        if b.due():
            batches.append(b.cut())  # type: ignore[arg-type]
            last_add.append(len(span.data))
    tail = b.cut()  # the sidecar flushes what is left at exit
    if tail is not None:
        batches.append(tail)

    assert b"".join(batch.data for batch in batches) == b"".join(records)
    assert sum(batch.count for batch in batches) == len(records)
    seq = 1
    for batch in batches:
        assert batch.first_seq == seq, "seqs are contiguous from one batch to the next"
        check_batch(batch)
        seq = batch.last_seq + 1
    for batch, added in zip(batches, last_add, strict=False):
        # Cut as soon as due: before its last add the batch was below the limit.
        assert len(batch.data) - added < max_bytes


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=150),
    published=st.lists(st.integers(1, 40), min_size=1, max_size=40),
    max_bytes=st.integers(1, 8192),
)
def test_batches_read_within_room_overshoot_the_size_limit_by_less_than_one_record(
    sizes: list[int], published: list[int], max_bytes: int
) -> None:
    """The sidecar reads a span of at most ``max(room(), 1)`` bytes (whole records: the one that
    crosses the budget is taken whole) and cuts when the batch is full.  So every batch but the
    last is at least ``max_bytes``, and its records all start below ``max_bytes``."""
    records = [record(seq, n) for seq, n in enumerate(sizes, start=1)]
    b = Batcher(max_bytes, math.inf, Clock())
    batches: list[Batch] = []
    i = 0
    polls = iter(published * (len(records) + 1))
    while i < len(records):
        # One poll: what the producer has published so far (``ready`` records), within budget.
        budget, ready, taken = max(b.room(), 1), next(polls), 0
        j = i
        while j < len(records) and j - i < ready and taken < budget:
            taken += len(records[j])
            j += 1
        b.add(span_of(records[i:j], i + 1))
        i = j
        if b.size >= b.max_bytes:
            batches.append(b.cut())  # type: ignore[arg-type]
    tail = b.cut()
    if tail is not None:
        batches.append(tail)

    assert b"".join(batch.data for batch in batches) == b"".join(records)
    for k, batch in enumerate(batches):
        got = check_batch(batch)
        if k < len(batches) - 1 or len(batch.data) >= max_bytes:
            assert len(batch.data) >= max_bytes
            assert len(batch.data) - rec.padded(len(got[-1].body)) < max_bytes
