"""The storage interface the ingest server writes runs into and reads them back from.

Everything a backend must do is in ``Storage``; SQLite (``sqlite/``) is the first backend and
PostgreSQL is meant to be a second module behind the same methods.  ``RunFold`` folds a run's
metadata records (RUN, CONFIG, SUMMARY, STATS, EXIT) with exactly the rules of
``runstream.format.fold.RunState``, so ``runstream inspect`` on a run directory and the server agree on
config, summary and state; backends only persist what it computes.

Concurrency contract (every backend): all writing methods (``open_run``, ``store_batch``,
``store_batches``, ``heartbeat``, ``mark_stale_runs_crashed``, ``compact``) are called from ONE
writer thread (the server's writer executor); a backend may serialise them with a lock but need
not be fast when called from several.  Reading methods (``get_run``, ``list_runs``,
``list_projects``, ``history_keys``, ``scan_history``, ``series``, ``console``,
``system_metrics``, ``files``) may be called from any thread at the same time as writes; each
read sees committed data only (a batch is visible whole or not at all), and one
``scan_history`` iteration sees one snapshot.  ``close`` is called once, after writers and
readers have stopped.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from runstream.format import record as rec
from runstream.format.fold import STATS_KEYS, flatten
from runstream.format.metrics import MetricRules

if TYPE_CHECKING:  # at run time only the annotations name them; series.py imports chunks.py imports us
    from runstream_ingest.server.storage.filters import Field, Node, SortKey
    from runstream_ingest.server.storage.history.series import Series

RESUME_MODES = ("", "allow", "auto", "must", "never", "companion")
RUN_STATES = ("running", "finished", "failed", "crashed")
# Rows whose step does not exceed the run's last stored step are not stored (steps are the row
# key); how many were refused is shown in the summary under this key, like the SDK's own counter.
SERVER_REGRESSIONS_KEY = "_runstream/server_step_regressions"
# Records a writer declared lost (``BatchWrite.lost``: journal damage on the client, records the
# server refused as unstorable), summed over the run's writers and shown in the summary.
SERVER_LOST_KEY = "_runstream/server_lost_records"

# Kinds kept outside the run's history (proto/runstream/v1/ingest.proto).
KIND_SYSTEM = rec.KIND_SYSTEM
KIND_CONSOLE = rec.KIND_CONSOLE
KIND_FILE = rec.KIND_FILE
KIND_MEDIA = rec.KIND_MEDIA  # not kept: its pointer is in the row after it (docs/media.md)


# --- errors ------------------------------------------------------------------------------------
class StorageError(Exception):
    """The storage failed or found damage; the message names the run and what was wrong."""


class RunNotFound(StorageError):
    def __init__(self, run_path: str) -> None:
        super().__init__(f"no run {run_path}")
        self.run_path = run_path


class RankNotFound(RunNotFound):
    """A distributed run has no such rank or node member (or the run is not distributed)."""

    def __init__(self, run_path: str, message: str) -> None:
        super().__init__(run_path)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


class RunExists(StorageError):
    def __init__(self, run_path: str, other_writers: Sequence[str]) -> None:
        super().__init__(
            f"run {run_path} already exists with data from writer(s) {', '.join(other_writers)} "
            "and resume is 'never'"
        )
        self.run_path = run_path


class SequenceGap(StorageError):
    def __init__(self, run_path: str, writer_id: str, expected: int, got: int) -> None:
        super().__init__(
            f"run {run_path} writer {writer_id}: batch starts at seq {got} but the next seq to "
            f"store is {expected} (records {expected}..{got - 1} are missing)"
        )
        self.run_path, self.writer_id, self.expected, self.got = run_path, writer_id, expected, got


class BadBatch(StorageError):
    """A batch whose records do not match its announced seq range."""


class UnstorableBatch(BadBatch):
    """Storing this batch failed in a way storing it again cannot mend (a constraint, a value out
    of the database's range, a bug on these bytes): not the storage's trouble (a full disk), so
    not to be retried.  The client may declare its records lost (docs/protocol.md, "Lost")."""

    def __init__(self, message: str, first_seq: int, last_seq: int) -> None:
        super().__init__(message)
        self.first_seq, self.last_seq = first_seq, last_seq


# --- results -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OpenedRun:
    acked_seq: int  # highest seq stored for this (run, writer); 0 if none
    resumed: bool  # the run (a member: its own row) existed before this call
    last_step: int  # highest history step stored for the run (a member: its row); -1 if none
    run_path: str  # entity/project/run_id: the run the user sees (a distributed job's own id)
    # The run_id of the row this writer's batches and heartbeats go to (``Member.row_id``): the
    # run's own id, or a member row's ("<id>~r<rank>", "<id>~n<node>").  "" means ``run_path``'s.
    row_id: str = ""


@dataclass(frozen=True, slots=True)
class Member:
    """Which part of a distributed job a writer feeds (``Open.member``, docs/protocol.md):
    rank 0 folds into the run's own (top) row, rank r >= 1 into the hidden member row
    ``"<id>~r<r>"``, node k's own writer (``node_writer``) into ``"<id>~n<k>"``."""

    rank: int
    node: int
    world_size: int
    node_count: int
    local_rank: int = 0
    node_writer: bool = False
    host: str = ""

    def check(self) -> None:
        """ValueError naming the field when the member cannot be part of a job."""
        if self.world_size < 2:
            raise ValueError(f"Member.world_size must be at least 2, not {self.world_size}")
        if self.node_count < 1:
            raise ValueError(f"Member.node_count must be at least 1, not {self.node_count}")
        if not 0 <= self.node < self.node_count:
            raise ValueError(f"Member.node {self.node} is outside 0..{self.node_count - 1} (node_count)")
        if not self.node_writer and not 0 <= self.rank < self.world_size:
            raise ValueError(f"Member.rank {self.rank} is outside 0..{self.world_size - 1} (world_size)")
        if not 0 <= self.local_rank < self.world_size:
            raise ValueError(f"Member.local_rank {self.local_rank} is outside 0..{self.world_size - 1}")
        if len(self.host) > 255:
            raise ValueError("Member.host is longer than 255 characters")

    def row_id(self, run_id: str) -> str:
        """The run_id of the row this member's records fold into."""
        if self.node_writer:
            return f"{run_id}{MEMBER_SEP}n{self.node}"
        return run_id if self.rank == 0 else f"{run_id}{MEMBER_SEP}r{self.rank}"


# Separates a distributed run's id from its member rows' suffix: outside the run-id name rule, so
# no run a user names can collide with a member row, and no HTTP path addresses one directly.
MEMBER_SEP = "~"


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """One batch for ``store_batches``: records first_seq..last_seq of one writer of one run."""

    entity: str
    project: str
    run_id: str
    writer_id: str
    first_seq: int
    last_seq: int
    records: Sequence[rec.Record]
    # Not None: no records; the writer declares first_seq..last_seq lost, for this reason.  They
    # are admitted like a batch's (duplicate, overlap, gap), counted, and never stored later.
    lost: str | None = None


@dataclass(frozen=True, slots=True)
class StoreResult:
    duplicate: bool  # every record was already stored; nothing was written
    acked_seq: int  # everything of this writer up to here is durable
    stored: int = 0  # records newly stored by this call
    lost: int = 0  # seqs newly counted as lost by this call (a ``BatchWrite.lost``)


@dataclass(slots=True)
class RunInfo:
    entity: str
    project: str
    run_id: str
    name: str | None
    state: str  # one of RUN_STATES
    exit_code: int | None
    created_at: float
    heartbeat_at: float
    finished_at: float | None
    host: str | None
    program: str | None
    tags: list[str]
    group: str | None
    job_type: str | None
    notes: str | None
    config: dict[str, Any]
    summary: dict[str, Any]
    last_step: int
    row_count: int
    # What the program's run record says beyond the columns above (args, python, pid, ...);
    # filled in for a single run (get_run) only, so that a runs-table page stays small.
    meta: dict[str, Any] = field(default_factory=dict)
    # A distributed run's top row (docs/distributed.md): its ranks and nodes; None otherwise.
    world_size: int | None = None
    node_count: int | None = None


@dataclass(slots=True)
class MemberInfo:
    """One row of a distributed run (docs/distributed.md): rank 0's (the top row, with its own
    state), another rank's (``rank`` set), or a node's own writer (``rank`` None)."""

    run_id: str  # the row's run_id: the run's own for rank 0, else "<id>~r<rank>" / "<id>~n<node>"
    rank: int | None
    node: int | None
    local_rank: int | None
    host: str | None
    state: str  # the member's own state (RUN_STATES)
    exit_code: int | None
    created_at: float
    heartbeat_at: float
    finished_at: float | None
    last_step: int
    row_count: int
    ended_by: str | None
    summary: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Bucket:
    """Statistics of one step range of a series.  ``count`` counts every point, NaN included;
    ``min``/``max``/``mean`` ignore NaN (None when the bucket holds only NaN; ``mean`` is NaN when
    it holds both infinities)."""

    first_step: int
    last_step: int
    min: float | None
    max: float | None
    mean: float | None
    count: int


@dataclass(frozen=True, slots=True)
class ConsoleLine:
    id: int  # increasing in arrival order; pass the last one seen as ``after_id`` to page
    seq: int
    time: float
    stream: str
    line: str


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    sha256: str | None
    size: int | None
    policy: str | None
    time: float


# --- the interface -----------------------------------------------------------------------------
class Storage(Protocol):
    """A place runs are stored.  See the module docstring for the concurrency contract."""

    def open_run(
        self,
        entity: str,
        project: str,
        run_id: str,
        writer_id: str,
        resume: str,
        member: Member | None = None,
    ) -> OpenedRun:
        """Create the entity, project and run (state "running") if needed and register the writer.

        ``resume`` "must" and no such run: RunNotFound.  "never" and the run holds data from
        another writer: RunExists.  "" / "allow" / "auto": create or resume.  A new writer on an
        existing run is a resume: the run is "running" again until an EXIT record arrives.

        ``member`` (a distributed job's writer): the run becomes (or stays) the job's top row and
        the writer feeds the row ``member.row_id(run_id)``, made if needed (a member before rank 0
        makes the top row as a placeholder); "must" asks for the job's run, "never" refuses only
        another writer of the same row (or an existing single-process run), never another rank.
        The returned ``row_id`` names the row that later batches and heartbeats address.
        ValueError for a member that cannot be (``Member.check``).
        """
        ...

    def store_batch(
        self,
        entity: str,
        project: str,
        run_id: str,
        writer_id: str,
        first_seq: int,
        last_seq: int,
        records: Sequence[rec.Record],
    ) -> StoreResult:
        """Store records first_seq..last_seq of one writer exactly once, in ONE transaction.

        Already stored (last_seq <= acked): duplicate, nothing written.  first_seq > acked + 1:
        SequenceGap.  Overlap: only records above acked are stored.  Records not contiguous
        first_seq..last_seq: BadBatch.  When this returns, the batch is durable.
        """
        ...

    def store_batches(self, batches: Sequence[BatchWrite]) -> list[StoreResult | Exception]:
        """Group commit: each batch by the rules of ``store_batch``, in order (a batch sees what
        the ones before it stored), all in ONE transaction, made durable once.

        A batch that fails (SequenceGap, BadBatch, RunNotFound, or anything else) leaves nothing
        of itself behind and does not stop the others: its exception is in its place in the
        result.  A failure of the transaction itself (a full disk at commit) raises, and then no
        batch is stored.  When this returns, every StoreResult in it is durable.
        """
        ...

    def heartbeat(self, entity: str, project: str, run_id: str, at: float) -> None:
        """A sign of life of the row ``run_id`` (a member row's own id for a distributed run's
        member, ``OpenedRun.row_id``); revives a row the janitor marked crashed."""
        ...

    def mark_stale_runs_crashed(self, older_than: float) -> list[str]:
        """Running runs whose last heartbeat is before ``older_than`` become "crashed"; returns
        their paths.  A later batch or heartbeat makes such a run "running" again.  A distributed
        run's ranks are marked one by one (their rows' paths are returned, ``<id>~r<rank>``) and
        the job's state follows (docs/storage.md, "Distributed runs")."""
        ...

    def compact(self, entity: str, project: str, run_id: str) -> int:
        """Merge adjacent small history chunks; returns how many chunks fewer there are.  Safe to
        call at any time (writer thread): every merge is one transaction."""
        ...

    def get_run(self, entity: str, project: str, run_id: str) -> RunInfo | None: ...

    def list_runs(self, entity: str, project: str, limit: int = 100, offset: int = 0) -> list[RunInfo]: ...

    def list_projects(self, entity: str) -> list[str]: ...

    def history_keys(self, entity: str, project: str, run_id: str) -> list[str]:
        """History keys in first-logged order, as ``RunState.keys`` lists them."""
        ...

    def scan_history(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str] | None = None,
        min_step: int | None = None,
        max_step: int | None = None,
        page_size: int = 1000,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of at most ``page_size`` rows in step order.  Each row has ``_step``,
        ``_timestamp``, ``_runtime`` and those of ``keys`` (all keys when None) logged at that
        step; with ``keys`` given, only rows holding at least one of them.  Raises RunNotFound
        at the call, not at the first page."""
        ...

    def series(
        self,
        entity: str,
        project: str,
        run_id: str,
        key: str,
        buckets: int,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> list[Bucket]:
        """The key's numeric points in [min_step, max_step] (default: all) cut into ``buckets``
        equal step ranges; empty ranges are left out."""
        ...

    def console(
        self, entity: str, project: str, run_id: str, after_id: int = 0, limit: int = 1000
    ) -> list[ConsoleLine]: ...

    def system_metrics(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str] | None = None,
        min_time: float | None = None,
        max_time: float | None = None,
    ) -> list[dict[str, Any]]:
        """System samples in time order: ``{"_timestamp": t, "system/...": value, ...}``."""
        ...

    def files(self, entity: str, project: str, run_id: str) -> list[FileInfo]: ...

    def close(self) -> None: ...


def run_path(entity: str, project: str, run_id: str) -> str:
    return f"{entity}/{project}/{run_id}"


def check_batch(path: str, first_seq: int, last_seq: int, records: Sequence[rec.Record]) -> None:
    """Records must be exactly first_seq..last_seq, in order (BadBatch otherwise)."""
    if first_seq < 1 or last_seq < first_seq:
        raise BadBatch(f"run {path}: batch seq range {first_seq}..{last_seq} is empty or starts below 1")
    seqs_are = getattr(records, "seqs_are", None)  # a RecordBatch: its decoder checked every seq
    if seqs_are is not None and seqs_are(first_seq, last_seq):
        return
    n = last_seq - first_seq + 1
    if len(records) != n:
        raise BadBatch(
            f"run {path}: batch {first_seq}..{last_seq} announces {n} records but holds {len(records)}"
        )
    # Two lists compare in C: ~1 ms for 20,000 records.
    if list(map(attrgetter("seq"), records)) != list(range(first_seq, last_seq + 1)):
        bad = next(i for i, r in enumerate(records) if r.seq != first_seq + i)
        raise BadBatch(
            f"run {path}: batch {first_seq}..{last_seq} is not contiguous: "
            f"record {bad} has seq {records[bad].seq}, expected {first_seq + bad}"
        )


class BucketSums:
    """Per-bucket running statistics; bucket i holds steps with (s - lo) * n // span == i."""

    def __init__(self, lo: int, hi: int, n: int) -> None:
        self.lo, self.span, self.n = lo, max(hi - lo + 1, 1), n
        # bucket -> [first_step, last_step, count, nans, min, max, sum]
        self.acc: dict[int, list[Any]] = {}

    def index(self, step: int) -> int:
        return (step - self.lo) * self.n // self.span

    def add_stats(
        self,
        first: int,
        last: int,
        count: int,
        nans: int,
        mn: float | None,
        mx: float | None,
        total: float | None,
    ) -> None:
        a = self.acc.get(self.index(first))
        if total is None:  # NULL: the chunk's sum was NaN (+inf and -inf)
            total = float("nan")
        if a is None:
            self.acc[self.index(first)] = [first, last, count, nans, mn, mx, total]
            return
        a[1] = last
        a[2] += count
        a[3] += nans
        if mn is not None:
            a[4] = mn if a[4] is None else min(a[4], mn)
            a[5] = mx if a[5] is None else max(a[5], mx)
        a[6] += total

    def start(self, i: int) -> int:
        """The first step of bucket i."""
        return self.lo + (i * self.span + self.n - 1) // self.n

    def add_points(self, steps: Sequence[int], values: Sequence[Any]) -> None:
        """Points in step order: cut at bucket starts (bisect), each slice summed in C."""
        i, end = 0, len(steps)
        while i < end:
            j = bisect_left(steps, self.start(self.index(steps[i]) + 1), i, end)
            vals = values[i:j]
            total = sum(vals)
            finite, nans = vals, 0
            if math.isnan(total):  # NaN among them, or both infinities
                finite = [v for v in vals if not math.isnan(v)]
                nans, total = len(vals) - len(finite), sum(finite)
            mn, mx = (float(min(finite)), float(max(finite))) if finite else (None, None)
            self.add_stats(steps[i], steps[j - 1], len(vals), nans, mn, mx, float(total))
            i = j

    def buckets(self) -> list[Bucket]:
        out = []
        for i in sorted(self.acc):
            first, last, count, nans, mn, mx, total = self.acc[i]
            valid = count - nans
            out.append(Bucket(first, last, mn, mx, total / valid if valid else None, count))
        return out


# --- the metadata fold -------------------------------------------------------------------------
@dataclass
class RunFold:
    """A run's metadata as ``RunState`` folds it, loaded from and saved to a backend's run row.

    ``apply`` takes RUN/CONFIG/SUMMARY/STATS/EXIT records; ``add_latest`` takes the last value of
    every key of a batch of rows.  ``dirty`` names the fields a backend must write back.
    Belongs to one thread (the writer's), for the length of one transaction.

    A person's edits of a run's name, tags or notes (``edit``, from the dashboard or the read
    API) are kept in ``meta[EDITED]`` and win over the program's later RUN records, as in W&B:
    a run renamed in the dashboard while it runs stays renamed when the program resumes or
    sends its metadata again.  RUN records without those fields (the sidecar's environment)
    merge into ``meta`` as always.
    """

    EDITED = "_runstream/edited"  # meta: {field: value} of the fields a person edited
    EDITABLE = ("name", "tags", "notes")

    meta: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    latest: dict[str, Any] = field(default_factory=dict)
    pinned: dict[str, Any] = field(default_factory=dict)
    unpinned: list[str] = field(default_factory=list)  # ordered set, as a list for msgpack
    stats: dict[str, Any] = field(default_factory=dict)
    start_time: float | None = None
    exit: dict[str, Any] | None = None
    exit_time: float | None = None
    regressions: int = 0
    lost: int = 0  # seqs the run's writers declared lost (SERVER_LOST_KEY)
    dirty: set[str] = field(default_factory=set)
    # define_metric (format/metrics.py): definitions kept in meta[METRICS], their aggregates in
    # the stats blob (docs/storage.md, "Metric definitions"); None for a run without any
    metrics: MetricRules | None = None

    METRICS = "_runstream/metrics"  # meta: {name: merged definition}

    def load_metrics(self, aggs: Any) -> None:
        """Take the run's definitions from ``meta`` and their aggregates (saved beside the stats)."""
        defs = self.meta.get(self.METRICS)
        if isinstance(defs, dict) and defs:
            self.metrics = MetricRules(defs, aggs if isinstance(aggs, dict) else None)

    def add_columns(self, numeric: dict[str, Any], other: list[tuple[str, int, float, Any]]) -> None:
        """Count a batch's values of the keys whose definitions need aggregates (min, max, mean,
        first, best): ``numeric`` maps keys to columns (``.values`` in step order), ``other``
        holds (key, step, time, value) of the values that are not numbers."""
        rules = self.metrics
        if rules is None:
            return
        for key in rules.covers(numeric):
            values = numeric[key].values
            # a numpy array's items as Python numbers: the rules count int and float, not bool
            for v in values.tolist() if hasattr(values, "tolist") else values:
                rules.add(key, v)
        covered = set(rules.covers({k for k, *_ in other}))
        for key, _step, _time, value in other:
            if key in covered:
                rules.add(key, value)
        self.dirty.add("summary")

    def apply(self, r: rec.Record) -> bool:
        """Fold one metadata record; False (nothing changed) when its body is not well-formed."""
        try:
            v = r.value()
        except Exception:  # any msgpack failure: the caller keeps the raw record instead
            return False
        k = r.kind
        if k == rec.KIND_RUN and isinstance(v, dict):
            edits = self.meta.get(self.EDITED)
            self.meta.update(v)
            if isinstance(edits, dict):  # a person's edits outlive the program's later records
                self.meta.update(edits)
                self.meta[self.EDITED] = edits
            if self.start_time is None:
                start = v.get("start_time", r.time)
                # Not a time (a string, an int past a double): the record's own time is the run's
                # start, rather than the batch failing at every _runtime and never being stored.
                self.start_time = start if _is_time(start) else r.time
            self.dirty.add("meta")
        elif k == rec.KIND_CONFIG and isinstance(v, dict):
            self.config.update(v)
            self.dirty.add("config")
        elif k == rec.KIND_SUMMARY and isinstance(v, dict):
            sets, dels = v.get("set", {}), v.get("del", [])
            if (
                not isinstance(sets, dict)
                or not isinstance(dels, list)
                or not all(isinstance(d, str) for d in dels)
            ):
                return False  # kept raw: folding it would fail the batch at every try
            unpinned = dict.fromkeys(self.unpinned)
            for key, val in flatten(v.get("set", {})).items():
                self.pinned[key] = val
                unpinned.pop(key, None)
            for key in v.get("del", []):
                self.pinned.pop(key, None)
                unpinned[key] = None
            self.unpinned = list(unpinned)
            self.dirty.add("summary")
        elif k == rec.KIND_STATS and isinstance(v, dict):
            self.stats.update(v)
            self.dirty.add("summary")
        elif k == rec.KIND_EXIT and isinstance(v, dict):
            self.exit, self.exit_time = v, r.time
            self.dirty.add("exit")
        elif k == rec.KIND_METRIC:
            if self.metrics is None:
                self.metrics = MetricRules()
            if not self.metrics.define(v):
                return False
            self.meta[self.METRICS] = self.metrics.defs
            self.dirty.update(("meta", "summary"))
        else:
            return False
        return True

    @classmethod
    def edit(cls, meta: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        """``meta`` with a person's edits of ``EDITABLE`` fields applied and remembered."""
        edits = {k: changes[k] for k in cls.EDITABLE if k in changes}
        old = meta.get(cls.EDITED)
        return {**meta, **edits, cls.EDITED: {**(old if isinstance(old, dict) else {}), **edits}}

    def add_latest(self, last: dict[str, Any]) -> None:
        self.latest.update(last)
        self.dirty.add("summary")

    def runtime(self, t: float) -> float:
        """``_runtime`` of a row logged at ``t`` (RunState: a row before any RUN record gets 0)."""
        return t - (self.start_time if self.start_time is not None else t)

    def summary(self) -> dict[str, Any]:
        unpinned = set(self.unpinned)
        out = {k: v for k, v in self.latest.items() if k not in unpinned}
        if self.metrics is not None:
            out = self.metrics.apply(out)
        out.update(self.pinned)
        for name, key in STATS_KEYS.items():
            if self.stats.get(name):
                out[key] = self.stats[name]
        if self.regressions:
            out[SERVER_REGRESSIONS_KEY] = self.regressions
        if self.lost:
            out[SERVER_LOST_KEY] = self.lost
        return out

    def add_lost(self, n: int) -> None:
        self.lost += n
        self.dirty.add("summary")

    def exit_state(self) -> tuple[str, int | None]:
        """(state, exit_code) from the EXIT record, as ``RunState.state`` derives it."""
        assert self.exit is not None
        code = self.exit.get("exit_code")
        state = str(self.exit.get("state") or ("finished" if code == 0 else "failed"))
        # An exit code SQLite cannot hold (past 64 bits) is no exit code, not a batch that fails.
        return state, code if isinstance(code, int) and -(2**63) <= code < 2**63 else None


def _is_time(t: Any) -> bool:
    return isinstance(t, (int, float)) and not isinstance(t, bool) and abs(t) < 1e300 and math.isfinite(t)


# --- the read side of the dashboard (sqlite/query.py, history/series.py) ---------------
class RunBusy(StorageError):
    """The run is running: it cannot be deleted until it has ended."""


@dataclass(frozen=True, slots=True)
class RunQuery:
    """A page of a project's runs.  ``filters``/``order`` come from ``filters.parse_filter`` and
    ``filters.parse_order``; ``search`` matches name, id or a tag (case-insensitive substring)."""

    filters: Node | None = None
    order: tuple[SortKey, ...] = ()
    search: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass(slots=True)
class RunPage:
    total: int  # runs matching the filters and search, on every page
    runs: list[RunInfo]


@dataclass(frozen=True, slots=True)
class MetricStats:
    """Of the numeric values of one key over a group's runs (None when there are none)."""

    count: int
    mean: float | None
    min: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class RunGroup:
    value: Any  # the group key's value (None: runs without it)
    count: int
    metrics: dict[str, MetricStats]


class RunQueries(Protocol):
    """What the runs table, the charts and the run editor need from a backend.

    Concurrency contract: reading methods may be called from any thread at the same time as
    writes and see committed data only; ``update_run`` and ``delete_run`` write, so they are
    called from the storage's one writer thread like every other write.
    """

    def query_runs(self, entity: str, project: str, query: RunQuery) -> RunPage: ...

    def group_runs(
        self,
        entity: str,
        project: str,
        by: Field,
        metrics: Sequence[Field],
        filters: Node | None = None,
        search: str | None = None,
    ) -> tuple[list[RunGroup], int]:
        """Groups by value (at most ``MAX_GROUPS``), and how many groups there are in all."""
        ...

    def all_projects(self, entity: str | None) -> list[dict[str, Any]]:
        """Every project (only ``entity``'s when given): entity, name, runs, last_active."""
        ...

    def run_keys(self, entity: str, project: str) -> dict[str, list[str]]:
        """The config and summary keys the project's runs hold, sorted: {"config": [...], ...}."""
        ...

    def series(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str],
        buckets: int,
        x_axis: str = "_step",
        lo: float | None = None,
        hi: float | None = None,
    ) -> dict[str, Series]:
        """Every key downsampled over one x range (default: what the keys cover), in one
        snapshot.  A key the run does not have comes back empty.  RunNotFound."""
        ...

    def members(self, entity: str, project: str, run_id: str) -> list[MemberInfo]:
        """A distributed run's rows: rank 0's (the top row, once rank 0 has opened), every
        other rank's and every node writer's, by rank then node; ``[]`` for a single-process
        run.  RunNotFound."""
        ...

    def member_id(
        self, entity: str, project: str, run_id: str, rank: int | None = None, node: int | None = None
    ) -> str:
        """The run_id of the row holding rank ``rank`` (0: the run's own) or node ``node``'s own
        writer.  RunNotFound; RankNotFound (naming what the run has) for a rank or node it lacks."""
        ...

    def system_id(self, entity: str, project: str, run_id: str) -> str:
        """The row whose system metrics a run shows by default: the own writer of rank 0's node
        for a distributed run once it has reported, else the run's own.  RunNotFound."""
        ...

    def rank_series(
        self,
        entity: str,
        project: str,
        run_id: str,
        keys: Sequence[str],
        buckets: int,
        x_axis: str = "_step",
        lo: float | None = None,
        hi: float | None = None,
    ) -> tuple[float | None, float | None, list[tuple[int, dict[str, Series]]]]:
        """``series`` of every rank that has reported (rank 0 alone for a single process), all
        over one x range so that their buckets line up, in one snapshot; and that range."""
        ...

    def rank_console(
        self, entity: str, project: str, run_id: str, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[int, ConsoleLine]]:
        """Every rank's console lines after ``after_id`` in arrival order, with their ranks."""
        ...

    def update_run(self, entity: str, project: str, run_id: str, changes: dict[str, Any]) -> RunInfo:
        """Set ``name``, ``tags`` and/or ``notes`` (already checked).  RunNotFound."""
        ...

    def delete_run(self, entity: str, project: str, run_id: str) -> None:
        """Remove the run and everything stored for it.  RunNotFound; RunBusy while it runs."""
        ...

    def close(self) -> None: ...
