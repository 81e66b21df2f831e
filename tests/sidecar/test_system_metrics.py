"""System and GPU metrics, sampled in the sidecar (docs/system-metrics.md).

GPUs come from tests/support/fake_nvml, a fake ``pynvml`` with the real API, configured by the JSON
file named in RUNSTREAM_FAKE_NVML: in-process for the sampler's unit tests, on the training
process's PYTHONPATH (the sidecar inherits it) for the end-to-end runs."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Collection
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import psutil
import pytest

import runstream
from runstream.format import record as rec
from runstream.format.journal_read import read_journal
from runstream_ingest.sidecar.sources import nvml
from runstream_ingest.sidecar.sources.companion import CompanionWriter
from runstream_ingest.sidecar.sources.system import Sampler, SystemMonitor, descendants, psutil_descendants
from tests.support import FAKE_NVML
from tests.support.server import ServerProc
from tests.support.waiting import wait_for, wait_for_async

FAKE_DIR = FAKE_NVML
MiB = 1 << 20

H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-11111111-2222-3333-4444-555555555555",
    "memory_total": 80 << 30,
    "memory_used": 20 << 30,
    "util": 87,
    "mem_util": 41,
    "temp": 63,
    "power_mw": 350000,
    "power_limit_mw": 700000,
    "clock_sm": 1980,
    "clock_mem": 2619,
}


def gpus_config(path: Path, *gpus: dict[str, Any], **top: Any) -> Path:
    """Write the fake NVML's configuration (replacing the file, so the fake reads it again)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"driver": "550.54.15", "cuda": 12040, **top, "gpus": list(gpus)}))
    os.replace(tmp, path)
    return path


@pytest.fixture
def fake_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """The fake pynvml as the module ``import pynvml`` finds in this process, until the test ends."""
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_DIR / "pynvml.py")
    assert spec is not None and spec.loader is not None
    mod: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    path = tmp_path / "gpus.json"
    monkeypatch.setenv("RUNSTREAM_FAKE_NVML", str(path))

    def configure(*gpus: dict[str, Any], **top: Any) -> Path:
        return gpus_config(path, *gpus, **top)

    return configure


def test_inventory_names_each_gpu_the_driver_and_cuda(fake_nvml: Callable[..., Path]) -> None:
    fake_nvml(H100, {**H100, "uuid": "GPU-2", "memory_total": 40 << 30})
    assert nvml.inventory() == {
        "gpu_count": 2,
        "gpus": [
            {"index": 0, "name": H100["name"], "uuid": H100["uuid"], "memory_total": 80 << 30},
            {"index": 1, "name": H100["name"], "uuid": "GPU-2", "memory_total": 40 << 30},
        ],
        "driver": "550.54.15",
        "cuda": "12.4",
    }


@pytest.mark.parametrize(
    "setup",
    ["no pynvml module", "no NVML library", "driver not loaded", "no GPU"],
)
def test_no_nvml_or_no_gpu_is_quietly_nothing(
    setup: str, fake_nvml: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if setup == "no pynvml module":
        monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    elif setup == "no NVML library":
        monkeypatch.delenv("RUNSTREAM_FAKE_NVML")
    elif setup == "driver not loaded":
        fake_nvml(H100, init_error="DRIVER_NOT_LOADED")
    else:
        fake_nvml()
    assert nvml.inventory() == {}
    assert nvml.Nvml.open() is None
    sample = Sampler(tmp_path, os.getpid(), nvml.Nvml.open(), exclude_pid=0).sample()
    assert "cpu" in sample and not [k for k in sample if k.startswith("gpu")]


def test_a_sample_reports_every_gpu_and_the_training_processes_gpu_memory(
    fake_nvml: Callable[..., Path], tmp_path: Path
) -> None:
    me = os.getpid()
    other = {"pid": 999999, "used": 7 << 30}  # another user's process on the same GPU
    fake_nvml(
        {**H100, "processes": [{"pid": me, "used": 512 * MiB}, other]},
        {**H100, "util": 3, "graphics_processes": [{"pid": me, "used": 64 * MiB}]},
    )
    gpu = nvml.Nvml.open()
    assert gpu is not None
    s = Sampler(tmp_path, me, gpu, exclude_pid=0)
    s.prime()
    out = s.sample()
    assert {k: v for k, v in out.items() if k.startswith("gpu.0.")} == {
        "gpu.0.util": 87.0,
        "gpu.0.mem_util": 41.0,
        "gpu.0.mem_used_mib": 20 * 1024.0,
        "gpu.0.mem_total_mib": 80 * 1024.0,
        "gpu.0.mem_pct": 25.0,
        "gpu.0.temp_c": 63.0,
        "gpu.0.power_w": 350.0,
        "gpu.0.power_limit_w": 700.0,
        "gpu.0.power_pct": 50.0,
        "gpu.0.clock_sm_mhz": 1980.0,
        "gpu.0.clock_mem_mhz": 2619.0,
        "gpu.0.proc_mem_mib": 512.0,
    }
    assert out["gpu.1.util"] == 3.0 and out["gpu.1.proc_mem_mib"] == 64.0
    gpu.close()


def test_a_sample_reports_the_machine_and_the_process_tree(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        s = Sampler(tmp_path, os.getpid(), None, exclude_pid=0)
        s.prime()
        out = s.sample()
        cores = psutil.cpu_count()
        assert [k for k in out if k.startswith("cpu.")] == [f"cpu.{i}" for i in range(cores or 0)]
        assert 0 <= out["cpu"] <= 100 and all(0 <= out[f"cpu.{i}"] <= 100 for i in range(cores or 0))
        assert out["load.1"] >= 0 and out["mem.used_mib"] > 0 and 0 < out["mem.pct"] < 100
        assert out["proc.count"] == 2  # this process and its child
        mine = psutil.Process().memory_info().rss + psutil.Process(child.pid).memory_info().rss
        assert out["proc.rss_mib"] == pytest.approx(mine / MiB, rel=0.2)
        assert out["proc.threads"] >= 2 and out["proc.fds"] >= 6 and out["proc.cpu"] >= 0
        du = psutil.disk_usage(str(tmp_path))
        assert out["disk.used_gib"] == pytest.approx(du.used / (1 << 30), rel=0.05)
        rates = ["disk.read_mib_s", "disk.write_mib_s", "net.sent_mib_s", "net.recv_mib_s"]
        totals = ["disk.read_mib", "disk.write_mib", "net.sent_mib", "net.recv_mib"]
        assert all(out[k] >= 0 for k in rates + totals)
        # The sidecar (here: the child, as if it were the sidecar) is not part of the training tree.
        assert Sampler(tmp_path, os.getpid(), None, exclude_pid=child.pid).sample()["proc.count"] == 1
        # The kernel's children lists and psutil's walk of every process agree.
        for exclude in (0, child.pid):
            fast = descendants(os.getpid(), exclude)
            assert fast is not None and sorted(fast) == sorted(psutil_descendants(os.getpid(), exclude))
    finally:
        child.kill()
        child.wait()


def test_a_process_tree_that_has_exited_leaves_out_the_process_keys(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = Sampler(tmp_path, gone.pid, None, exclude_pid=0).sample()
    assert "cpu" in out and not [k for k in out if k.startswith("proc.")]


def test_nvml_failing_mid_run_drops_those_keys_logs_once_and_recovers(
    fake_nvml: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml(H100, H100)
    gpu = nvml.Nvml.open()
    assert gpu is not None
    s = Sampler(tmp_path, os.getpid(), gpu, exclude_pid=0)
    assert "gpu.0.util" in s.sample() and "gpu.1.power_w" in s.sample()
    lost = {**H100, "errors": {"*": "GPU_IS_LOST"}}
    fake_nvml(lost, {**H100, "errors": {"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED"}})
    with caplog.at_level(logging.INFO, logger="runstream.nvml"):
        out = s.sample()
        s.sample()
    assert not [k for k in out if k.startswith("gpu.0.")]
    assert "gpu.1.power_w" not in out and out["gpu.1.util"] == 87.0 and "cpu" in out
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(set(messages)), "each NVML failure is logged once, not every sample"
    assert any("GPU is lost" in m for m in messages) and any("Not Supported" in m for m in messages)
    fake_nvml(H100, H100)
    assert s.sample()["gpu.0.util"] == 87.0
    gpu.close()


# --- whole runs: the training process spawns the sidecar, which samples -------------------------
TRAIN = """
    import json, os, time, runstream
    cfg = json.load(open("gpus.json"))
    cfg["gpus"][0]["processes"] = [{"pid": os.getpid(), "used": 3 << 30}]
    with open("gpus.tmp", "w") as f:
        json.dump(cfg, f)
    os.replace("gpus.tmp", "gpus.json")
    run = runstream.init(project="sys", settings={"stats_interval": 0.1})
    i = 0
    while not os.path.exists("go"):  # the test says when it has seen the samples it waits for
        run.log({"i": i})
        i += 1
        time.sleep(0.01)
    run.finish()
"""


def start_training(tmp_path: Path, url: str | None) -> subprocess.Popen[bytes]:
    gpus_config(tmp_path / "gpus.json", H100)
    (tmp_path / "train.py").write_text(textwrap.dedent(TRAIN))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(FAKE_DIR), env.get("PYTHONPATH", "")])
    env["RUNSTREAM_FAKE_NVML"] = str(tmp_path / "gpus.json")
    if url is None:
        env["RUNSTREAM_MODE"] = "offline"
    else:
        env["RUNSTREAM_HOST"] = url
    with open(tmp_path / "train.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "train.py"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err
        )


def run_dir(tmp_path: Path) -> Path | None:
    latest = tmp_path / "runstream" / "latest-run"
    return latest.resolve() if latest.exists() else None


def journal_samples(tmp_path: Path) -> list[rec.Record]:
    d = run_dir(tmp_path)
    if d is None or not (d / "companion" / "journal").exists():
        return []
    return [r for r in read_journal(d / "companion" / "journal").iter_records() if r.kind == rec.KIND_SYSTEM]


def finish(proc: subprocess.Popen[bytes], tmp_path: Path) -> None:
    (tmp_path / "go").touch()
    assert proc.wait(60) == 0, (tmp_path / "train.err").read_text()


def test_offline_run_journals_system_samples_every_interval(tmp_path: Path) -> None:
    proc = start_training(tmp_path, None)
    try:
        wait_for(lambda: len(journal_samples(tmp_path)) >= 5, 60, "five system samples in the journal")
        finish(proc, tmp_path)
    finally:
        proc.kill()
        proc.wait()
    samples = journal_samples(tmp_path)
    values = [r.value() for r in samples]
    assert all(k.startswith("system/") for v in values for k in v)
    last = values[-1]
    assert last["system/gpu.0.util"] == 87.0 and last["system/gpu.0.proc_mem_mib"] == 3 * 1024.0
    assert last["system/proc.count"] == 1  # the training process; the sidecar is left out
    assert {"system/cpu", "system/mem.used_mib", "system/disk.free_gib", "system/net.recv_mib_s"} <= set(last)
    times = [r.time for r in samples]
    assert times == sorted(times) and [r.seq for r in samples] == sorted(r.seq for r in samples)
    log = (run_dir(tmp_path) or tmp_path).joinpath("logs", "sidecar.log").read_text()
    assert "GPU metrics from 1 GPU(s)" in log


def test_stats_interval_zero_records_no_system_samples(tmp_path: Path) -> None:
    body = """
        import runstream
        run = runstream.init(project="sys", mode="offline", settings={"disable_stats": True})
        run.log({"i": 1})
        run.finish()
    """
    (tmp_path / "off.py").write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    done = subprocess.run(
        [sys.executable, "off.py"], cwd=tmp_path, env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert run_dir(tmp_path) is not None and journal_samples(tmp_path) == []


def test_online_run_serves_system_series_with_the_gpu(tmp_path: Path, server: ServerProc) -> None:
    proc = start_training(tmp_path, server.url)
    try:
        wait_for(lambda: len(journal_samples(tmp_path)) >= 3, 60, "three system samples")
        finish(proc, tmp_path)
    finally:
        proc.kill()
        proc.wait()
    meta = json.loads(((run_dir(tmp_path) or tmp_path) / "run.json").read_text())
    path = f"{meta['entity']}/{meta['project']}/{meta['id']}"
    sent = len(journal_samples(tmp_path))

    def served() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{server.url}/api/v1/runs/{path}/system") as resp:
            return list(json.load(resp)["samples"])

    wait_for(lambda: len(served()) == sent, 30, "every sample on the server")
    rows = served()
    assert rows[-1]["system/gpu.0.util"] == 87.0 and rows[-1]["system/gpu.0.mem_total_mib"] == 81920.0
    assert rows[-1]["system/gpu.0.proc_mem_mib"] == 3 * 1024.0 and "system/cpu" in rows[-1]
    api_rows = runstream.Api(server.url).run(path).system(keys=["system/gpu.0.util", "system/cpu"])
    assert len(api_rows) == sent and {"_timestamp", "system/gpu.0.util", "system/cpu"} == set(api_rows[-1])


def test_a_stalled_nvml_call_blocks_neither_the_loop_nor_exit_and_missed_ticks_are_skipped(
    tmp_path: Path,
) -> None:
    entered, release = threading.Event(), threading.Event()

    class StallingGpu:
        handles: ClassVar[list[int]] = [0]
        calls = 0

        def sample(self, pids: Collection[int]) -> dict[str, float]:
            StallingGpu.calls += 1
            if StallingGpu.calls == 2:  # the second sample hangs in the "driver"
                entered.set()
                release.wait(30)
            return {"gpu.0.util": 5.0}

        def close(self) -> None:
            pass

    async def scenario() -> SystemMonitor:
        comp = CompanionWriter(tmp_path)
        mon = SystemMonitor(comp, 0.1, tmp_path, os.getpid(), open_nvml=StallingGpu)
        await mon.run()
        # the loop keeps running (this wait polls on it) while the sampler's thread waits
        await wait_for_async(entered.is_set, 30, "the second sample to hang")
        # The stall's own length, not a wait for something to happen: the "driver" hangs for
        # longer than three ticks, so that three ticks are missed (counted when it returns).
        await asyncio.sleep(0.35)
        release.set()
        await wait_for_async(lambda: mon.samples >= 3, 30, "three samples")
        entered.clear()
        StallingGpu.calls = 1  # hang again, and exit while it hangs
        await wait_for_async(entered.is_set, 30, "the sample to hang again")
        t0 = time.monotonic()
        await mon.close()
        assert time.monotonic() - t0 < 10, "close() does not wait for a stuck NVML call"
        comp.close()
        return mon

    try:
        mon = asyncio.run(scenario())
    finally:
        release.set()
    assert mon.skipped >= 3
    got = [r for r in read_journal(tmp_path / "companion" / "journal").iter_records()]
    assert len(got) == mon.samples and all(r.value()["system/gpu.0.util"] == 5.0 for r in got)
