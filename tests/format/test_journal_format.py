"""The journal's byte format (docs/journal-format.md): layout, crc coverage, limits, codecs."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from runstream.format import frame as frame_format
from runstream.format import record as rec
from runstream.format.frame import (
    CODEC_NONE,
    CODEC_ZSTD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME_PAYLOAD,
    TYPE_BATCH,
    encode_frame,
    frame_crc,
    parse_segment_name,
    segment_name,
)
from runstream.format.journal_read import decode_payload, read_journal
from tests.support import DOCS
from tests.support.crashfs import CrashFileSystem
from tests.support.frames import make_batch

DOC = DOCS / "journal-format.md"
D = "/j"


def journal_of(*segments: bytes) -> CrashFileSystem:
    """A journal directory whose segments hold exactly these bytes."""
    fs = CrashFileSystem()
    fs.mkdir(D)
    for i, content in enumerate(segments, 1):
        path = f"{D}/{segment_name(i)}"
        fs.close(fs.create_excl(path))
        fs.overwrite(path, content)
    return fs


def seqs_of(fs: CrashFileSystem) -> list[int]:
    return [r.seq for r in read_journal(D, fs).iter_records()]


def worked_example() -> bytes:
    record = rec.encode(1, rec.KIND_ROW, 7, 1.5, rec.pack_body({"loss": 0.5}))
    return encode_frame(TYPE_BATCH, CODEC_NONE, 1, 1, record)


def test_header_fields_sit_at_the_documented_offsets() -> None:
    frame = encode_frame(TYPE_BATCH, CODEC_ZSTD, 5, 9, b"xyz")
    assert HEADER_SIZE == 32
    assert frame[0:4] == b"\x89RSJ" == MAGIC
    assert frame[4:8] == bytes([1, TYPE_BATCH, CODEC_ZSTD, 0])
    assert struct.unpack_from("<IIQQ", frame, 8) == (3, frame_crc(frame, 3), 5, 9)
    assert frame[32:] == b"xyz"


def test_doc_worked_example_is_what_encode_frame_writes() -> None:
    """docs/journal-format.md's hex dump must stay true."""
    doc = DOC.read_text()
    dump = re.search(r"## Worked example.*?```\n(.*?)```", doc, re.S)
    assert dump is not None
    hex_bytes = "".join(line[6:] for line in dump.group(1).splitlines())
    assert bytes.fromhex(hex_bytes) == worked_example()
    crc = struct.unpack_from("<I", worked_example(), 12)[0]
    assert f"crc = {crc:#010x}" in doc


def test_crc_covers_header_around_itself_and_payload() -> None:
    frame = worked_example()
    expected = rec.crc32c(frame[32:], rec.crc32c(frame[16:32], rec.crc32c(frame[:12])))
    assert struct.unpack_from("<I", frame, 12)[0] == expected


def test_reader_rejects_frame_with_any_single_byte_changed() -> None:
    """Every byte, crc included, is protected: a frame with one changed byte is never
    returned, is counted as skipped, and the next frame is still found."""
    first, second = make_batch(1, [b"a" * 10]).frame, make_batch(2, [b"b"]).frame
    for pos in range(len(first)):
        damaged = bytearray(first)
        damaged[pos] ^= 0x40
        fs = journal_of(bytes(damaged) + second)
        reader = read_journal(D, fs)
        assert [r.seq for r in reader.iter_records()] == [2], pos
        assert reader.skipped_bytes == len(first), pos
        assert reader.damaged_regions == 1


def test_reader_skips_valid_frame_of_unknown_type_without_calling_it_damage() -> None:
    unknown = encode_frame(77, CODEC_NONE, 0, 0, b"future")
    fs = journal_of(make_batch(1, [b"x"]).frame + unknown + make_batch(2, [b"y"]).frame)
    reader = read_journal(D, fs)
    assert [r.seq for r in reader.iter_records()] == [1, 2]
    assert (reader.unknown_frames, reader.skipped_bytes, reader.frames) == (1, 0, 2)


def test_reader_treats_unknown_version_as_damage() -> None:
    frame = bytearray(make_batch(1, [b"x"]).frame)
    frame[4] = 2
    struct.pack_into("<I", frame, 12, frame_crc(frame, len(frame) - HEADER_SIZE))
    reader = read_journal(D, journal_of(bytes(frame) + make_batch(2, [b"y"]).frame))
    assert [r.seq for r in reader.iter_records()] == [2]
    assert reader.skipped_bytes == len(frame)


@pytest.mark.parametrize("claimed", [MAX_FRAME_PAYLOAD + 1, 2**32 - 1, 10**6])
def test_reader_survives_header_claiming_implausible_or_missing_length(claimed: int) -> None:
    """A header whose length is over the limit, or runs past the end of the file, is damage;
    the reader resyncs and finds the frame that follows."""
    bogus = HEADER.pack(MAGIC, 1, TYPE_BATCH, CODEC_NONE, 0, claimed, 0, 1, 1)
    good = make_batch(1, [b"ok"]).frame
    reader = read_journal(D, journal_of(bogus + good))
    assert [r.seq for r in reader.iter_records()] == [1]
    assert reader.skipped_bytes == len(bogus)


def test_reader_finds_frame_behind_garbage_full_of_false_magics() -> None:
    false_start = MAGIC + bytes([1, 1, 0, 0]) + struct.pack("<I", 8)
    garbage = (false_start + b"\x00" * 20) * 5 + MAGIC + MAGIC[:3]
    frames = make_batch(1, [b"a"]).frame + garbage + make_batch(2, [b"b"]).frame
    reader = read_journal(D, journal_of(frames))
    assert [r.seq for r in reader.iter_records()] == [1, 2]
    assert reader.skipped_bytes == len(garbage)
    assert reader.damaged_regions == 1


def test_reader_counts_torn_last_frame_as_torn_tail() -> None:
    good, torn = make_batch(1, [b"a"]).frame, make_batch(2, [b"b" * 50]).frame[:-7]
    reader = read_journal(D, journal_of(good + torn))
    assert [r.seq for r in reader.iter_records()] == [1]
    assert reader.torn_tail_bytes == reader.skipped_bytes == len(torn)


def test_reader_refuses_zstd_payload_declaring_huge_content_size() -> None:
    """Without the frame_content_size check, zstd would try to allocate 1 TiB (MemoryError)."""
    block = ((5 << 3) | 1).to_bytes(3, "little") + b"abcde"  # last block, raw, 5 bytes
    payload = bytes.fromhex("28b52ffd") + b"\xe0" + struct.pack("<Q", 2**40) + block
    assert zstandard.frame_content_size(payload) == 2**40
    frame = encode_frame(TYPE_BATCH, CODEC_ZSTD, 1, 1, payload)
    reader = read_journal(D, journal_of(frame + make_batch(2, [b"y"]).frame))
    assert [r.seq for r in reader.iter_records()] == [2]
    assert reader.bad_frames == 1
    assert reader.skipped_bytes == len(frame)


def test_reader_bounds_decompressed_size_declared_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = b"z" * 5000
    declared = zstandard.ZstdCompressor().compress(batch)
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(batch)
    assert zstandard.frame_content_size(undeclared) == -1
    for payload in (declared, undeclared):
        assert decode_payload(CODEC_ZSTD, payload) == batch
    monkeypatch.setattr(frame_format, "MAX_BATCH", 4999)
    for payload in (declared, undeclared):
        assert decode_payload(CODEC_ZSTD, payload) is None
    assert decode_payload(CODEC_NONE, batch) is None


@settings(max_examples=150, deadline=None)
@given(codec=st.integers(0, 255), payload=st.binary(max_size=64))
def test_reader_skips_crc_valid_frame_whose_payload_does_not_decode(codec: int, payload: bytes) -> None:
    """A frame can only be valid and undecodable through a writer bug; the reader must still
    not raise, and must return only records that were really encoded."""
    if codec == CODEC_ZSTD and payload[:1] != b"\x28":
        payload = bytes.fromhex("28b52ffd") + payload  # get past the magic, into the decoder
    frame = encode_frame(TYPE_BATCH, codec, 1, 1, payload)
    reader = read_journal(D, journal_of(frame + make_batch(2, [b"y"]).frame))
    got = list(reader.iter_records())
    assert got[-1].seq == 2
    assert reader.frames + reader.bad_frames == 2


@settings(max_examples=150, deadline=None)
@given(content=st.binary(max_size=300), tail=st.booleans())
def test_reader_never_raises_on_arbitrary_bytes(content: bytes, tail: bool) -> None:
    good = make_batch(1, [b"x"]).frame
    fs = journal_of(content + good if tail else content)
    got = seqs_of(fs)
    assert got == ([1] if tail else [])


def test_reader_reads_segments_in_numeric_order_and_ignores_other_files() -> None:
    fs = CrashFileSystem()
    fs.mkdir(D)
    for seq, name in enumerate(["seg-000009.rsj", "seg-000010.rsj", "seg-999999.rsj", "seg-1000000.rsj"], 1):
        path = f"{D}/{name}"
        fs.close(fs.create_excl(path))
        fs.overwrite(path, make_batch(seq, [b"x"]).frame)
    for other in ["seg-000001.rsj.tmp", "marker", "seg-1.rsj"]:
        fs.close(fs.create_excl(f"{D}/{other}"))
        fs.overwrite(f"{D}/{other}", make_batch(100, [b"x"]).frame)
    reader = read_journal(D, fs)
    assert [r.seq for r in reader.iter_records()] == [1, 2, 3, 4]
    assert reader.segments == 4
    assert parse_segment_name("seg-1000000.rsj") == 1000000
    assert parse_segment_name("seg-000001.rsj.tmp") is None


def test_reader_returns_each_record_once_when_frames_were_rewritten() -> None:
    a, b, c = make_batch(1, [b"1", b"2"]), make_batch(3, [b"3"]), make_batch(4, [b"4", b"5"])
    reader = read_journal(D, journal_of(a.frame + b.frame, b.frame + c.frame))
    assert [r.seq for r in reader.iter_records()] == [1, 2, 3, 4, 5]
    assert (reader.duplicate_records, reader.frames, reader.records) == (1, 4, 5)


def test_reader_returns_a_record_whose_only_copy_is_a_rewrite_behind_newer_frames() -> None:
    """A segment whose fsync failed may keep a later frame and lose an earlier one, whose only
    surviving copy is then the rewrite in the next segment: seq order, not file order, rules."""
    a, b, c = make_batch(1, [b"1"]), make_batch(2, [b"2"]), make_batch(3, [b"3"])
    lost_a = bytes(len(a.frame))  # zeros where the failed pages were
    reader = read_journal(D, journal_of(lost_a + b.frame, a.frame + b.frame + c.frame))
    assert [r.seq for r in reader.iter_records()] == [1, 2, 3]
    assert (reader.duplicate_records, reader.skipped_bytes) == (1, len(a.frame))


def test_reader_skips_frames_that_changed_after_it_indexed_them() -> None:
    """Frames are read twice (index, then load); one cut away in between (a writer truncating a
    torn tail, say) is skipped, not trusted from the first read."""
    a, b = make_batch(1, [b"1"]), make_batch(2, [b"2"])
    fs = journal_of(a.frame + b.frame)
    reader = read_journal(D, fs)
    frames = reader.iter_frames()
    assert next(frames).first_seq == 1
    fs.overwrite(f"{D}/seg-000001.rsj", a.frame)
    assert list(frames) == []
    assert reader.bad_frames == 1


def test_reader_of_missing_directory_is_an_empty_journal(tmp_path: Path) -> None:
    reader = read_journal(tmp_path / "nope")
    assert list(reader.iter_records()) == []
    assert reader.health()["segments"] == 0
    assert list(read_journal("/nope", CrashFileSystem()).iter_frames()) == []


def test_encode_frame_refuses_what_a_reader_would_call_damage() -> None:
    with pytest.raises(ValueError):
        encode_frame(TYPE_BATCH, CODEC_NONE, 5, 4, b"")
    with pytest.raises(ValueError):
        encode_frame(TYPE_BATCH, CODEC_NONE, 1, 2**64, b"")
    with pytest.raises(ValueError):
        encode_frame(TYPE_BATCH, CODEC_NONE, 1, 1, bytes(MAX_FRAME_PAYLOAD + 1))
