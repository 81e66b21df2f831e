"""System metrics of a node sidecar: the node's once, each rank's process stats per rank.

One thread samples for the whole node (one NVML session, one reading of the machine), so 64 ranks
on a node cost one sampler, not 64:

* every ``interval`` seconds (the node sidecar's ``--stats-interval``), the node-wide reading of
  ``sources/system.py`` (CPU, load, memory, swap, disk, network, every GPU by index) goes to the
  node writer's journal (``<node dir>/companion/``) as one KIND_SYSTEM record;
* every rank's own ``--stats-interval``, that rank's process tree (``proc.count``, ``proc.rss_mib``,
  ``proc.cpu``, ``proc.threads``, ``proc.fds``) and the GPU memory it holds on each GPU
  (``gpu.<i>.proc_mem_mib``) go to that rank's companion journal, so each rank's member row has
  its own process stats under the same keys a single-process run has (docs/system-metrics.md).

Concurrency contract: ``NodeStats.run``/``close``/``add``/``remove`` run on the node sidecar's loop;
the thread reads the rank table under a lock and hands each sample to the loop with
``call_soon_threadsafe`` (``CompanionWriter.emit`` stays loop-only).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runstream.format import record as rec
from runstream_ingest.sidecar.sources.companion import CompanionWriter
from runstream_ingest.sidecar.sources.nvml import Nvml
from runstream_ingest.sidecar.sources.system import PREFIX, MiB, Sampler

log = logging.getLogger("runstream.node.stats")

Emit = Callable[[dict[str, float], float], None]  # (values with the system/ prefix, time)


@dataclass
class _Rank:
    sampler: Sampler
    interval: float
    emit: Emit
    next_at: float = 0.0
    closed: bool = field(default=False)


class NodeStats:
    """The node's sampling thread (see the module's docstring)."""

    def __init__(
        self,
        node_dir: Path,
        node_companion: CompanionWriter | None,
        interval: float,
        open_nvml: Callable[[], Nvml | None] = Nvml.open,
    ) -> None:
        self.node_dir = node_dir
        self.node_companion = node_companion
        self.interval = interval  # node-wide samples; 0: none
        self.open_nvml = open_nvml
        self.samples = 0  # node-wide samples emitted
        self.rank_samples = 0  # per-rank samples emitted
        self._ranks: dict[object, _Rank] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def run(self) -> None:
        """Start the thread (a daemon: an NVML call stuck in the driver must not hold the exit)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._main, name="runstream-node-stats", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)

    def add(self, key: object, pid: int, run_dir: Path, interval: float, emit: Emit) -> None:
        """Sample ``pid``'s process tree every ``interval`` seconds into ``emit`` (a rank)."""
        if interval <= 0 or pid <= 0:
            return
        r = _Rank(Sampler(run_dir, pid, None), interval, emit)
        with self._lock:
            self._ranks[key] = r
        self._wake.set()  # a new rank may want a shorter tick than the thread sleeps

    def remove(self, key: object) -> None:
        """Stop sampling a rank; a sample already taken for it is not emitted."""
        with self._lock:
            r = self._ranks.pop(key, None)
        if r is not None:
            r.closed = True

    # --- the thread ----------------------------------------------------------------------------
    def _main(self) -> None:
        nvml = None
        try:
            nvml = self.open_nvml()
            gpus = f"{len(nvml.handles)} GPU(s)" if nvml else "none (no NVML or GPU)"
            log.info("node GPU metrics: %s", gpus)
            node = Sampler(self.node_dir, 0, nvml, exclude_pid=os.getpid()) if self.interval > 0 else None
            if node is not None:
                node.prime()
            self._loop_samples(node, nvml)
        except RuntimeError:  # the event loop closed under us: the sidecar is exiting
            pass
        except Exception:
            log.exception("node system metrics stopped")
        finally:
            if nvml is not None:
                nvml.close()

    def _loop_samples(self, node: Sampler | None, nvml: Nvml | None) -> None:
        start = time.monotonic()
        node_next = start + self.interval
        failed = False
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                ranks = list(self._ranks.values())
            due = [r for r in ranks if r.next_at <= now]
            gpu = nvml.processes() if nvml is not None and due else []
            for r in due:
                # Missed ticks are skipped, not bunched: the next one is a whole interval away.
                # The first reading only primes the rates (sample_process returns {}).
                r.next_at = now + r.interval
                try:
                    values = r.sampler.sample_process()
                    if values:
                        pids = r.sampler.tree_pids()
                        for i, procs in enumerate(gpu):
                            if procs is not None:
                                values[f"gpu.{i}.proc_mem_mib"] = sum(procs.get(p, 0) for p in pids) / MiB
                except Exception:
                    if not failed:
                        log.exception("a process sample failed (further failures are not logged)")
                    failed = True
                    continue
                if values:
                    self._hand(r, values)
            if node is not None and now >= node_next:
                node_next = max(node_next + self.interval, now)
                try:
                    self._hand(None, node.sample())
                except Exception:
                    if not failed:
                        log.exception("a node sample failed (further failures are not logged)")
                    failed = True
            waits = [r.next_at for r in ranks] + ([node_next] if node is not None else [])
            timeout = max(min(waits) - time.monotonic(), 0.0) if waits else 1.0
            self._wake.wait(min(timeout, 1.0))
            self._wake.clear()

    def _hand(self, rank: _Rank | None, values: dict[str, float]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._emit, rank, values, time.time())

    def _emit(self, rank: _Rank | None, values: dict[str, float], t: float) -> None:
        body = {PREFIX + k: v for k, v in values.items()}
        if rank is None:
            if self._closed or self.node_companion is None:
                return
            self.samples += 1
            self.node_companion.emit(rec.KIND_SYSTEM, body, t=t)
        elif not rank.closed:
            self.rank_samples += 1
            rank.emit(body, t)


class RankStatsSource:
    """A rank pipeline's ``Source`` of process stats: registers the rank with the node's
    ``NodeStats`` while the pipeline runs (companion.py's Source protocol)."""

    def __init__(
        self,
        stats: NodeStats,
        key: object,
        pid: int,
        run_dir: Path,
        interval: float,
        companion: CompanionWriter,
    ) -> None:
        self.stats, self.key, self.pid, self.run_dir = stats, key, pid, run_dir
        self.interval = interval
        self.companion = companion

    async def run(self) -> None:
        self.stats.add(self.key, self.pid, self.run_dir, self.interval, self._emit)

    def _emit(self, body: dict[str, float], t: float) -> None:
        self.companion.emit(rec.KIND_SYSTEM, body, t=t)

    async def close(self) -> None:
        self.stats.remove(self.key)
