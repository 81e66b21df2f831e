"""The sidecar: the process that moves a run's records from the ring to the journal.

Started by ``runstream.init`` as ``python -m runstream_ingest.sidecar.main`` in its own session (so a
Ctrl-C in the terminal does not kill it before it drains).  One pass of its loop is the pipeline
in order::

    RingReader.poll ─► Batcher.add ─► (due) Compressor ─► JournalWriter.append ─► RingReader.release
                                                             └─ group commit: sync() every ~1 s

Beside it, the records the sidecar makes itself (system metrics, console, environment, files)
go through its ``CompanionWriter`` (sources/companion.py): a second writer of the run with its own seqs,
journal and stream.  Each source of them is a ``Source``: started with the loop, closed (its last
records written) before the companion's journal is closed.

Invariants
* Ring space is released only for records the journal writer has taken (written, or held in its
  memory while the disk fails), so a ``kill -9`` of the sidecar loses nothing: its successor
  re-reads the unreleased records and skips those the journal already has (by seq).
* The sidecar never stops the training process: if it dies, ``log`` keeps filling the ring and
  the SDK starts another sidecar.
* It exits when its producer has closed the ring (``finish``) or died, and the ring is empty.
  A producer that died is recorded as a crashed run.

Concurrency contract: a ``Sidecar`` runs on one asyncio event loop (uvloop when available); the
other threads are the executor running ``JournalWriter.sync`` and the console's tee writers
(``sources/console.py``), which touch nothing but their own queues.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import yaml
import zstandard

from runstream.format import record as rec
from runstream.format.fold import RunState, json_safe
from runstream.format.frame import CODEC_ZSTD, HEADER_SIZE, TYPE_BATCH, encode_frame
from runstream.format.ring_layout import (
    W_ACKED_SEQ,
    W_CLOSED,
    W_EXIT,
    W_FIRST_SEQ,
    W_HEAD,
    W_JOURNAL_ERRORS,
    W_JOURNALED,
    W_JOURNALED_SEQ,
    W_SIDECAR_LOST,
    W_SIDECAR_PID,
    W_SYNCED_SEQ,
    RingMap,
    exit_code_of,
    loss_counters,
)
from runstream_ingest.sidecar.batcher import Batcher, Compressor
from runstream_ingest.sidecar.journal import JournalWriter
from runstream_ingest.sidecar.media.stage import MediaStage
from runstream_ingest.sidecar.ring_reader import RingReader, Span
from runstream_ingest.sidecar.shipper import ChannelPool, Identity, Member, Shipper
from runstream_ingest.sidecar.sources.companion import (
    COMPANION_RESUME,
    COMPANION_SUFFIX,
    CompanionWriter,
    Source,
    companion_dir,
)

log = logging.getLogger("runstream.sidecar")

POLL_INTERVAL = 0.01  # the ring is polled this often once caught up (64 MiB lasts ~1 s at full rate)
LIVENESS_EVERY = 0.2  # the producer's death is noticed within this
# After IDLE_AFTER seconds without a record the poll slows to IDLE_POLL_INTERVAL: 100 empty polls a
# second cost an idle sidecar ~2 % of a core (bench/context_overhead.py), 20 cost ~0.5 %.  The
# first record after a pause waits at most that much longer; the ring holds minutes of it.
IDLE_AFTER = 1.0
IDLE_POLL_INTERVAL = 0.05
FINAL_WRITE_TIMEOUT = 30.0  # at exit, how long to keep retrying a failing disk (--final-write-timeout)
# Disk held back for the loss counters and the exit record of a run whose disk fills up
# (JournalWriter's reserve): without it, the journal could not say what it lost.
JOURNAL_RESERVE = 64 << 10
# Records kept when the sidecar gives up on a full disk: they are few and small, and without them
# the run would lose its metadata or read as crashed.  Rows (and file requests) are counted lost.
KEEP_ON_GIVE_UP = frozenset({rec.KIND_RUN, rec.KIND_CONFIG, rec.KIND_SUMMARY, rec.KIND_EXIT, rec.KIND_METRIC})
SUMMARY_BACKLOG = 256 << 20  # bytes of journaled batches waiting to be folded into the summary
MEDIA_HELD_MAX = 64 << 20  # bytes of spans waiting for their media to be encoded (media/stage.py)
SUMMARY_SLICE = 0.004  # seconds of summary folding per caught-up pass


class Sidecar:
    # Whether this pipeline folds its records into ``files/summary.json`` (31 us a row): a node
    # sidecar's ranks other than 0 do not (node_pipeline.py), or 64 ranks' folds would take cores.
    keep_summary = True

    def __init__(self, ring: RingMap, run_dir: Path, opts: argparse.Namespace) -> None:
        self.ring = ring
        self.words = ring.words
        self.run_dir = run_dir
        self.opts = opts
        self.journal = JournalWriter(
            run_dir / "journal",
            fsync=opts.fsync,
            memory_limit=opts.memory,
            reserve_path=run_dir / "journal.reserve",
            reserve_bytes=JOURNAL_RESERVE,
        )
        self.journal.open()
        self.reader = RingReader(ring, after_seq=self.journal.last_seq)
        self._next_seq = self.journal.last_seq + 1 if self.journal.last_seq else ring_first_seq(ring)
        self.batcher = Batcher(opts.batch_bytes, opts.batch_age)
        self.compressor = Compressor(opts.zstd_level)
        self.config: dict[str, Any] = {}
        self.record_errors = 0  # records whose side effect or summary fold failed (record_failed)
        self.config_errors = 0  # failed writes of config.yaml other than OSError
        self.exit_seen = False
        self.journaled = 0
        self._gone_at: float | None = None  # when the producer was seen gone (closed or dead)
        self._sync_task: asyncio.Future[Any] | None = None
        self._last_sync = time.monotonic()
        self._initial_ppid = os.getppid()
        self._errors_before = int(ring.words[W_JOURNAL_ERRORS])
        # The summary is folded from journaled batches while the sidecar is idle, so finish need
        # not replay the whole journal.  Past the backlog bound (or when an earlier sidecar wrote
        # part of the journal) it falls back to a replay at exit.
        self.summary = RunState(keep_rows=False)
        self._unsummarised: deque[bytes] = deque()
        self._unsummarised_bytes = 0
        self._summary_replay = self.journal.last_seq > 0
        self.companion = CompanionWriter(
            run_dir, fsync=opts.fsync, batch_age=max(opts.batch_age, 0.05), zstd_level=opts.zstd_level
        )
        self.shipper: Shipper | None = None
        self.companion_shipper: Shipper | None = None
        if opts.url:
            self.make_shippers()
        self.sources: list[Source] = self.make_sources()
        self.media = MediaStage(run_dir, self.words, self._upload_media)
        self._source_tasks: list[asyncio.Task[None]] = []
        self._shipping: asyncio.Task[None] | None = None
        self._companion_shipping: asyncio.Task[None] | None = None
        # the loop's state between passes (``step``)
        self._next_check = 0.0
        self._producer_gone = False
        self._last_record = time.monotonic()

    def make_shippers(self, member: Member | None = None, channels: ChannelPool | None = None) -> None:
        """The producer's and the companion's shippers (online runs); a node sidecar's pipeline
        passes its rank's ``member`` and the node's shared ``channels``."""
        opts = self.opts
        key = os.environ.get("RUNSTREAM_API_KEY")
        ident = Identity(opts.entity, opts.project, opts.run_id, opts.writer_id, opts.resume, member)
        self.shipper = Shipper(self.run_dir, ident, opts.url, key, on_acked=self._acked, channels=channels)
        cident = Identity(
            opts.entity,
            opts.project,
            opts.run_id,
            opts.writer_id + COMPANION_SUFFIX,
            COMPANION_RESUME,
            member,
        )
        cdir = companion_dir(self.run_dir)
        self.companion_shipper = Shipper(cdir, cident, opts.url, key, channels=channels)
        self.companion.on_cut.append(self.companion_shipper.wake)

    def _lost_gap(self, first_seq: int) -> None:
        """Records below ``first_seq`` are neither in the journal nor in the ring: an earlier
        sidecar held them in memory for a failing disk and was killed.  Counted, never silent."""
        lost = first_seq - self._next_seq
        log.error("records %d..%d were lost with an earlier sidecar", self._next_seq, first_seq - 1)
        self.words[W_SIDECAR_LOST] = self.words[W_SIDECAR_LOST] + lost

    def _upload_media(self, rel: str) -> None:
        self.files.request({"path": rel, "policy": "now"})

    def _acked(self, seq: int) -> None:
        self.words[W_ACKED_SEQ] = seq

    # --- stage 3: batch -> frame -> journal ----------------------------------------------------
    def cut(self) -> None:
        batch = self.batcher.cut()
        if batch is None:
            return
        payload = self.compressor.compress(batch.data)
        frame = encode_frame(TYPE_BATCH, CODEC_ZSTD, batch.first_seq, batch.last_seq, payload)
        self.journal.append(frame, batch.first_seq, batch.last_seq)
        self.media.journaled()
        self._to_summarise(batch.data)
        if self.shipper is not None:
            self.shipper.wake()
        # The journal has it now (on disk, or in its memory while disk fails); spans held for
        # their media after it stay in the ring.
        self.reader.release(batch.end)
        self.journaled += batch.count
        w = self.words
        w[W_JOURNALED] = self.journaled
        w[W_JOURNALED_SEQ] = self.journal.written_seq
        w[W_JOURNAL_ERRORS] = self._errors_before + self.journal.errors  # cumulative over sidecars

    def _to_summarise(self, data: bytes) -> None:
        if self._summary_replay or not self.keep_summary:
            return
        self._unsummarised.append(data)
        self._unsummarised_bytes += len(data)
        if self._unsummarised_bytes > SUMMARY_BACKLOG:
            self._summary_replay = True
            self._unsummarised.clear()

    def summarise(self, budget: float) -> None:
        """Fold queued batches into the summary for at most ``budget`` seconds."""
        deadline = time.monotonic() + budget
        while self._unsummarised and time.monotonic() < deadline:
            data = self._unsummarised.popleft()
            self._unsummarised_bytes -= len(data)
            records = rec.iter_records(data)
            while True:
                # One record the fold cannot take must not stop the sidecar (see handle_control).
                # The exception leaves the generator where it was: the next feed goes on after it.
                try:
                    self.summary.feed(records)
                    break
                except Exception:
                    self.record_failed(self.summary.last_seq, None, "summarising")

    def handle_control(self, records: list[rec.Record]) -> None:
        for r in records:
            # A control record's side effect (config.yaml, a file to keep) is an extra: the record
            # itself is in the batch and reaches the journal whatever happens here.  One that fails
            # (a value no writer can handle, from an SDK that did not check it) is logged and
            # counted; raising would kill the sidecar before the batch is journaled, and every
            # restarted sidecar would fail on the same record again, losing all the run's records.
            try:
                self._handle_control_record(r)
            except Exception:
                self.record_failed(r.seq, r.kind, "handling")

    def _handle_control_record(self, r: rec.Record) -> None:
        if r.kind == rec.KIND_CONFIG:
            value = r.value()
            if not isinstance(value, dict):
                raise TypeError(f"a config record holds a {type(value).__name__}, not a dict")
            self.config.update(value)
            self.write_config()
        elif r.kind == rec.KIND_EXIT:
            self.exit_seen = True
        elif r.kind == rec.KIND_FILE:  # runstream.save
            self.files.request(r.value())

    def record_failed(self, seq: int, kind: int | None, what: str) -> None:
        """Log and count a record whose processing in the sidecar failed; the sidecar goes on.
        The first few with their traceback, then one line per thousand (every row of a run may
        fail the same way: the log must not grow with the run)."""
        self.record_errors += 1
        n = self.record_errors
        if n > 10 and n % 1000:
            return
        (log.exception if n <= 10 else log.error)(
            "%s record seq %d (%s) failed; the record stays in the journal (%d such failures)",
            what,
            seq,
            "?" if kind is None else rec.KIND_NAMES.get(kind, kind),
            self.record_errors,
        )

    def write_config(self) -> None:
        from runstream.format.atomic import write_text_atomic

        try:
            try:
                text = yaml.safe_dump(json_safe(self.config), sort_keys=False, allow_unicode=True)
            except Exception:  # a value the YAML writer cannot take (nested too deep: RecursionError)
                text = self._config_yaml_by_key()
            write_text_atomic(self.run_dir / "files" / "config.yaml", text)
        except OSError as e:  # a full disk must not stop the journal
            log.warning("could not write config.yaml: %s", e)

    def _config_yaml_by_key(self) -> str:
        """config.yaml written key by key, a key whose value cannot be written holding a note
        instead, so one bad value does not keep the others (and later keys) out of the file."""
        parts = []
        for key, value in self.config.items():
            try:
                parts.append(yaml.safe_dump({key: json_safe(value)}, sort_keys=False, allow_unicode=True))
            except Exception as e:
                self.config_errors += 1
                log.error("config.yaml: the value of key %r could not be written: %r", key, e)
                note = f"<not written by runstream: {type(e).__name__}; the journal holds the value>"
                parts.append(yaml.safe_dump({str(key): note}, sort_keys=False, allow_unicode=True))
        return "".join(parts)

    # --- the loop --------------------------------------------------------------------------------
    def drain_once(self) -> int:
        """One pass over the ring; returns how many records were read."""
        if self.journal.over_limit:
            self.journal.retry()
            return 0
        n = 0
        # At most what the open batch has room for (a whole record at least), so a batch keeps
        # near batch_bytes even when the sidecar is behind: the journal's frame size is the user's.
        # Spans held for their media (media/stage.py) stay in the ring meanwhile; past this many
        # bytes the sidecar reads no more until the encoders catch up, and the ring buffers.
        budget = max(self.batcher.room(), 1) if self.media.held_bytes < MEDIA_HELD_MAX else 0
        for span in self.reader.poll(budget) if budget else ():
            if span.count and span.first_seq > self._next_seq:
                self._lost_gap(span.first_seq)
            if span.count:
                self._next_seq = span.last_seq + 1
            n += span.count
            if span.control:
                self.handle_control(span.control)
            if self.media.wants(span):
                self._hold_media(span)
            else:
                self._batch(span)
        self._media_ready()
        if self.batcher.due() and not self.media.waiting:
            self.cut()
        if self.companion.due():
            self.companion.cut()
        return n

    def _batch(self, span: Span) -> None:
        self.batcher.add(span)
        # Never between a MEDIA record and its row (media/stage.py): both stay in the ring.
        if self.batcher.size >= self.batcher.max_bytes and not self.media.waiting:
            self.cut()

    def _hold_media(self, span: Span) -> None:
        try:
            self.media.hold(span)
        except Exception:  # a bug here must not stop the journal: the records go in as they came,
            self.record_failed(span.first_seq, rec.KIND_MEDIA, "encoding media in")
            self._media_ready(block=True)  # after the spans held before them: ring order holds
            self._batch(span)

    def _media_ready(self, block: bool = False) -> None:
        """Batch the held spans whose media are encoded (``block``: all of them, waiting)."""
        try:
            for span in self.media.ready(block):
                self._batch(span)
        except Exception:  # as in _hold_media: never stop the journal
            self.record_failed(0, rec.KIND_MEDIA, "encoding media in")
            self.media.waiting = False

    def producer_alive(self) -> bool:
        # Reparenting is the instant signal that the producer (our parent) died.  Under a wrapper
        # (strace, fiu-run) the parent is the wrapper, so compare with the parent we started with.
        if os.getppid() != self._initial_ppid:
            return False
        pid = self.ring.producer_pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    async def maybe_sync(self, loop: asyncio.AbstractEventLoop, force: bool = False) -> None:
        if force:
            if self._sync_task is not None:
                await self._sync_task
                self._sync_task = None
                self.words[W_SYNCED_SEQ] = self.journal.synced_seq
            if self.opts.fsync == "group":
                await loop.run_in_executor(None, self._sync_journals)
                self.words[W_SYNCED_SEQ] = self.journal.synced_seq
            return
        self.sync_step(loop)

    def sync_step(self, loop: asyncio.AbstractEventLoop) -> None:
        """Group commit: start an fsync of both journals on the executor when one is due (never
        waits; the next pass sees it done)."""
        if self._sync_task is not None:
            if not self._sync_task.done():
                return
            self._sync_task = None
            self.words[W_SYNCED_SEQ] = self.journal.synced_seq
        if self.opts.fsync != "group":
            return
        now = time.monotonic()
        if now - self._last_sync >= self.opts.fsync_interval and (
            self.journal.written_seq > self.journal.synced_seq
            or self.companion.journal.written_seq > self.companion.journal.synced_seq
        ):
            self._last_sync = now
            self._sync_task = loop.run_in_executor(None, self._sync_journals)

    def _sync_journals(self) -> None:
        self.journal.sync()
        self.companion.journal.sync()

    def start(self) -> None:
        """Start the shippers and sources as tasks of the running loop (before the first step)."""
        self.words[W_SIDECAR_PID] = os.getpid()
        self._shipping = asyncio.create_task(self.shipper.run()) if self.shipper else None
        self._companion_shipping = (
            asyncio.create_task(self.companion_shipper.run()) if self.companion_shipper else None
        )
        self._source_tasks = [asyncio.create_task(src.run()) for src in self.sources]

    def step(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """One pass of the loop: drain, group commit, liveness.  Returns how long to wait before
        the next pass (0: more is waiting), or None once the producer is gone and its ring is
        drained (then ``shutdown``)."""
        n = self.drain_once()
        self.sync_step(loop)
        now = time.monotonic()
        if n:
            self._last_record = now
        if now >= self._next_check:
            self._next_check = now + LIVENESS_EVERY
            closed = bool(self.words[W_CLOSED])
            self._producer_gone = closed or not self.producer_alive()
            if self.journal.pending_bytes:
                self.journal.retry()
            if self._producer_gone:
                self._give_up_if_disk_stays_full(now)
        if self._producer_gone and n == 0 and self.reader.pending <= 0:
            n = self.drain_once()  # a last look: records published just before the close
            if n == 0 and self.reader.pending <= 0:
                return None
        if self.reader.pending > 0 and self.media.held_bytes < MEDIA_HELD_MAX:
            return 0.0  # more is published than one poll took: keep going
        # Caught up.  Sleeping (not spinning) while the producer trickles records in keeps
        # the sidecar off the training process's core; the batch age bounds latency.
        self.summarise(SUMMARY_SLICE)
        idle = now - self._last_record > IDLE_AFTER and not self._unsummarised
        return IDLE_POLL_INTERVAL if idle else POLL_INTERVAL

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.start()
        while (delay := self.step(loop)) is not None:
            await asyncio.sleep(delay)
        return await self.shutdown(loop, crashed=not bool(self.words[W_CLOSED]))

    async def shutdown(self, loop: asyncio.AbstractEventLoop, crashed: bool) -> int:
        if self.media.held_bytes:  # media still encoding: wait off the loop, which stays free
            await loop.run_in_executor(None, self.media.wait)
            self._media_ready(block=True)
        self.media.close()
        self.cut()
        await self.close_sources()
        # The loss counters go in last, once every loss is known: what the disk never took is
        # counted first, so the STATS record the journal (and the server) gets is the true one.
        start = self._gone_at if self._gone_at is not None else time.monotonic()
        deadline = max(start + self.opts.final_write_timeout, time.monotonic() + 0.5)
        while self.journal.pending_bytes and time.monotonic() < deadline:
            self.journal.retry()
            if self.journal.pending_bytes:
                await asyncio.sleep(0.2)
        if self.journal.pending_bytes:
            self.give_up_on_disk()
        self.append_own_records(crashed)
        self.journal.retry()
        await self.maybe_sync(loop, force=True)
        self.journal.close()
        # What close could not write: only the last words themselves, when even the space the
        # reserve freed could not take them (the STATS record then cannot say so: the log does).
        lost = self.journal.lost_records
        self.words[W_SIDECAR_LOST] = self.words[W_SIDECAR_LOST] + lost
        self.words[W_JOURNALED_SEQ] = self.journal.written_seq
        self.words[W_SYNCED_SEQ] = self.journal.synced_seq
        if lost:
            log.error("the disk took not even the loss counters: %d records lost", lost)
        self.write_summary()
        deadline = time.monotonic() + self.opts.upload_timeout
        await self.files.finish(deadline)  # after write_summary: summary.json is one of the files
        companion_lost = self.companion.close()
        if companion_lost:
            log.error("%d of the sidecar's own records (system, console, files) were lost", companion_lost)
        for shipper, task, journal in (
            (self.shipper, self._shipping, self.journal),
            (self.companion_shipper, self._companion_shipping, self.companion.journal),
        ):
            if shipper is None or task is None:
                continue
            done = await shipper.wait_acked(journal.written_seq, max(deadline - time.monotonic(), 0.0))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if not done:
                log.warning(
                    "upload incomplete for writer %s: acked up to seq %d of %d (%s)",
                    shipper.identity.writer_id,
                    shipper.acked,
                    journal.written_seq,
                    shipper.fatal or "server not reachable",
                )
        return 0

    # --- a disk that stays full after the producer is gone -------------------------------------
    def _give_up_if_disk_stays_full(self, now: float) -> None:
        """The producer is gone, so records wait for the disk only to be lost with this sidecar
        at some point; past ``--final-write-timeout`` with the journal writer still full (it
        takes nothing more from the ring), give up on them now, so that the sidecar can exit and
        count them, and finish() prints the true figures."""
        if self._gone_at is None:
            self._gone_at = now
        elif self.journal.over_limit and now - self._gone_at >= self.opts.final_write_timeout:
            self.give_up_on_disk()

    def give_up_on_disk(self) -> None:
        """Count as lost (``W_SIDECAR_LOST``) every record the disk did not take: the frames the
        journal writer holds and what the ring still holds.  The run, config, summary and exit
        records among them are kept, and written (with the loss counters after them) into the
        space the journal's reserve frees; rows are what is lost."""
        self._media_ready(block=True)
        self.cut()
        kept: list[rec.Record] = []
        lost = 0
        unzstd = zstandard.ZstdDecompressor()
        batches = [unzstd.decompress(f[HEADER_SIZE:]) for f, _, _ in self.journal.discard_pending()]
        while self.reader.pending > 0:
            spans = self.reader.poll(1 << 20)
            if not spans:
                break  # damage: the reader skips it, counted in ring_skipped_bytes
            batches += [span.data for span in spans]
            self.reader.release()
        for batch in batches:
            for r in rec.iter_records(batch):
                if r.kind in KEEP_ON_GIVE_UP:
                    kept.append(r)
                else:
                    lost += 1
        self._next_seq = max(self._next_seq, self.reader.expected or 0)
        self.words[W_SIDECAR_LOST] = self.words[W_SIDECAR_LOST] + lost
        self._summary_replay = True  # the folded summary has rows that are lost: replay instead
        self.journal.release_reserve()
        for r in kept:  # a frame each: a batch is a gapless run of seqs (docs/batch-format.md)
            data = rec.encode(r.seq, r.kind, r.step, r.time, r.body, r.flags)
            frame = encode_frame(TYPE_BATCH, CODEC_ZSTD, r.seq, r.seq, self.compressor.compress(data))
            self.journal.append(frame, r.seq, r.seq)
            self.exit_seen = self.exit_seen or r.kind == rec.KIND_EXIT
        log.error(
            "the disk stayed full: %d records it never took were lost (%d run, config, summary "
            "and exit records kept)",
            lost,
            len(kept),
        )

    # --- the sidecar's own sources (written through self.companion) ------------------------------
    def make_sources(self) -> list[Source]:
        """The sources this run's options ask for, in the order they are closed at exit."""
        o = self.opts
        sources: list[Source] = []
        if o.console:  # the training process's stdout/stderr pipes
            from runstream_ingest.sidecar.sources.console import ConsoleCapture

            sources.append(ConsoleCapture(self.companion, self.run_dir, o.console))
        from runstream_ingest.sidecar.sources.environment import (
            RunContext,  # the code and environment, once per training process
        )

        sources.append(RunContext(self.run_dir, self.companion, o.disable_code, o.disable_git, o.save_code))
        if o.stats_interval > 0:
            from runstream_ingest.sidecar.sources.system import SystemMonitor

            pid = self.ring.producer_pid
            sources.append(SystemMonitor(self.companion, o.stats_interval, self.run_dir, pid))
        from runstream_ingest.sidecar.sources.files import FileUploader  # runstream.save, and files/ at exit

        key = os.environ.get("RUNSTREAM_API_KEY") if o.url else None
        self.files = FileUploader(self.run_dir, self.companion, o.url, key, o.ignore_glob)
        sources.append(self.files)  # its close() stops the watching; finish() uploads at exit
        return sources

    async def close_sources(self) -> None:
        """Each source writes its last records (a console's final partial line...), then stops."""
        for src in self.sources:
            try:
                await src.close()
            except Exception:  # one failing source must not cost the others their last records
                log.exception("closing %s", type(src).__name__)
        for task in self._source_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.companion.cut()

    def append_own_records(self, crashed: bool) -> None:
        """The loss counters (and, for a dead producer, its exit) go into the journal as records
        of their own, seq'd after the producer's last one: the producer will write no more."""
        w = self.words
        stats = {**loss_counters(w), "companion_dropped_records": self.companion.dropped}
        seq = max(self.journal.last_seq, self.reader.expected - 1 if self.reader.expected else 0) + 1
        now = time.time()
        out = [rec.encode(seq, rec.KIND_STATS, 0, now, rec.pack_body(stats), rec.FLAG_SIDECAR)]
        code = exit_code_of(int(w[W_EXIT]))
        if not self.exit_seen and (crashed or code is not None):
            # A producer that died wrote none; one whose exit record found no room in the ring
            # (a sidecar stuck on a full disk) left its exit code in W_EXIT.
            seq += 1
            state = "crashed" if code is None else "finished" if code == 0 else "failed"
            body = rec.pack_body({"exit_code": code, "state": state})
            out.append(rec.encode(seq, rec.KIND_EXIT, 0, now, body, rec.FLAG_SIDECAR))
        data = b"".join(out)
        payload = self.compressor.compress(data)
        first = seq - len(out) + 1
        self.journal.append(encode_frame(TYPE_BATCH, CODEC_ZSTD, first, seq, payload), first, seq)
        self._to_summarise(data)

    def write_summary(self) -> None:
        from runstream.format.atomic import write_json_atomic
        from runstream.read.local import replay

        if not self.keep_summary:
            return
        try:
            if self._summary_replay:
                state, _ = replay(self.run_dir, keep_rows=False)
            else:
                self.summarise(float("inf"))
                state = self.summary
            write_json_atomic(self.run_dir / "files" / "summary.json", json_safe(state.summary))
        except OSError as e:
            log.warning("could not write summary.json: %s", e)
        except Exception:  # a record the fold cannot take: summary.json is an extra, the exit is not
            log.exception("could not compute summary.json")


def ring_first_seq(ring: RingMap) -> int:
    """The seq the producer started at (1, or more for a resumed run): word W_FIRST_SEQ."""
    return int(ring.words[W_FIRST_SEQ]) or 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    return parser().parse_args(argv)


def parse_known(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``parse_args`` that returns the arguments it does not know instead of exiting (a node
    sidecar reads ranks' arguments: a newer SDK's must not stop it)."""
    return parser().parse_known_args(argv)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runstream-sidecar")
    p.add_argument("--ring", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--producer-pid", type=int, default=0)
    p.add_argument("--batch-bytes", type=int, default=1 << 20)
    p.add_argument("--batch-age", type=float, default=0.1)
    p.add_argument("--fsync", choices=["group", "always", "never"], default="group")
    p.add_argument("--fsync-interval", type=float, default=1.0)
    p.add_argument("--memory", type=int, default=256 << 20)
    p.add_argument("--zstd-level", type=int, default=3)
    # online runs: the server's address (the API key comes in RUNSTREAM_API_KEY, never argv)
    p.add_argument("--url", default=None)
    p.add_argument("--entity", default="")
    p.add_argument("--project", default="")
    p.add_argument("--run-id", default="")
    p.add_argument("--writer-id", default="")
    p.add_argument("--resume", default="")
    p.add_argument("--upload-timeout", type=float, default=55.0)
    p.add_argument("--final-write-timeout", type=float, default=FINAL_WRITE_TIMEOUT)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    # what the sidecar records by itself (settings.py documents each)
    p.add_argument("--stats-interval", type=float, default=2.0, help="seconds between samples; 0: none")
    p.add_argument("--disable-code", action="store_true")
    p.add_argument("--disable-git", action="store_true")
    p.add_argument("--save-code", action="store_true")
    p.add_argument("--ignore-glob", action="append", default=[])
    p.add_argument("--console", action="append", default=[], help="STREAM:READFD:TEEFD (console.md)")
    return p


def take_lock(run_dir: Path) -> int | None:
    fd = os.open(run_dir / "sidecar.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        filename=str(opts.run_dir / "logs" / "sidecar.log"),
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(message)s",
    )
    # The producer's terminal may send SIGINT to the whole foreground group before we detach;
    # the sidecar finishes draining regardless.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lock = take_lock(opts.run_dir)
    if lock is None:
        log.error("another sidecar holds %s; exiting", opts.run_dir / "sidecar.lock")
        return 3
    ring = RingMap.attach(opts.ring)
    log.info("sidecar up: ring %s (%d bytes), run dir %s", opts.ring, ring.capacity, opts.run_dir)
    sidecar = Sidecar(ring, opts.run_dir, opts)
    if opts.loop == "uvloop":
        import uvloop

        code = uvloop.run(sidecar.run())
    else:  # after uvloop aborted (libuv aborts on some unexpected write errors): the stdlib loop
        code = asyncio.run(sidecar.run())
    log.info(
        "sidecar done: %d records journaled (seq %d, synced %d), head %d",
        sidecar.journaled,
        sidecar.journal.written_seq,
        sidecar.journal.synced_seq,
        int(ring.words[W_HEAD]),
    )
    if ring.words[W_CLOSED] or not sidecar.producer_alive():
        with contextlib.suppress(OSError):
            os.unlink(opts.ring)
    os.close(lock)
    return code


if __name__ == "__main__":
    sys.exit(main())
