"""A fake ``pynvml`` (nvidia-ml-py) for machines without an NVIDIA GPU.

The functions, constants, error class and return types runstream_ingest/nvml.py uses, with the real
module's signatures.  Put this directory first on ``PYTHONPATH`` (the sidecar inherits the training
process's environment) and name a JSON file in ``RUNSTREAM_FAKE_NVML``::

    {"driver": "550.54.15", "cuda": 12040,
     "init_error": null,                  # or an NVML_ERROR_* name/code nvmlInit raises
     "gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...",
               "memory_total": 85899345920, "memory_used": 1073741824,
               "util": 87, "mem_util": 41, "temp": 63, "power_mw": 312000,
               "power_limit_mw": 700000, "clock_sm": 1980, "clock_mem": 2619,
               "processes": [{"pid": 1234, "used": 536870912}],
               "graphics_processes": [],
               "errors": {"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED"}}]}

``errors`` maps a function name (or ``"*"``, every per-device call) to the error it raises.  The
file is read again whenever it is replaced, so a test can change values or make calls fail while
a run goes on.  Without ``RUNSTREAM_FAKE_NVML``, ``nvmlInit`` fails as on a machine with no driver.
"""

from __future__ import annotations

import json
import os
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_CLOCK_VIDEO = 3

_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """As the real one: ``.value`` is the NVML_ERROR_* code."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _STRINGS.get(self.value, f"NVML Error with code {self.value}")


def nvmlErrorString(result: int) -> str:
    return _STRINGS.get(result, "Unknown Error")


class c_nvmlDevice_t:
    def __init__(self, index: int) -> None:
        self.index = index


class c_nvmlMemory_t:
    def __init__(self, total: int, free: int, used: int) -> None:
        self.total, self.free, self.used = total, free, used


class c_nvmlUtilization_t:
    def __init__(self, gpu: int, memory: int) -> None:
        self.gpu, self.memory = gpu, memory


class c_nvmlProcessInfo_t:
    def __init__(self, pid: int, usedGpuMemory: int | None) -> None:
        self.pid, self.usedGpuMemory = pid, usedGpuMemory
        self.gpuInstanceId = self.computeInstanceId = 0xFFFFFFFF


_state: dict[str, Any] = {"key": None, "config": {}, "inits": 0}


def _code(e: Any) -> int:
    return int(e) if isinstance(e, int) else int(globals()["NVML_ERROR_" + str(e)])


def _config() -> dict[str, Any]:
    path = os.environ.get("RUNSTREAM_FAKE_NVML")
    if not path:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    st = os.stat(path)
    key = (path, st.st_ino, st.st_mtime_ns, st.st_size)
    if key != _state["key"]:
        with open(path, encoding="utf-8") as f:
            _state["config"] = json.load(f)
        _state["key"] = key
    cfg: dict[str, Any] = _state["config"]
    return cfg


def _gpu(handle: c_nvmlDevice_t, fn: str) -> dict[str, Any]:
    if not _state["inits"]:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    gpus = _config().get("gpus", [])
    if not isinstance(handle, c_nvmlDevice_t) or not 0 <= handle.index < len(gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu: dict[str, Any] = gpus[handle.index]
    errors = gpu.get("errors") or {}
    err = errors.get(fn, errors.get("*"))
    if err is not None:
        raise NVMLError(_code(err))
    return gpu


def nvmlInit() -> None:
    err = _config().get("init_error")
    if err is not None:
        raise NVMLError(_code(err))
    _state["inits"] += 1


def nvmlInitWithFlags(flags: int) -> None:
    nvmlInit()


def nvmlShutdown() -> None:
    if not _state["inits"]:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    _state["inits"] -= 1


def nvmlSystemGetDriverVersion() -> str:
    return str(_config().get("driver", "550.54.15"))


def nvmlSystemGetCudaDriverVersion() -> int:
    return int(_config().get("cuda", 12040))


def nvmlDeviceGetCount() -> int:
    if not _state["inits"]:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return len(_config().get("gpus", []))


def nvmlDeviceGetHandleByIndex(index: int) -> c_nvmlDevice_t:
    if not 0 <= index < nvmlDeviceGetCount():
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return c_nvmlDevice_t(index)


def nvmlDeviceGetName(handle: c_nvmlDevice_t) -> str:
    return str(_gpu(handle, "nvmlDeviceGetName").get("name", "NVIDIA Fake GPU"))


def nvmlDeviceGetUUID(handle: c_nvmlDevice_t) -> str:
    return str(_gpu(handle, "nvmlDeviceGetUUID").get("uuid", f"GPU-fake-{handle.index}"))


def nvmlDeviceGetMemoryInfo(handle: c_nvmlDevice_t, version: int | None = None) -> c_nvmlMemory_t:
    g = _gpu(handle, "nvmlDeviceGetMemoryInfo")
    total, used = int(g.get("memory_total", 80 << 30)), int(g.get("memory_used", 0))
    return c_nvmlMemory_t(total, total - used, used)


def nvmlDeviceGetUtilizationRates(handle: c_nvmlDevice_t) -> c_nvmlUtilization_t:
    g = _gpu(handle, "nvmlDeviceGetUtilizationRates")
    return c_nvmlUtilization_t(int(g.get("util", 0)), int(g.get("mem_util", 0)))


def nvmlDeviceGetTemperature(handle: c_nvmlDevice_t, sensor: int) -> int:
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return int(_gpu(handle, "nvmlDeviceGetTemperature").get("temp", 40))


def nvmlDeviceGetPowerUsage(handle: c_nvmlDevice_t) -> int:
    return int(_gpu(handle, "nvmlDeviceGetPowerUsage").get("power_mw", 70000))


def nvmlDeviceGetEnforcedPowerLimit(handle: c_nvmlDevice_t) -> int:
    return int(_gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").get("power_limit_mw", 700000))


def nvmlDeviceGetClockInfo(handle: c_nvmlDevice_t, type: int) -> int:
    g = _gpu(handle, "nvmlDeviceGetClockInfo")
    key = {NVML_CLOCK_GRAPHICS: "clock_graphics", NVML_CLOCK_SM: "clock_sm", NVML_CLOCK_MEM: "clock_mem"}
    if type not in key:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return int(g.get(key[type], 1000))


def _procs(handle: c_nvmlDevice_t, fn: str, field: str) -> list[c_nvmlProcessInfo_t]:
    return [c_nvmlProcessInfo_t(int(p["pid"]), p.get("used")) for p in _gpu(handle, fn).get(field, [])]


def nvmlDeviceGetComputeRunningProcesses(handle: c_nvmlDevice_t) -> list[c_nvmlProcessInfo_t]:
    return _procs(handle, "nvmlDeviceGetComputeRunningProcesses", "processes")


def nvmlDeviceGetGraphicsRunningProcesses(handle: c_nvmlDevice_t) -> list[c_nvmlProcessInfo_t]:
    return _procs(handle, "nvmlDeviceGetGraphicsRunningProcesses", "graphics_processes")
