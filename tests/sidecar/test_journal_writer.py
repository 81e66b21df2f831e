"""JournalWriter: recovery on reopen, fsync policies, and every I/O error path (with the
fault-injecting in-memory file system), plus a sanity run on the real disk."""

from __future__ import annotations

import errno
import logging
import os
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runstream.format.frame import encode_frame
from runstream.format.journal_read import JournalReader, read_journal
from runstream_ingest.sidecar.journal import JournalWriter
from tests.support.crashfs import CrashFileSystem
from tests.support.frames import Batch, Ledger

D = "/data/run/journal"
SEG1, SEG2, SEG3 = (f"{D}/seg-00000{i}.rsj" for i in (1, 2, 3))


@pytest.fixture
def fs() -> CrashFileSystem:
    fs = CrashFileSystem()
    fs.mkdir("/data")
    fs.fsync_dir("/")
    return fs


def opened(fs: CrashFileSystem, **kw: object) -> JournalWriter:
    w = JournalWriter(D, fs, **kw)  # type: ignore[arg-type]
    w.open()
    return w


def put(w: JournalWriter, ledger: Ledger, n: int = 1, size: int = 8) -> list[Batch]:
    out = []
    for _ in range(n):
        b = ledger.batch([bytes([ledger.next_seq % 256]) * size, b"x"])
        w.append(b.frame, b.first_seq, b.last_seq)
        out.append(b)
    return out


def read_seqs(fs: CrashFileSystem, ledger: Ledger) -> list[int]:
    return ledger.check_subsequence(read_journal(D, fs).iter_records())


@pytest.fixture
def journal_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="runstream.journal"):
        yield caplog


# --- recovery ---------------------------------------------------------------------------------
def test_writer_truncates_torn_tail_on_reopen(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 3)
    assert w.close()
    good = fs.contents(SEG1)
    torn = ledger.batch([b"lost" * 10]).frame[:-5]
    fs.overwrite(SEG1, good + torn)

    w = opened(fs)
    assert fs.contents(SEG1) == good
    assert fs.durable_contents(SEG1) == good, "the truncation must be fsynced"
    assert w.last_seq == w.synced_seq == 6
    ledger.next_seq = 7  # the torn frame's records were never in the journal
    put(w, ledger, 1)
    assert w.close()
    reader = read_journal(D, fs)
    assert ledger.check_subsequence(reader.iter_records()) == list(range(1, 9))
    assert reader.skipped_bytes == 0


def test_writer_keeps_valid_frames_behind_mid_segment_damage_on_reopen(fs: CrashFileSystem) -> None:
    """Recovery cuts only after the LAST valid frame: a flipped byte in the middle of the last
    segment must not make it throw away the good frames that follow."""
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 3)
    assert w.close()
    content = bytearray(fs.contents(SEG1))
    content[40] ^= 0xFF  # inside the first frame's payload
    fs.overwrite(SEG1, bytes(content) + b"\x00" * 9)

    w = opened(fs)
    assert fs.contents(SEG1) == bytes(content)
    assert w.last_seq == 6
    assert w.close()
    assert read_seqs(fs, ledger) == [3, 4, 5, 6]


def test_writer_learns_last_seq_from_every_segment(fs: CrashFileSystem) -> None:
    """After a failed fsync, frames are rewritten into a new segment; a crash mid-rewrite can
    leave an earlier segment holding the highest seq, and reopen must still find it."""
    ledger = Ledger()
    w = opened(fs, segment_bytes=1)  # one frame per segment
    a, b = put(w, ledger, 2)
    assert w.close()
    fs.close(fs.create_excl(SEG3))
    fs.overwrite(SEG3, a.frame)  # a rewrite of seq 1..2 that got no further
    w = opened(fs)
    assert w.last_seq == b.last_seq == 4
    assert w.segments == 3


def test_writer_reopens_an_empty_directory_and_an_empty_segment(fs: CrashFileSystem) -> None:
    w = opened(fs)
    assert (w.last_seq, w.segments) == (0, 0)
    assert w.close()
    assert fs.listdir(D) == []
    fs.close(fs.create_excl(SEG1))
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger)
    assert w.close()
    assert fs.listdir(D) == ["seg-000001.rsj"]
    assert read_seqs(fs, ledger) == [1, 2]


def test_writer_never_writes_into_a_segment_it_did_not_create(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, segment_bytes=1)
    put(w, ledger, 1)
    fs.close(fs.create_excl(SEG2))  # appeared behind the writer's back
    fs.overwrite(SEG2, b"not ours")
    put(w, ledger, 1)
    assert w.close()
    assert fs.contents(SEG2) == b"not ours"
    assert read_seqs(fs, ledger) == [1, 2, 3, 4]


def test_open_rides_out_a_disk_where_every_fsync_fails(fs: CrashFileSystem) -> None:
    """The sidecar must not die at start on such a disk: records are still written (and can be
    read back), but nothing is ever reported synced."""
    fs.fail("fsync", errno.EIO, times=10**6)
    fs.fail("fsync_dir", errno.EIO, times=10**6)
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 3)
    assert not w.sync()
    assert w.synced_seq == 0 and w.written_seq == 6 and w.errors >= 2
    assert not w.close()
    assert read_seqs(fs, ledger) == list(range(1, 7))


def test_open_never_trusts_or_appends_to_a_segment_whose_fsync_failed(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, fsync="never")  # leaves seg 1 dirty, as a writer killed before its commit
    put(w, ledger, 2)
    fs.kill()
    fs.fail("fsync", errno.EIO, path="seg-000001")
    w = opened(fs)
    assert (w.errors, w.last_seq, w.synced_seq) == (1, 4, 0)
    put(w, ledger, 1)
    assert not w.sync()  # seg 2 is synced, but seqs 1..4 may be gone: never claimed
    assert w.synced_seq == 0
    assert not w.close()
    assert fs.listdir(D) == ["seg-000001.rsj", "seg-000002.rsj"]
    assert read_seqs(fs, ledger) == [1, 2, 3, 4, 5, 6]


def test_open_leaves_an_unreadable_segment_alone(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, segment_bytes=1)
    put(w, ledger, 2)
    assert w.close()
    fs.fail("read_at", errno.EIO, path="seg-000002")
    w = opened(fs)
    assert (w.errors, w.last_seq, w.synced_seq) == (1, 2, 0)
    ledger.next_seq = 5  # the writer's successor would not know 3..4 were written
    put(w, ledger, 1)
    assert w.close() is False
    assert fs.listdir(D) == ["seg-000001.rsj", "seg-000002.rsj", "seg-000003.rsj"]
    assert read_seqs(fs, ledger) == [1, 2, 3, 4, 5, 6]


def test_open_starts_a_fresh_segment_when_the_torn_tail_cannot_be_cut(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 1)
    assert w.close()
    fs.overwrite(SEG1, fs.contents(SEG1) + b"torn")
    fs.fail("truncate", errno.EIO)
    w = opened(fs)
    assert w.errors == 1 and w.synced_seq == 2
    put(w, ledger, 1)
    assert w.close()
    reader = read_journal(D, fs)
    assert ledger.check_subsequence(reader.iter_records()) == [1, 2, 3, 4]
    assert reader.torn_tail_bytes == 4


# --- policies and segments --------------------------------------------------------------------
def test_group_policy_append_never_fsyncs_and_sync_covers_everything(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs)
    before = dict(fs.calls)
    put(w, ledger, 5)
    assert fs.calls.get("fsync", 0) == before.get("fsync", 0)
    assert w.written_seq == 10 and w.synced_seq == 0 and w.retained_bytes > 0
    assert w.sync()
    assert w.synced_seq == 10 and w.retained_bytes == 0
    assert fs.durable_contents(SEG1) == fs.contents(SEG1)
    assert "seg-000001.rsj" in fs.listdir(D)


def test_always_policy_makes_each_append_durable_before_returning(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, fsync="always")
    for _ in range(3):
        (b,) = put(w, ledger)
        assert w.synced_seq == b.last_seq
        assert fs.durable_contents(SEG1) == fs.contents(SEG1)


def test_never_policy_fsyncs_only_at_close_and_holds_nothing_in_memory(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, fsync="never", segment_bytes=200)
    before = fs.calls.get("fsync", 0)
    put(w, ledger, 6)
    assert fs.calls.get("fsync", 0) == before
    assert w.retained_bytes == 0 and w.synced_seq == 0
    assert w.close()
    assert w.synced_seq == 12
    assert fs.calls["fsync"] > before


def test_writer_rotates_segments_and_closes_the_old_ones(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, segment_bytes=300)
    put(w, ledger, 10, size=100)
    assert w.segments >= 4
    assert w.sync()
    assert w.close()
    assert read_seqs(fs, ledger) == list(range(1, 21))
    assert all(len(fs.contents(f"{D}/{n}")) <= 300 for n in fs.listdir(D))


def test_writer_rejects_misuse_with_value_error(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = JournalWriter(D, fs)
    b = ledger.batch([b"x"])
    with pytest.raises(ValueError):
        w.append(b.frame, 1, 1)  # not open
    w.open()
    with pytest.raises(ValueError):
        w.append(b.frame, 1, 2)  # disagrees with the header
    with pytest.raises(ValueError):
        w.append(b"\x00" * 40, 1, 1)
    with pytest.raises(ValueError):
        JournalWriter(D, fs, fsync="sometimes")  # type: ignore[arg-type]
    assert w.close()
    with pytest.raises(ValueError):
        w.append(b.frame, 1, 1)


# --- error paths ------------------------------------------------------------------------------
def test_enospc_on_write_keeps_frames_in_memory_reports_once_and_recovers(
    fs: CrashFileSystem, journal_log: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 1)
    fs.fail("write", errno.ENOSPC, times=5)
    put(w, ledger, 3)  # each append retries the oldest pending frame first, and fails
    assert w.pending_bytes > 0 and w.written_seq == 2
    assert w.errors == 3
    assert isinstance(w.last_error, OSError) and w.last_error.errno == errno.ENOSPC
    assert not w.retry()  # the fourth failure
    assert not w.sync() and w.synced_seq == 2  # the fifth: it syncs what it has, not more
    assert w.retry()  # the disk has room again
    assert w.pending_bytes == 0 and w.written_seq == 8
    put(w, ledger, 1)
    assert w.close()
    assert read_seqs(fs, ledger) == list(range(1, 11))
    warnings = [r.getMessage() for r in journal_log.records]
    assert len(warnings) == 2, warnings
    assert "write failed" in warnings[0] and f"errno {errno.ENOSPC}" in warnings[0] and SEG1 in warnings[0]
    assert "recovered" in warnings[1]


def test_partial_write_is_truncated_away_so_readers_see_no_damage(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 1)
    size = len(fs.contents(SEG1))
    fs.fail("write", errno.ENOSPC, times=1, partial=7)
    put(w, ledger, 1)
    assert len(fs.contents(SEG1)) == size
    assert w.errors == 1
    put(w, ledger, 1)
    assert w.close()
    reader = read_journal(D, fs)
    assert ledger.check_subsequence(reader.iter_records()) == list(range(1, 7))
    assert reader.skipped_bytes == 0


def test_partial_write_that_cannot_be_truncated_continues_in_a_fresh_segment(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 1)
    fs.fail("write", errno.EIO, partial=5)
    fs.fail("truncate", errno.EIO)
    put(w, ledger, 2)
    assert w.segments == 2 and w.pending_bytes == 0
    assert w.sync()
    assert w.close()
    reader = read_journal(D, fs)
    assert ledger.check_subsequence(reader.iter_records()) == list(range(1, 7))
    assert reader.torn_tail_bytes == 5  # the abandoned partial frame, skipped


def test_failing_segment_creation_keeps_frames_pending(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs)
    fs.fail("create_excl", errno.ENOSPC, times=2)
    put(w, ledger, 2)
    assert w.written_seq == 0 and w.pending_bytes > 0 and w.segments == 0
    assert w.sync()
    assert w.close()
    assert read_seqs(fs, ledger) == [1, 2, 3, 4]


def test_eio_on_fsync_rewrites_unsynced_frames_into_a_fresh_segment(
    fs: CrashFileSystem, journal_log: pytest.LogCaptureFixture
) -> None:
    """The failed segment is never fsynced again: its frames go into a new segment which is
    fsynced, and a power cut afterwards (the kernel dropped the failed pages) loses nothing."""
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 2)
    assert w.sync()
    put(w, ledger, 3)
    fs.fail("fsync", errno.EIO, path="seg-000001")
    assert w.sync()
    assert w.segments == 2 and w.synced_seq == 10 and w.errors == 1
    put(w, ledger, 1)
    assert w.close()
    opened(fs)  # fsyncs seg 1 again, which "succeeds" over the pages the kernel dropped
    fs.crash(random.Random(0), "drop")
    reader = read_journal(D, fs)
    assert ledger.check_subsequence(reader.iter_records()) == list(range(1, 13))
    assert reader.skipped_bytes > 0  # the zeros where seg 1's failed pages were
    messages = [r.getMessage() for r in journal_log.records]
    assert len(messages) == 2 and "fsync failed" in messages[0] and "recovered" in messages[1]


def test_duplicated_frames_after_fsync_failure_are_read_once(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 3)
    fs.fail("fsync", errno.EIO)
    assert w.sync()
    assert w.close()
    reader = read_journal(D, fs)  # no crash: seg 1 still shows its copies in the page cache
    assert ledger.check_subsequence(reader.iter_records()) == [1, 2, 3, 4, 5, 6]
    assert reader.duplicate_records == 6


def test_eio_on_directory_fsync_is_not_trusted_either(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 2)
    fs.fail("fsync_dir", errno.EIO)
    assert w.sync()
    assert w.segments == 2
    assert w.synced_seq == 4
    assert w.close()
    assert read_seqs(fs, ledger) == [1, 2, 3, 4]


def test_fsync_that_keeps_failing_degrades_to_writing_once_until_the_disk_heals(fs: CrashFileSystem) -> None:
    """Rewriting on every failed sync would multiply the data on a disk that cannot sync: after
    two failures in a row the writer only probes; when a probe works it rewrites what it holds
    once, into a fresh segment, and that fsync is the one it trusts."""
    ledger = Ledger()
    w = opened(fs)
    fault = fs.fail("fsync", errno.EIO, times=10**6)
    put(w, ledger, 2)
    assert not w.sync()  # fails, rewrites into seg 2, fails again: degraded
    assert w.segments == 2 and w.degraded
    written = w.bytes_written
    for _ in range(5):
        (b,) = put(w, ledger, 1)
        assert not w.sync()
        written += len(b.frame)
    assert w.segments == 2, "a failing sync must not start a segment each time"
    assert w.bytes_written == written, "nor rewrite what it holds"
    assert (w.synced_seq, w.pending_bytes, w.over_limit) == (0, 0, False)
    fault.times = 0  # the disk heals
    assert w.sync()
    assert (w.synced_seq, w.segments, w.degraded) == (14, 3, False)
    fs.crash(random.Random(0), "drop")
    assert read_seqs(fs, ledger) == list(range(1, 15))


def test_degraded_writer_does_not_keep_rotated_segments_open(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, segment_bytes=200)
    fs.fail("fsync", errno.EIO, times=10**6)
    for _ in range(30):
        put(w, ledger, 1, size=60)
        w.sync()
    assert w.degraded and w.segments > 10
    assert fs.open_fds() <= 2
    assert read_seqs(fs, ledger) == list(range(1, 61))


def test_memory_held_for_a_disk_that_cannot_sync_is_bounded(fs: CrashFileSystem) -> None:
    """Frames kept for a rewrite are let go past half the memory budget (they stay in the
    journal, readable, but are never reported synced), so the sidecar is not stopped."""
    ledger = Ledger()
    w = opened(fs, memory_limit=1000)
    fault = fs.fail("fsync", errno.EIO, times=10**6)
    for _ in range(20):
        put(w, ledger, 1, size=100)
        assert not w.sync()
        assert w.retained_bytes <= 500 and not w.over_limit
    fault.times = 0
    assert not w.sync()  # synced what it held, but cannot vouch for the frames it let go
    assert w.synced_seq < 40
    assert not w.close()
    assert read_seqs(fs, ledger) == list(range(1, 41))


def test_frames_the_disk_will_not_take_signal_over_limit(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, memory_limit=100)
    fault = fs.fail("write", errno.ENOSPC, times=10**6)
    put(w, ledger, 3)
    assert w.over_limit and w.pending_bytes > 100
    fault.times = 0
    assert w.retry() and w.sync()
    assert not w.over_limit
    assert w.close()
    assert read_seqs(fs, ledger) == list(range(1, 7))


def test_close_reports_lost_records_when_the_disk_never_comes_back(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 1)
    fs.fail("write", errno.ENOSPC, times=10**6)
    put(w, ledger, 2)
    assert not w.close()
    assert w.lost_records == 4


def test_never_policy_never_reports_synced_what_a_failed_fsync_covered(fs: CrashFileSystem) -> None:
    """With "never" nothing is kept to rewrite: after a failed fsync the records written before
    it may be gone, so no later successful fsync may claim them."""
    ledger = Ledger()
    w = opened(fs, fsync="never")
    put(w, ledger, 1)
    fs.fail("fsync", errno.EIO)
    assert not w.sync()
    put(w, ledger, 1)
    assert not w.sync()  # the fresh segment's fsync works, but seqs 1..2 stay doubtful
    assert not w.close()
    assert w.synced_seq == 0
    fs.crash(random.Random(0), "drop")
    assert read_seqs(fs, ledger) == [3, 4]


def test_sync_on_a_worker_thread_alongside_appends_loses_and_duplicates_nothing(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, segment_bytes=2000)
    fs.fail("fsync", errno.EIO, times=3, skip=5)  # and make some of those syncs fail
    stop = threading.Event()
    results: list[bool] = []

    def syncer() -> None:
        while not stop.is_set() or len(results) < 12:  # enough syncs to meet every fault
            results.append(w.sync())

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the two threads as finely as possible
    try:
        t = threading.Thread(target=syncer)
        t.start()
        put(w, ledger, 300, size=30)
        stop.set()
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert w.close()
    assert w.errors == 3
    reader = read_journal(D, fs)
    assert ledger.check_subsequence(reader.iter_records()) == list(range(1, 601))


def test_append_proceeds_during_fsync_and_is_not_claimed_by_it(fs: CrashFileSystem) -> None:
    """The sync lock is not held across the fsync syscall, and an fsync covers only what was
    written before it started: a frame appended while it runs stays unsynced (and retained)."""
    ledger = Ledger()
    w = opened(fs)
    put(w, ledger, 1)
    late = ledger.batch([b"late"])

    def append_from_the_event_loop() -> None:
        t = threading.Thread(target=w.append, args=(late.frame, late.first_seq, late.last_seq))
        t.start()
        t.join(timeout=30)
        assert not t.is_alive(), "append blocked behind an fsync"

    fs.after_fsync = append_from_the_event_loop
    assert w.sync()
    assert (w.synced_seq, w.written_seq) == (2, 3)
    assert w.retained_bytes == len(late.frame)
    fs.crash(random.Random(0), "drop")
    assert read_seqs(fs, ledger) == [1, 2]


def test_never_policy_fsyncs_the_full_segments_it_closed_unsynced(fs: CrashFileSystem) -> None:
    ledger = Ledger()
    w = opened(fs, fsync="never", segment_bytes=150)
    put(w, ledger, 6)
    assert w.segments >= 3
    assert w.close() and w.synced_seq == 12
    fs.crash(random.Random(0), "drop")
    assert read_seqs(fs, ledger) == list(range(1, 13))


# --- the real disk ----------------------------------------------------------------------------
def test_real_disk_write_close_reopen_and_torn_tail(tmp_path: Path) -> None:
    ledger = Ledger()
    directory = tmp_path / "run" / "journal"
    with JournalWriter(directory, segment_bytes=500) as w:
        for _ in range(10):
            b = ledger.batch([b"a" * 50, b"b"])
            w.append(b.frame, b.first_seq, b.last_seq)
        assert w.sync()
    segments = sorted(os.listdir(directory))
    assert len(segments) > 1
    last = directory / segments[-1]
    size = last.stat().st_size
    with open(last, "ab") as f:
        f.write(encode_frame(1, 0, 99, 99, b"torn")[:20])

    w = JournalWriter(directory)
    w.open()
    assert last.stat().st_size == size
    assert w.last_seq == 20
    b = ledger.batch([b"after reopen"])
    w.append(b.frame, b.first_seq, b.last_seq)
    assert w.close()
    reader = JournalReader(directory)
    assert ledger.check_subsequence(reader.iter_records()) == list(range(1, 22))
    assert reader.skipped_bytes == 0
