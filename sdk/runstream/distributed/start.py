"""``init`` on a rank of a distributed run (docs/distributed.md).

The steps mirror ``runstream.session._start``: agree the run id, find or create the node
directory, make (or resume) ``rank-<r>/``, create the ring, write the first records, ``run.json``
and then ``sidecar.json``, and make sure a node sidecar runs.  Nothing here waits for another
rank (beyond a rank other than 0 reading the run id from ``torch.distributed``'s store) or for
the server.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runstream.distributed.identity import Who, agree_run_id, detect, job_run_name
from runstream.distributed.nodedir import (
    SIDECAR_JSON,
    create_rank_ring,
    has_journal,
    rank_dir,
    rank_ring_size,
    rendezvous,
    write_sidecar_json,
)
from runstream.distributed.supervisor import NodeSupervisor, pid_alive
from runstream.errors import UsageError
from runstream.format.record import HEADER, HEADER_SIZE, KIND_PAD, padded
from runstream.format.ring_layout import W_HEAD, W_JOURNALED_SEQ, W_PIPELINE_EXIT, W_TAIL, RingMap
from runstream.rundir import update_latest_link
from runstream.settings import Settings

if TYPE_CHECKING:
    from runstream.run import Run
    from runstream.session import Online

# A restarted rank waits for its previous attempt's pipeline to drain the old ring for as long
# as that pipeline makes progress, giving up after PREVIOUS_TIMEOUT seconds without any (a node
# sidecar that cannot run) or PREVIOUS_CAP seconds in all.  A busy machine slows the drain; it
# must not turn into lost records.
PREVIOUS_TIMEOUT = 10.0
PREVIOUS_CAP = 120.0
_LABEL_RANK = re.compile(r"(\d+)\D*$")


def who_am_i(s: Settings, grouped: bool = False) -> Who | None:
    """This process's rank (None: one process, today's path).

    ``grouped``: the script passed ``group=`` to ``init`` (or in ``settings=``), W&B's pattern of
    one run per rank gathered by group: each rank is then a run of its own, as in W&B.  W&B's
    ``mode="shared"`` becomes ``"online"`` and always makes ranks of one run; without a launcher
    the rank comes from ``x_primary`` (rank 0) or the number that ends ``x_label`` ("rank_3",
    "worker-3"), and each such process is a node of its own.

    Raises:
        UsageError: bad ``RUNSTREAM_*`` rank variables, or shared mode with no way to tell the
            process's rank."""
    shared = s.mode == "shared"
    if shared:
        s.mode = "online"
    elif grouped:
        return None
    who = detect()
    if who is not None or not shared:
        return who
    rank: int | None = 0 if s.x_primary else None
    if rank is None and s.x_label and (m := _LABEL_RANK.search(s.x_label)):
        rank = int(m[1])
    if rank is None:
        raise UsageError(
            'mode="shared" without a launcher needs each process\'s rank: set x_primary=True on the '
            'primary, x_label="rank_<n>" on the others (or RUNSTREAM_RANK and RUNSTREAM_WORLD_SIZE)'
        )
    world = max(int(os.environ.get("RUNSTREAM_WORLD_SIZE") or 0), rank + 1, 2)
    return Who(
        rank=rank,
        local_rank=0,
        world_size=world,
        local_world_size=1,
        node=rank,
        node_count=world,
        job_key=None,
        attempt=0,
        launcher="runstream",
    )


def _ring_size(s: Settings, who: Who) -> int:
    """The user's ``ring_size`` if they set one, else the node's default share."""
    if s.ring_size != Settings().ring_size or os.environ.get("RUNSTREAM_RING_SIZE"):
        return s.ring_size
    return rank_ring_size(who.local_world_size)


def _node_args(s: Settings, node_dir: Path, online: Online | None, run_id: str) -> list[str]:
    args = [
        "--node-dir", str(node_dir), "--loop", "uvloop",
        "--stats-interval", str(0.0 if s.disable_stats else s.stats_interval),
    ]  # fmt: skip
    if online is not None:
        args += ["--url", online.url, "--entity", s.entity, "--project", s.project, "--run-id", run_id]
    return args


def _wait_previous(rank_path: Path, node_dir: Path, node_args: list[str], env: dict[str, str]) -> int:
    """A restarted rank (its ``rank-<r>/`` has a ``sidecar.json``): let a node sidecar finish the
    previous attempt's ring first (starting one if none runs), so the journal is complete before
    it is replayed and this attempt's seqs follow it.

    Waits while the old ring's pipeline makes progress (``PREVIOUS_TIMEOUT`` without any, or
    ``PREVIOUS_CAP`` in all).  Returns 0 when the old ring was drained (or there is none), else
    the seq of the last record the previous attempt published: this attempt's seqs must start
    after it, so that the records left behind are never confused with new ones (the shipper
    declares the seqs the journal lacks lost: counted, not silently gone).

    Raises:
        UsageError: the previous attempt's producer is still alive (two processes claim the rank)."""
    import json

    try:
        info = json.loads((rank_path / SIDECAR_JSON).read_text())
        ring_path = Path(info["ring"])
        pid = int(info.get("producer_pid") or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    if pid and pid != os.getpid() and pid_alive(pid):
        raise UsageError(
            f"{rank_path} is in use by process {pid}: two processes claim the same rank of this job "
            "(check RANK/RUNSTREAM_RANK)"
        )
    try:
        old = RingMap.attach(ring_path)
    except (OSError, ValueError):
        return 0  # finished cleanly (its ring is removed), or never made one
    try:
        sup = NodeSupervisor(node_dir, old.words, node_args, env)
        start = last_move = time.monotonic()
        progress = (int(old.words[W_TAIL]), int(old.words[W_JOURNALED_SEQ]))
        while not old.words[W_PIPELINE_EXIT]:
            now = time.monotonic()
            seen = (int(old.words[W_TAIL]), int(old.words[W_JOURNALED_SEQ]))
            if seen != progress:
                progress, last_move = seen, now
            if now - last_move > PREVIOUS_TIMEOUT or now - start > PREVIOUS_CAP:
                break
            sup.ensure()
            time.sleep(0.05)
        if old.words[W_PIPELINE_EXIT]:
            ring_path.unlink(missing_ok=True)
            return 0
        left = last_published_seq(old)
        print(
            f"runstream: warning: the previous attempt's records in {ring_path} were not journaled "
            f"(no progress for {PREVIOUS_TIMEOUT:.0f}s); resuming {rank_path} from what its journal holds, "
            f"after seq {left}: the records missing up to it are counted as lost",
            file=sys.stderr,
        )
        return left
    finally:
        old.close()


def last_published_seq(ring: RingMap) -> int:
    """The seq of the last record published in ``ring`` and not yet released (0: none), read
    from the record headers between tail and head (docs/ring-format.md).  For a ring whose
    producer is gone: nothing moves under the walk."""
    words, data, cap = ring.words, ring.data, ring.capacity
    pos, head, last = int(words[W_TAIL]), int(words[W_HEAD]), 0
    while pos < head:
        off = pos % cap
        if cap - off < HEADER_SIZE:  # too small for a header: both sides skip to offset 0
            pos += cap - off
            continue
        length, _crc, seq, kind, _flags, _step, _t = HEADER.unpack_from(data, off)
        if kind == KIND_PAD:  # fills the rest of the data area; carries the next record's seq
            pos += cap - off
            continue
        if off + HEADER_SIZE + length > cap or seq < last:
            break  # not a record: damage, or bytes never published
        last = seq
        pos += padded(length)
    return last


def start_rank(
    s: Settings,
    who: Who,
    cfg_dict: dict[str, Any],
    allow_val_change: bool,
    save_code: bool | None,
    online: Online | None,
) -> Run:
    """Start (or locally resume) this rank's part of the job's run; see the module docstring."""
    from runstream import console
    from runstream import session as ses
    from runstream.read.local import replay
    from runstream.supervisor import SidecarSupervisor

    if save_code is not None:
        s.save_code = bool(save_code)
    run_id, _how = agree_run_id(who, s.run_id, s.entity, s.project)
    node_dir, _created = rendezvous(s.root_dir, who, run_id, s.entity, s.project)
    rank_path, existed = rank_dir(node_dir, who.rank)
    node_args = _node_args(s, node_dir, online, run_id)
    node_env = {"RUNSTREAM_API_KEY": online.api_key} if online is not None and online.api_key else {}
    left_behind = 0  # the last seq of a previous attempt's ring that could not be drained
    if (rank_path / SIDECAR_JSON).is_file():  # an earlier attempt of this rank registered a ring
        left_behind = _wait_previous(rank_path, node_dir, node_args, node_env)
        existed = has_journal(rank_path)  # what it left in the ring is in the journal now
    if existed:
        state, _ = replay(rank_path, keep_rows=False)
        origin = ses._Origin(
            run_id=run_id,
            name=s.name or str(state.run.get("name") or job_run_name(run_id)),
            run_dir=rank_path,
            resumed_locally=True,
            resumed=True,
            start_step=state.last_step + 1,
            first_seq=max(state.last_seq, left_behind) + 1,
            prior_config=state.config,
            prior_metrics=state.metrics.public() if state.metrics is not None else {},
        )
    else:
        origin = ses._Origin(
            run_id=run_id,
            name=s.name or job_run_name(run_id),
            run_dir=rank_path,
            resumed_locally=False,
            resumed=False,
            first_seq=left_behind + 1,  # a writer id of run.json continues: never reuse its seqs
        )
    update_latest_link(s.root_dir, node_dir)
    ring = create_rank_ring(run_id, rank_path, _ring_size(s, who), lambda m: ses.say(s, m))
    try:
        writer = ses._ring_writer(s, origin, ring)
        run = ses._make_run(s, origin, ring, writer, allow_val_change)
        run._who = who  # type: ignore[attr-defined]
        meta = ses._write_first_records(run, origin, cfg_dict, allow_val_change, extra=who.as_dict())
        if origin.prior_metrics:
            from runstream.metric import restore

            restore(run, origin.prior_metrics, emit=not origin.resumed_locally)
        writer_id = ses._write_run_json(rank_path, meta, extra=who.as_dict())
        # Every rank opens the job's one run on the server: all but the first find it there.
        extra_args, _env = ses._sidecar_options(s, online, run_id, writer_id, True, None)
        run._online = online  # type: ignore[attr-defined]
        cap = console.start(console.rank_mode(s.console), run._emit, lambda m: ses.say(s, m))
        run._console = cap  # type: ignore[attr-defined]
        if cap is not None:
            extra_args += cap.sidecar_args()
        args = SidecarSupervisor(ring.path, rank_path, s, extra_args).pipeline_args()
        write_sidecar_json(rank_path, ring.path, args)
        sup = NodeSupervisor(node_dir, ring.words, node_args, node_env)
        if cap is not None:
            sup.on_give_up = cap.no_sidecar
        try:
            sup.start()
        except BaseException:
            if cap is not None:
                cap.teardown()
                cap.close()
            raise
    except BaseException:
        ring.close()
        ring.path.unlink(missing_ok=True)
        raise
    run._sidecar = sup  # type: ignore[assignment]
    ses._publish(run)
    ses._install_hooks()
    verb = "resumed" if origin.resumed_locally else "started"
    where = f"streaming to {online.url} as {run.path}" if online else "offline"
    ses.say(
        s,
        f"{verb} run {origin.name} ({run_id}) rank {who.rank}/{who.world_size} (node {who.node}, "
        f"{who.launcher}) {where}; local copy in {rank_path}",
    )
    return run
