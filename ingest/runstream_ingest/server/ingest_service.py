"""The gRPC ingest service: one bidirectional stream per run writer (docs/protocol.md).

A stream is ``Open`` then ``Batch``/``Heartbeat`` messages; the server answers ``Opened`` (with
the highest seq it already holds for the writer) and then one ``Ack`` per stored batch.  Each
batch is verified (codec, CRC-32C, bounded decompression, every record whole and in seq order),
then stored in one transaction together with its dedupe key, and only then acked: an ack means
durable.  A batch sent again after a lost ack is acked again and stored once — the database, not
this process's memory, decides that.

A writer of a distributed run names its part of the job in ``Open.member``: its batches and
heartbeats then go to its own row of the run (rank 0: the run itself; other ranks and node
writers: hidden member rows), so seqs, steps and acks stay per rank (docs/protocol.md, "Member").

Batches of all streams meet in the storage writer's queue (``commit.py``), which stores all
that wait in one group commit.  A stream reads ahead of its acks (``PIPELINE``), so its next batch
is decoded while one is stored, but only that far: then it stops reading, and HTTP/2 flow
control holds the client back.  Batches of all streams together are bounded too: each takes its
size from one shared ``MemoryBudget`` before it is decompressed and gives it back once stored, so
many streams wait rather than add up (docs/server-limits.md).

Anything malformed ends that stream with a precise status and message; it never raises out of
the handler, so other streams and the server are untouched.

Concurrency contract: handlers and their ``_Pipeline`` reader tasks run on the server's event
loop; every storage write goes through the ``StorageWriter``'s one thread, so the storage sees
one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import zstandard

from runstream.format import record as rec
from runstream_ingest.server.auth.guard import Authenticator, AuthError
from runstream_ingest.server.commit import StorageWriter
from runstream_ingest.server.decode import Unstorable, decode_batch
from runstream_ingest.server.storage.interface import (
    RESUME_MODES,
    BadBatch,
    BatchWrite,
    Member,
    RunExists,
    RunNotFound,
    SequenceGap,
    Storage,
    StoreResult,
    UnstorableBatch,
)
from runstream_ingest.wire import ingest_pb2 as pb
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc

log = logging.getLogger("runstream.server.ingest")

PROTOCOL_VERSION = 2  # 2: the client may send Lost (docs/protocol.md, "Versioning")
LOST_VERSION = 2
# The trailing metadata key of a refusal that is about one batch's records, not the stream: the
# client may declare that batch's records lost and go on (docs/protocol.md, "Refused batches").
REFUSED_BATCH_KEY = "runstream-refused-batch"
MAX_REASON = 1000  # characters of a Lost reason kept
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch: `$` allows a final "\n"
# What one stream may have read, checked and queued for storage ahead of its acks: at least
# one batch, at most PIPELINE of them and, past the first, PIPELINE_BYTES of decoded records.
PIPELINE = 8
PIPELINE_BYTES = 16 << 20


@dataclass(frozen=True)
class Limits:
    max_message: int = 16 << 20  # bytes of one gRPC message (also set on the server)
    max_batch: int = 64 << 20  # bytes a batch may inflate to
    # Bytes that batches of all streams hold together, compressed and decoded, from their check
    # until they are stored: the per-stream bounds alone (PIPELINE) let many streams together
    # take gigabytes (docs/server-limits.md).
    memory_budget: int = 512 << 20


class MemoryBudget:
    """A byte semaphore shared by all streams: a batch takes what it will hold in memory before it
    is decompressed, and gives it back once stored.  When the budget is spent a stream waits
    (first come, first served, so a large batch is not starved by small ones), stops reading,
    and HTTP/2 flow control holds its client back: back-pressure, nothing is lost.

    Concurrency contract: event loop only.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, n: int) -> None:
        """Take ``n`` bytes (at most ``total``), waiting until they are free."""
        assert 0 <= n <= self.total
        if not self._waiters and self.free >= n:
            self.free -= n
            return
        fut = asyncio.get_running_loop().create_future()
        waiter = (n, fut)
        self._waiters.append(waiter)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted just before the cancel: give it back
                self.release(n)
            else:
                self._waiters.remove(waiter)
                self._wake()  # it may have blocked smaller ones behind it
            raise

    def release(self, n: int) -> None:
        self.free += n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            n, fut = self._waiters.popleft()
            self.free -= n
            fut.set_result(None)


class Refused(Exception):
    """Ends the stream with ``code`` and ``message``; ``batch``: the refusal is about that
    batch's records (first_seq, last_seq), named in the trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, batch: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.batch = batch

    def trailers(self) -> tuple[tuple[str, str], ...]:
        return () if self.batch is None else ((REFUSED_BATCH_KEY, f"{self.batch[0]}-{self.batch[1]}"),)


def inflate(codec: int, payload: bytes, limit: int) -> bytes:
    """Decompress with a hard bound: a small payload that would inflate past ``limit`` (a
    decompression bomb) is refused before the memory is spent."""
    if codec == pb.CODEC_NONE:
        return payload
    if codec != pb.CODEC_ZSTD:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unknown codec {codec}")
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"payload is not a zstd frame: {e}") from None
    if declared > limit:
        raise Refused(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"batch would inflate to {declared} bytes (limit {limit})"
        )
    # zstandard ignores max_output_size when the frame declares its size, so read through a
    # stream that stops at the limit whatever the frame claims.
    try:
        with zstandard.ZstdDecompressor().stream_reader(payload) as reader:
            out = reader.read(limit + 1)  # stops at the end of the first frame
            if len(out) > limit:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"batch inflates past the {limit}-byte limit"
                )
            if reader.read(1):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "payload holds more than one zstd frame")
    except zstandard.ZstdError as e:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"payload does not decompress: {e}") from None
    return bytes(out)


def memory_cost(codec: int, payload: bytes, max_batch: int, room: int) -> int:
    """The bytes a batch holds while it waits to be stored: its payload and what that inflates to,
    as the frame declares it (a bomb counts at the size it claims, up to ``max_batch``, where it
    is refused), or ``room`` (where the stream decoder stops it) when the frame does not say."""
    if codec != pb.CODEC_ZSTD:
        return len(payload)  # stored records are views of the payload itself
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        declared = 0  # refused by inflate, before anything is decompressed
    return len(payload) + (room if declared < 0 else min(declared, max_batch))


def check_batch(
    batch: Any, acked: int, limits: Limits, payload: bytes | None = None, max_batch: int | None = None
) -> Sequence[rec.Record]:
    """The batch's records, checked; ``payload``: ``batch.payload`` when already read, ``max_batch``:
    the inflate limit (default ``limits.max_batch``)."""
    first, last = batch.first_seq, batch.last_seq
    if first < 1 or last < first:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"bad seq range {first}..{last}")
    if first > acked + 1:
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"sequence gap: the server holds this writer up to seq {acked}, the batch starts at {first}",
        )
    if payload is None:
        payload = batch.payload  # each read of a bytes field copies it
    if rec.crc32c(payload) != batch.crc32c:
        raise Refused(grpc.StatusCode.DATA_LOSS, f"checksum mismatch in batch {first}..{last}")
    data = inflate(batch.codec, payload, limits.max_batch if max_batch is None else max_batch)
    try:
        records = decode_batch(data, first, last)
    except Unstorable as e:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"unstorable batch {first}..{last}: {e}", (first, last)
        ) from None
    except rec.BatchError as e:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable batch: {e}") from None
    if batch.record_count and batch.record_count != len(records):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"batch says {batch.record_count} records but holds {len(records)}",
        )
    return records


def check_lost(lost: Any, acked: int) -> None:
    """A Lost range is admitted like a batch: seqs in 1..2**63-1, no gap before it."""
    first, last = lost.first_seq, lost.last_seq
    if first < 1 or last < first or last >= 2**63:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"bad lost seq range {first}..{last}")
    if first > acked + 1:
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"sequence gap: the server holds this writer up to seq {acked}, the lost range starts at {first}",
        )


def open_member(o: Any) -> Member | None:
    """The Member of an Open (None when absent: a single-process writer), checked."""
    if not o.HasField("member"):
        return None
    m = o.member
    member = Member(m.rank, m.node, m.world_size, m.node_count, m.local_rank, m.node_writer, m.host)
    try:
        member.check()
    except ValueError as e:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"Open.member: {e}") from None
    return member


class IngestService(pb_grpc.IngestServicer):
    def __init__(
        self,
        storage: Storage,
        auth: Authenticator,
        writer: StorageWriter,
        limits: Limits = Limits(),
        on_stored: Callable[[str, int], None] | None = None,
    ) -> None:
        self.storage = storage
        self.auth = auth
        self.writer = writer
        self.limits = limits
        self.on_stored = on_stored
        self.batches = 0
        self.budget = MemoryBudget(limits.memory_budget)

    async def Stream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for reply in self._stream(request_iterator, context):
                yield reply
        except Refused as e:
            log.info("stream refused: %s: %s", e.code.name, e.message)
            await context.abort(e.code, e.message, e.trailers())
        except AuthError as e:
            await context.abort(e.code, e.message)

    async def _stream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        it = aiter(requests)
        try:
            first = await anext(it)
        except StopAsyncIteration:
            return
        if first.WhichOneof("msg") != "open":
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a stream must be Open")
        o = first.open
        for field in ("entity", "project", "run_id", "writer_id"):
            value = getattr(o, field)
            if not NAME_RE.fullmatch(value):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"Open.{field} {value!r} is not a valid name")
        if o.protocol_version not in (0, 1, PROTOCOL_VERSION):
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {o.protocol_version} is not supported "
                f"(this server speaks {PROTOCOL_VERSION})",
            )
        if o.resume not in RESUME_MODES:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"Open.resume {o.resume!r} is not a resume mode")
        member = open_member(o)
        key = self.auth.check(context.invocation_metadata() or (), o.entity)
        try:
            opened = await self.writer.call(
                self.storage.open_run, o.entity, o.project, o.run_id, o.writer_id, o.resume, member
            )
        except RunNotFound as e:
            raise Refused(grpc.StatusCode.NOT_FOUND, str(e)) from None
        except RunExists as e:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, str(e)) from None
        yield pb.ServerMessage(
            opened=pb.Opened(
                acked_seq=opened.acked_seq,
                resumed=opened.resumed,
                last_step=opened.last_step,
                run_path=opened.run_path,
                protocol_version=max(o.protocol_version, 1),
            )
        )
        # Batches are read, checked and queued for storage up to PIPELINE ahead of their acks
        # (so the next is decoded while one is stored), and no further: a server behind stops
        # reading, and HTTP/2 flow control holds the client back instead of a queue growing here.
        # A distributed job's member writes to its own row from here on (docs/protocol.md, "Member").
        row_id = opened.row_id or o.run_id
        stream = _Pipeline(self, o, key, opened.acked_seq, row_id)
        row_path = f"{o.entity}/{o.project}/{row_id}"
        reader = asyncio.create_task(stream.read(it))
        try:
            while (item := await stream.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                result = await item
                stream.done(item)
                if isinstance(result, SequenceGap):
                    raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(result))
                if isinstance(result, UnstorableBatch):  # these bytes fail whenever they are stored
                    first, last = result.first_seq, result.last_seq
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(result), (first, last))
                if isinstance(result, BadBatch):
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(result))
                if isinstance(result, Exception):  # the storage's trouble (a full disk): retried
                    raise Refused(grpc.StatusCode.UNAVAILABLE, f"storage: {type(result).__name__}: {result}")
                self.batches += 1
                if self.on_stored is not None:
                    self.on_stored(row_path, result.acked_seq)
                yield pb.ServerMessage(ack=pb.Ack(seq=result.acked_seq))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


class _Pipeline:
    """One stream's batches between the wire and their acks (see ``IngestService._stream``).

    Concurrency contract: ``read`` runs as one task on the event loop and ``queue`` is consumed
    by the stream's handler on the same loop; nothing else touches it.
    """

    def __init__(self, service: IngestService, o: Any, key: Any, acked: int, row_id: str) -> None:
        self.service, self.o, self.key = service, o, key
        self.row_id = row_id  # the row this writer feeds: the run's, or a member row's
        self.expected = acked  # the highest seq stored or queued: the next batch may start after it
        self.sizes: dict[asyncio.Future[Any], int] = {}  # queued batches' decoded bytes
        self.size = 0
        self.room = asyncio.Event()
        # Futures of queued batches in stream order, then None (the client half-closed) or the
        # exception that ends the stream; the handler answers them in that order.
        self.queue: asyncio.Queue[asyncio.Future[StoreResult | Exception] | BaseException | None]
        self.queue = asyncio.Queue()

    def done(self, fut: asyncio.Future[Any]) -> None:
        """A queued batch was answered: room for the next."""
        self.size -= self.sizes.pop(fut)
        self.room.set()

    async def wait_for_room(self) -> None:
        while self.sizes and (len(self.sizes) >= PIPELINE or self.size >= PIPELINE_BYTES):
            self.room.clear()
            await self.room.wait()

    async def read(self, it: AsyncIterator[Any]) -> None:
        s, o = self.service, self.o
        try:
            while True:
                await self.wait_for_room()
                try:
                    msg = await anext(it)
                except StopAsyncIteration:
                    break
                kind = msg.WhichOneof("msg")
                if kind == "heartbeat":
                    await s.writer.call(s.storage.heartbeat, o.entity, o.project, self.row_id, time.time())
                    continue
                if kind == "lost" and max(o.protocol_version, 1) < LOST_VERSION:
                    raise Refused(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Lost needs protocol version {LOST_VERSION}; "
                        f"the stream opened with {o.protocol_version}",
                    )
                if kind not in ("batch", "lost"):
                    raise Refused(
                        grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind or 'empty'} message after Open"
                    )
                if self.key is not None:
                    s.auth.recheck(self.key)
                where = (o.entity, o.project, self.row_id, o.writer_id)
                if kind == "lost":
                    b = msg.lost
                    check_lost(b, self.expected)
                    records: Sequence[rec.Record] = ()
                    charge = 0
                    write = BatchWrite(*where, b.first_seq, b.last_seq, (), lost=b.reason[:MAX_REASON])
                else:
                    b = msg.batch
                    records, charge = await self.admit(b)
                    write = BatchWrite(*where, b.first_seq, b.last_seq, records)
                fut = s.writer.submit(write)
                if charge:  # the budget comes back when the batch is stored (or failed)
                    fut.add_done_callback(functools.partial(_give_back, s.budget, charge))
                self.sizes[fut] = n = _size(records)
                self.size += n
                self.queue.put_nowait(fut)
                self.expected = max(self.expected, b.last_seq)
            self.queue.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # after the acks of the batches before it
            self.queue.put_nowait(e)

    async def admit(self, b: Any) -> tuple[Sequence[rec.Record], int]:
        """A batch checked and decoded within the shared memory budget: its records, and the bytes
        of the budget it holds until stored.  Waits while the budget is spent; a batch that could
        never fit in it is refused."""
        s = self.service
        budget = s.budget
        payload = b.payload  # each read of a bytes field copies it: read once
        # A batch may not inflate past what the budget leaves beside its payload.
        limit = max(0, min(s.limits.max_batch, budget.total - len(payload)))
        cost = memory_cost(b.codec, payload, s.limits.max_batch, limit)
        if cost > budget.total:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch {b.first_seq}..{b.last_seq} needs {cost} bytes of memory, more than the "
                f"server's whole memory budget of {budget.total} bytes (--memory-budget)",
            )
        await budget.acquire(cost)
        try:
            records = check_batch(b, self.expected, s.limits, payload, limit)
        except BaseException:
            budget.release(cost)
            raise
        # What an undeclared frame really took, now known: the rest goes back at once.
        held = min(cost, len(payload) + (_size(records) if b.codec == pb.CODEC_ZSTD else 0))
        budget.release(cost - held)
        return records, held


def _give_back(budget: MemoryBudget, n: int, _: object) -> None:
    budget.release(n)


def _size(records: Sequence[rec.Record]) -> int:
    data = getattr(records, "data", None)  # a RecordBatch: one buffer
    return len(data) if data is not None else sum(len(r.body) + rec.HEADER_SIZE for r in records)
