"""Reading a damaged journal: whatever the damage, the reader returns an in-order subset of what
was written that includes every frame the damage did not touch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runstream.format.journal_read import JournalReader, ScannedFrame, scan_segment
from runstream_ingest.sidecar.journal import JournalWriter
from tests.support.crashfs import CrashFileSystem
from tests.support.frames import Ledger, bodies_st, codec_st

D = "/run/journal"


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(st.tuples(bodies_st, codec_st), min_size=1, max_size=10),
    segment_bytes=st.sampled_from([150, 600, 1 << 20]),
    chunk_size=st.sampled_from([5, 64, 1 << 20]),
    data=st.data(),
)
def test_reader_returns_ordered_subset_with_every_intact_frame_after_cut_and_flips(
    batches: list[tuple[list[bytes], int]], segment_bytes: int, chunk_size: int, data: st.DataObject
) -> None:
    fs = CrashFileSystem()
    ledger = Ledger()
    writer = JournalWriter(D, fs, segment_bytes=segment_bytes)
    writer.open()
    for bodies, codec in batches:
        b = ledger.batch(bodies, codec)
        writer.append(b.frame, b.first_seq, b.last_seq)
    assert writer.close()

    # Where every frame landed: (segment, start, end, seqs).
    names = sorted(fs.listdir(D))
    layout = []
    for name in names:
        for item in scan_segment(fs, f"{D}/{name}"):
            assert isinstance(item, ScannedFrame)
            end = item.offset + 32 + item.header.payload_len
            seqs = range(item.header.first_seq, item.header.last_seq + 1)
            layout.append((name, item.offset, end, seqs))

    # Damage one segment: cut it somewhere, then flip some bytes before the cut.
    victim = data.draw(st.sampled_from(names), label="victim")
    content = bytearray(fs.contents(f"{D}/{victim}"))
    cut = data.draw(st.integers(0, len(content)), label="cut")
    del content[cut:]
    flips = data.draw(st.sets(st.integers(0, max(cut - 1, 0)), max_size=6), label="flips") if cut else set()
    for pos in flips:
        content[pos] ^= data.draw(st.integers(1, 255), label="xor")
    fs.overwrite(f"{D}/{victim}", bytes(content))
    first_damage = min([cut, *flips])

    reader = JournalReader(D, fs, chunk_size=chunk_size)
    got = ledger.check_subsequence(reader.iter_records())

    intact = [
        seq
        for name, start, end, seqs in layout
        if name != victim or (end <= cut and not any(start <= p < end for p in flips))
        for seq in seqs
    ]
    prefix = [
        seq
        for name, _start, end, seqs in layout
        if name < victim or (name == victim and end <= first_damage)
        for seq in seqs
    ]
    assert set(prefix) <= set(intact)
    assert set(intact) <= set(got), "a frame the damage did not touch was not returned"
    boundaries = {0} | {edge for name, start, end, _ in layout if name == victim for edge in (start, end)}
    assert (reader.skipped_bytes == 0) == (not flips and cut in boundaries)


@settings(max_examples=50, deadline=None)
@given(batches=st.lists(bodies_st, min_size=2, max_size=8), data=st.data())
def test_reader_sees_a_prefix_of_a_journal_being_written(
    batches: list[list[bytes]], data: st.DataObject
) -> None:
    """A reader running while the writer appends (even mid-frame, simulated with a torn copy)
    returns a prefix of the records, never garbage."""
    fs = CrashFileSystem()
    ledger = Ledger()
    writer = JournalWriter(D, fs)
    writer.open()
    for bodies in batches:
        b = ledger.batch(bodies)
        writer.append(b.frame, b.first_seq, b.last_seq)
        got = ledger.check_subsequence(JournalReader(D, fs).iter_records())
        assert got == list(range(1, b.last_seq + 1))
    path = f"{D}/seg-000001.rsj"
    content = fs.contents(path)
    torn = content[: data.draw(st.integers(0, len(content)))]
    fs.overwrite(path, torn)
    got = ledger.check_subsequence(JournalReader(D, fs).iter_records())
    assert got == list(range(1, len(got) + 1))
