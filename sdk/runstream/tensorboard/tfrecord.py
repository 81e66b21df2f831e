"""TFRecord files, the framing of TensorBoard event files (docs/tensorboard.md, "TFRecord").

Each record is ``u64 length | u32 masked crc32c(length bytes) | data | u32 masked crc32c(data)``,
little-endian.  :class:`TFRecordReader` tails one file: it remembers how far it got, stops at a
record that is not completely written yet (a writer still writing) and resumes there on the next
call, and skips damaged records, counting them, instead of stopping at the first bad byte.

Concurrency contract: a reader belongs to one thread at a time.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from crc32c import crc32c

HEADER = 12  # u64 length + u32 masked crc of it
FOOTER = 4  # u32 masked crc of the data
# A length past this is damage, even if its crc happens to match: no event is this large, and
# believing it would make the reader wait forever for bytes that never come.
MAX_RECORD = 1 << 30
_MASK_DELTA = 0xA282EAD8
_SCAN_CHUNK = 1 << 20


def masked_crc(data: bytes | memoryview) -> int:
    """TFRecord's masked crc32c of ``data``: the crc rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord record holding ``data`` (what a TensorBoard writer appends per event)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _header_ok(header: bytes) -> int | None:
    """The data length a 12-byte header announces, or None when its crc does not match."""
    (length,) = struct.unpack_from("<Q", header)
    (crc,) = struct.unpack_from("<I", header, 8)
    if crc != masked_crc(header[:8]) or length > MAX_RECORD:
        return None
    return int(length)


@dataclass
class ReadStats:
    """What a reader met: records read, damaged stretches skipped and their bytes."""

    records: int = 0
    damaged: int = 0  # damaged records or stretches of bytes, each counted once
    skipped_bytes: int = 0
    truncated: bool = False  # the file ends inside a record (counted in ``damaged`` once final)


class TFRecordReader:
    """Reads the records of one TFRecord file from where the last call stopped.

    Args:
        path: The file.

    ``offset`` is the byte offset of the first record not yet read; ``stats`` counts what was
    read and skipped.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.offset = 0
        self.stats = ReadStats()

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def read(self, final: bool = False, limit: int | None = None) -> Iterator[bytes]:
        """Yield each complete, intact record's data after ``offset``, advancing it.

        Args:
            final: The file is complete (no writer is appending): a record cut short at its end
                is counted as damaged and skipped instead of waited for.
            limit: Stop after this many records (the next call goes on from there).

        A record whose header crc fails is skipped by scanning forward, byte by byte, for the
        next header whose crc matches and whose data's crc matches too; one whose data crc fails
        is skipped by its length.  Each is counted in ``stats.damaged`` (a stretch of damage
        once) and its bytes in ``stats.skipped_bytes``.  Without ``final``, a record not yet
        completely written ends the call, and the next call starts at it.

        Raises:
            OSError: The file cannot be opened or read (a file that does not exist yields
                nothing).
        """
        try:
            f = open(self.path, "rb")  # noqa: SIM115 -- closed by the with below; a missing file yields nothing
        except FileNotFoundError:
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            n = 0
            while self.offset < size and (limit is None or n < limit):
                f.seek(self.offset)
                header = f.read(HEADER)
                if len(header) < HEADER:
                    break
                length = _header_ok(header)
                if length is None:
                    if not self._resync(f, size, final):
                        break
                    continue
                end = self.offset + HEADER + length + FOOTER
                if end > size:
                    break  # still being written, or cut short (below)
                data = f.read(length)
                footer = f.read(FOOTER)
                if len(data) < length or len(footer) < FOOTER:
                    break  # the file shrank under us; try again later
                if struct.unpack("<I", footer)[0] != masked_crc(data):
                    self._skip(end - self.offset)
                    self.offset = end
                    continue
                self.offset = end
                self.stats.records += 1
                n += 1
                yield data
            size = os.fstat(f.fileno()).st_size
            if final and self.offset < size and (limit is None or n < limit):
                self.stats.truncated = True
                self._skip(size - self.offset)
                self.offset = size

    def _skip(self, nbytes: int) -> None:
        self.stats.damaged += 1
        self.stats.skipped_bytes += nbytes

    def _resync(self, f: BinaryIO, size: int, final: bool) -> bool:
        """After a bad header at ``offset``: move to the next position where an intact record
        starts.  False when none is found yet (the rest may still be being written)."""
        pos = self.offset + 1
        while pos + HEADER <= size:
            f.seek(pos)
            window = f.read(_SCAN_CHUNK + HEADER)
            for i in range(max(len(window) - HEADER + 1, 0)):
                length = _header_ok(window[i : i + HEADER])
                if length is None:
                    continue
                start = pos + i
                end = start + HEADER + length + FOOTER
                if end > size:
                    continue  # a complete record is what proves the header real
                f.seek(start + HEADER)
                data = f.read(length)
                if struct.unpack("<I", f.read(FOOTER))[0] == masked_crc(data):
                    self._skip(start - self.offset)
                    self.offset = start
                    return True
            pos += max(len(window) - HEADER + 1, 1)
        if final:
            self._skip(size - self.offset)
            self.offset = size
        return False
