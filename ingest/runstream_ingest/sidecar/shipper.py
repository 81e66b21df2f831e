"""Stage 4 of the sidecar: ship journal frames to the server over one gRPC stream, with acks.

The shipper reads frames from the journal files (so what it sends is exactly what is durable
here, and a restarted sidecar or ``runstream sync`` resumes the same way), sends each payload as
it is — no re-encoding — and advances ``upload.json`` in the run dir when the server acks.  The
server's ``Opened.acked_seq`` is the authority on where to resume: acked data is never sent again.

Connection trouble (server down, network cut, restarts) is retried with exponential backoff and
full jitter, 100 ms up to 30 s, for as long as the shipper runs.  Refusals that retrying cannot
fix (bad key, wrong entity, a malformed batch) stop it with ``fatal`` set to the server's message.

What can never be uploaded does not stop it (protocol version 2, docs/protocol.md, "Lost"): seqs
that no valid frame of the journal holds (damage on disk) are declared lost, and so are records
the server refuses as unstorable (a NaN time): the rest of that batch is sent again without them.
``lost`` lists every range declared, for ``runstream sync`` and the sidecar's log.

Concurrency contract: a ``Shipper`` runs on one asyncio event loop; ``wake`` may be called from
that loop only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import zstandard

from runstream.format import record as rec
from runstream.format.frame import CODEC_ZSTD, TYPE_BATCH, parse_segment_name, segment_name
from runstream.format.fs import OsFileSystem
from runstream.format.journal_read import Damage, _Scan, decode_payload, scan_segment, split_storable
from runstream_ingest.sidecar.channels import ChannelPool, Target, discover, make_channel
from runstream_ingest.wire import ingest_pb2 as pb
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc

__all__ = ["ChannelPool", "Identity", "Member", "Shipper", "Target", "discover", "read_marker"]

log = logging.getLogger("runstream.shipper")

BACKOFF_MIN, BACKOFF_MAX = 0.1, 30.0
WINDOW_BYTES = 8 << 20  # unacked bytes in flight on a stream
MAX_PAYLOAD = (16 << 20) - 4096  # the server's default message limit, less the envelope
HEARTBEAT_EVERY = 5.0
FATAL = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}
UPLOAD_MARKER = "upload.json"
PROTOCOL_VERSION = 2  # 2: Lost; a server that speaks only 1 is spoken to in 1 (no Lost then)
REFUSED_BATCH_KEY = "runstream-refused-batch"  # a refusal's trailer: "first-last" of the batch


class LostRange(NamedTuple):
    """Seqs first_seq..last_seq that will never be sent, and why (a ``Lost`` message)."""

    first_seq: int
    last_seq: int
    reason: str


Piece = tuple[int, int, int, bytes]  # a batch to send: (first_seq, last_seq, codec, payload)


@dataclass(frozen=True)
class Member:
    """Which part of a distributed job a writer feeds (``Open.member``, docs/distributed.md):
    a rank's writers carry their rank; a node sidecar's own writer ``node_writer=True``."""

    rank: int
    node: int
    world_size: int
    node_count: int
    local_rank: int = 0
    node_writer: bool = False
    host: str = ""

    @classmethod
    def from_run_json(cls, meta: dict[str, Any]) -> Member | None:
        """The Member of a rank's ``run.json`` (its distributed fields), or None for a
        single-process run (no ``rank`` or a world size below 2)."""
        try:
            if meta.get("rank") is None or int(meta.get("world_size") or 0) < 2:
                return None
            return cls(
                rank=int(meta["rank"]),
                node=int(meta.get("node") or 0),
                world_size=int(meta["world_size"]),
                node_count=max(int(meta.get("node_count") or 1), 1),
                local_rank=int(meta.get("local_rank") or 0),
                host=str(meta.get("host") or ""),
            )
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Identity:
    entity: str
    project: str
    run_id: str
    writer_id: str
    resume: str = ""
    member: Member | None = None  # distributed runs only; None: Open has no member (as before)


def open_message(i: Identity, version: int) -> Any:
    """The ``Open`` of a stream for ``i``; its member is left out where the generated wire code
    predates ``Member`` (a shipper older than the server's routing still ships single runs)."""
    msg = pb.Open(
        entity=i.entity,
        project=i.project,
        run_id=i.run_id,
        writer_id=i.writer_id,
        resume=i.resume,
        protocol_version=version,
    )
    m = i.member
    if m is not None and hasattr(pb, "Member"):
        msg.member.CopyFrom(
            pb.Member(
                rank=m.rank,
                node=m.node,
                world_size=m.world_size,
                node_count=m.node_count,
                local_rank=m.local_rank,
                node_writer=m.node_writer,
                host=m.host,
            )
        )
    return msg


def read_marker(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / UPLOAD_MARKER).read_text()))
    except (OSError, ValueError):
        return {}


def refused_batch(e: grpc.aio.AioRpcError) -> tuple[int, int] | None:
    """(first_seq, last_seq) of the batch a refusal is about (its trailer), or None."""
    for key, value in e.trailing_metadata() or ():
        if key == REFUSED_BATCH_KEY:
            a, _, b = str(value).partition("-")
            try:
                return int(a), int(b)
            except ValueError:
                return None
    return None


class JournalTail:
    """Frames of a journal with seqs above ``after``, following the writer as it appends."""

    def __init__(self, directory: Path, after: int) -> None:
        self.directory = directory
        self.fs = OsFileSystem()
        self.after = after
        self.segment: int | None = None
        self.offset = 0
        self.damage: tuple[str, int, int] | None = None  # the last damage passed: segment, offset, length

    def reset(self, after: int) -> None:
        self.after, self.segment, self.offset = after, None, 0

    def _segments(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(i for n in names if (i := parse_segment_name(n)) is not None)

    def poll(self, max_bytes: int) -> list[Piece | LostRange]:
        """The next frames above ``after`` as (first_seq, last_seq, codec, payload), at most about
        max_bytes; where no valid frame holds the next seqs, a ``LostRange`` for them."""
        out: list[Piece | LostRange] = []
        size = 0
        segments = self._segments()
        if self.segment is None and segments:
            self.segment, self.offset = segments[0], 0
        while self.segment is not None and size < max_bytes:
            path = str(self.directory / segment_name(self.segment))
            later = [s for s in segments if s > self.segment]
            fd = self.fs.open_read(path)
            try:
                scan = _Scan(self.fs, fd, 1 << 20)
                scan.base = self.offset
                stopped = False
                for item in scan.run():
                    if isinstance(item, Damage):
                        if item.tail and not later:
                            stopped = True  # a frame being written: look again next poll
                            break
                        self.damage = (segment_name(self.segment), item.offset, item.length)
                        self.offset = item.offset + item.length
                        continue
                    h = item.header
                    if h.type == TYPE_BATCH and h.last_seq > self.after:
                        if h.first_seq > self.after + 1:
                            # The seqs before this frame are not where journal order puts them:
                            # a copy elsewhere (a rewrite after a failed fsync) is sent first,
                            # and seqs no valid frame holds are lost to damage.  Then this frame
                            # is looked at again, from where it starts.
                            out.append(self._before(h.first_seq))
                            stopped = True
                            break
                        out.append((h.first_seq, h.last_seq, h.codec, bytes(item.payload)))
                        self.after = h.last_seq
                        size += h.payload_len
                    self.offset = item.offset + 32 + h.payload_len
                    if size >= max_bytes:
                        stopped = True
                        break
            finally:
                self.fs.close(fd)
            if stopped or not later:
                break
            self.segment, self.offset = later[0], 0
        return out

    def _before(self, next_first: int) -> Piece | LostRange:
        """What to send for the seqs from ``after + 1``, found missing before a frame that starts
        at ``next_first``: the frame anywhere in the journal that holds seq ``after + 1``, or
        the range up to the first seq some valid frame holds, as lost."""
        found = self.find(self.after + 1)
        if found is not None and found[0] <= self.after + 1:
            self.after = found[1]
            return found
        last = (found[0] if found is not None else next_first) - 1
        why = "missing from the journal: no segment holds these records"  # a segment file gone
        if self.damage is not None:
            seg, at, n = self.damage
            why = "journal damage: no valid frame holds these records"
            why += f" (damaged bytes at {seg} offset {at}, {n} bytes)"
        lost = LostRange(self.after + 1, last, why)
        self.after = last
        return lost

    def find(self, seq: int, last: int | None = None) -> Piece | None:
        """Over the whole journal, the valid frame with the lowest first seq among those holding
        seqs from ``seq`` on (the first in journal order among equals), or None; with ``last``,
        the first frame of exactly ``seq..last``."""
        best: Piece | None = None
        for index in self._segments():
            try:
                for item in scan_segment(self.fs, str(self.directory / segment_name(index))):
                    if isinstance(item, Damage) or item.header.type != TYPE_BATCH:
                        continue
                    h = item.header
                    if last is not None:
                        if (h.first_seq, h.last_seq) == (seq, last):
                            return (h.first_seq, h.last_seq, h.codec, bytes(item.payload))
                    elif h.last_seq >= seq and (best is None or h.first_seq < best[0]):
                        best = (h.first_seq, h.last_seq, h.codec, bytes(item.payload))
            except OSError:
                continue  # an unreadable segment holds nothing to send
        return best


class Shipper:
    def __init__(
        self,
        run_dir: Path,
        identity: Identity,
        url: str,
        api_key: str | None,
        on_acked: Callable[[int], None] | None = None,
        channels: ChannelPool | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.channels = channels  # shared with other shippers (a node sidecar); None: its own
        self.identity = identity
        self.url = url
        self.api_key = api_key
        self.on_acked = on_acked
        # What upload.json says was acked, for people and progress lines only: ``acked`` counts
        # from what a server has said in this shipper's life (its Opened, then its acks), since a
        # marker may come from another server or one whose data dir was replaced.
        self.marker_acked = int(read_marker(run_dir).get("acked_seq", 0))
        self.opened_acked: int | None = None  # the server's acked_seq at the first Open
        self.acked = 0
        self.tail = JournalTail(run_dir / "journal", self.acked)
        self.fatal: str | None = None
        self.connected = False
        self.sent_bytes = 0
        self.sent_records = 0
        self.last_step = -1
        self._wake = asyncio.Event()
        self._acked_event = asyncio.Event()
        self._marker_written = 0.0
        self._marker_seq = self.marker_acked
        self.version = PROTOCOL_VERSION  # what Open offers; 1 once a server refused 2
        self.stream_version = 0  # what the current stream speaks (Opened.protocol_version)
        # Ranges declared lost (sent as Lost), by first seq; they count once acked.
        self.lost: dict[int, LostRange] = {}
        # Frames the server refused as unstorable, by first seq: what to send instead of each.
        self.plans: dict[int, tuple[int, list[Piece | LostRange]]] = {}
        self._refused: set[tuple[int, int]] = set()

    def wake(self) -> None:
        self._wake.set()

    def _record_ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        self.acked = seq
        self._acked_event.set()
        if self.on_acked is not None:
            self.on_acked(seq)
        now = time.monotonic()
        if now - self._marker_written >= 0.2:
            self.save_marker()

    def save_marker(self) -> None:
        """Progress marker: write-temp, fsync, rename, fsync-dir (never a torn marker)."""
        if self._marker_seq == self.acked:
            return
        from runstream.format.atomic import write_json_atomic

        try:
            write_json_atomic(
                self.run_dir / UPLOAD_MARKER,
                {"acked_seq": self.acked, "writer_id": self.identity.writer_id, "url": self.url},
            )
            self._marker_seq = self.acked
            self._marker_written = time.monotonic()
        except OSError as e:  # a full disk must not stop uploading; the server knows the truth
            log.warning("could not save %s: %s", UPLOAD_MARKER, e)

    async def run(self) -> None:
        """Ship until cancelled or refused for good."""
        backoff = BACKOFF_MIN
        while self.fatal is None:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                details = e.details() or ""
                if (
                    e.code() == grpc.StatusCode.FAILED_PRECONDITION
                    and not self.connected
                    and self.version > 1
                    and details.startswith("protocol version")
                ):
                    # A server older than Lost: speak version 1 to it (damage then stops us).
                    log.info("server %s speaks protocol 1 only: %s", self.url, details)
                    self.version = 1
                    continue
                refused = refused_batch(e)
                if (
                    e.code() == grpc.StatusCode.INVALID_ARGUMENT
                    and refused is not None
                    and self._plan_past(*refused, f"{e.code().name}: {details}")
                ):
                    self.connected = False
                    continue  # at once: the next session sends the batch's records but those
                if e.code() in FATAL:
                    self.fatal = f"{e.code().name}: {e.details()}"
                    log.error("the server refused run %s: %s", self.identity.run_id, self.fatal)
                    return
                log.info("stream to %s ended: %s %s", self.url, e.code().name, e.details())
            except asyncio.InvalidStateError as e:
                # grpc's call.write on a call that has just ended (a cut between two writes): the
                # stream is over, like any other end of it; the next session resumes from the acks.
                log.info("stream to %s ended during a write: %s", self.url, e)
            except (OSError, ValueError, KeyError) as e:
                log.info("server %s not reachable: %s", self.url, e)
            self.connected = False
            if time.monotonic() - started > 5 * BACKOFF_MAX:
                backoff = BACKOFF_MIN  # a long healthy session: start over
            await asyncio.sleep(random.uniform(0, backoff))  # full jitter
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        if self.channels is not None:
            _, channel = await self.channels.get()
            try:
                await self._stream(channel)
            except asyncio.CancelledError:  # the shipper is being stopped: the channel is fine
                raise
            except BaseException:
                self.channels.failed()
                raise
            return
        loop = asyncio.get_running_loop()
        target = await loop.run_in_executor(None, discover, self.url, self.api_key)
        async with make_channel(target) as channel:
            await self._stream(channel)

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        metadata = (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()
        stub = pb_grpc.IngestStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Stream(metadata=metadata)
        try:
            await call.write(pb.ClientMessage(open=open_message(self.identity, self.version)))
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("msg") != "opened":
                raise ValueError("the server did not answer Open")
            self.connected = True
            self.stream_version = first.opened.protocol_version or 1  # a version-1 server leaves it 0
            self.last_step = first.opened.last_step
            self._resume_from(first.opened.acked_seq)
            self.tail.reset(self.acked)
            reader = asyncio.create_task(self._read_acks(call))
            try:
                await self._send(call, reader)
            finally:
                reader.cancel()
        finally:
            # On a shared channel the call outlives this session unless it is cancelled; on a
            # channel of its own, closing the channel ends it anyway.
            call.cancel()

    def _resume_from(self, server_acked: int) -> None:
        """The server's ``Opened.acked_seq`` is the authority on what it holds, above upload.json:
        a marker left by another server (or one whose data dir was replaced) may claim more, and
        trusting it would report records acked that this server never got."""
        claimed = self.acked if self.opened_acked is not None else max(self.acked, self.marker_acked)
        if self.opened_acked is None:
            self.opened_acked = server_acked
        if server_acked >= claimed:
            self._record_ack(server_acked)
            return
        log.warning(
            "server %s holds writer %s only up to seq %d, not %d: sending the rest again",
            self.url,
            self.identity.writer_id,
            server_acked,
            claimed,
        )
        self.acked = server_acked
        self._marker_seq = -1  # the marker claims more: rewrite it with the server's figure
        self.save_marker()

    async def _read_acks(self, call: Any) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            if msg.WhichOneof("msg") == "ack":
                self._record_ack(msg.ack.seq)

    async def _send(self, call: Any, reader: asyncio.Task[None]) -> None:
        inflight: list[tuple[int, int]] = []  # (last_seq, bytes)
        last_beat = time.monotonic()
        while True:
            if reader.done():
                reader.result()  # raises the stream's error
                raise ValueError("the server closed the stream")
            inflight = [(s, n) for s, n in inflight if s > self.acked]
            for key in [k for k, (plan_last, _) in self.plans.items() if plan_last <= self.acked]:
                del self.plans[key]  # acked: the server will not ask for those frames again
            room = WINDOW_BYTES - sum(n for _, n in inflight)
            frames = self.tail.poll(max(room, 1)) if room > 0 else []
            for item in [x for f in frames for x in self._planned(f)]:
                if isinstance(item, LostRange):
                    await self._send_lost(call, item)
                    inflight.append((item.last_seq, 0))
                    continue
                first, last, codec, payload = item
                if len(payload) > MAX_PAYLOAD:
                    self.fatal = (
                        f"frame {first}..{last} is {len(payload)} bytes, over the {MAX_PAYLOAD}-byte "
                        "message limit; it cannot be uploaded"
                    )
                    raise ValueError(self.fatal)
                batch = pb.Batch(
                    first_seq=first,
                    last_seq=last,
                    codec=pb.CODEC_ZSTD if codec == CODEC_ZSTD else pb.CODEC_NONE,
                    crc32c=rec.crc32c(payload),
                    payload=payload,
                )
                await call.write(pb.ClientMessage(batch=batch))
                inflight.append((last, len(payload)))
                self.sent_bytes += len(payload)
                self.sent_records += last - first + 1
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_EVERY:
                await call.write(pb.ClientMessage(heartbeat=pb.Heartbeat(time=time.time())))
                last_beat = now
            if not frames:
                self._wake.clear()
                self._acked_event.clear()
                waits = [
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(self._acked_event.wait()),
                ]
                try:
                    await asyncio.wait([*waits, reader], timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when this task is cancelled: leave no waiter pending on the loop
                    for w in waits:
                        w.cancel()

    def _planned(self, frame: Piece | LostRange) -> list[Piece | LostRange]:
        """What to send for a frame: itself, or what replaces it since the server refused it."""
        if isinstance(frame, LostRange):
            return [frame]
        plan = self.plans.get(frame[0])
        return plan[1] if plan is not None and plan[0] == frame[1] else [frame]

    async def _send_lost(self, call: Any, lost: LostRange) -> None:
        if self.stream_version < 2:
            self.fatal = (
                f"records {lost.first_seq}..{lost.last_seq} cannot be uploaded ({lost.reason}) and the "
                "server speaks protocol version 1, which cannot be told: upgrade the server"
            )
            raise ValueError(self.fatal)
        if lost.first_seq not in self.lost:
            log.warning(
                "run %s: declaring records %d..%d lost: %s",
                self.identity.run_id,
                lost.first_seq,
                lost.last_seq,
                lost.reason,
            )
        self.lost[lost.first_seq] = lost
        msg = pb.Lost(first_seq=lost.first_seq, last_seq=lost.last_seq, reason=lost.reason)
        await call.write(pb.ClientMessage(lost=msg))

    def _plan_past(self, first: int, last: int, why: str) -> bool:
        """The server refused batch first..last as records it can never store: plan to send the
        records it can store, and the others as lost.  False when there is no way past (the
        same range refused again)."""
        if (first, last) in self._refused or self.stream_version < 2:
            return False
        self._refused.add((first, last))
        refused = f"refused by the server: {why}"
        for _plan_last, planned in self.plans.values():  # a piece of an earlier plan: lose it whole
            for i, item in enumerate(planned):
                if not isinstance(item, LostRange) and (item[0], item[1]) == (first, last):
                    planned[i] = LostRange(first, last, refused)
                    return True
        frame = self.tail.find(first, last)
        if frame is None:
            return False
        batch = decode_payload(frame[2], frame[3])
        runs = split_storable(batch) if batch is not None else []
        if not any(data is None for _, _, data, _ in runs):
            # Nothing wrong that this client can see (the server found something at storage):
            # the batch is lost whole rather than this writer stopped for good.
            self.plans[first] = (last, [LostRange(first, last, refused)])
            return True
        items: list[Piece | LostRange] = []
        zc = zstandard.ZstdCompressor(level=1)
        for a, b, data, reason in runs:
            if data is None:
                items.append(LostRange(a, b, f"the server can never store them: {reason}"))
            else:
                items.append((a, b, CODEC_ZSTD, zc.compress(data)))
        covered = runs[-1][1]
        if covered < last:  # split_storable stopped at a record that does not validate
            items.append(LostRange(covered + 1, last, refused))
        self.plans[first] = (last, items)
        log.warning("run %s: the server refused batch %d..%d: %s", self.identity.run_id, first, last, why)
        return True

    def lost_acked(self) -> list[LostRange]:
        """The ranges declared lost that the server has acked, in seq order."""
        return [r for _, r in sorted(self.lost.items()) if r.last_seq <= self.acked]

    async def wait_acked(self, seq: int, timeout: float) -> bool:
        """Wait until everything up to ``seq`` is acked (True) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self.acked < seq and self.fatal is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._acked_event.clear()
            self.wake()
            try:
                await asyncio.wait_for(self._acked_event.wait(), min(left, 0.25))
            except TimeoutError:
                pass
        self.save_marker()
        return self.acked >= seq
