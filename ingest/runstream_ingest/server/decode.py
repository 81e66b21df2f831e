"""A received batch decoded into columns: the server's strict, vectorised ``parse_batch``.

``decode_batch`` accepts exactly what ``runstream.format.record.parse_batch`` accepts (every byte in a
whole record whose CRC-32C holds, seqs ``first_seq..last_seq`` without gap, no ring padding) and
refuses the rest with the same ``BatchError`` message, but it does not build a ``Record`` per
record: it finds the record boundaries a run of equal strides at a time, reads all headers with
one numpy gather, and hands back a ``RecordBatch`` whose columns (seq, kind, step, time, body
offsets) are arrays over the one decoded buffer.  The storage reads rows' values straight out of
that buffer (``chunks.batch_columns``); ``Record`` objects are only made for the few records that
need them (metadata, odd rows), on demand.

Concurrency contract: a ``RecordBatch`` is immutable once built; it may be read from any thread.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, overload

import numpy as np
import numpy.typing as npt

from runstream.format import record as rec
from runstream.format.journal_read import record_fault

HEADER_DTYPE = np.dtype(
    {
        "names": ["len", "crc", "seq", "kind", "flags", "step", "time"],
        "formats": ["<u4", "<u4", "<u8", "u1", "u1", "<i8", "<f8"],
        "offsets": [0, 4, 8, 16, 17, 24, 32],
        "itemsize": rec.HEADER_SIZE,
    }
)
assert HEADER_DTYPE.itemsize == rec.HEADER.size
_U32 = struct.Struct("<I")
RUN_MIN = 16  # records of one stride checked with numpy at once; shorter runs go one by one
NUMPY_BYTES = 32 << 10  # smaller batches are decoded record by record (rec.parse_batch)
WORDS = np.arange(rec.HEADER_SIZE // 8)

I64 = npt.NDArray[np.int64]


class Unstorable(rec.BatchError):
    """A batch whose framing is sound but which holds a record no storage can keep (its header
    time is NaN or infinite: ``journal_read.record_fault``).  Refused like any bad batch, but the
    client can tell: it declares that record lost and sends the rest (docs/protocol.md, "Lost")."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"record {seq} cannot be stored: {reason}")
        self.seq = seq


class RecordBatch(Sequence[rec.Record]):
    """Records of one batch as columns over one buffer (see the module docstring).

    Indexing gives ``Record`` objects, as a list of them would; a slice is a ``RecordBatch``
    sharing the buffer.  ``select(mask)`` keeps the records where ``mask`` is true.
    """

    __slots__ = ("_records", "body_len", "body_off", "data", "flags", "kind", "seq", "step", "time", "u8")

    def __init__(
        self,
        data: bytes,
        u8: npt.NDArray[np.uint8],
        body_off: I64,
        body_len: I64,
        seq: I64,
        kind: npt.NDArray[np.uint8],
        flags: npt.NDArray[np.uint8],
        step: I64,
        time: npt.NDArray[np.float64],
    ) -> None:
        self.data, self.u8 = data, u8
        self.body_off, self.body_len = body_off, body_len
        self.seq, self.kind, self.flags, self.step, self.time = seq, kind, flags, step, time
        self._records: list[rec.Record] | None = None

    def __len__(self) -> int:
        return len(self.seq)

    def _part(self, ix: Any) -> RecordBatch:
        return RecordBatch(
            self.data, self.u8, self.body_off[ix], self.body_len[ix], self.seq[ix], self.kind[ix],
            self.flags[ix], self.step[ix], self.time[ix],
        )  # fmt: skip

    def select(self, mask: npt.NDArray[np.bool_]) -> RecordBatch:
        return self._part(mask)

    def records(self) -> list[rec.Record]:
        """Every record as a ``Record`` (made once, then kept)."""
        if self._records is None:
            d = self.data
            self._records = [
                rec.Record(s, k, f, st, t, d[o : o + n])
                for s, k, f, st, t, o, n in zip(
                    self.seq.tolist(), self.kind.tolist(), self.flags.tolist(), self.step.tolist(),
                    self.time.tolist(), self.body_off.tolist(), self.body_len.tolist(), strict=True,
                )
            ]  # fmt: skip
        return self._records

    @overload
    def __getitem__(self, i: int) -> rec.Record: ...
    @overload
    def __getitem__(self, i: slice) -> RecordBatch: ...
    def __getitem__(self, i: int | slice) -> rec.Record | RecordBatch:
        if isinstance(i, slice):
            return self._part(i)
        return self.records()[i]

    def __iter__(self) -> Iterator[rec.Record]:
        return iter(self.records())

    def bodies(self) -> list[bytes]:
        d = self.data
        return [d[o : o + n] for o, n in zip(self.body_off.tolist(), self.body_len.tolist(), strict=True)]

    def seqs_are(self, first: int, last: int) -> bool:
        n = len(self.seq)
        return n == last - first + 1 and (n == 0 or (int(self.seq[0]) == first and int(self.seq[-1]) == last))


def join_records(parts: Sequence[Sequence[rec.Record]]) -> Sequence[rec.Record]:
    """Batches of one writer, one after the other, as one: a ``RecordBatch`` over the joined
    buffers when they all are one, else a list."""
    if len(parts) == 1:
        return parts[0]
    if not all(isinstance(p, RecordBatch) for p in parts):
        return [r for p in parts for r in p]
    rbs: list[RecordBatch] = parts  # type: ignore[assignment]
    data = b"".join(p.data for p in rbs)
    shift = np.cumsum([0] + [len(p.data) for p in rbs[:-1]])
    cat = np.concatenate
    return RecordBatch(
        data, np.frombuffer(data, np.uint8), cat([p.body_off + k for p, k in zip(rbs, shift, strict=True)]),
        cat([p.body_len for p in rbs]), cat([p.seq for p in rbs]), cat([p.kind for p in rbs]),
        cat([p.flags for p in rbs]), cat([p.step for p in rbs]), cat([p.time for p in rbs]),
    )  # fmt: skip


def _starts(data: bytes, u32: npt.NDArray[np.uint32]) -> I64 | None:
    """Offsets of the records in ``data``, or None when they do not tile it exactly."""
    end = len(data)
    parts: list[Any] = []
    pos = 0
    scalar = 0  # records to take one by one before trying a vectorised run again
    while pos < end:
        if end - pos < rec.HEADER_SIZE:
            return None
        length = _U32.unpack_from(data, pos)[0]
        stride = rec.padded(length)
        fit = (end - pos) // stride
        if scalar or fit < RUN_MIN:
            if pos + rec.HEADER_SIZE + length > end:
                return None
            parts.append(pos)
            pos += stride
            scalar = max(0, scalar - 1)
            continue
        at = pos + stride * np.arange(fit, dtype=np.int64)
        odd = np.flatnonzero(u32[at >> 2] != length)
        k = int(odd[0]) if odd.size else fit
        parts.append(at[:k])
        pos += k * stride
        if k < RUN_MIN:
            scalar = RUN_MIN  # lengths change often here: vectorising would cost more than it saves
    if not parts:
        return np.zeros(0, np.int64)
    return np.concatenate([np.atleast_1d(np.asarray(p, np.int64)) for p in parts])


def decode_batch(buf: bytes, first_seq: int, last_seq: int) -> Sequence[rec.Record]:
    """``rec.parse_batch``'s checks and errors, into a ``RecordBatch`` (see the module
    docstring); a batch under ``NUMPY_BYTES`` is a plain list of records, which costs less than
    numpy's fixed cost per call there.  Seqs must be in 1..2**63-1 (SQLite's integers)."""
    if first_seq < 1 or last_seq >= 2**63:
        raise rec.BatchError(f"batch seqs {first_seq}..{last_seq} are outside 1..2**63-1")
    if len(buf) < NUMPY_BYTES:
        parsed = rec.parse_batch(buf, first_seq, last_seq)
        for r in parsed:
            if (why := record_fault(r.time)) is not None:
                raise Unstorable(r.seq, why)
        return parsed
    data = bytes(buf)
    n_bytes = len(data)
    u8 = np.frombuffer(data, np.uint8)
    # Records start 8-aligned, so their length words and headers are whole u32s and u64s.
    u32 = np.frombuffer(data, np.uint32, count=n_bytes // 4)
    u64 = np.frombuffer(data, np.uint64, count=n_bytes // 8)
    starts = _starts(data, u32)
    if starts is None or not len(starts):
        _refuse(data, first_seq, last_seq)
    words = u64[(starts >> 3)[:, None] + WORDS]
    h = words.view(HEADER_DTYPE).ravel()
    n = len(starts)
    seq = h["seq"].astype(np.int64)
    kind = h["kind"]
    length = h["len"].astype(np.int64)
    crc = h["crc"]
    if (
        n != last_seq - first_seq + 1
        or not np.array_equal(seq, np.arange(first_seq, first_seq + n, dtype=np.int64))
        or not kind.all()  # kind 0: ring padding
    ):
        _refuse(data, first_seq, last_seq)
    # One CRC call per record is what remains per record; map() keeps the loop in C.
    mv = memoryview(data)
    spans = map(slice, (starts + rec.CRC_START).tolist(), (starts + rec.HEADER_SIZE + length).tolist())
    got = list(map(rec.crc32c, map(mv.__getitem__, spans)))
    if not np.array_equal(np.array(got, np.uint32), crc):
        _refuse(data, first_seq, last_seq)
    time = h["time"].copy()
    # A NaN time fails at storage (NOT NULL columns), an infinite one is no time: both are
    # refused here, where the batch is known, rather than at commit, where they looked transient.
    bad = np.flatnonzero(~np.isfinite(time))
    if bad.size:
        i = int(bad[0])
        raise Unstorable(int(seq[i]), record_fault(float(time[i])) or "")
    return RecordBatch(
        data, u8, starts + rec.HEADER_SIZE, length, seq, kind, h["flags"], h["step"].copy(), time
    )


def _refuse(data: bytes, first_seq: int, last_seq: int) -> NoReturn:
    """The batch failed a vectorised check: the scalar parser finds the first fault and says
    exactly what and where."""
    rec.parse_batch(data, first_seq, last_seq)
    raise AssertionError("decode_batch refused a batch that parse_batch accepts")
