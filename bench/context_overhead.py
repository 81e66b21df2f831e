"""What system metrics and console capture cost a training loop.  (``make bench``)

One case, ``context_overhead`` (parameters and targets in bench/cases/context_overhead/case.json):

* **training loop**: steps of ~200 us pure-Python work (log_latency.py's simulated training loop),
  each printing one line, in a real offline run with system metrics every 0.1 s and console
  capture (``console="redirect"``), against the same loop with neither.  As in log_latency.py the
  two alternate in blocks (ABBA order) inside one live run: in the blocks "with", the sidecar runs
  and the lines go to fd 1, which the run has made the console pipe; in the blocks "without", the
  sidecar is paused (SIGSTOP: no sampling, no reading) and the lines go straight to the sink the
  tee writes to, as a script with no tracker prints.  Targets are on the training process's CPU
  time (``time.process_time``); wall time is printed beside it.  Controls without targets: system
  metrics alone, console alone, and neither (the run's sidecar idle: what the measurement reads
  when nothing is added, its noise).
* **the sidecar at the default interval**: the sidecar's own CPU (user + system) over a window of a
  run with the default settings (system metrics every 2 s) whose training process is idle, beside
  the same with system metrics off; and what one sample costs, timed in this process.

Prints text, then the same figures as one JSON object on the last line (or into ``--json PATH``).
Exits 0 even when a target fails -- it is a report -- unless ``--check`` is given.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _common import arg_parser, emit, load_case, machine, print_targets, record_case, start_run
from log_latency import busy, calibrate
from runstream.format import record as rec
from runstream.format.journal_read import read_journal
from runstream_ingest.sidecar.sources.system import Sampler

SETTINGS = {
    "both": {"stats_interval": 0.1, "console": "redirect"},  # the target
    "stats": {"stats_interval": 0.1, "console": "off"},
    "console": {"disable_stats": True, "console": "redirect"},
    "neither": {"disable_stats": True, "console": "off"},  # the control: an idle sidecar
}


@contextlib.contextmanager
def printing_into(sink: Path) -> Iterator[TextIO]:
    """fd 1 (and a fresh, block-buffered ``sys.stdout`` on it, as a script whose output goes to a
    file has) point at ``sink`` meanwhile; yields a second stream on the same file, for prints that
    must bypass whatever a run does to fd 1.  The report goes to the real stdout afterwards."""
    sys.stdout.flush()
    saved, old = os.dup(1), sys.stdout
    fd = os.open(sink, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 -- closed below, after the run
    direct = open(fd, "w")  # noqa: SIM115
    try:
        yield direct
    finally:
        for f in (sys.stdout, direct):
            f.flush()
            f.close()
        sys.stdout = old
        os.dup2(saved, 1)
        os.close(saved)


def steps(k: int, n: int, out: TextIO) -> tuple[float, float]:
    """Wall and CPU seconds of ``k`` steps of work, each printing one line to ``out``."""
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(k):
        busy(n)
        print(f"step {i}: loss {1.0 / (i + 1):.6f}", file=out)
    return time.perf_counter() - w0, time.process_time() - c0


def settle(sidecar: psutil.Process, timeout: float = 20.0) -> None:
    """Until the new run's sidecar is done starting (imports, the run's environment): a 0.5 s
    window in which it used under 5 % of a core."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0 = sum(sidecar.cpu_times()[:2])
        time.sleep(0.5)
        if sum(sidecar.cpu_times()[:2]) - c0 < 0.025:
            return


def companion_counts(run_dir: Path, spans: list[tuple[float, float]]) -> tuple[int, int]:
    """(system samples taken within ``spans``, console lines) the run's companion journal holds."""
    samples = lines = 0
    for r in read_journal(run_dir / "companion" / "journal").iter_records():
        if r.kind == rec.KIND_SYSTEM:
            samples += any(a <= r.time <= b for a, b in spans)
        elif r.kind == rec.KIND_CONSOLE:
            lines += len(r.value().get("lines") or [])
    return samples, lines


def abba(p: dict[str, Any], n: int, variant: str, direct: TextIO) -> dict[str, Any]:
    """One run of ``variant``: blocks with (sidecar running, prints to fd 1) and without (sidecar
    paused, prints to the sink directly), in ABBA order.  Per side summed wall and CPU, each ABBA
    group's own CPU and wall overhead, and what the companion journal got."""
    run = start_run(SETTINGS[variant])
    sidecar = psutil.Process(run._sidecar.pid)
    settle(sidecar)
    gc.collect()
    block = p["block"]
    tot = {True: [0.0, 0.0], False: [0.0, 0.0]}
    group = {True: [0.0, 0.0], False: [0.0, 0.0]}
    groups: list[tuple[float, float]] = []
    side_cpu = 0.0
    spans: list[tuple[float, float]] = []  # wall-clock spans of the blocks "with"
    for b in range(2 * p["steps"] // block):
        on = b % 4 in (0, 3)
        if on:
            sidecar.resume()
            c0 = sum(sidecar.cpu_times()[:2])
        else:
            sidecar.suspend()
        t0 = time.time()
        wall, cpu = steps(block, n, sys.stdout if on else direct)
        if on:
            side_cpu += sum(sidecar.cpu_times()[:2]) - c0
            spans.append((t0, time.time()))
        for d in (tot, group):
            d[on][0] += wall
            d[on][1] += cpu
        if b % 4 == 3:
            (gw, gc_), (ow, oc) = group[True], group[False]
            groups.append((100 * (gw - ow) / ow, 100 * (gc_ - oc) / oc))
            group = {True: [0.0, 0.0], False: [0.0, 0.0]}
    sidecar.resume()
    sys.stdout.flush()
    run_dir = Path(run.dir)
    tmp = run._bench_tmp
    run.finish()
    samples, lines = companion_counts(run_dir, spans)
    shutil.rmtree(tmp, ignore_errors=True)
    (ww, wc), (ow, oc) = tot[True], tot[False]
    return {
        "groups": groups,
        "wall_pct": 100 * (ww - ow) / ow,
        "cpu_pct": 100 * (wc - oc) / oc,
        "with_s": ww,
        "without_s": ow,
        "sidecar_cpu_pct": 100 * side_cpu / ww,
        "samples_per_s": samples / ww,
        "console_lines": lines,
    }


def case_training(p: dict[str, Any], sink: Path) -> dict[str, Any]:
    n = calibrate(p["work_us"])
    variants = p["variants"]
    per: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with printing_into(sink) as direct:
        for _ in range(p["repeat"]):
            for v in variants:  # every variant once per repetition: drift spreads over all of them
                per[v].append(abba(p, n, v, direct))
    out: dict[str, Any] = {"step_work_us": statistics.median(r["without_s"] for r in per[variants[0]])}
    out["step_work_us"] *= 1e6 / p["steps"]
    for v in variants:
        prefix = "" if v == "both" else f"{v}_"
        rs = per[v]
        groups = [g for r in rs for g in r["groups"]]
        # As in log_latency.py: the median over every ABBA group of every repetition is the
        # headline (one block hit by a neighbour moves a ratio of sums by whole percents).
        out |= {
            f"{prefix}overhead_cpu_pct": statistics.median(g[1] for g in groups),
            f"{prefix}overhead_wall_pct": statistics.median(g[0] for g in groups),
            f"{prefix}sums_overhead_cpu_pct": statistics.median(r["cpu_pct"] for r in rs),
            f"{prefix}sums_overhead_wall_pct": statistics.median(r["wall_pct"] for r in rs),
            f"{prefix}groups": len(groups),
            f"{prefix}sidecar_cpu_pct": statistics.median(r["sidecar_cpu_pct"] for r in rs),
            f"{prefix}samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
            f"{prefix}console_lines": statistics.median(r["console_lines"] for r in rs),
            f"{prefix}per_repeat_cpu_pct": [r["cpu_pct"] for r in rs],
        }
    return out


def sidecar_window(settings: dict[str, Any], window: float) -> float:
    """% of a core the sidecar of an idle run with ``settings`` used over ``window`` seconds."""
    run = start_run(settings)
    sidecar = psutil.Process(run._sidecar.pid)
    settle(sidecar)
    c0, t0 = sum(sidecar.cpu_times()[:2]), time.monotonic()
    time.sleep(window)  # the training process idles: all that is measured is the sidecar's own
    pct = 100 * (sum(sidecar.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
    tmp = run._bench_tmp
    run.finish()
    shutil.rmtree(tmp, ignore_errors=True)
    return pct


def case_sidecar(p: dict[str, Any]) -> dict[str, Any]:
    on, off = [], []
    for _ in range(p["idle_repeat"]):
        on.append(sidecar_window({}, p["idle_window_s"]))
        off.append(sidecar_window({"disable_stats": True}, p["idle_window_s"]))
    with tempfile.TemporaryDirectory() as d:
        s = Sampler(Path(d), os.getpid(), None, exclude_pid=0)  # no GPU here: NVML is timed apart
        s.prime()
        costs = []
        for _ in range(200):
            t0 = time.perf_counter()
            s.sample()
            costs.append(time.perf_counter() - t0)
    return {
        "sidecar_default_cpu_pct": statistics.median(on),
        "sidecar_stats_off_cpu_pct": statistics.median(off),
        "sidecar_default_per_repeat": on,
        "sample_ms": 1e3 * statistics.median(costs),
        "keys_per_sample": len(s.sample()),
    }


def show(p: dict[str, Any], f: dict[str, Any]) -> None:
    print(
        f"\n[context_overhead] {p['steps']:,} steps of {f['step_work_us']:.0f} us work with and "
        f"{p['steps']:,} without, in blocks of {p['block']}, each printing one line; "
        f"{p['repeat']} repetitions"
    )
    print("  overhead: median over ABBA groups (ratio of sums, median of repetitions, in brackets)")
    print(f"  {'':40} {'CPU':>8} {'wall':>8}  {'(sums CPU)':>10}  sidecar   samples/s  lines")
    labels = {
        "both": "system metrics 0.1 s + console (target)",
        "stats": "system metrics 0.1 s alone",
        "console": "console capture alone",
        "neither": "neither (idle sidecar: the noise)",
    }
    for v, label in labels.items():
        x = "" if v == "both" else f"{v}_"
        if f"{x}overhead_cpu_pct" not in f:
            continue
        print(
            f"  {label:40} {f[x + 'overhead_cpu_pct']:+7.2f}% {f[x + 'overhead_wall_pct']:+7.2f}%  "
            f"({f[x + 'sums_overhead_cpu_pct']:+7.2f}%)  {f[x + 'sidecar_cpu_pct']:6.1f}%  "
            f"{f[x + 'samples_per_s']:9.1f}  {f[x + 'console_lines']:,.0f}"
        )
    print(
        f"\n  sidecar of an idle run, median of {p['idle_repeat']} windows of {p['idle_window_s']} s: "
        f"{f['sidecar_default_cpu_pct']:.2f}% of a core with system metrics every 2 s (default), "
        f"{f['sidecar_stats_off_cpu_pct']:.2f}% with them off"
    )
    print(f"  one sample ({f['keys_per_sample']} keys, no GPU) takes {f['sample_ms']:.2f} ms of CPU")


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, {"context_overhead": None}, "short runs: a ~40 s smoke run")
    a = ap.parse_args(argv)
    out: dict[str, Any] = {"quick": a.quick, "machine_before": machine()}
    print(f"runstream context overhead benchmark{' (--quick)' if a.quick else ''}: {out['machine_before']}")
    case = load_case("context_overhead", a.quick, a.repeat)
    p = case["parameters"]
    load = machine()["load"]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runstream-bench-console-") as d:
        fig = case_training(p, Path(d) / "sink.txt")
    fig |= case_sidecar(p)
    show(p, fig)
    print(f"  ({time.monotonic() - t0:.0f} s; load average at start {load})")
    cases: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    record_case(cases, targets, case, load, fig)
    print_targets(out, targets)
    return emit(out, cases, targets, a.json, a.check)


if __name__ == "__main__":
    sys.exit(main())
