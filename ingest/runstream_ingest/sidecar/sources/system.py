"""System metrics: the machine's and the training process tree's health, sampled in the sidecar.

Every ``interval`` seconds one KIND_SYSTEM record ``{"system/<key>": number}`` goes through the
companion writer: CPU, load, memory and swap, the training process tree, the run dir's disk, the
network and each GPU (through nvml.py).  Every key, unit and rate is documented in
``docs/system-metrics.md``.

Samples are taken on a thread of their own, never on the event loop: psutil reads /proc (fast)
but an NVML call can stall for seconds on a sick GPU, and the loop must keep draining the ring.
Ticks are scheduled on the monotonic clock (tick k at ``start + k * interval``), so samples never
drift; a tick missed while a sample stalled is skipped, not bunched up.

Concurrency contract: ``Sampler`` is used by one thread (the monitor's).  ``SystemMonitor.run`` and
``close`` run on the sidecar's loop; the thread hands each sample to the loop with
``call_soon_threadsafe`` and the loop emits it, so ``CompanionWriter.emit`` stays loop-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from runstream.format import record as rec
from runstream_ingest.sidecar.sources.companion import CompanionWriter
from runstream_ingest.sidecar.sources.nvml import Nvml

log = logging.getLogger("runstream.system")

PREFIX = "system/"
MiB = float(1 << 20)
GiB = float(1 << 30)
TREE_REFRESH = 1.0  # seconds between walks of /proc for the training process tree's members


def disk_of(path: Path) -> str | None:
    """The block device (``sda1``, ``nvme0n1p2``) holding ``path``, or None (overlay, tmpfs...)."""
    try:
        st = os.stat(path)
        dev = os.path.realpath(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    except (OSError, ValueError):
        return None
    name = os.path.basename(dev)
    return name if os.path.exists(dev) and name else None


def descendants(pid: int, exclude: int) -> list[int] | None:
    """``pid`` and its descendants, not descending into ``exclude``, from the kernel's per-thread
    children lists (a few small reads, where psutil would read every process's stat); None when
    the kernel has no such lists."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return [] if not psutil.pid_exists(pid) else None
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for f in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                with open(f) as fh:
                    todo += [c for c in map(int, fh.read().split()) if c != exclude]
            except (OSError, ValueError):  # the thread or process exited meanwhile
                pass
    return out


def psutil_descendants(pid: int, exclude: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    mine = {exclude}
    for p in procs:  # children() lists parents before their own children
        with contextlib.suppress(psutil.Error):
            if p.ppid() in mine:
                mine.add(p.pid)
    return [p.pid for p in procs if p.pid not in mine]


class Sampler:
    """Takes one reading at a time; rates are over the time since the previous reading."""

    def __init__(
        self, run_dir: Path, producer_pid: int, nvml: Nvml | None = None, exclude_pid: int | None = None
    ) -> None:
        self.run_dir = run_dir
        self.producer_pid = producer_pid
        self.nvml = nvml
        self.exclude_pid = os.getpid() if exclude_pid is None else exclude_pid
        self.disk = disk_of(run_dir)
        self._tree: list[psutil.Process] = []
        self._tree_at = -TREE_REFRESH
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> cpu seconds so far
        self._prev_at = 0.0
        self._io0: tuple[float, float] | None = None
        self._net0: tuple[float, float] | None = None
        self._io: tuple[float, float] | None = None
        self._net: tuple[float, float] | None = None

    # --- the training process tree: the producer and its descendants, less this sidecar ----------
    def tree(self, now: float) -> list[psutil.Process]:
        if now - self._tree_at >= TREE_REFRESH:
            self._tree_at = now
            pid = self.producer_pid
            pids = descendants(pid, self.exclude_pid) if pid > 0 else []
            if pids is None:  # no /proc/PID/task/TID/children: psutil reads every process's stat
                pids = psutil_descendants(self.producer_pid, self.exclude_pid)
            known = {p.pid: p for p in self._tree}
            tree = []
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    tree.append(known.get(pid) or psutil.Process(pid))
            self._tree = tree
        return self._tree

    def _process(self, out: dict[str, float], now: float, dt: float) -> None:
        rss = cpu = 0.0
        threads = fds = n = 0
        seen: dict[tuple[int, float], float] = {}
        for p in self.tree(now):
            try:
                with p.oneshot():
                    key = (p.pid, p.create_time())
                    t = p.cpu_times()
                    used = t.user + t.system
                    rss += p.memory_info().rss
                    threads += p.num_threads()
                    fds += p.num_fds()
            except psutil.Error:  # exited (or not ours to read) since the tree was walked
                continue
            n += 1
            seen[key] = used
            # A process new since the last reading spent all its CPU time within the interval.
            cpu += used - self._cpu.get(key, 0.0 if key[1] >= time.time() - dt else used)
        self._cpu = seen
        if n:
            out["proc.count"] = n
            out["proc.rss_mib"] = rss / MiB
            out["proc.cpu"] = 100.0 * max(cpu, 0.0) / dt
            out["proc.threads"] = threads
            out["proc.fds"] = fds

    # --- counters whose rate is reported ---------------------------------------------------------
    def _io_now(self) -> tuple[float, float] | None:
        try:
            disks = psutil.disk_io_counters(perdisk=True) if self.disk else None
            c = disks.get(self.disk) if disks and self.disk else None
            if c is None:
                c = psutil.disk_io_counters(perdisk=False)
        except (OSError, RuntimeError):
            return None
        return (float(c.read_bytes), float(c.write_bytes)) if c is not None else None

    @staticmethod
    def _net_now() -> tuple[float, float] | None:
        try:
            nics = psutil.net_io_counters(pernic=True)
        except OSError:
            return None
        up = [c for name, c in nics.items() if name != "lo"]
        return (float(sum(c.bytes_sent for c in up)), float(sum(c.bytes_recv for c in up)))

    def sample_process(self) -> dict[str, float]:
        """The training process tree's stats only (``proc.*``): a node sidecar's per-rank reading;
        rates over the time since the previous call (the first call primes and returns {})."""
        now = time.monotonic()
        first = self._prev_at == 0.0
        dt = max(now - self._prev_at, 1e-6)
        self._prev_at = now
        out: dict[str, float] = {}
        self._process(out, now, dt)
        return {} if first else out

    def tree_pids(self) -> set[int]:
        """The pids of the training process tree as of the last reading."""
        return {p.pid for p in self._tree}

    def prime(self) -> None:
        """The first readings the rates of the first sample are measured from."""
        self._prev_at = time.monotonic()
        psutil.cpu_percent(percpu=True)
        self._io = self._io0 = self._io_now()
        self._net = self._net0 = self._net_now()
        self._process({}, self._prev_at, 1.0)

    def sample(self) -> dict[str, float]:
        """One reading: ``{"<key>": value}`` without the ``system/`` prefix."""
        now = time.monotonic()
        dt = max(now - self._prev_at, 1e-6)
        self._prev_at = now
        out: dict[str, float] = {}
        per = psutil.cpu_percent(percpu=True)
        if per:
            out["cpu"] = sum(per) / len(per)
            out.update({f"cpu.{i}": v for i, v in enumerate(per)})
        try:
            out["load.1"], out["load.5"], out["load.15"] = os.getloadavg()
        except OSError:
            pass
        vm = psutil.virtual_memory()
        out.update({"mem.used_mib": vm.used / MiB, "mem.available_mib": vm.available / MiB})
        out["mem.pct"] = vm.percent
        sw = psutil.swap_memory()
        out.update({"swap.used_mib": sw.used / MiB, "swap.pct": sw.percent})
        self._process(out, now, dt)
        try:
            du = psutil.disk_usage(str(self.run_dir))
            out.update(
                {"disk.used_gib": du.used / GiB, "disk.free_gib": du.free / GiB, "disk.pct": du.percent}
            )
        except OSError:
            pass
        io = self._io_now()
        if io is not None and self._io is not None and self._io0 is not None:
            _rates(out, "disk.read", "disk.write", io, self._io, self._io0, dt)
        self._io = io
        net = self._net_now()
        if net is not None and self._net is not None and self._net0 is not None:
            _rates(out, "net.sent", "net.recv", net, self._net, self._net0, dt)
        self._net = net
        if self.nvml is not None:
            out.update(self.nvml.sample({p.pid for p in self._tree}))
        return out


def _rates(
    out: dict[str, float],
    a: str,
    b: str,
    now: tuple[float, float],
    prev: tuple[float, float],
    first: tuple[float, float],
    dt: float,
) -> None:
    """MiB/s since the previous reading and MiB since the first (a counter that went back, as
    after a device reset, counts as no traffic rather than a negative one)."""
    out[a + "_mib_s"] = max(now[0] - prev[0], 0.0) / MiB / dt
    out[b + "_mib_s"] = max(now[1] - prev[1], 0.0) / MiB / dt
    out[a + "_mib"] = max(now[0] - first[0], 0.0) / MiB
    out[b + "_mib"] = max(now[1] - first[1], 0.0) / MiB


class SystemMonitor:
    """The sidecar's ``Source`` of system metrics (companion.py)."""

    def __init__(
        self,
        companion: CompanionWriter,
        interval: float,
        run_dir: Path,
        producer_pid: int,
        open_nvml: Callable[[], Nvml | None] = Nvml.open,
    ) -> None:
        self.companion = companion
        self.interval = interval
        self.run_dir = run_dir
        self.producer_pid = producer_pid
        self.open_nvml = open_nvml
        self.samples = 0  # emitted so far
        self.skipped = 0  # ticks missed while a sample was still being taken
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A daemon: an NVML call stuck in the driver must not keep the sidecar from exiting.
        self._thread = threading.Thread(target=self._main, name="runstream-system", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
        if self.skipped:
            log.info("system metrics: %d ticks skipped while a sample was slow", self.skipped)

    def _emit(self, values: dict[str, float], t: float) -> None:
        if self._closed:  # the companion is being closed: a sample this late is not wanted
            return
        self.samples += 1
        self.companion.emit(rec.KIND_SYSTEM, {PREFIX + k: v for k, v in values.items()}, t=t)

    def _main(self) -> None:
        nvml = None
        try:
            nvml = self.open_nvml()
            if nvml is None:
                log.info("no NVIDIA GPU found (no NVML library, driver or device): GPU metrics are off")
            else:
                log.info("GPU metrics from %d GPU(s) through NVML", len(nvml.handles))
            sampler = Sampler(self.run_dir, self.producer_pid, nvml)
            sampler.prime()
            self._loop_samples(sampler)
        except RuntimeError:  # the event loop closed under us: the sidecar is exiting
            pass
        except Exception:
            log.exception("system metrics stopped")
        finally:
            if nvml is not None:
                nvml.close()

    def _loop_samples(self, sampler: Sampler) -> None:
        assert self._loop is not None
        start = time.monotonic()
        k = 0
        failed = False
        while True:
            k += 1
            now = time.monotonic()
            if start + k * self.interval < now:
                behind = int((now - start) / self.interval) + 1
                self.skipped += behind - k
                k = behind
            if self._stop.wait(start + k * self.interval - now):
                return
            try:
                values = sampler.sample()
            except Exception:
                if not failed:  # once: a failure that repeats every tick would flood the log
                    log.exception("a system sample failed (further failures are not logged)")
                failed = True
                continue
            self._loop.call_soon_threadsafe(self._emit, values, time.time())
