"""Building journal frames of known records for the journal tests, and checking what comes back."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import zstandard
from hypothesis import strategies as st

from runstream.format import record as rec
from runstream.format.frame import CODEC_NONE, CODEC_ZSTD, TYPE_BATCH, encode_frame

_ZSTD = zstandard.ZstdCompressor(level=1)


@dataclass(frozen=True)
class Batch:
    frame: bytes
    first_seq: int
    last_seq: int
    records: tuple[rec.Record, ...]


def make_batch(first_seq: int, bodies: Sequence[bytes], codec: int = CODEC_ZSTD) -> Batch:
    """One frame holding one record per body, with seqs from ``first_seq``."""
    assert bodies
    encoded = [
        rec.encode(first_seq + i, rec.KIND_ROW, first_seq + i, 0.5 * (first_seq + i), body)
        for i, body in enumerate(bodies)
    ]
    batch = b"".join(encoded)
    payload = _ZSTD.compress(batch) if codec == CODEC_ZSTD else batch
    last = first_seq + len(bodies) - 1
    return Batch(
        encode_frame(TYPE_BATCH, codec, first_seq, last, payload),
        first_seq,
        last,
        tuple(rec.iter_records(batch)),
    )


@dataclass
class Ledger:
    """Everything a test appended, by seq, and how far it is known to be durable."""

    by_seq: dict[int, rec.Record] = field(default_factory=dict)
    next_seq: int = 1

    def batch(self, bodies: Sequence[bytes], codec: int = CODEC_ZSTD) -> Batch:
        b = make_batch(self.next_seq, bodies, codec)
        self.by_seq.update((r.seq, r) for r in b.records)
        self.next_seq = b.last_seq + 1
        return b

    def check_subsequence(self, got: Iterable[rec.Record]) -> list[int]:
        """Assert ``got`` is strictly increasing by seq and every record is one that was
        written, byte for byte; return the seqs."""
        seqs: list[int] = []
        for r in got:
            assert not seqs or r.seq > seqs[-1], f"seq {r.seq} after {seqs[-1]}"
            assert self.by_seq.get(r.seq) == r, f"record {r.seq} was never written like this"
            seqs.append(r.seq)
        return seqs


bodies_st = st.lists(st.binary(max_size=40), min_size=1, max_size=6)
codec_st = st.sampled_from([CODEC_NONE, CODEC_ZSTD])
