"""Reading a journal back: frames in seq order, records deduplicated by seq.

A journal on disk may hold anything a crash or a failing disk leaves behind: a torn frame at the
end of a segment, a garbage tail, flipped bits, zeroed ranges, frames written twice (a frame is
rewritten into a fresh segment after a failed fsync), and so frames out of seq order (a failed
segment may keep a later frame and lose an earlier one, whose only copy is then in the
rewrite).  The reader's rules (docs/journal-format.md, "Reading") are:

* A frame is trusted only when its magic, version, length bound and CRC-32C all check out; then
  its payload is decompressed under a size bound.
* Anything else is damage: advance ONE byte and search for the next magic.  So damage costs the
  frames it touches and nothing more, and a record is never returned unless it was written.
* Frames are taken in order of their first seq (journal order among equals), and a record whose
  seq is not above the highest already returned is a duplicate and is skipped.  So records come
  out once each, in strictly increasing seq, wherever their surviving copy lies.
* Damaged input never raises.  An I/O error reading a segment ends that segment (counted in
  ``read_errors``); a missing directory is an empty journal.

Reading is two passes: the first scans every segment in chunks, validating frames and keeping a
small index entry per frame (seqs, place); the second reads the chosen frames one at a time, in
seq order, checking them again.  Memory is about one chunk, one frame and the index.

Concurrency contract: a ``JournalReader`` belongs to one thread.  Reading a journal that a writer
is appending to is safe and sees a prefix of it (a frame being written looks like a torn tail).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import NamedTuple

import zstandard

from runstream.format import frame as _fmt
from runstream.format import record as records
from runstream.format.frame import (
    CODEC_NONE,
    CODEC_ZSTD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    TYPE_BATCH,
    VERSION,
    frame_crc,
)
from runstream.format.fs import FileSystem, OsFileSystem

__all__ = [
    "Damage",
    "Frame",
    "FrameHeader",
    "JournalReader",
    "ScannedFrame",
    "read_journal",
    "record_fault",
    "scan_segment",
    "split_storable",
]

CHUNK_SIZE = 1 << 20


class FrameHeader(NamedTuple):
    type: int
    codec: int
    flags: int
    payload_len: int
    crc: int
    first_seq: int
    last_seq: int


class ScannedFrame(NamedTuple):
    """A frame whose header and CRC check out.  ``payload`` is a view into the scanner's buffer:
    valid until the scan is advanced."""

    offset: int
    header: FrameHeader
    payload: memoryview


class Damage(NamedTuple):
    """A byte range of a segment that belongs to no valid frame; ``tail``: it runs to the end."""

    offset: int
    length: int
    tail: bool


class Frame(NamedTuple):
    first_seq: int
    last_seq: int
    type: int
    codec: int
    batch: bytes  # the decompressed payload
    segment: str  # file name, for tools
    offset: int


def scan_segment(fs: FileSystem, path: str, chunk_size: int = CHUNK_SIZE) -> Iterator[ScannedFrame | Damage]:
    """Every valid frame of one segment, and every damaged range between them, in file order.
    Validates the CRC but does not decode payloads.  Raises OSError only for I/O errors."""
    fd = fs.open_read(path)
    try:
        yield from _Scan(fs, fd, chunk_size).run()
    finally:
        fs.close(fd)


class _Scan:
    """A window over one segment: ``buf`` holds file bytes from offset ``base``; ``pos`` is the
    scan position inside ``buf``."""

    def __init__(self, fs: FileSystem, fd: int, chunk_size: int) -> None:
        self.fs, self.fd, self.chunk = fs, fd, chunk_size
        self.buf = b""
        self.base = 0
        self.pos = 0
        self.eof = False

    def need(self, n: int) -> bool:
        """Make ``n`` bytes available from ``pos``; False when the file ends first."""
        while len(self.buf) - self.pos < n and not self.eof:
            have = len(self.buf) - self.pos
            data = self.fs.read_at(self.fd, max(self.chunk, n - have), self.base + len(self.buf))
            if not data:
                self.eof = True
                break
            # Drop what was scanned already; the copy is of the unscanned rest only.
            self.buf = self.buf[self.pos :] + data
            self.base += self.pos
            self.pos = 0
        return len(self.buf) - self.pos >= n

    def run(self) -> Iterator[ScannedFrame | Damage]:
        damage_at: int | None = None  # file offset where the current damaged run started
        while self.need(HEADER_SIZE):
            buf, i = self.buf, self.pos
            at = self.base + i
            if buf[i : i + 4] != MAGIC:
                if damage_at is None:
                    damage_at = at
                j = buf.find(MAGIC, i + 1)
                # Not found: skip all but the last 3 bytes, which may begin a magic.
                self.pos = j if j >= 0 else max(i + 1, len(buf) - 3)
                continue
            _, version, ftype, codec, flags, plen, crc, first, last = HEADER.unpack_from(buf, i)
            if (
                version != VERSION
                or plen > _fmt.MAX_FRAME_PAYLOAD
                or first > last
                or not self.need(HEADER_SIZE + plen)  # runs past the end: torn, or not a frame
                or frame_crc(memoryview(self.buf)[self.pos :], plen) != crc
            ):
                if damage_at is None:
                    damage_at = at
                self.pos += 1  # need() may have moved the window; pos still points at the magic
                continue
            if damage_at is not None:
                yield Damage(damage_at, at - damage_at, False)
                damage_at = None
            i = self.pos
            header = FrameHeader(ftype, codec, flags, plen, crc, first, last)
            yield ScannedFrame(at, header, memoryview(self.buf)[i + HEADER_SIZE : i + HEADER_SIZE + plen])
            self.pos = i + HEADER_SIZE + plen
        end = self.base + len(self.buf)
        if damage_at is None and self.pos < len(self.buf):
            damage_at = self.base + self.pos
        if damage_at is not None:
            yield Damage(damage_at, end - damage_at, True)


def decode_payload(codec: int, payload: bytes | memoryview) -> bytes | None:
    """The batch inside a payload, or None when it cannot be decoded within MAX_BATCH."""
    limit = _fmt.MAX_BATCH
    if codec == CODEC_NONE:
        return bytes(payload) if len(payload) <= limit else None
    if codec != CODEC_ZSTD:
        return None
    try:
        size = zstandard.frame_content_size(payload)
        if size > limit:
            # decompress() would allocate the declared size, ignoring max_output_size.
            return None
        if size >= 0:
            out: bytes = _dctx().decompress(payload, allow_extra_data=False)
            return out if len(out) == size else None
        # No declared size: decompress through a stream, refusing past the bound.
        parts, total = [], 0
        with _dctx().stream_reader(payload, closefd=False) as stream:
            while part := stream.read(1 << 20):
                total += len(part)
                if total > limit:
                    return None
                parts.append(part)
        return b"".join(parts)
    except zstandard.ZstdError:
        return None


def _dctx() -> zstandard.ZstdDecompressor:
    # A fresh context per payload: cheap next to decompressing, and nothing shared across threads.
    return zstandard.ZstdDecompressor()


class _Entry(NamedTuple):
    first_seq: int
    position: int  # in journal order: ties in first_seq keep it
    last_seq: int
    codec: int
    crc: int
    segment: str
    offset: int
    payload_len: int


class JournalReader:
    """Iterate a journal; health figures fill in as iteration proceeds and are complete once it
    ends.  Each ``iter_frames``/``iter_records`` call re-reads the journal from the start."""

    def __init__(
        self, directory: str | os.PathLike[str], fs: FileSystem | None = None, chunk_size: int = CHUNK_SIZE
    ) -> None:
        self.directory = os.fspath(directory)
        self._fs: FileSystem = fs if fs is not None else OsFileSystem()
        self._chunk = chunk_size
        self._reset()

    def _reset(self) -> None:
        self.segments = 0  # segment files
        self.frames = 0  # valid frames of a known type, duplicates included
        self.records = 0  # records returned by iter_records
        self.duplicate_records = 0  # records skipped because their seq was already returned
        self.skipped_bytes = 0  # bytes in no valid frame (torn tails included)
        self.damaged_regions = 0  # runs of such bytes
        self.torn_tail_bytes = 0  # the part of skipped_bytes that ends a segment
        # Frames that scanned valid but did not decode (a writer bug) or changed before reread.
        self.bad_frames = 0
        self.unknown_frames = 0  # valid frames of a type this reader does not know: skipped
        self.read_errors = 0  # segments cut short by an I/O error

    def health(self) -> dict[str, int]:
        names = (
            "segments frames records duplicate_records skipped_bytes damaged_regions"
            " torn_tail_bytes bad_frames unknown_frames read_errors"
        )
        return {name: getattr(self, name) for name in names.split()}

    def segment_names(self) -> list[str]:
        try:
            names = self._fs.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        indexed = [(i, n) for n in names if (i := _fmt.parse_segment_name(n)) is not None]
        return [n for _, n in sorted(indexed)]

    def iter_frames(self) -> Iterator[Frame]:
        """Every valid BATCH frame, decompressed, in seq order (rewritten copies included)."""
        self._reset()
        # By first seq, then journal position (a rewrite may have landed behind newer frames);
        # timsort makes this linear for the usual, already ordered, journal.
        index = sorted(self._index())
        fds: dict[str, int] = {}
        try:
            for e in index:
                raw = self._read_frame(fds, e)
                batch = None if raw is None else decode_payload(e.codec, memoryview(raw)[HEADER_SIZE:])
                if batch is None:
                    # The CRC vouched for the frame's extent in the first pass, so skip it whole:
                    # resyncing inside it could only find frames that are data in its payload.
                    self.bad_frames += 1
                    self._damage(HEADER_SIZE + e.payload_len, False)
                    continue
                self.frames += 1
                yield Frame(e.first_seq, e.last_seq, TYPE_BATCH, e.codec, batch, e.segment, e.offset)
        finally:
            self._close_all(fds)

    def _close_all(self, fds: dict[str, int]) -> None:
        for fd in fds.values():
            try:
                self._fs.close(fd)
            except OSError:
                pass
        fds.clear()

    def _index(self) -> list[_Entry]:
        """First pass: validate every segment, count damage, list the BATCH frames."""
        names = self.segment_names()
        self.segments = len(names)
        index: list[_Entry] = []
        for name in names:
            try:
                for item in scan_segment(self._fs, os.path.join(self.directory, name), self._chunk):
                    if isinstance(item, Damage):
                        self._damage(item.length, item.tail)
                    elif item.header.type != TYPE_BATCH:
                        self.unknown_frames += 1
                    else:
                        h = item.header
                        place = (name, item.offset, h.payload_len)
                        index.append(_Entry(h.first_seq, len(index), h.last_seq, h.codec, h.crc, *place))
            except OSError:
                self.read_errors += 1
        return index

    def _read_frame(self, fds: dict[str, int], e: _Entry) -> bytes | None:
        """Second pass: one indexed frame, or None if it no longer checks out (a writer cut it
        away as a torn tail since, or the disk returns something else now)."""
        try:
            if e.segment not in fds:
                self._close_all(fds)  # one open at a time: frames mostly come segment by segment
                fds[e.segment] = self._fs.open_read(os.path.join(self.directory, e.segment))
            raw = self._fs.read_at(fds[e.segment], HEADER_SIZE + e.payload_len, e.offset)
        except OSError:
            self.read_errors += 1
            return None
        if (
            len(raw) != HEADER_SIZE + e.payload_len
            or raw[:4] != MAGIC
            or frame_crc(raw, e.payload_len) != e.crc
        ):
            return None
        return raw

    def iter_records(self) -> Iterator[records.Record]:
        """Every record once, in seq order, however many copies of its frame the journal holds."""
        highest = 0
        for frame in self.iter_frames():
            for rec in records.iter_records(frame.batch):
                if rec.seq <= highest:
                    self.duplicate_records += 1
                    continue
                highest = rec.seq
                self.records += 1
                yield rec

    def _damage(self, length: int, tail: bool) -> None:
        self.skipped_bytes += length
        self.damaged_regions += 1
        if tail:
            self.torn_tail_bytes += length


def read_journal(directory: str | os.PathLike[str], fs: FileSystem | None = None) -> JournalReader:
    """A reader over the journal in ``directory`` (see ``JournalReader``)."""
    return JournalReader(directory, fs)


# --- records a server can never store (docs/protocol.md, "Lost") ----------------------------------
def record_fault(time: float) -> str | None:
    """Why no server can store a record with this header, or None.  The one rule both ends apply
    (the shipper before it sends, the server's ``decode.py`` when it checks a batch): a record's
    time is a column of every table that keeps records, and must be a finite number.  A record
    whose body does not suit its kind is no such record: the server keeps it raw."""
    if not math.isfinite(time):
        return f"its time is {time!r}, not a finite number"
    return None


def split_storable(batch: bytes) -> list[tuple[int, int, bytes | None, str]]:
    """A decoded batch cut into runs of consecutive records: ``(first_seq, last_seq, bytes,
    "")`` for records a server can store (their bytes as they are, a valid batch on their own)
    and ``(first_seq, last_seq, None, reason)`` for records it never can (``record_fault``).
    Stops at the first record that does not validate, as ``record.iter_records`` does."""
    runs: list[tuple[int, int, list[memoryview] | None, str]] = []
    mv = memoryview(batch)
    pos, end = 0, len(mv)
    while end - pos >= records.HEADER_SIZE:
        length, crc, seq, _kind, _flags, _step, t = records.HEADER.unpack_from(mv, pos)
        stop = pos + records.HEADER_SIZE + length
        if stop > end or records.crc32c(mv[pos + records.CRC_START : stop]) != crc:
            break
        nxt = min(pos + records.padded(length), end)
        fault = record_fault(t)
        if runs and runs[-1][1] == seq - 1 and (runs[-1][2] is None) == (fault is not None):
            first, _, parts, why = runs[-1]
            if parts is not None:
                parts.append(mv[pos:nxt])
            runs[-1] = (first, seq, parts, why)
        else:
            runs.append((seq, seq, None if fault is not None else [mv[pos:nxt]], fault or ""))
        pos = nxt
    return [(a, b, None if parts is None else b"".join(parts), why) for a, b, parts, why in runs]
