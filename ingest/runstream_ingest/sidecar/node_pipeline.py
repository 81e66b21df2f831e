"""One rank's pipeline inside a node sidecar: today's ``Sidecar`` for that rank's run directory.

A node sidecar (node.py) runs one ``RankPipeline`` per rank of its node, all on one event loop.
Each is the single-process sidecar's pipeline unchanged (ring -> batches -> journal -> shipper, the
same seqs, the same journal in ``rank-<r>/journal``, the same exactly-once argument), with what
differs when the sidecar is not the rank's own child:

* the producer's death is seen from ``/proc/<pid>/stat`` (gone, a zombie, or another process
  with the same pid: its start time changed), not from being reparented;
* its shippers carry the rank's ``Member`` and share the node's one gRPC channel;
* its sources: the rank's process stats through the node's one sampler (node_stats.py), the
  rank's ``runstream.save`` files, and the code and environment for rank 0 only; no node-wide
  system metrics (the node writer has them) and no console pipes (a distributed rank's console
  goes through its ring as KIND_CONSOLE records).

``Registration`` is what a rank leaves in ``rank-<r>/sidecar.json`` (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runstream.format.ring_layout import RingMap
from runstream_ingest.sidecar.main import Sidecar, parse_known
from runstream_ingest.sidecar.node_stats import NodeStats, RankStatsSource
from runstream_ingest.sidecar.shipper import ChannelPool, Member
from runstream_ingest.sidecar.sources.companion import Source

log = logging.getLogger("runstream.node")

REGISTRATION = "sidecar.json"
# The arguments a node sidecar owns or that name the rank's own file descriptors: never taken
# from a registration (--console READFD:TEEFD are fds of the rank, meaningless here).
OWN_ARGS = {"--ring", "--run-dir", "--producer-pid", "--console"}


@dataclass(frozen=True)
class Registration:
    """A rank's ``sidecar.json``: its ring, its pid and the single sidecar's arguments."""

    rank_dir: Path
    ring: Path
    producer_pid: int
    args: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str, int]:
        """What identifies one life of a rank: a local resume writes a new ring and pid."""
        return (str(self.rank_dir), str(self.ring), self.producer_pid)

    @classmethod
    def read(cls, rank_dir: Path) -> Registration:
        """Read ``rank_dir/sidecar.json``; raises OSError (missing) or ValueError (malformed)."""
        raw = json.loads((rank_dir / REGISTRATION).read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{rank_dir / REGISTRATION} holds a {type(raw).__name__}, not an object")
        try:
            ring, pid, args = raw["ring"], int(raw["producer_pid"]), raw.get("args") or []
        except (KeyError, TypeError) as e:
            raise ValueError(f"{rank_dir / REGISTRATION}: missing or bad field {e}") from None
        strings = isinstance(args, list) and all(isinstance(a, str) for a in args)
        if not isinstance(ring, str) or not strings:
            raise ValueError(f"{rank_dir / REGISTRATION}: 'ring' must be a path and 'args' a list of strings")
        return cls(rank_dir, Path(ring), pid, tuple(args))

    def options(self) -> argparse.Namespace:
        """The pipeline's options: the single sidecar's command line with this rank's ring, run
        dir and pid.  Unknown arguments (an SDK newer than this sidecar) are logged and ignored."""
        args: list[str] = []
        it = iter(self.args)
        for a in it:
            name = a.split("=", 1)[0]
            if name in OWN_ARGS:
                if "=" not in a:
                    next(it, None)
                continue
            args.append(a)
        base = ["--ring", str(self.ring), "--run-dir", str(self.rank_dir)]
        base += ["--producer-pid", str(self.producer_pid)]
        opts, unknown = parse_known([*base, *args])
        if unknown:
            log.warning("%s: ignoring arguments this sidecar does not know: %s", self.rank_dir, unknown)
        return opts


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid`` from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return rest[0].decode(), int(rest[19])
    except (IndexError, ValueError):
        return None


class ProcessWatch:
    """Whether a process that is not our parent still runs: not gone, not a zombie (a killed
    rank its launcher has not reaped yet), and not another process that took its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = os.path.isdir("/proc/self")
        st = proc_stat(pid) if self.proc else None
        self.started = st[1] if st is not None else None

    def alive(self) -> bool:
        if self.pid <= 0:
            return False
        if not self.proc:  # no /proc: the signal test (a zombie then reads as alive)
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass
            return True
        st = proc_stat(self.pid)
        if st is None or st[0] in ("Z", "X"):
            return False
        return self.started is None or st[1] == self.started


class RankPipeline(Sidecar):
    """``Sidecar`` for one rank of a node (see the module's docstring)."""

    def __init__(
        self,
        ring: RingMap,
        reg: Registration,
        opts: argparse.Namespace,
        *,
        member: Member | None,
        channels: ChannelPool | None,
        stats: NodeStats | None,
        environment: bool,
    ) -> None:
        # Set before Sidecar.__init__, which calls make_shippers and make_sources.
        self.reg = reg
        self.member = member
        self.channels = channels
        self.node_stats = stats
        self.environment = environment
        self.watch = ProcessWatch(reg.producer_pid)
        # summary.json is the run's (rank 0's) only: folding every rank's rows for a file nobody
        # reads would cost a node of 64 ranks cores (the server and read_run fold each rank's).
        self.keep_summary = member is None or member.rank == 0
        super().__init__(ring, reg.rank_dir, opts)

    def make_shippers(self, member: Member | None = None, channels: ChannelPool | None = None) -> None:
        super().make_shippers(self.member, self.channels)

    def make_sources(self) -> list[Source]:
        o = self.opts
        sources: list[Source] = []
        if self.environment:
            from runstream_ingest.sidecar.sources.environment import RunContext

            ctx = RunContext(self.run_dir, self.companion, o.disable_code, o.disable_git, o.save_code)
            sources.append(ctx)
        if self.node_stats is not None and o.stats_interval > 0:
            sources.append(
                RankStatsSource(
                    self.node_stats,
                    self.reg.key,
                    self.reg.producer_pid,
                    self.run_dir,
                    o.stats_interval,
                    self.companion,
                )
            )
        from runstream_ingest.sidecar.sources.files import FileUploader

        key = os.environ.get("RUNSTREAM_API_KEY") if o.url else None
        self.files = FileUploader(self.run_dir, self.companion, o.url, key, o.ignore_glob)
        sources.append(self.files)
        return sources

    def producer_alive(self) -> bool:
        return self.watch.alive()


def member_of(rank_dir: Path) -> Member | None:
    """The Member of a rank directory's ``run.json`` (None: unreadable, or not distributed)."""
    try:
        meta: Any = json.loads((rank_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return Member.from_run_json(meta) if isinstance(meta, dict) else None
