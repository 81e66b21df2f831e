"""Power loss (tests/support/crashfs.py): whenever the power goes, the journal reopens and still
holds every record that was reported synced, in order, with nothing that was never written."""

from __future__ import annotations

import errno
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from runstream.format.journal_read import read_journal
from runstream_ingest.sidecar.fsutil import atomic_replace
from runstream_ingest.sidecar.journal import JournalWriter
from tests.support.crashfs import MODES, CrashFileSystem, PowerCut
from tests.support.frames import Ledger, bodies_st, codec_st

D = "/data/runs/r1/journal"
MARKER = "/data/runs/r1/shipped"
policies = st.sampled_from(["group", "always", "never"])
modes = st.sampled_from(MODES)


def new_fs() -> CrashFileSystem:
    fs = CrashFileSystem()
    fs.mkdir("/data")
    fs.fsync_dir("/")
    return fs


def reopen_and_check(
    fs: CrashFileSystem, ledger: Ledger, durable: set[int], policy: str = "group"
) -> JournalWriter:
    """The checks every crash state must pass: the journal opens, returns an in-order subset of
    what was written that includes ``durable``, and takes new appends after what it holds."""
    w = JournalWriter(D, fs, fsync=policy)  # type: ignore[arg-type]
    w.open()
    got = ledger.check_subsequence(read_journal(D, fs).iter_records())
    missing = durable - set(got)
    assert not missing, f"records reported synced were lost: {sorted(missing)[:10]}"
    assert w.last_seq == (got[-1] if got else 0)
    ledger.next_seq = w.last_seq + 1
    b = ledger.batch([b"after the crash"])
    w.append(b.frame, b.first_seq, b.last_seq)
    assert w.sync()
    assert ledger.check_subsequence(read_journal(D, fs).iter_records()) == [*got, b.last_seq]
    return w


op_st = st.one_of(
    st.tuples(st.just("append"), bodies_st, codec_st),
    st.tuples(st.just("sync")),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("kill")),
    st.tuples(st.just("fault"), st.sampled_from(["write", "fsync", "fsync_dir", "create_excl", "truncate"])),
)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(op_st, max_size=20),
    policy=policies,
    segment_bytes=st.sampled_from([250, 1 << 20]),
    mode=modes,
    rng=st.randoms(use_true_random=False),
)
def test_power_loss_at_any_point_keeps_everything_reported_synced(
    ops: list[tuple[Any, ...]], policy: str, segment_bytes: int, mode: str, rng: random.Random
) -> None:
    fs = new_fs()
    ledger = Ledger()
    w = JournalWriter(D, fs, fsync=policy, segment_bytes=segment_bytes)  # type: ignore[arg-type]
    w.open()
    alive: set[int] = set()  # records in the journal or held by its writer
    durable: set[int] = set()  # what the test itself knows was made durable
    claimed = 0  # the highest synced_seq any writer reported
    # Records a new writer finds only in pages a failed fsync dropped: they read back fine, so it
    # must trust them (the documented limit), and nothing said about them is checked.
    tainted: set[int] = set()
    faulted = False
    for op in ops:
        if op[0] == "append":
            b = ledger.batch(op[1], op[2])
            w.append(b.frame, b.first_seq, b.last_seq)
            alive |= set(range(b.first_seq, b.last_seq + 1))
            if policy == "always" and not faulted:
                assert w.synced_seq == b.last_seq
        elif op[0] == "sync" and w.sync():
            durable = set(alive)
            assert w.synced_seq == max(durable, default=0)
        elif op[0] == "fault":
            faulted = True
            fs.fail(op[1], errno.ENOSPC, times=2, partial=3 if op[1] == "write" else None)
        elif op[0] in ("reopen", "kill"):
            if op[0] == "reopen" and w.close():
                durable = set(alive)
            elif op[0] == "kill":
                fs.kill()  # frames only in its memory die with it; the page cache does not
            poisoned = fs.has_lost_pages()
            w = JournalWriter(D, fs, fsync=policy, segment_bytes=segment_bytes)  # type: ignore[arg-type]
            w.open()  # the armed faults stay: open must ride them out
            alive = set(ledger.check_subsequence(read_journal(D, fs).iter_records()))
            if poisoned:
                tainted |= alive
            ledger.next_seq = w.last_seq + 1  # what a writer's successor would continue from
        claimed = max(claimed, w.synced_seq)
    fs.crash(rng, mode)
    reopen_and_check(fs, ledger, (durable | set(range(1, claimed + 1))) - tainted, policy)


def test_crash_check_catches_a_writer_whose_fsync_does_not_persist() -> None:
    """The harness can fail: with fsync made a no-op (what a writer that forgot to fsync would
    leave), a drop-everything crash loses records the writer reported synced."""
    for lie_about in ("fsync", "fsync_dir"):
        fs = new_fs()
        ledger = Ledger()
        w = JournalWriter(D, fs)
        w.open()
        b = ledger.batch([b"x"])
        w.append(b.frame, b.first_seq, b.last_seq)
        setattr(fs, f"lying_{lie_about}", True)
        assert w.sync()
        setattr(fs, f"lying_{lie_about}", False)
        fs.crash(random.Random(0), "drop")
        with pytest.raises(AssertionError, match="reported synced were lost"):
            reopen_and_check(fs, ledger, set(range(1, w.synced_seq + 1)))


@pytest.mark.parametrize(
    "made", [["/data/runs"], ["/data/runs", "/data/runs/r1"], ["/data/runs", "/data/runs/r1", D]]
)
def test_directory_a_killed_writer_made_but_never_fsynced_becomes_durable(made: list[str]) -> None:
    """A writer killed between mkdir and the parent's fsync leaves one entry that is not durable
    (the deepest); the next writer relies on it, so it must make it durable."""
    fs = new_fs()
    for d in made[:-1]:
        fs.mkdir(d)
        fs.fsync_dir(d.rsplit("/", 1)[0])
    fs.mkdir(made[-1])  # ... and killed here
    ledger = Ledger()
    w = JournalWriter(D, fs)
    w.open()
    b = ledger.batch([b"x"])
    w.append(b.frame, b.first_seq, b.last_seq)
    assert w.sync()
    fs.crash(random.Random(0), "drop")
    reopen_and_check(fs, ledger, {1})


# --- a power cut in the middle of anything ----------------------------------------------------
class Life:
    """A journal's life, scripted: create, append, group commit, rotate, write a marker, close,
    reopen, append again.  Tracks what it may claim at any moment."""

    def __init__(self, fs: CrashFileSystem) -> None:
        self.fs = fs
        self.ledger = Ledger()
        self.writers: list[JournalWriter] = []
        self.marker_done: bytes | None = None  # the last marker content atomic_replace returned
        self.marker_trying: bytes | None = None

    def claimed(self) -> set[int]:
        return set(range(1, max((w.synced_seq for w in self.writers), default=0) + 1))

    def writer(self) -> JournalWriter:
        w = JournalWriter(D, self.fs, segment_bytes=400)
        self.writers.append(w)
        w.open()
        return w

    def append(self, w: JournalWriter, n: int) -> None:
        for _ in range(n):
            b = self.ledger.batch([b"r" * 60, b"s"])
            w.append(b.frame, b.first_seq, b.last_seq)

    def marker(self, content: bytes) -> None:
        self.marker_trying = content
        atomic_replace(self.fs, MARKER, content)
        self.marker_done = content

    def run(self) -> None:
        w = self.writer()
        self.append(w, 3)
        w.sync()
        self.marker(b"shipped up to 6")
        self.append(w, 4)
        w.sync()
        self.marker(b"shipped up to 14")
        w.close()
        w = self.writer()
        self.append(w, 2)
        w.sync()
        w.close()

    def check_marker(self) -> None:
        content = self.fs.read_all(MARKER) if self.fs.exists(MARKER) else None
        assert content in {self.marker_done, self.marker_trying}, content


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=modes, mode2=modes, rng=st.randoms(use_true_random=False))
def test_power_cut_after_any_operation_leaves_a_journal_that_opens(
    data: st.DataObject, mode: str, mode2: str, rng: random.Random
) -> None:
    dry = new_fs()
    Life(dry).run()
    total = dry.ops

    fs = new_fs()
    life = Life(fs)
    fs.cut_after(data.draw(st.integers(0, total), label="cut at"))
    try:
        life.run()
    except PowerCut:
        pass
    claimed = life.claimed()
    fs.crash(rng, mode)
    life.check_marker()

    # Power goes again while the next writer is recovering the journal.
    fs.cut_after(data.draw(st.integers(0, 40), label="second cut at"))
    try:
        JournalWriter(D, fs).open()
    except PowerCut:
        pass
    fs.crash(rng, mode2)
    life.check_marker()
    reopen_and_check(fs, life.ledger, claimed).close()
    atomic_replace(fs, MARKER, b"after")  # copes with a temp file the cut left behind
    assert fs.read_all(MARKER) == b"after"


# --- the writer against a model ---------------------------------------------------------------
class JournalMachine(RuleBasedStateMachine):
    """Random interleavings of appends, syncs, injected I/O errors, clean reopens, kills and
    power cuts, checked against a model of which records exist and which must be durable."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = new_fs()
        self.ledger = Ledger()
        self.alive: list[int] = []  # seqs that exist: in the journal or held by the writer
        self.durable: set[int] = set()
        self.policy = "group"

    @initialize(policy=policies, segment_bytes=st.sampled_from([300, 1 << 20]))
    def start(self, policy: str, segment_bytes: int) -> None:
        self.policy, self.segment_bytes = policy, segment_bytes
        self.w = self._open()

    def _open(self) -> JournalWriter:
        w = JournalWriter(D, self.fs, fsync=self.policy, segment_bytes=self.segment_bytes)  # type: ignore[arg-type]
        w.open()
        got = self.ledger.check_subsequence(read_journal(D, self.fs).iter_records())
        assert self.durable <= set(got), sorted(self.durable - set(got))[:10]
        assert w.last_seq == (got[-1] if got else 0)
        self.alive = got
        self.durable = set(got)  # open() fsyncs whatever it found
        self.ledger.next_seq = w.last_seq + 1
        return w

    @rule(bodies=bodies_st, codec=codec_st)
    def append(self, bodies: list[bytes], codec: int) -> None:
        b = self.ledger.batch(bodies, codec)
        self.w.append(b.frame, b.first_seq, b.last_seq)
        self.alive.extend(range(b.first_seq, b.last_seq + 1))

    @rule()
    def sync(self) -> None:
        if self.w.sync():
            self.durable = set(self.alive)
            assert self.w.synced_seq == self.alive[-1] if self.alive else True

    @rule()
    def retry(self) -> None:
        self.w.retry()

    @rule(op=st.sampled_from(["fsync", "fsync_dir"]), times=st.integers(1, 3))
    def fail_fsync(self, op: str, times: int) -> None:
        if self.policy == "never":
            # Not modelled: "never" keeps no copies to rewrite, so after a failed fsync nobody
            # can tell, even after a reopen, which records a power cut would take.
            return
        self.fs.fail(op, errno.EIO, times=times)

    @rule(err=st.sampled_from([errno.ENOSPC, errno.EIO]), times=st.integers(1, 3), partial=st.integers(0, 50))
    def fail_write(self, err: int, times: int, partial: int) -> None:
        self.fs.fail("write", err, times=times, partial=partial)

    @rule(op=st.sampled_from(["create_excl", "truncate"]))
    def fail_other(self, op: str) -> None:
        self.fs.fail(op, errno.ENOSPC, times=2)

    @rule()
    def close_and_reopen(self) -> None:
        self.fs.faults.clear()
        assert self.w.close()
        self.durable = set(self.alive)
        self.w = self._open()
        assert self.alive == sorted(self.durable), "a clean close lost records"

    # Killed while holding frames in memory, the writer loses them (the page cache copy may be in a
    # segment whose fsync failed); so a kill is modelled only when nothing is held.
    @precondition(lambda self: self.w.pending_bytes == 0 and not self.w.degraded)
    @rule()
    def kill_and_reopen(self) -> None:
        self.fs.faults.clear()
        self.fs.kill()
        alive = self.alive
        self.durable |= {s for s in alive if s <= self.w.synced_seq}
        self.w = self._open()
        assert self.alive == alive, "a killed writer lost records it had written"

    @rule(mode=modes, rng=st.randoms(use_true_random=False))
    def power_cut(self, mode: str, rng: random.Random) -> None:
        self.durable |= {s for s in self.alive if s <= self.w.synced_seq}
        self.fs.crash(rng, mode)
        self.w = self._open()

    @invariant()
    def journal_holds_what_was_written(self) -> None:
        if not hasattr(self, "w"):
            return
        got = self.ledger.check_subsequence(read_journal(D, self.fs).iter_records())
        assert set(got) <= set(self.alive)
        written = {s for s in self.alive if s <= self.w.written_seq}
        assert written <= set(got), sorted(written - set(got))[:10]
        assert self.w.synced_seq <= self.w.written_seq <= self.w.last_seq


JournalMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_journal_state_machine = JournalMachine.TestCase
