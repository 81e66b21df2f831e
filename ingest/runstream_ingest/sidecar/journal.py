"""The journal: a run's durable, append-only log of compressed record batches.

Design note
===========

What it is for
    The sidecar drains the shared-memory ring, cuts batches and hands each one, compressed, to
    ``JournalWriter.append`` as one *frame*.  The journal must never stall or crash the sidecar
    (a full or failing disk is a state to ride out, not an exception), must never lose a frame
    it has acknowledged as synced, and must stay readable after any crash.

Layout (docs/journal-format.md has the byte-level grammar)
    A journal is a directory of segment files ``seg-000001.rsj``, ``seg-000002.rsj``, ... read
    in numeric order.  A segment is a run of self-delimiting frames: a 32-byte header (magic,
    version, type, codec, length, CRC-32C, first and last record seq) and a payload.  Nothing
    else is in a segment: no file header, no index, no footer, so a segment cut short still reads
    as the frames it holds whole, and any byte range can be skipped by searching for the magic.

Invariants
    * Frames reach files in ``append`` order.  A frame is written whole or undone: a partial
      write is truncated away, and if that fails the segment is abandoned for a fresh one.
    * A frame counts as synced only once an ``fsync`` that started after it was written
      succeeded, on its segment and (for a new segment) on the directory.
    * A failed fsync is never trusted on retry: after EIO the kernel may have dropped the dirty
      pages, and a second fsync of the same file would "succeed" over a hole.  Every frame not
      yet covered by a good fsync is therefore kept in memory (``unsynced``) and, when an fsync
      fails, rewritten into a fresh segment, whose fsync is the one that counts.  A frame may
      so appear twice in a journal, and a rewrite may follow newer frames that survived; the
      reader takes frames in seq order and returns each record once.
    * Records carry seqs that grow by one; the journal only needs them to be increasing across
      frames, and never looks inside a payload.

Write flow (``append``, on the sidecar's event loop)
    The frame joins the ``pending`` queue; pending frames are written in order into the current
    segment (a new one is made, O_EXCL, when there is none or the current one is full).  A write
    error leaves the frame, and all after it, pending; they are retried, oldest first, by the
    next ``append``, ``sync`` or ``retry``.  No fsync happens here except with ``fsync="always"``.

Sync flow (``sync``, on one worker thread, "group commit")
    Under the state lock: write what is pending, then note what an fsync now would cover (the
    size of every dirty segment, the number of unsynced frames, whether the directory gained a
    segment).  Without the lock: fsync the directory and the dirty segments.  Under the lock
    again: on success, drop the covered frames from memory and advance ``synced_seq``; on
    failure, close every open segment, put the unsynced frames back at the head of the pending
    queue, and (once per call) write them into a fresh segment and fsync that.  If that fails
    too, the writer is *degraded*: rewriting on every call would only multiply the data on a
    disk that cannot sync, so it keeps appending where it is, holds at most half its memory
    budget of frames for a later rewrite (older ones are let go and never reported synced),
    and each ``sync`` only probes with an fsync.  When a probe succeeds, what is held is
    rewritten once into a fresh segment, and that segment's fsync is the one trusted.

Recovery flow (``open``)
    List the segments; scan each one, frame by frame, resyncing over damage as the reader does;
    learn ``last_seq``; cut the last segment back to the end of its last valid frame (a write
    torn by a crash); fsync every segment and the directory, since a writer killed before its
    group commit may have left them dirty; continue appending to the last segment.  So after
    ``open``, everything the journal holds is durable: ``synced_seq == written_seq == last_seq``.
    Unless an fsync fails (or a segment cannot be read): then nothing from the lowest seq it
    covered on is reported synced by this writer, as it holds no copy to rewrite, and a segment
    whose fsync failed is not appended to.

Reserve (``reserve_path``)
    A file of ``reserve_bytes`` written at ``open`` and removed at ``close``: disk space the
    caller frees (``release_reserve``) when the disk is full and it must still write a last frame,
    having given up on the frames it held (``discard_pending``).

Limits
    * One writer per journal directory at a time; the caller (the sidecar) must ensure it.
    * A writer killed while it holds frames in memory (pending on a full disk, or waiting to be
      rewritten after a failed fsync) loses them.  Worse, after a failed fsync the abandoned
      segment still reads back fine from the page cache, so the next ``open`` counts its frames
      as durable although a power cut may turn them into zeros: Linux does not report a
      writeback error, once reported, to descriptors opened later.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal, NamedTuple

from runstream.format.frame import (
    HEADER_SIZE,
    MAGIC,
    SEQ_OFFSET,
    SEQS,
    TYPE_BATCH,
    parse_segment_name,
    segment_name,
)
from runstream.format.fs import FileSystem, OsFileSystem
from runstream_ingest.sidecar.fsutil import make_dir_durable, make_dirs

__all__ = ["FsyncPolicy", "JournalWriter"]

log = logging.getLogger("runstream.journal")

DEFAULT_SEGMENT_BYTES = 64 * 2**20  # rotation size: the unit a shipper can delete when done
DEFAULT_MEMORY_LIMIT = 256 * 2**20
# A reserve file (``reserve_path``, beside the journal directory: on the same file system) holds
# disk space for the last words of a writer whose disk filled up: released by ``release_reserve``,
# it lets the loss counters reach the journal when nothing else can (docs/run-dir.md).

FsyncPolicy = Literal["group", "always", "never"]
_POLICIES = ("group", "always", "never")


class _Frame(NamedTuple):
    data: bytes
    first_seq: int
    last_seq: int


@dataclass(eq=False)
class _Segment:
    index: int
    path: str
    fd: int
    size: int  # end of the last whole frame: where the next frame starts
    synced: int  # how much of it a successful fsync covers


@dataclass
class _SyncPlan:
    segments: list[tuple[_Segment, int]]  # each dirty segment and the size the fsync covers
    closed: list[str]  # dirty segments already closed ("never"): fsynced through a new descriptor
    dir_gen: int | None  # the directory generation an fsync_dir covers, None if clean
    frames: int  # how many of the unsynced frames are covered
    seq: int  # written_seq when planned


class JournalWriter:
    """Appends frames to a journal directory; see the module's design note.

    Concurrency contract: ``open``, ``append``, ``retry`` and ``close`` belong to one thread
    (the sidecar's event loop).  ``sync`` may run on one other thread (an executor) at the same
    time as ``append``/``retry``.  One lock guards the writer's state and is held for writes
    (page-cache speed), never across an fsync: ``sync`` records what an fsync will cover, drops
    the lock for the syscall, and takes it back to apply the outcome.  A second lock serialises
    everything that fsyncs or closes descriptors (``sync``, ``close``), so a descriptor is never
    closed, and its number reused, under an fsync in flight.  The counters are plain ints, safe to
    read from any thread.

    I/O errors never escape ``append``, ``sync``, ``retry`` or ``close``: they are logged once per
    streak, counted in ``errors`` and kept in ``last_error``.  ``open`` raises OSError only when
    the directory cannot be created or listed; it rides out failing fsyncs and unreadable
    segments, reporting synced only what it could make durable.  Misuse (appending before
    ``open`` or after ``close``, a frame that disagrees with its seqs) raises ValueError.

    ``fsync``: "group": the caller runs ``sync()`` about once a second and at close; "always":
    ``append`` fsyncs before it returns; "never": only ``close`` fsyncs, and frames are not kept in
    memory for a rewrite, so nothing is promised before close, and after a failed fsync nothing
    written before it is ever reported synced (``sync``/``close`` return False).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fs: FileSystem | None = None,
        fsync: FsyncPolicy = "group",
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        reserve_path: str | os.PathLike[str] | None = None,
        reserve_bytes: int = 64 * 2**10,
    ) -> None:
        if fsync not in _POLICIES:
            raise ValueError(f"fsync must be one of {_POLICIES}, not {fsync!r}")
        self.directory = os.path.normpath(os.fspath(directory))
        self.policy: FsyncPolicy = fsync
        self.memory_limit = memory_limit
        self.segment_bytes = segment_bytes
        self.reserve_path = os.fspath(reserve_path) if reserve_path is not None else None
        self.reserve_bytes = reserve_bytes
        self._fs: FileSystem = fs if fs is not None else OsFileSystem()
        self._lock = threading.Lock()
        self._sync_mutex = threading.Lock()
        self._state: Literal["new", "open", "closed"] = "new"
        self._current: _Segment | None = None
        self._retiring: list[_Segment] = []  # rotated or abandoned, still open: to fsync and close
        self._closed_dirty: list[str] = []  # "never" closes full segments unsynced: fsync by path
        # Seqs from here on may be lost for good and are not held in memory to rewrite (a failed
        # fsync with "never", or at open): synced_seq must never reach it.
        self._doubtful_from: int | None = None
        self._next_index = 1
        # Bumped per segment created: the directory needs an fsync while it is ahead of the other.
        self._dir_gen = 0
        self._dir_synced_gen = 0
        self._pending: deque[_Frame] = deque()  # not yet written, in append order
        self._unsynced: deque[_Frame] = deque()  # written, not yet covered by a good fsync
        self._failing = False  # inside a streak of errors (logged once)
        self._sync_failed = False  # the streak includes a failed fsync: only a good one ends it
        self._degraded = False  # fsync failed twice in a row: probe before rewriting again
        self.pending_bytes = 0
        self.retained_bytes = 0
        self.frames_written = 0  # frame writes, rewrites after a failed fsync included
        self.bytes_written = 0
        self.written_seq = 0  # highest seq written to a segment still trusted
        self.synced_seq = 0  # highest seq covered by a successful fsync
        self.last_seq = 0  # highest seq the journal holds or has accepted (pending included)
        self.segments = 0  # segment files, found at open or created since
        self.errors = 0  # failed I/O operations
        self.last_error: OSError | None = None
        self.lost_records = 0  # records close() could not get onto disk

    @property
    def degraded(self) -> bool:
        """fsync failed twice in a row: records are written but not made durable, and a sync only
        probes the disk until it works again."""
        return self._degraded

    @property
    def over_limit(self) -> bool:
        """Memory held for a failing disk exceeds ``memory_limit``: stop feeding the writer."""
        return self.pending_bytes + self.retained_bytes > self.memory_limit

    # --- open / recovery -----------------------------------------------------------------------
    def open(self) -> None:
        """Create the journal directory, or recover an existing one (see the design note).

        Raises OSError only when the directory cannot be created or listed.  A failed fsync here
        is logged and counted like any other, and what it covered is never reported synced.
        (No other thread uses the writer yet, so the ``_locked`` helpers run without the lock.)"""
        if self._state != "new":
            raise ValueError("open() called twice")
        fs, directory = self._fs, self.directory
        try:
            make_dir_durable(fs, directory)
        except OSError as e:
            make_dirs(fs, directory)  # raises if the directory cannot exist at all
            self._error_locked("fsync", directory, e)
            self._doubt(1)  # its name may not survive a power cut, nor anything in it
        indexes = sorted(i for i in map(parse_segment_name, fs.listdir(directory)) if i is not None)
        last_seq, lowest = 0, None
        for n, index in enumerate(indexes):
            path = os.path.join(directory, segment_name(index))
            try:
                seg = _recovery_scan(fs, path)
            except OSError as e:  # unreadable: its seqs are unknown, and it is never appended to
                self._error_locked("read", path, e)
                self._doubt(1)
                continue
            last_seq = max(last_seq, seg.highest)
            if seg.lowest is not None:
                lowest = seg.lowest if lowest is None else min(lowest, seg.lowest)
            try:
                _fsync_path(fs, path)  # a writer killed before its group commit leaves dirty pages
            except OSError as e:
                self._error_locked("fsync", path, e)
                self._doubt(seg.lowest)
                continue  # never trusted again: not even to append to
            if n == len(indexes) - 1:
                self._current = self._reuse_last(index, path, seg.end, seg.size)
        try:
            fs.fsync_dir(directory)
        except OSError as e:
            self._error_locked("fsync", directory, e)
            self._doubt(lowest)
        self._next_index = indexes[-1] + 1 if indexes else 1
        self.segments = len(indexes)
        self.last_seq = self.written_seq = last_seq
        self.synced_seq = last_seq if self._doubtful_from is None else min(last_seq, self._doubtful_from - 1)
        self._state = "open"
        self._make_reserve()

    # --- the reserve ---------------------------------------------------------------------------
    def _make_reserve(self) -> None:
        """Hold ``reserve_bytes`` of disk (an earlier writer's reserve is kept as it is).  Best
        effort: on a disk already full there is nothing to hold."""
        path = self.reserve_path
        if path is None or not self.reserve_bytes:
            return
        try:
            fd = self._fs.create_excl(path)
        except FileExistsError:
            return
        except OSError as e:
            log.warning("could not reserve %d bytes in %s: %s", self.reserve_bytes, path, e)
            return
        try:
            block = bytes(min(self.reserve_bytes, 1 << 16))
            left = self.reserve_bytes
            while left > 0:
                n = self._fs.write(fd, block[:left])
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                left -= n
        except OSError as e:
            log.warning("could not reserve %d bytes in %s: %s", self.reserve_bytes, path, e)
            self._fs.close(fd)
            self.release_reserve()  # a partial one would only confuse the next writer
            return
        self._fs.close(fd)

    def release_reserve(self) -> bool:
        """Give the reserve's space back to the file system; True if there was one."""
        if self.reserve_path is None:
            return False
        try:
            self._fs.remove(self.reserve_path)
        except OSError:
            return False
        return True

    def discard_pending(self) -> list[tuple[bytes, int, int]]:
        """Give up on the frames waiting for the disk (the caller counts their records as lost):
        they are returned, (frame, first seq, last seq), in order, and the writer holds none.
        Their seqs stay used: ``last_seq`` does not go back."""
        with self._lock:
            out = [(f.data, f.first_seq, f.last_seq) for f in self._pending]
            self._pending.clear()
            self.pending_bytes = 0
            self._maybe_recovered_locked()
        return out

    def _reuse_last(self, index: int, path: str, end: int, size: int) -> _Segment | None:
        """Continue in the last segment, cutting off a torn tail first; None if that fails (the
        next append then starts a fresh segment)."""
        fd = None
        try:
            fd = self._fs.open_append(path)
            if end < size:
                self._fs.truncate(fd, end)  # nothing valid follows ``end``
                self._fs.fsync(fd)
        except OSError as e:
            self._error_locked("reopen", path, e)
            if fd is not None:
                self._close_quietly(fd)
            return None
        return _Segment(index, path, fd, end, end)

    def _doubt(self, seq: int | None) -> None:
        """Records from ``seq`` on may not be durable and are not held in memory: never report
        them synced (until a reopen finds them fsynced)."""
        if seq is not None:
            self._doubtful_from = seq if self._doubtful_from is None else min(self._doubtful_from, seq)

    # --- append / retry ------------------------------------------------------------------------
    def append(self, frame: bytes, first_seq: int, last_seq: int) -> None:
        """Take one frame from ``encode_frame``.  Never raises on I/O errors: a frame the disk
        does not take stays in memory, in order, and is retried (see ``over_limit``)."""
        if len(frame) < HEADER_SIZE or frame[:4] != MAGIC:
            raise ValueError("not an encoded frame")
        if SEQS.unpack_from(frame, SEQ_OFFSET) != (first_seq, last_seq):
            raise ValueError(f"frame header disagrees with seqs {first_seq}..{last_seq}")
        with self._lock:
            self._check_open()
            self._pending.append(_Frame(bytes(frame), first_seq, last_seq))
            self.pending_bytes += len(frame)
            self.last_seq = max(self.last_seq, last_seq)
            self._flush_locked()
        if self.policy == "always":
            self.sync()
        else:
            self._close_idle_segments()

    def retry(self) -> bool:
        """Write pending frames now (with "always", fsync them too); True when none are left."""
        if self.policy == "always":
            return self.sync()
        with self._lock:
            self._check_open()
            done = self._flush_locked()
        self._close_idle_segments()
        return done

    # --- sync ----------------------------------------------------------------------------------
    def sync(self) -> bool:
        """Group commit: make every frame appended before the call durable.  True when that
        worked; on False the frames stay in memory and a later ``sync`` tries again (in a fresh
        segment if an fsync failed).  Safe to run on a worker thread alongside ``append``."""
        with self._sync_mutex:
            with self._lock:
                self._check_open()
            return self._sync_serialized()

    def _sync_serialized(self) -> bool:
        # Round two exists for the frames a failed fsync put back in the queue: it writes them
        # into a fresh segment and fsyncs that.  After two failures in a row the writer is
        # degraded: later calls only probe (fsync what is open) until the disk answers again.
        for round_ in range(2):
            with self._lock:
                self._flush_locked()
                plan = self._plan_locked()
            failure = self._fsync_plan(plan)
            with self._lock:
                if failure is None and self._degraded:
                    # The disk answers again (or nothing was open to probe with), but pages from
                    # before the failures may be gone: rewrite what is held into a fresh segment
                    # and trust that fsync instead.
                    self._degraded = False
                    self._abandon_locked()
                    continue
                if failure is None:
                    self._synced_locked(plan)
                    return not self._pending and self._doubtful_from is None
                self._sync_failed = True
                self._error_locked("fsync", *failure)
                if self.policy == "never":
                    self._abandon_locked()
                    self._doubt(self.synced_seq + 1)  # nothing kept to rewrite
                    return False
                if self._degraded or round_ == 1:
                    # Rewriting on every call would only multiply the data on a disk that cannot
                    # make anything durable: keep appending where we are, and wait.
                    self._degraded = True
                    self._shed_locked()
                    return False
                self._abandon_locked()
        return False

    def _fsync_plan(self, plan: _SyncPlan) -> tuple[str, OSError] | None:
        """Run a plan's fsyncs (without the state lock); the path and error of a failure."""
        path = self.directory
        try:
            if plan.dir_gen is not None:
                self._fs.fsync_dir(path)
            for seg, _size in plan.segments:
                path = seg.path
                self._fs.fsync(seg.fd)
            for path in plan.closed:
                _fsync_path(self._fs, path)
        except OSError as e:
            return path, e
        return None

    def _plan_locked(self) -> _SyncPlan:
        segs = [*self._retiring, *([self._current] if self._current else [])]
        return _SyncPlan(
            segments=[(s, s.size) for s in segs if s.size > s.synced],
            closed=list(self._closed_dirty),
            dir_gen=self._dir_gen if self._dir_gen != self._dir_synced_gen else None,
            frames=len(self._unsynced),
            seq=self.written_seq,
        )

    def _synced_locked(self, plan: _SyncPlan) -> None:
        for seg, size in plan.segments:
            seg.synced = max(seg.synced, size)
        if plan.dir_gen is not None:
            self._dir_synced_gen = max(self._dir_synced_gen, plan.dir_gen)
        del self._closed_dirty[: len(plan.closed)]
        for _ in range(plan.frames):
            self.retained_bytes -= len(self._unsynced.popleft().data)
        seq = plan.seq if self._doubtful_from is None else min(plan.seq, self._doubtful_from - 1)
        self.synced_seq = max(self.synced_seq, seq)
        self._sync_failed = False
        self._maybe_recovered_locked()
        # Segments that were rotated out and are now fully synced have no further use.
        keep = []
        for seg in self._retiring:
            if seg.synced >= seg.size:
                self._close_quietly(seg.fd)
            else:
                keep.append(seg)
        self._retiring = keep

    def _abandon_locked(self) -> None:
        """Trust none of the open segments again: close them all (we hold the sync mutex, so no
        fsync is using them) and put every unsynced frame back at the head of the queue, for
        the next flush to rewrite into a fresh segment."""
        for seg in [*self._retiring, *([self._current] if self._current else [])]:
            self._close_quietly(seg.fd)
        self._retiring, self._current = [], None
        if self.policy == "never":
            self._closed_dirty.clear()
            return
        self._pending.extendleft(reversed(self._unsynced))
        self.pending_bytes += self.retained_bytes
        self.retained_bytes = 0
        self._unsynced.clear()
        self.written_seq = self.synced_seq

    def _shed_locked(self) -> None:
        """While degraded, hold at most half the memory budget for a rewrite: older frames are
        let go (they are in the journal, just not known to be durable) so that a disk which can
        never sync does not stop the sidecar; they are then never reported synced."""
        while self.retained_bytes > self.memory_limit // 2:
            frame = self._unsynced.popleft()
            self.retained_bytes -= len(frame.data)
            self._doubt(frame.first_seq)

    # --- close ---------------------------------------------------------------------------------
    def close(self) -> bool:
        """Write what is pending, fsync (whatever the policy), release the files.  True when
        everything appended is durable; otherwise ``lost_records`` says how much may be lost."""
        with self._sync_mutex:
            with self._lock:
                if self._state != "open":
                    self._state = "closed"
                    return True
            ok = self._sync_serialized()
            with self._lock:
                for seg in [*self._retiring, *([self._current] if self._current else [])]:
                    self._close_quietly(seg.fd)
                self._retiring, self._current = [], None
                self.lost_records = sum(f.last_seq - f.first_seq + 1 for f in self._pending)
                if self.lost_records:
                    log.error(
                        "journal %s closed with %d records (%d bytes) that could not be written",
                        self.directory,
                        self.lost_records,
                        self.pending_bytes,
                    )
                self._state = "closed"
            self.release_reserve()  # this writer is done: the space is the user's again
            return ok and not self.lost_records and self._doubtful_from is None

    def __enter__(self) -> JournalWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals (call with self._lock held) ------------------------------------------------
    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"journal writer is {self._state}, not open")

    def _flush_locked(self) -> bool:
        """Write pending frames in order, stopping at the first failure.  True when none left."""
        while self._pending:
            frame = self._pending[0]
            seg = self._segment_for_locked(len(frame.data))
            if seg is None or not self._write_locked(seg, frame):
                return False
            self._pending.popleft()
            self.pending_bytes -= len(frame.data)
        self._maybe_recovered_locked()
        return True

    def _segment_for_locked(self, size: int) -> _Segment | None:
        seg = self._current
        if seg is not None and seg.size > 0 and seg.size + size > self.segment_bytes:
            self._retiring.append(seg)  # full: the next sync fsyncs and closes it
            seg = self._current = None
        if seg is not None:
            return seg
        for _ in range(16):
            path = os.path.join(self.directory, segment_name(self._next_index))
            try:
                fd = self._fs.create_excl(path)
            except FileExistsError:
                self._next_index += 1  # a file we did not list at open: never write into it
                continue
            except OSError as e:
                self._error_locked("create", path, e)
                return None
            self._next_index += 1
            self.segments += 1
            self._dir_gen += 1  # its name is durable only after the next fsync_dir
            self._current = _Segment(self._next_index - 1, path, fd, 0, 0)
            return self._current
        self._error_locked("create", path, OSError(errno.EEXIST, os.strerror(errno.EEXIST)))
        return None

    def _write_locked(self, seg: _Segment, frame: _Frame) -> bool:
        view = memoryview(frame.data)
        try:
            while view:
                n = self._fs.write(seg.fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
        except OSError as e:
            self._error_locked("write", seg.path, e)
            try:
                # Undo whatever part of the frame reached the file (even a write that raised
                # may have); with O_APPEND the retry then lands at the same offset.
                self._fs.truncate(seg.fd, seg.size)
            except OSError as e2:
                self._error_locked("truncate", seg.path, e2)
                # A torn frame stays at its end (the reader skips it); go on in a fresh segment.
                self._retiring.append(seg)
                self._current = None
            return False
        seg.size += len(frame.data)
        self.frames_written += 1
        self.bytes_written += len(frame.data)
        self.written_seq = max(self.written_seq, frame.last_seq)
        if self.policy != "never":
            self._unsynced.append(frame)
            self.retained_bytes += len(frame.data)
        return True

    def _error_locked(self, op: str, path: str, err: OSError) -> None:
        self.errors += 1
        self.last_error = err
        if not self._failing:
            self._failing = True
            log.warning(
                "journal %s failed on %s: [errno %s] %s; holding %d bytes in memory and retrying",
                op,
                path,
                err.errno,
                err.strerror,
                self.pending_bytes + self.retained_bytes,
            )

    def _maybe_recovered_locked(self) -> None:
        if self._failing and not self._pending and not self._sync_failed:
            self._failing = False
            log.warning("journal %s recovered (%d errors so far)", self.directory, self.errors)

    def _close_idle_segments(self) -> None:
        """Close rotated-out segments that need no fsync, unless a sync is in flight (it may be
        using their descriptors; it closes them itself)."""
        if not self._retiring or not self._sync_mutex.acquire(blocking=False):
            return
        try:
            with self._lock:
                keep = []
                for seg in self._retiring:
                    if seg.synced < seg.size and self.policy == "never":
                        self._closed_dirty.append(seg.path)  # fsynced by path at close
                    elif seg.synced < seg.size and not self._degraded:
                        keep.append(seg)
                        continue
                    # (Degraded, only the copies held in memory will be trusted, once rewritten.)
                    self._close_quietly(seg.fd)
                self._retiring = keep
        finally:
            self._sync_mutex.release()

    def _close_quietly(self, fd: int) -> None:
        # Closing follows a successful fsync or an abandoned file: nothing to learn from errors.
        try:
            self._fs.close(fd)
        except OSError:
            pass


class _Recovered(NamedTuple):
    end: int  # end of the last valid frame
    size: int
    lowest: int | None  # lowest and highest record seq in its BATCH frames
    highest: int


def _recovery_scan(fs: FileSystem, path: str) -> _Recovered:
    # journal_reader imports this module's format constants, hence the late import.
    from runstream.format.journal_read import ScannedFrame, scan_segment

    end = size = highest = 0
    lowest: int | None = None
    for item in scan_segment(fs, path):
        if isinstance(item, ScannedFrame):
            end = size = item.offset + HEADER_SIZE + item.header.payload_len
            if item.header.type == TYPE_BATCH:
                highest = max(highest, item.header.last_seq)
                first = item.header.first_seq
                lowest = first if lowest is None else min(lowest, first)
        else:
            size = item.offset + item.length
    return _Recovered(end, size, lowest, highest)


def _fsync_path(fs: FileSystem, path: str) -> None:
    fd = fs.open_read(path)
    try:
        fs.fsync(fd)
    finally:
        fs.close(fd)
