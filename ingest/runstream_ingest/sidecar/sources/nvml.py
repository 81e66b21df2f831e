"""NVIDIA GPUs through NVML (nvidia-ml-py's ``pynvml``), for the sidecar only.

``pynvml`` is imported lazily and every failure is quiet: no library, no driver or no GPU gives
``inventory() == {}`` and ``Nvml.open() is None``; a metric a GPU does not support (or an NVML
error in the middle of a run) is left out of that sample, never raised.  Tests put a fake module
of the same API on ``sys.path`` (tests/support/fake_nvml).

Concurrency contract: NVML calls can stall (a GPU falling off the bus, a busy driver), so callers
run them off the event loop, on a thread of their own.  An ``Nvml`` is used by one thread at a
time; ``inventory()`` may run on another thread at the same time (NVML counts its inits).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Collection
from types import ModuleType
from typing import Any

log = logging.getLogger("runstream.nvml")

MiB = 1 << 20


def _module() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except Exception:  # not installed, or broken: GPUs are simply not reported
        return None


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def cuda_version(n: int) -> str:
    """NVML's CUDA driver version (``12040``) as ``"12.4"``."""
    return f"{n // 1000}.{n % 1000 // 10}"


class Nvml:
    """An initialised NVML session over every GPU the driver shows."""

    def __init__(self, nv: ModuleType, handles: list[Any]) -> None:
        self.nv = nv
        self.handles = handles
        self._logged: set[tuple[str, int]] = set()

    @classmethod
    def open(cls) -> Nvml | None:
        """NVML initialised, or None (quietly) when there is no library, driver or GPU."""
        nv = _module()
        if nv is None:
            return None
        try:
            nv.nvmlInit()
        except Exception:
            return None
        try:
            count = int(nv.nvmlDeviceGetCount())
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception:
            _shutdown(nv)
            return None
        if not handles:
            _shutdown(nv)
            return None
        return cls(nv, handles)

    def close(self) -> None:
        _shutdown(self.nv)

    def _get(self, what: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, or None when NVML refuses; each kind of refusal is logged once."""
        try:
            return fn(*args)
        except Exception as e:
            code = int(getattr(e, "value", -1))
            if (what, code) not in self._logged:
                self._logged.add((what, code))
                log.info("NVML %s: %s (left out of the samples while it fails)", what, e)
            return None

    def inventory(self) -> dict[str, Any]:
        nv = self.nv
        gpus = []
        for i, h in enumerate(self.handles):
            mem = self._get("memory", nv.nvmlDeviceGetMemoryInfo, h)
            gpus.append(
                {
                    "index": i,
                    "name": _text(self._get("name", nv.nvmlDeviceGetName, h) or ""),
                    "uuid": _text(self._get("uuid", nv.nvmlDeviceGetUUID, h) or ""),
                    "memory_total": int(mem.total) if mem is not None else None,
                }
            )
        out: dict[str, Any] = {"gpu_count": len(gpus), "gpus": gpus}
        driver = self._get("driver", nv.nvmlSystemGetDriverVersion)
        if driver is not None:
            out["driver"] = _text(driver)
        cuda = self._get("cuda", nv.nvmlSystemGetCudaDriverVersion)
        if cuda:
            out["cuda"] = cuda_version(int(cuda))
        return out

    def sample(self, pids: Collection[int] = ()) -> dict[str, float]:
        """One reading of every GPU: ``{"gpu.<index>.<metric>": value}`` (docs/system-metrics.md).

        ``pids`` are the training processes: their GPU memory on each GPU is ``proc_mem_mib``."""
        nv = self.nv
        out: dict[str, float] = {}
        for i, h in enumerate(self.handles):
            p = f"gpu.{i}."
            util = self._get("utilization", nv.nvmlDeviceGetUtilizationRates, h)
            if util is not None:
                out[p + "util"] = float(util.gpu)
                out[p + "mem_util"] = float(util.memory)
            mem = self._get("memory", nv.nvmlDeviceGetMemoryInfo, h)
            if mem is not None and mem.total:
                out[p + "mem_used_mib"] = mem.used / MiB
                out[p + "mem_total_mib"] = mem.total / MiB
                out[p + "mem_pct"] = 100.0 * mem.used / mem.total
            temp = self._get("temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            if temp is not None:
                out[p + "temp_c"] = float(temp)
            power = self._get("power", nv.nvmlDeviceGetPowerUsage, h)
            if power is not None:
                out[p + "power_w"] = power / 1000.0
                limit = self._get("power limit", nv.nvmlDeviceGetEnforcedPowerLimit, h)
                if limit:
                    out[p + "power_limit_w"] = limit / 1000.0
                    out[p + "power_pct"] = 100.0 * power / limit
            sm = self._get("sm clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
            if sm is not None:
                out[p + "clock_sm_mhz"] = float(sm)
            memclk = self._get("memory clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM)
            if memclk is not None:
                out[p + "clock_mem_mhz"] = float(memclk)
            if pids:
                used = self.process_memory(h, pids)
                if used is not None:
                    out[p + "proc_mem_mib"] = used / MiB
        return out

    def processes(self) -> list[dict[int, int] | None]:
        """Per GPU (by index): ``{pid: bytes of GPU memory}`` of every process on it (compute and
        graphics contexts), or None when NVML cannot tell.  One query per GPU for all the ranks a
        node sidecar watches, rather than one per rank."""
        out: list[dict[int, int] | None] = []
        for h in self.handles:
            seen: dict[int, int] = {}
            known = False
            for what, fn in (
                ("compute processes", self.nv.nvmlDeviceGetComputeRunningProcesses),
                ("graphics processes", self.nv.nvmlDeviceGetGraphicsRunningProcesses),
            ):
                procs = self._get(what, fn, h)
                if procs is None:
                    continue
                known = True
                for proc in procs:
                    used = getattr(proc, "usedGpuMemory", None)
                    if used is not None:
                        seen[int(proc.pid)] = max(seen.get(int(proc.pid), 0), int(used))
            out.append(seen if known else None)
        return out

    def process_memory(self, handle: Any, pids: Collection[int]) -> int | None:
        """Bytes of GPU memory ``pids`` hold on one GPU (compute and graphics contexts, each
        process counted once), or None when NVML cannot tell."""
        nv = self.nv
        seen: dict[int, int] = {}
        known = False
        for what, fn in (
            ("compute processes", nv.nvmlDeviceGetComputeRunningProcesses),
            ("graphics processes", nv.nvmlDeviceGetGraphicsRunningProcesses),
        ):
            procs = self._get(what, fn, handle)
            if procs is None:
                continue
            known = True
            for proc in procs:
                used = getattr(proc, "usedGpuMemory", None)
                if proc.pid in pids and used is not None:
                    seen[int(proc.pid)] = max(seen.get(int(proc.pid), 0), int(used))
        return sum(seen.values()) if known else None


def _shutdown(nv: ModuleType) -> None:
    try:
        nv.nvmlShutdown()
    except Exception:
        pass


def inventory() -> dict[str, Any]:
    """The machine's GPUs for the run's metadata::

        {"gpu_count": 2, "gpus": [{"index": 0, "name": ..., "uuid": ..., "memory_total": bytes}],
         "driver": "550.54.15", "cuda": "12.4"}

    or ``{}`` when there is no NVML library, driver or GPU.  Never raises."""
    try:
        nvml = Nvml.open()
        if nvml is None:
            return {}
        try:
            return nvml.inventory()
        finally:
            nvml.close()
    except Exception:  # a broken driver must not stop the run from starting
        log.exception("reading the GPU inventory")
        return {}
