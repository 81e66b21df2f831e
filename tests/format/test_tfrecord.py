"""TFRecord framing of TensorBoard event files (docs/tensorboard.md): read as TensorBoard writes
it, tailed while it is written, and, whatever the damage, every record before it read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstream.tensorboard.tfrecord import HEADER, TFRecordReader, frame

payloads_st = st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=12)


def write(path: Path, payloads: list[bytes]) -> list[tuple[int, int]]:
    """Frame ``payloads`` into ``path``; each record's (start, end) byte range."""
    spans, out, pos = [], b"", 0
    for p in payloads:
        rec = frame(p)
        spans.append((pos, pos + len(rec)))
        out += rec
        pos += len(rec)
    path.write_bytes(out)
    return spans


def test_frames_are_byte_identical_to_tensorboards_own_writer(tmp_path: Path) -> None:
    from tensorboard.summary.writer.record_writer import RecordWriter

    payloads = [b"", b"x", b"event bytes" * 50]
    theirs = tmp_path / "theirs"
    with open(theirs, "wb") as f:
        w = RecordWriter(f)
        for p in payloads:
            w.write(p)
        w.flush()
    assert theirs.read_bytes() == b"".join(frame(p) for p in payloads)
    reader = TFRecordReader(theirs)
    assert list(reader.read(final=True)) == payloads
    assert (reader.stats.records, reader.stats.damaged) == (3, 0)


def test_a_file_being_written_is_read_once_as_each_record_completes(tmp_path: Path) -> None:
    payloads = [bytes([i]) * (i * 37) for i in range(8)]
    data = b"".join(frame(p) for p in payloads)
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(b"")
    reader = TFRecordReader(path)
    got: list[bytes] = []
    for cut in range(0, len(data) + 1, 13):  # the writer appends 13 bytes at a time
        path.write_bytes(data[:cut])
        got.extend(reader.read())
    path.write_bytes(data)
    got.extend(reader.read())
    assert got == payloads
    assert (reader.stats.damaged, reader.stats.skipped_bytes, reader.offset) == (0, 0, len(data))


def test_limit_stops_and_the_next_call_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write(path, [b"a", b"b", b"c"])
    reader = TFRecordReader(path)
    assert list(reader.read(limit=2)) == [b"a", b"b"]
    assert list(reader.read(limit=2)) == [b"c"]
    assert list(reader.read()) == []


def test_a_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert list(TFRecordReader(tmp_path / "nope").read(final=True)) == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=payloads_st, data=st.data())
def test_damage_loses_only_what_it_touches_and_is_counted(
    tmp_path: Path, payloads: list[bytes], data: st.DataObject
) -> None:
    path = tmp_path / "events.out.tfevents.damaged"
    spans = write(path, payloads)
    orig = path.read_bytes()
    raw = bytearray(orig)
    kind = data.draw(st.sampled_from(["flip", "cut", "zeros"]), label="kind")
    at = data.draw(st.integers(0, len(raw) - 1), label="at")
    if kind == "cut":
        del raw[at:]
        lost = {i for i, (s, e) in enumerate(spans) if e > at}
        # Only a record cut part-way leaves bytes to count: a cut between records reads as a
        # shorter, intact file.
        damage_seen = at not in {s for s, _ in spans}
    else:
        if kind == "flip":
            raw[at] ^= data.draw(st.integers(1, 255), label="xor")
        else:
            n = data.draw(st.integers(1, 40), label="n")
            raw[at : at + n] = bytes(len(raw[at : at + n]))
        lost = {i for i, (s, e) in enumerate(spans) if raw[s:e] != orig[s:e]}
        damage_seen = bool(lost)
    path.write_bytes(bytes(raw))

    reader = TFRecordReader(path)
    got = list(reader.read(final=True))

    # Every record wholly before the damage is read, in order, as it was written.
    first = min(lost, default=len(payloads))
    assert got[:first] == payloads[:first]
    # Nothing is made up: what was read is an in-order selection of what was written.
    it = iter(payloads)
    assert all(any(g == p for p in it) for g in got)
    # Damaged records are not read back (their crc fails), and the damage is counted.
    assert len(got) <= len(payloads) - len(lost)
    assert (reader.stats.damaged > 0) == damage_seen
    if kind != "cut":  # the reader finds its way past the damage: every intact record is read
        assert got == [p for i, p in enumerate(payloads) if i not in lost]
    assert reader.offset == len(raw)


@pytest.mark.parametrize("where", ["length", "length crc", "data crc"])
def test_a_damaged_record_in_the_middle_is_skipped_and_the_rest_read(tmp_path: Path, where: str) -> None:
    path = tmp_path / "f"
    payloads = [b"first", b"second record", b"third"]
    spans = write(path, payloads)
    raw = bytearray(path.read_bytes())
    start, end = spans[1]
    raw[{"length": start, "length crc": start + 9, "data crc": end - 1}[where]] ^= 0xFF
    path.write_bytes(bytes(raw))
    reader = TFRecordReader(path)
    assert list(reader.read(final=True)) == [b"first", b"third"]
    assert (reader.stats.damaged, reader.stats.skipped_bytes) == (1, end - start)


def test_a_cut_short_last_record_is_waited_for_then_counted_when_final(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write(path, [b"kept", b"cut short"])
    raw = path.read_bytes()
    path.write_bytes(raw[:-3])
    reader = TFRecordReader(path)
    assert list(reader.read()) == [b"kept"]  # a writer may still be writing: no damage yet
    assert reader.stats.damaged == 0 and reader.offset == len(frame(b"kept"))
    assert list(reader.read(final=True)) == []
    assert reader.stats.truncated and reader.stats.damaged == 1
    assert reader.stats.skipped_bytes == len(raw) - 3 - len(frame(b"kept"))
    assert HEADER == 12
