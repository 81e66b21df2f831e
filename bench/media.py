"""What does logging media cost a training loop?  (issue 11; ``make bench``)

Three cases, parameters and targets in ``bench/cases/media_<name>/case.json``:

* ``media_image_log``: per-call latency of ``run.log({"img": runstream.Image(arr)})`` with a
  256x256x3 uint8 array (the ``Image`` built inside the timed call, as a user writes it) in a real
  offline run, beside wandb offline doing the same (``wandb.Image`` encodes the PNG in the calling
  thread); then whether the sidecar kept up: every row read back with ``read_run`` holds an
  image-file pointer to a PNG that exists, nothing dropped, no media errors;
* ``media_histogram``: ``run.log({"h": runstream.Histogram(x)})`` of ``x`` = 10**6 normal samples,
  construction and log, beside ``wandb.Histogram`` of the same array logged the same way;
* ``media_training_overhead``: a training loop of ~10 ms steps (single-threaded numpy matmuls,
  calibrated) logging one 256x256x3 image and a few scalars per step, against the same loop without
  logging, interleaved in ABBA blocks with the sidecar paused in the blocks without.

wandb is not a dependency of runstream: its figures come from a subprocess running another Python
that has it (``--wandb-python PATH``, default ``$RUNSTREAM_BENCH_WANDB_PYTHON``; see
bench/README.md).  Without one, the wandb figures, and the targets that need them, are skipped.

Prints text, then the same figures as one JSON object on the last line (or into ``--json PATH``).
Exits 0 even when a target fails -- it is a report -- unless ``--check`` is given.
"""

from __future__ import annotations

import os

# The training case's work is numpy matmuls, which a multi-threaded BLAS would spread over both
# cores of a 2-core machine, taking the core the sidecar encodes PNGs on: one thread, as a data
# loader-bound or GPU training process leaves the other cores free.  Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import runstream  # noqa: E402
from _common import (  # noqa: E402
    arg_parser,
    emit,
    latency_us,
    load_case,
    machine,
    median_of,
    print_targets,
    record_case,
    ring_counters,
    start_run,
    timer_overhead_ns,
    wait_journaled,
)

WANDB_MISSING = "wandb: not installed (see bench/README.md)"

# The wandb side, run by ``--wandb-python`` with ``-c``: one repetition (one offline run) of the
# case named in argv[1] with the JSON parameters in argv[2].  It prints one JSON line when ready,
# then, for each line read from stdin, ``n`` more samples as one JSON line, until "quit": so the
# parent can alternate short chunks of runstream and wandb (a shared VM's speed drifts over
# seconds), then the run's finish as the last line.
WANDB_SCRIPT = r"""
import json, sys, tempfile, time, shutil, pathlib
import numpy as np
import wandb

mode, p = sys.argv[1], json.loads(sys.argv[2])
pc = time.perf_counter_ns

def overhead(n=100_000):
    ts = [0] * n
    for i in range(n):
        t0 = pc()
        t1 = pc()
        ts[i] = t1 - t0
    return sorted(ts)[n // 2]

def say(obj):
    print(json.dumps(obj), flush=True)

tmp = tempfile.mkdtemp(prefix="runstream-bench-wandb-")
try:
    run = wandb.init(project="bench", mode="offline", dir=tmp)
    rng = np.random.default_rng(p["seed"])
    if mode == "image":
        arr = rng.integers(0, 256, size=tuple(p["shape"]), dtype=np.uint8)
        for _ in range(p["warmup"]):
            wandb.log({"img": wandb.Image(arr)})
    else:
        x = rng.standard_normal(p["values"])
        for _ in range(p["warmup"]):
            wandb.log({"h": wandb.Histogram(x)})
    say({"wandb_version": wandb.__version__, "timer_overhead_ns": overhead(),
         "checksum": float(x.sum()) if mode != "image" else None})
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        n = int(line)
        if mode == "image":
            ts = [0] * n
            for i in range(n):
                t0 = pc()
                wandb.log({"img": wandb.Image(arr)})
                t1 = pc()
                ts[i] = t1 - t0
            say({"log_ns": ts})
        else:
            ops = {"log": lambda: wandb.log({"h": wandb.Histogram(x)}), "make": lambda: wandb.Histogram(x),
                   "bare": lambda: np.histogram(x, bins=64)}
            got = {k: [] for k in ops}
            for i in range(n):
                for k in (list(ops) if i % 2 == 0 else list(ops)[::-1]):
                    f = ops[k]
                    t0 = pc()
                    f()
                    t1 = pc()
                    got[k].append(t1 - t0)
            say({f"{k}_ns": v for k, v in got.items()})
    t0 = time.perf_counter()
    run.finish()
    say({"finish_s": time.perf_counter() - t0,
         "png_files": sum(1 for _ in pathlib.Path(tmp).rglob("*.png"))})
finally:
    shutil.rmtree(tmp, ignore_errors=True)
"""


class Session:
    """One wandb repetition in its subprocess: ``chunk(n)`` runs ``n`` more samples there."""

    def __init__(self, peer: Wandb, mode: str, params: dict[str, Any]) -> None:
        assert peer.python
        self.peer = peer
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}
        self.proc = subprocess.Popen(
            [peer.python, "-c", WANDB_SCRIPT, mode, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        self.ready = self._read()
        peer.version = self.ready["wandb_version"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=30)
                raise RuntimeError(f"exit {self.proc.wait()}: {err.strip()[-600:]}")
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]

    def chunk(self, n: int) -> dict[str, Any]:
        assert self.proc.stdin
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        assert self.proc.stdin
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        out = self._read()
        self.proc.wait(timeout=120)
        return out


class Wandb:
    """The wandb peer: a Python that has wandb, one subprocess per repetition; nothing when it is
    missing or fails (the failure is printed once, then it is not tried again)."""

    def __init__(self, python: str | None) -> None:
        self.python = python
        self.version: str | None = None
        self.error: str | None = None if python else "no --wandb-python given"
        if self.error:
            print(WANDB_MISSING)

    @property
    def available(self) -> bool:
        return self.error is None

    def fail(self, e: Exception) -> None:
        self.error = str(e)
        print(f"{WANDB_MISSING}: {self.python} failed: {e}")

    def session(self, mode: str, params: dict[str, Any]) -> Session | None:
        if not self.available:
            return None
        try:
            return Session(self, mode, params)
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            self.fail(e)
            return None


def chunks(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


# --- runstream's side -----------------------------------------------------------------------------
def finish_and_read(run: Any, key: str, log_type: str) -> dict[str, Any]:
    """Finish, read the run back with ``read_run`` and check every row's ``key`` is a pointer of
    ``log_type`` (for images: to a PNG that exists), with no media dropped and no media errors."""
    counters = ring_counters(run)
    t0 = time.perf_counter()
    run.finish()
    finish_s = time.perf_counter() - t0
    data = runstream.read_run(run.dir)
    files = Path(run.dir) / "files"
    rows = data.history
    good, errors = 0, []
    for row in rows:
        v = row.get(key)
        ok = isinstance(v, dict) and v.get("_type") == log_type and "error" not in v
        if ok and log_type == "image-file":
            path = str(v.get("path", ""))
            ok = path.endswith(".png") and (files / path).is_file()
        good += ok
        if not ok and len(errors) < 3:
            errors.append(v)
    last = rows[-1] if rows else {}

    def counter(name: str) -> int:
        k = f"_runstream/{name}"
        return int(max(data.summary.get(k) or 0, last.get(k) or 0))

    out = {
        "rows": len(rows),
        "rows_with_pointer": good,
        "png_files": sum(1 for _ in files.rglob("*.png")),
        "dropped_media": counter("dropped_media"),
        "media_errors": counter("media_errors"),
        "dropped": int(data.dropped) + counters["dropped"],
        "ring_filled": bool(counters["overflow_peak_bytes"]),
        "finish_s": finish_s,
        "bad_values": errors,
    }
    shutil.rmtree(run._bench_tmp, ignore_errors=True)
    return out


def keep_up(checks: list[dict[str, Any]], expected: int) -> dict[str, Any]:
    """Did the sidecar keep up in every repetition: all rows, all pointers, nothing lost?"""
    fig = {
        "rows_expected": expected,
        "rows_min": min(c["rows"] for c in checks),
        "rows_with_pointer_min": min(c["rows_with_pointer"] for c in checks),
        "png_files_min": min(c["png_files"] for c in checks),
        "dropped_media": max(c["dropped_media"] for c in checks),
        "media_errors": max(c["media_errors"] for c in checks),
        "dropped": max(c["dropped"] for c in checks),
        "ring_filled": any(c["ring_filled"] for c in checks),
        "bad_values": next((c["bad_values"] for c in checks if c["bad_values"]), []),
    }
    fig["media_missing"] = expected - fig["rows_with_pointer_min"]
    fig["media_verified"] = (
        fig["rows_min"] == expected
        and fig["media_missing"] == 0
        and not (fig["dropped_media"] or fig["media_errors"] or fig["dropped"])
    )
    return fig


def image_array(p: dict[str, Any]) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(p["seed"])
    return rng.integers(0, 256, size=tuple(p["shape"]), dtype=np.uint8)


def case_image_log(p: dict[str, Any], overhead: int, wandb: Wandb) -> dict[str, Any]:
    arr = image_array(p)
    reps, wreps, checks, faults, lags, sidecar_rates = [], [], [], [], [], []
    wandb_pngs = []
    for _ in range(p["repeat"]):
        # A fresh run per repetition, as in log_latency.py.  Runstream's timed calls come in one
        # uninterrupted burst (what the sidecar keeps up with is part of the case); wandb's follow.
        run = start_run(p["settings"])
        log, image = run.log, runstream.Image
        for _ in range(p["warmup"]):
            log({"img": image(arr)})
        wait_journaled(run)
        gc.collect()
        pc, n = time.perf_counter_ns, p["samples"]
        ts = [0] * n
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for i in range(n):
            t0 = pc()
            log({"img": image(arr)})
            t1 = pc()
            ts[i] = t1 - t0
        end = time.perf_counter()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        journaled = wait_journaled(run)
        lags.append(journaled - end)
        sidecar_rates.append(n / (journaled - start))  # images encoded and journaled per second
        reps.append(latency_us(ts, overhead))
        checks.append(finish_and_read(run, "img", "image-file"))
        w = wandb.session("image", p)
        if w:
            try:
                got = w.chunk(n)
                wandb_pngs.append(w.close()["png_files"])
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                w.proc.kill()
                wandb.fail(e)
                continue
            wreps.append(latency_us(got["log_ns"], w.ready["timer_overhead_ns"]))
    fig: dict[str, Any] = median_of(reps)
    fig |= {
        "per_repeat": reps,
        "minor_faults_per_call": statistics.median(faults) / p["samples"],
        "sidecar_images_per_s": statistics.median(sidecar_rates),
        "sidecar_lag_s": statistics.median(lags),
        **keep_up(checks, p["warmup"] + p["samples"]),
    }
    if wreps:
        fig["wandb"] = median_of(wreps)
        fig["wandb_png_files_min"] = min(wandb_pngs)
        fig["wandb_p50_us"] = fig["wandb"]["p50_us"]
        fig["p50_ratio_to_wandb"] = fig["p50_us"] / fig["wandb"]["p50_us"]
    return fig


def hist_ops(log: Any, hist: Any, x: np.ndarray[Any, Any]) -> dict[str, Any]:
    """What the histogram case times: log (construction included), construction, bare numpy."""
    return {
        "log": lambda: log({"h": hist(x)}),
        "make": lambda: hist(x),
        "bare": lambda: np.histogram(x, bins=64),
    }


def case_histogram(p: dict[str, Any], overhead: int, wandb: Wandb) -> dict[str, Any]:
    pc, ms = time.perf_counter_ns, 1e6
    rs: dict[str, list[float]] = {"log": [], "make": [], "bare": []}
    wb: dict[str, list[float]] = {"log": [], "make": [], "bare": []}
    checks, sums = [], []
    for _ in range(p["repeat"]):
        x = np.random.default_rng(p["seed"]).standard_normal(p["values"])
        run = start_run(p["settings"])
        log, hist = run.log, runstream.Histogram
        for _ in range(p["warmup"]):
            log({"h": hist(x)})
        w = wandb.session("histogram", p)
        if w:
            sums.append(abs(w.ready["checksum"] - float(x.sum())) < 1e-6)
        ops = hist_ops(log, hist, x)
        order = list(ops)
        mine: dict[str, list[int]] = {"log": [], "make": [], "bare": []}
        theirs: dict[str, list[int]] = {"log": [], "make": [], "bare": []}
        # Short chunks, alternating with wandb's: both sides see the same machine speed.
        for k in chunks(p["samples"], p["chunk"]):
            for i in range(k):
                # The three in turn, the order reversed every other time: what one leaves in the
                # caches (or frees) is then shared out evenly.
                for key in order if i % 2 == 0 else order[::-1]:
                    f = ops[key]
                    t0 = pc()
                    f()
                    t1 = pc()
                    mine[key].append(t1 - t0 - overhead)
            if w:
                try:
                    got = w.chunk(k)
                except (OSError, RuntimeError, ValueError) as e:
                    w.proc.kill()
                    wandb.fail(e)
                    w = None
                    continue
                wo = w.ready["timer_overhead_ns"]
                for key in theirs:
                    theirs[key] += [t - wo for t in got[f"{key}_ns"]]
        if w:
            try:
                w.close()
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                w.proc.kill()
                wandb.fail(e)
        wait_journaled(run)
        checks.append(finish_and_read(run, "h", "histogram"))
        for key, figures in rs.items():
            figures.append(statistics.median(mine[key]) / ms)
            if theirs["log"]:
                wb[key].append(statistics.median(theirs[key]) / ms)
    fig: dict[str, Any] = {
        "log_ms": statistics.median(rs["log"]),
        "make_ms": statistics.median(rs["make"]),
        "bare_ms": statistics.median(rs["bare"]),
        "per_repeat_log_ms": rs["log"],
    }
    fig |= {k: v for k, v in keep_up(checks, p["warmup"] + p["samples"]).items() if not k.startswith("png")}
    if wb["log"] and wandb.available:
        fig |= {
            "wandb_log_ms": statistics.median(wb["log"]),
            "wandb_make_ms": statistics.median(wb["make"]),
            "wandb_bare_ms": statistics.median(wb["bare"]),
            "wandb_per_repeat_log_ms": wb["log"],
            "same_array": all(sums),
        }
        fig["ratio_to_wandb"] = fig["log_ms"] / fig["wandb_log_ms"]
        fig["make_ratio_to_wandb"] = fig["make_ms"] / fig["wandb_make_ms"]
        # Each side over the bare np.histogram timed in its own process: what is left of the
        # ratio once the two processes' speeds (machine drift, numpy builds) are factored out.
        fig["ratio_to_wandb_per_bare"] = (fig["log_ms"] / fig["bare_ms"]) / (
            fig["wandb_log_ms"] / fig["wandb_bare_ms"]
        )
    return fig


def work(n: int, a: np.ndarray[Any, Any], out: np.ndarray[Any, Any]) -> None:
    """One training step's CPU work: ``n`` matmuls of ``a`` (single-threaded BLAS)."""
    for _ in range(n):
        np.matmul(a, a, out=out)


def calibrate(step_ms: float, a: np.ndarray[Any, Any], out: np.ndarray[Any, Any]) -> int:
    n = 20
    for _ in range(3):
        ts = []
        for _ in range(30):
            t0 = time.perf_counter_ns()
            work(n, a, out)
            ts.append(time.perf_counter_ns() - t0)
        n = max(1, round(n * step_ms * 1e6 / statistics.median(ts)))
    return n


def case_training(p: dict[str, Any], overhead: int, wandb: Wandb) -> dict[str, Any]:
    arr = image_array(p)
    a = np.random.default_rng(p["seed"]).standard_normal((p["matmul"], p["matmul"]))
    out = np.empty_like(a)
    n = calibrate(p["step_ms"], a, out)
    block = p["block"]
    steps = p["steps"] // block * block  # steps on each side
    pc, tt = time.perf_counter_ns, time.thread_time_ns
    groups: list[tuple[float, float]] = []
    per_rep: dict[str, list[float]] = {}
    checks = []
    for _ in range(p["repeat"]):
        run = start_run(p["settings"])
        log, image = run.log, runstream.Image
        sidecar = psutil.Process(run._sidecar.pid)
        tot = {True: [0.0, 0.0], False: [0.0, 0.0]}
        group = {True: [0.0, 0.0], False: [0.0, 0.0]}
        in_log, in_log_cpu, side_cpu, step = 0, 0, 0.0, 0
        faults, preempted = {True: 0, False: 0}, {True: 0, False: 0}
        for b in range(2 * steps // block):
            on = b % 4 in (0, 3)  # ABBA: linear drift cancels within each group of four blocks
            if on:
                sidecar.resume()
                s0 = sum(sidecar.cpu_times()[:2])
            else:
                sidecar.suspend()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            w0, c0 = time.perf_counter(), time.process_time()
            if on:
                for _ in range(block):
                    work(n, a, out)
                    t0, c0_ = pc(), tt()
                    log({"img": image(arr), "loss": 1.0 / (step + 1), "acc": step * 1e-4, "lr": 3e-4})
                    in_log_cpu += tt() - c0_
                    in_log += pc() - t0
                    step += 1
            else:
                for _ in range(block):
                    work(n, a, out)
            dw, dc = time.perf_counter() - w0, time.process_time() - c0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            faults[on] += ru1.ru_minflt - ru0.ru_minflt
            preempted[on] += ru1.ru_nivcsw - ru0.ru_nivcsw
            if on:
                side_cpu += sum(sidecar.cpu_times()[:2]) - s0
            for side in (tot, group):
                side[on][0] += dw
                side[on][1] += dc
            if b % 4 == 3:
                (gw, gcpu), (ow, ocpu) = group[True], group[False]
                groups.append((100 * (gw - ow) / ow, 100 * (gcpu - ocpu) / ocpu))
                group = {True: [0.0, 0.0], False: [0.0, 0.0]}
        sidecar.resume()
        wait_journaled(run)
        (ww, wc), (ow, oc) = tot[True], tot[False]
        for key, v in (
            ("wall_pct", 100 * (ww - ow) / ow),
            ("cpu_pct", 100 * (wc - oc) / oc),
            ("in_log_us", (in_log / steps - overhead) / 1e3),
            ("in_log_cpu_us", in_log_cpu / steps / 1e3),
            ("faults_per_step", faults[True] / steps),
            ("faults_per_step_without", faults[False] / steps),
            ("preempted_per_step", preempted[True] / steps),
            ("preempted_per_step_without", preempted[False] / steps),
            ("step_ms", ow / steps * 1e3),
            ("sidecar_cpu_pct", 100 * side_cpu / ww),
        ):
            per_rep.setdefault(key, []).append(v)
        checks.append(finish_and_read(run, "img", "image-file"))
    med = {k: statistics.median(v) for k, v in per_rep.items()}
    return {
        "matmuls_per_step": n,
        "step_ms": med["step_ms"],
        "overhead_wall_pct": statistics.median(g[0] for g in groups),
        "overhead_cpu_pct": statistics.median(g[1] for g in groups),
        "groups": len(groups),
        "sums_overhead_wall_pct": med["wall_pct"],
        "sums_overhead_cpu_pct": med["cpu_pct"],
        "per_repeat_wall_pct": per_rep["wall_pct"],
        "per_step_in_log_us": med["in_log_us"],
        "per_step_in_log_cpu_us": med["in_log_cpu_us"],
        "minor_faults_per_step": med["faults_per_step"],
        "minor_faults_per_step_without": med["faults_per_step_without"],
        "preempted_per_step": med["preempted_per_step"],
        "preempted_per_step_without": med["preempted_per_step_without"],
        "in_log_pct_of_step": med["in_log_us"] / (med["step_ms"] * 1e3) * 100,
        "sidecar_cpu_pct": med["sidecar_cpu_pct"],
        **keep_up(checks, steps),
    }


CASES = {
    "media_image_log": case_image_log,
    "media_histogram": case_histogram,
    "media_training_overhead": case_training,
}


def show_keep_up(f: dict[str, Any]) -> None:
    print(
        f"  read back: {f['rows_min']} of {f['rows_expected']} rows, "
        f"{f['rows_with_pointer_min']} with a pointer"
        + (f" to a PNG that exists ({f['png_files_min']} PNG files)" if "png_files_min" in f else "")
        + f"; dropped_media {f['dropped_media']}, media_errors {f['media_errors']}, dropped {f['dropped']}; "
        f"ring filled: {f['ring_filled']}; verified: {f['media_verified']}"
    )
    if f["bad_values"]:
        print(f"  e.g. {str(f['bad_values'][0])[:300]}")


def show(name: str, p: dict[str, Any], f: dict[str, Any], wandb: Wandb) -> None:
    reps = f"median of {p['repeat']} repetitions"
    wb = f"wandb {wandb.version}" if wandb.version else "wandb"
    if name == "media_image_log":
        shape = "x".join(map(str, p["shape"]))
        print(f"\n[{name}] log({{'img': Image({shape} uint8)}}), {p['samples']} timed calls each, {reps}")
        print(f"  {'':14} {'p50':>9} {'p99':>9} {'p99.9':>9} {'max':>9}  (us, Image construction included)")
        rows = [("runstream", f)] + ([(wb, f["wandb"])] if "wandb" in f else [])
        for label, x in rows:
            cols = (x["p50_us"], x["p99_us"], x["p999_us"], x["max_us"])
            print(f"  {label:14} " + " ".join(f"{c:9.1f}" for c in cols))
        if "wandb" in f:
            print(
                f"  p50 runstream/wandb = {f['p50_ratio_to_wandb']:.3f}x "
                f"(wandb wrote {f['wandb_png_files_min']} PNG files)"
            )
        else:
            print(f"  {WANDB_MISSING}")
        print(
            f"  sidecar: {f['sidecar_images_per_s']:.0f} images/s encoded and journaled from the first timed "
            f"call; {f['sidecar_lag_s']:.2f} s behind the last; minor page faults per call "
            f"{f['minor_faults_per_call']:.1f}"
        )
        show_keep_up(f)
    elif name == "media_histogram":
        print(
            f"\n[{name}] log({{'h': Histogram({p['values']:,} normal samples)}}), "
            f"{p['samples']} calls each, {reps}"
        )
        print(f"  {'':14} {'log':>9} {'construct':>10} {'np.histogram':>13}  (ms, median per call)")
        print(f"  {'runstream':14} {f['log_ms']:9.2f} {f['make_ms']:10.2f} {f['bare_ms']:13.2f}")
        if "wandb_log_ms" in f:
            print(f"  {wb:14} {f['wandb_log_ms']:9.2f} {f['wandb_make_ms']:10.2f} {f['wandb_bare_ms']:13.2f}")
            print(
                f"  runstream/wandb = {f['ratio_to_wandb']:.3f}x (construction alone "
                f"{f['make_ratio_to_wandb']:.3f}x; each over its own process's bare np.histogram "
                f"{f['ratio_to_wandb_per_bare']:.3f}x); same array in both: {f['same_array']}"
            )
        else:
            print(f"  {WANDB_MISSING}")
        show_keep_up(f)
    else:
        print(
            f"\n[{name}] {p['steps']:,} steps of {f['step_ms']:.2f} ms ({f['matmuls_per_step']} matmuls of "
            f"{p['matmul']}x{p['matmul']}) each with and without a log of one image + 3 scalars, {reps}"
        )
        print(
            f"  ABBA blocks of {p['block']} steps; without: the sidecar paused; with: it ran, using "
            f"{f['sidecar_cpu_pct']:.1f}% of a core"
        )
        print(
            f"  overhead (median over {f['groups']} ABBA groups): wall {f['overhead_wall_pct']:+.2f}%, "
            f"CPU {f['overhead_cpu_pct']:+.2f}%; ratio of sums {f['sums_overhead_wall_pct']:+.2f}% wall, "
            f"{f['sums_overhead_cpu_pct']:+.2f}% CPU; per repetition (wall %): "
            + ", ".join(f"{x:+.2f}" for x in f["per_repeat_wall_pct"])
        )
        print(
            f"  inside log (Image built in the call): {f['per_step_in_log_us']:.1f} us per step "
            f"({f['in_log_pct_of_step']:.2f} % of a step), {f['per_step_in_log_cpu_us']:.1f} us of it "
            "on this thread's CPU (the rest: waiting for a core)"
        )
        print(
            f"  minor page faults per step: {f['minor_faults_per_step']:.1f} with logging, "
            f"{f['minor_faults_per_step_without']:.1f} without; involuntary context switches per step: "
            f"{f['preempted_per_step']:.2f} with, {f['preempted_per_step_without']:.2f} without"
        )
        show_keep_up(f)


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, CASES, "fewer samples and repetitions: a ~1 min smoke run")
    ap.add_argument(
        "--wandb-python",
        default=os.environ.get("RUNSTREAM_BENCH_WANDB_PYTHON"),
        help="a Python with wandb installed, for the wandb figures (default: $RUNSTREAM_BENCH_WANDB_PYTHON)",
    )
    a = ap.parse_args(argv)

    overhead = timer_overhead_ns()
    out: dict[str, Any] = {"quick": a.quick, "machine_before": machine(), "timer_overhead_ns": overhead}
    print(f"runstream media benchmark{' (--quick)' if a.quick else ''}: {out['machine_before']}")
    print(f"timer overhead {overhead} ns per perf_counter_ns pair (subtracted from every sample)")
    wandb = Wandb(a.wandb_python)
    cases, targets, skipped = {}, [], []
    for name in a.case or CASES:
        case = load_case(name, a.quick, a.repeat)
        p = case["parameters"]
        load = machine()["load"]
        t0 = time.monotonic()
        fig = CASES[name](p, overhead, wandb)
        show(name, p, fig, wandb)
        print(f"  ({time.monotonic() - t0:.0f} s; load average at start {load})")
        if not wandb.available:  # targets against wandb cannot be judged without it
            skipped += [{**t, "case": name} for t in case["targets"] if t.get("needs") == "wandb"]
            case["targets"] = [t for t in case["targets"] if t.get("needs") != "wandb"]
        record_case(cases, targets, case, load, fig)
    out["wandb"] = {"python": a.wandb_python, "version": wandb.version, "error": wandb.error}
    out["skipped_targets"] = skipped
    print_targets(out, targets)
    for t in skipped:
        print(f"  SKIP  {t['case']}.{t['metric']} (target {t['op']} {t['value']:,}): {WANDB_MISSING}")
    return emit(out, cases, targets, a.json, a.check)


if __name__ == "__main__":
    sys.exit(main())
