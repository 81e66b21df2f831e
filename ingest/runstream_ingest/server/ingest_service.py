"""The gRPC ingest service: one bidirectional stream per run writer (docs/protocol.md).

A stream is ``Open`` then ``Batch``/``Heartbeat`` messages; the server answers ``Opened`` (with
the highest seq it already holds for the writer) and then one ``Ack`` per stored batch.  Each
batch is verified (codec, CRC-32C, bounded decompression, every record whole and in seq order),
then stored in one transaction together with its dedupe key, and only then acked: an ack means
durable.  A batch sent again after a lost ack is acked again and stored once — the database, not
this process's memory, decides that.

Anything malformed ends that stream with a precise status and message; it never raises out of
the handler, so other streams and the server are untouched.

Concurrency contract: handlers run on the server's event loop; every storage write goes through
the single-thread ``writer`` executor, so the storage sees one writer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import zstandard

from runstream import records as rec

from ..storage.base import BadBatch, RunExists, RunNotFound, SequenceGap, Storage
from ..wire import ingest_pb2 as pb
from ..wire import ingest_pb2_grpc as pb_grpc
from .auth import Authenticator, AuthError

log = logging.getLogger("runstream.server.ingest")

PROTOCOL_VERSION = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch: `$` allows a final "\n"
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_message: int = 16 << 20  # bytes of one gRPC message (also set on the server)
    max_batch: int = 64 << 20  # bytes a batch may inflate to


class Refused(Exception):
    """Ends the stream with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


def check_batch(batch: Any, acked: int, limits: Limits) -> list[rec.Record]:
    if batch.first_seq < 1 or batch.last_seq < batch.first_seq:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"bad seq range {batch.first_seq}..{batch.last_seq}")
    if batch.first_seq > acked + 1:
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"sequence gap: the server holds this writer up to seq {acked}, "
            f"the batch starts at {batch.first_seq}",
        )
    if rec.crc32c(batch.payload) != batch.crc32c:
        raise Refused(
            grpc.StatusCode.DATA_LOSS, f"checksum mismatch in batch {batch.first_seq}..{batch.last_seq}"
        )
    data = inflate(batch.codec, batch.payload, limits.max_batch)
    try:
        records = rec.parse_batch(data, batch.first_seq, batch.last_seq)
    except rec.BatchError as e:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable batch: {e}") from None
    if batch.record_count and batch.record_count != len(records):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"batch says {batch.record_count} records but holds {len(records)}",
        )
    return records


class IngestService(pb_grpc.IngestServicer):
    def __init__(
        self,
        storage: Storage,
        auth: Authenticator,
        writer: ThreadPoolExecutor,
        limits: Limits = Limits(),
        on_stored: Callable[[str, int], None] | None = None,
    ) -> None:
        self.storage = storage
        self.auth = auth
        self.writer = writer
        self.limits = limits
        self.on_stored = on_stored
        self.batches = 0
        self.rows = 0

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    async def Stream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for reply in self._stream(request_iterator, context):
                yield reply
        except Refused as e:
            log.info("stream refused: %s: %s", e.code.name, e.message)
            await context.abort(e.code, e.message)
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
        if o.protocol_version not in (0, PROTOCOL_VERSION):
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {o.protocol_version} is not supported "
                f"(this server speaks {PROTOCOL_VERSION})",
            )
        if o.resume not in ("", "allow", "must", "never", "auto"):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"Open.resume {o.resume!r} is not a resume mode")
        key = self.auth.check(context.invocation_metadata() or (), o.entity)
        where = (o.entity, o.project, o.run_id)
        try:
            opened = await self._write(self.storage.open_run, *where, o.writer_id, o.resume)
        except RunNotFound as e:
            raise Refused(grpc.StatusCode.NOT_FOUND, str(e)) from None
        except RunExists as e:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, str(e)) from None
        acked = opened.acked_seq
        yield pb.ServerMessage(
            opened=pb.Opened(
                acked_seq=acked, resumed=opened.resumed, last_step=opened.last_step, run_path=opened.run_path
            )
        )
        async for msg in it:
            kind = msg.WhichOneof("msg")
            if kind == "heartbeat":
                await self._write(self.storage.heartbeat, *where, time.time())
                continue
            if kind != "batch":
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind or 'empty'} message after Open"
                )
            if key is not None:
                self.auth.recheck(key)
            records = check_batch(msg.batch, acked, self.limits)
            try:
                result = await self._write(
                    self.storage.store_batch,
                    *where,
                    o.writer_id,
                    msg.batch.first_seq,
                    msg.batch.last_seq,
                    records,
                )
            except SequenceGap as e:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
            except BadBatch as e:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
            acked = result.acked_seq
            self.batches += 1
            if self.on_stored is not None:
                self.on_stored(opened.run_path, acked)
            yield pb.ServerMessage(ack=pb.Ack(seq=acked))
