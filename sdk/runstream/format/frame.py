"""A journal frame and a journal segment's name: the bytes the sidecar writes and everyone reads.

Grammar, byte diagram and a worked example: docs/journal-format.md.  The writer is
``runstream_ingest.sidecar.journal``; the reader (``journal_read.py``) serves ``runstream inspect``,
the sidecar's recovery and its shipper.  A frame's payload is a batch of records in the record
format (``record.py``), compressed with the frame's codec.
"""

from __future__ import annotations

import re
import struct

from runstream.format.record import crc32c

# --- frame format: docs/journal-format.md, "Frame" --------------------------------------------
MAGIC = b"\x89RSJ"  # 0x89 (not ASCII, not UTF-8 lead) then "RSJ", like PNG's signature
VERSION = 1
# magic, version, type, codec, flags, payload_len, crc, first_seq, last_seq
HEADER = struct.Struct("<4sBBBBIIQQ")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 32
CRC_OFFSET = 12  # the crc covers [0, 12) and [16, HEADER_SIZE + payload_len): all but itself
CRC_END = CRC_OFFSET + 4
SEQ_OFFSET = 16  # first_seq, last_seq
SEQS = struct.Struct("<QQ")

TYPE_BATCH = 1  # payload: a batch of records (docs/ring-format.md), compressed with ``codec``

CODEC_NONE = 0
CODEC_ZSTD = 1

# Limits: docs/journal-format.md, "Limits".  A header claiming more is damage, not a frame.
MAX_FRAME_PAYLOAD = 256 * 2**20
MAX_BATCH = 512 * 2**20  # decompressed size of one payload

# --- segments: docs/journal-format.md, "Segments" ---------------------------------------------
_SEGMENT_RE = re.compile(r"seg-([0-9]{6,})\.rsj")


def segment_name(index: int) -> str:
    return f"seg-{index:06d}.rsj"


def parse_segment_name(name: str) -> int | None:
    """The index of a segment file name, or None for anything else in the directory."""
    m = _SEGMENT_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def frame_crc(frame: bytes | bytearray | memoryview, payload_len: int) -> int:
    """CRC-32C of a frame starting at ``frame[0]``: header minus the crc field, then payload."""
    mv = memoryview(frame)
    return crc32c(mv[CRC_END : HEADER_SIZE + payload_len], crc32c(mv[:CRC_OFFSET]))


def encode_frame(frame_type: int, codec: int, first_seq: int, last_seq: int, payload: bytes) -> bytes:
    """One complete frame around an already-encoded ``payload`` (compressed with ``codec``)."""
    if not 0 <= first_seq <= last_seq < 2**64:
        raise ValueError(f"bad seq range {first_seq}..{last_seq}")
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds MAX_FRAME_PAYLOAD")
    out = bytearray(HEADER_SIZE + len(payload))
    HEADER.pack_into(out, 0, MAGIC, VERSION, frame_type, codec, 0, len(payload), 0, first_seq, last_seq)
    out[HEADER_SIZE:] = payload
    struct.pack_into("<I", out, CRC_OFFSET, frame_crc(out, len(payload)))
    return bytes(out)
