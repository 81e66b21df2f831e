"""How much does ``run.log`` cost a training loop?  (``make bench``)

Four cases, parameters and targets in ``bench/cases/<name>/case.json``:

* ``latency_10`` / ``latency_1000``: per-call ``log`` latency of a 10- and a 1,000-scalar dict in a
  real offline run while its sidecar drains and journals, beside the bare floor (``orjson.dumps``
  into a preallocated buffer) timed the same way;
* ``throughput``: millions of 10-scalar ``log`` calls as fast as possible, then the journal is
  read back (every row there, nothing dropped); the same loop disabled and as the bare floor;
* ``training_loop``: steps of ~200 us CPU work with and without a ``log`` per step; beside it the
  same with the sidecar paused throughout, and with the floor in place of ``log``.

Prints text, then the same figures as one JSON object on the last line (or into ``--json PATH``).
Exits 0 even when a target fails -- it is a report -- unless ``--check`` is given.
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from itertools import repeat
from pathlib import Path
from typing import Any

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).parent))
import runstream
from _common import (
    REFERENCE,
    arg_parser,
    emit,
    finish_and_verify,
    latency_us,
    load_case,
    machine,
    median_of,
    print_targets,
    record_case,
    ring_counters,
    scalars,
    start_run,
    timer_overhead_ns,
    wait_journaled,
)

FLOOR_BUF = 64 << 20  # the floor's preallocated buffer; it wraps, like the ring


def floor_buffer() -> memoryview:
    # Built from bytes so every page is already written: a calloc'd bytearray would take its
    # page faults inside the timed loop and make the floor look slower than it is.
    return memoryview(bytearray(bytes(FLOOR_BUF)))


def timed_calls(fn: Any, d: dict[str, float], n: int) -> list[int]:
    pc = time.perf_counter_ns
    ts = [0] * n
    for i in range(n):
        t0 = pc()
        fn(d)
        t1 = pc()
        ts[i] = t1 - t0
    return ts


def timed_floor(d: dict[str, float], n: int) -> list[int]:
    # Inline on purpose: the floor is the serialisation and the copy, nothing else.
    pc, dumps = time.perf_counter_ns, orjson.dumps
    buf, pos, limit = floor_buffer(), 0, FLOOR_BUF // 2
    ts = [0] * n
    for i in range(n):
        t0 = pc()
        b = dumps(d)
        k = len(b)
        buf[pos : pos + k] = b
        pos = pos + k if pos < limit else 0
        t1 = pc()
        ts[i] = t1 - t0
    return ts


def case_latency(p: dict[str, Any], overhead: int) -> dict[str, Any]:
    d = scalars(p["keys"])
    reps, floors, checks, faults = [], [], [], []
    for _ in range(p["repeat"]):
        # A fresh run (and ring) per repetition: samples land in the ring's first lap, as in a
        # real run, where each new page is still to be mapped into this process.
        run = start_run(p["settings"])
        log = run.log
        for _ in repeat(None, p["warmup"]):
            log(d)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        reps.append(latency_us(timed_calls(log, d, p["samples"]), overhead))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        wait_journaled(run)
        checks.append(finish_and_verify(run, p["warmup"] + p["samples"]))
        floors.append(latency_us(timed_floor(d, p["samples"]), overhead))
    fig: dict[str, Any] = median_of(reps)
    fig["floor"] = median_of(floors)
    # The floor moves with the machine's speed (a shared VM's varies by 2x over minutes); the
    # ratio to it, measured minutes apart at most, is the steadier figure.
    fig["p50_ratio_to_floor"] = fig["p50_us"] / fig["floor"]["p50_us"]
    fig["per_repeat"] = reps
    fig["minor_faults_per_1k_calls"] = statistics.median(faults) * 1000 / p["samples"]
    fig["ring_filled"] = any(c["overflow_peak_bytes"] for c in checks)
    fig["dropped"] = sum(c["dropped"] for c in checks)
    fig["verified"] = all(c["verified"] for c in checks)
    return fig


def loop_runstream(p: dict[str, Any]) -> dict[str, Any]:
    run = start_run(p["settings"])
    d, log, calls = scalars(p["keys"]), run.log, p["calls"]
    for _ in repeat(None, p["warmup"]):
        log(d)
    wait_journaled(run)
    sidecar = psutil.Process(run._sidecar.pid)
    c0 = sum(sidecar.cpu_times()[:2])
    t0 = time.perf_counter()
    for _ in repeat(None, calls):
        log(d)
    t1 = time.perf_counter()
    counters = ring_counters(run)  # before waiting: did the loop outrun the ring?
    t2 = wait_journaled(run)
    sidecar_cpu = sum(sidecar.cpu_times()[:2]) - c0
    check = finish_and_verify(run, p["warmup"] + calls)
    return {
        "calls_per_s": calls / (t1 - t0),
        "journaled_per_s": calls / (t2 - t0),
        "journal_lag_s": t2 - t1,
        "sidecar_cpu_pct": 100 * sidecar_cpu / (t2 - t0),
        "overflow_used_bytes": counters["overflow_peak_bytes"],
        **check,
    }


def loop_disabled(p: dict[str, Any]) -> float:
    run = runstream.init(mode="disabled")
    d, log = scalars(p["keys"]), run.log
    t0 = time.perf_counter()
    for _ in repeat(None, p["calls"]):
        log(d)
    t1 = time.perf_counter()
    run.finish()
    return p["calls"] / (t1 - t0)


def loop_floor(p: dict[str, Any]) -> float:
    d, dumps = scalars(p["keys"]), orjson.dumps
    buf, pos, limit = floor_buffer(), 0, FLOOR_BUF // 2
    t0 = time.perf_counter()
    for _ in repeat(None, p["calls"]):
        b = dumps(d)
        k = len(b)
        buf[pos : pos + k] = b
        pos = pos + k if pos < limit else 0
    t1 = time.perf_counter()
    return p["calls"] / (t1 - t0)


def case_throughput(p: dict[str, Any], overhead: int) -> dict[str, Any]:
    runs, disabled, floor = [], [], []
    for _ in range(p["repeat"]):
        gc.collect()
        floor.append(loop_floor(p))
        disabled.append(loop_disabled(p))
        runs.append(loop_runstream(p))
    numeric = [{k: v for k, v in r.items() if type(v) in (int, float)} for r in runs]
    fig: dict[str, Any] = median_of(numeric)
    fig["dropped"] = max(r["dropped"] for r in runs)
    fig["rows_missing"] = max(r["rows_missing"] for r in runs)
    fig["verified"] = all(r["verified"] for r in runs)
    fig["disabled_calls_per_s"] = statistics.median(disabled)
    fig["floor_calls_per_s"] = statistics.median(floor)
    # Ratios of time per call: how many floors (or disabled calls) one runstream call costs.
    fig["ratio_to_floor"] = fig["floor_calls_per_s"] / fig["calls_per_s"]
    fig["ratio_to_disabled"] = fig["disabled_calls_per_s"] / fig["calls_per_s"]
    fig["per_repeat"] = runs
    return fig


def busy(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def calibrate(work_us: float) -> int:
    n = 2000
    for _ in range(3):
        ts = []
        for _ in range(200):
            t0 = time.perf_counter_ns()
            busy(n)
            ts.append(time.perf_counter_ns() - t0)
        n = max(1, round(n * work_us * 1e3 / statistics.median(ts)))
    return n


def train(steps: int, n: int, log: Any, d: dict[str, float], timed: bool = False) -> tuple[float, float, int]:
    """Wall and CPU seconds of ``steps`` steps, and (``timed``) ns spent inside ``log``.

    The overhead blocks are never ``timed``: a pair of perf_counter_ns calls right after the work
    costs about 1 % of a 270 us step on this VM (an empty function timed that way read +1 %,
    untimed -0.3 %), which is the bias earlier versions of this benchmark carried.  The time
    inside ``log`` is taken in blocks of its own."""
    pc, in_log = time.perf_counter_ns, 0
    w0, c0 = time.perf_counter(), time.process_time()
    if log is None:
        for _ in range(steps):
            busy(n)
    elif not timed:
        for _ in range(steps):
            busy(n)
            log(d)
    else:
        for _ in range(steps):
            busy(n)
            t0 = pc()
            log(d)
            in_log += pc() - t0
    return time.perf_counter() - w0, time.process_time() - c0, in_log


def floor_fn() -> Any:
    """The floor as a callable, for the training loop: orjson into a preallocated buffer."""
    dumps, buf, limit = orjson.dumps, floor_buffer(), FLOOR_BUF // 2
    pos = 0

    def floor(d: dict[str, float]) -> None:
        nonlocal pos
        b = dumps(d)
        k = len(b)
        buf[pos : pos + k] = b
        pos = pos + k if pos < limit else 0

    return floor


def noop(d: dict[str, float]) -> None:
    return None


def abba(
    steps: int, block: int, n: int, d: dict[str, float], fn: Any, sidecar: Any, live: bool
) -> tuple[dict[bool, list[float]], list[tuple[float, float]]]:
    """Alternate blocks with and without ``fn`` (ABBA order cancels linear drift); the sidecar is
    paused in the blocks without it, and throughout unless ``live``.  Wall, CPU and in-call time
    summed per side, and each ABBA group's own (wall %, CPU %) overhead."""
    tot: dict[bool, list[float]] = {True: [0.0, 0.0, 0], False: [0.0, 0.0, 0]}
    groups: list[tuple[float, float]] = []
    group: dict[bool, list[float]] = {True: [0.0, 0.0], False: [0.0, 0.0]}
    for b in range(2 * steps // block):
        on = b % 4 in (0, 3)
        (sidecar.resume if on and live else sidecar.suspend)()
        for i, x in enumerate(train(block, n, fn if on else None, d)):
            tot[on][i] += x
            if i < 2:
                group[on][i] += x
        if b % 4 == 3:
            (gw, gc_), (ow, oc) = group[True], group[False]
            groups.append((100 * (gw - ow) / ow, 100 * (gc_ - oc) / oc))
            group = {True: [0.0, 0.0], False: [0.0, 0.0]}
    sidecar.resume()
    return tot, groups


def case_training(p: dict[str, Any], overhead: int) -> dict[str, Any]:
    n = calibrate(p["work_us"])
    d, block = scalars(p["keys"]), p["block"]
    steps = p["steps"] // block * block
    # log: the target.  log_paused: the same with the sidecar stopped throughout, i.e. log's own
    # cost without the sidecar's work beside it.  floor: orjson into a buffer in the same loop --
    # what the cheapest possible logging costs a step whose caches the work has just filled.
    # noop: an empty Python function, i.e. what this measurement reads when nothing is logged.
    variants = p.get("variants", ["log", "log_paused", "floor", "noop"])
    per: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    sidecar_pct = []
    for _ in range(p["repeat"]):
        run = start_run(p["settings"])
        sidecar = psutil.Process(run._sidecar.pid)
        gc.collect()
        for v in variants:
            c0 = sum(sidecar.cpu_times()[:2])
            fn = {"floor": floor_fn(), "noop": noop}.get(v, run.log)
            tot, groups = abba(steps, block, n, d, fn, sidecar, live=v == "log")
            per[v].setdefault("group_wall_pct", []).extend(g[0] for g in groups)
            per[v].setdefault("group_cpu_pct", []).extend(g[1] for g in groups)
            (ww, wc, _), (ow, oc, _) = tot[True], tot[False]
            if v == "log":
                sidecar_pct.append(100 * (sum(sidecar.cpu_times()[:2]) - c0) / ww)
            else:
                sidecar.suspend()
            in_fn = train(steps // 2, n, fn, d, timed=True)[2] * 2  # the time inside the call
            sidecar.resume()
            wait_journaled(run)
            for key, x in (
                ("wall_pct", 100 * (ww - ow) / ow),
                ("cpu_pct", 100 * (wc - oc) / oc),
                ("in_call_us", (in_fn / steps - overhead) / 1e3),
                ("with_s", ww),
                ("without_s", ow),
            ):
                per[v].setdefault(key, []).append(x)
        rows = (steps + steps // 2) * sum(v in ("log", "log_paused") for v in variants)
        check = finish_and_verify(run, rows)
        if not check["verified"]:
            raise RuntimeError(f"training loop run lost rows: {check}")
    med = {v: {k: statistics.median(x) for k, x in f.items()} for v, f in per.items()}
    out: dict[str, Any] = {
        "step_work_us": med[variants[0]]["without_s"] / steps * 1e6,
        "sidecar_cpu_pct": statistics.median(sidecar_pct) if sidecar_pct else None,
    }
    for v in variants:
        prefix = "" if v == "log" else f"{v}_"
        # The headline is the median over every ABBA group of every repetition (~70 paired
        # estimates): one block hit by the VM's neighbours moves a ratio of sums by whole percents
        # (the empty function read +3.4 % that way) but barely moves a median.  The ratio of sums
        # per repetition is kept beside it.
        out |= {
            f"{prefix}overhead_wall_pct": med[v]["group_wall_pct"],
            f"{prefix}overhead_cpu_pct": med[v]["group_cpu_pct"],
            f"{prefix}sums_overhead_wall_pct": med[v]["wall_pct"],
            f"{prefix}sums_overhead_cpu_pct": med[v]["cpu_pct"],
            f"{prefix}groups": len(per[v]["group_wall_pct"]),
            ("log" if v == "log" else v) + "_in_loop_us": med[v]["in_call_us"],
            f"{prefix}with_s": med[v]["with_s"],
            f"{prefix}without_s": med[v]["without_s"],
            f"{prefix}per_repeat_wall_pct": per[v]["wall_pct"],
            f"{prefix}per_repeat_cpu_pct": per[v]["cpu_pct"],
        }
    return out


CASES = {
    "latency_10": case_latency,
    "latency_1000": case_latency,
    "throughput": case_throughput,
    "training_loop": case_training,
}


def show(name: str, p: dict[str, Any], f: dict[str, Any]) -> None:
    reps = f"median of {p['repeat']} repetitions"
    if name.startswith("latency"):
        print(f"\n[{name}] log({p['keys']} scalars), {p['samples']:,} timed calls each, {reps}")
        print(f"  {'':10} {'p50':>9} {'p99':>9} {'p99.9':>9} {'max':>9}  (us)")
        for label, x in (("runstream", f), ("floor", f["floor"])):
            cols = (x["p50_us"], x["p99_us"], x["p999_us"], x["max_us"])
            print(f"  {label:10} " + " ".join(f"{c:9.2f}" for c in cols))
        print(f"  p50 runstream/floor = {f['p50_ratio_to_floor']:.2f}x")
        print(
            f"  minor page faults per 1k calls {f['minor_faults_per_1k_calls']:.1f}; ring filled: "
            f"{f['ring_filled']}; dropped {f['dropped']}; journal verified: {f['verified']}"
        )
    elif name == "throughput":
        print(f"\n[throughput] {p['calls']:,} x log({p['keys']} scalars) as fast as possible, {reps}")
        print(f"  runstream  {f['calls_per_s']:>12,.0f} calls/s   ({1e9 / f['calls_per_s']:.0f} ns/call)")
        for label in ("disabled", "floor"):
            ratio = f"runstream/{label} = {f['ratio_to_' + label]:.2f}x (time per call)"
            print(f"  {label:10} {f[label + '_calls_per_s']:>12,.0f} calls/s   {ratio}")
        print(
            f"  journaled  {f['journaled_per_s']:>12,.0f} records/s from first call to last journaled "
            f"(lag {f['journal_lag_s']:.2f} s, sidecar CPU {f['sidecar_cpu_pct']:.0f}%, "
            f"overflow used {f['overflow_used_bytes'] / 2**20:.1f} MiB)"
        )
        print(
            f"  journal: {f['rows_journaled']:,.0f} of {f['rows_expected']:,.0f} rows, "
            f"dropped {f['dropped']}, verified: {f['verified']} (finish took {f['finish_s']:.2f} s)"
        )
    else:
        print(f"\n[training_loop] {p['steps']:,} steps of {f['step_work_us']:.0f} us work, {reps}")
        print(
            f"  with and without, interleaved in blocks of {p['block']} steps; without: the sidecar "
            f"paused; with log: it ran, using {f['sidecar_cpu_pct']:.1f}% of a core"
        )
        print(
            f"  overhead: median over {f['groups']} ABBA groups; in brackets the ratio of sums, median "
            "of repetitions; then each repetition's ratio of sums (wall %)"
        )
        print(f"  {'':34} {'wall':>8} {'CPU':>8} {'in call':>9}  {'(sums wall)':>12}  per repetition")
        labels = {
            "log": "log (the target)",
            "log_paused": "log, sidecar paused throughout",
            "floor": "floor: orjson into a buffer",
            "noop": "an empty function (the noise floor)",
        }
        for v, label in labels.items():
            prefix = "" if v == "log" else f"{v}_"
            if f"{prefix}overhead_wall_pct" not in f:
                continue
            reps_txt = ", ".join(f"{x:+.1f}" for x in f[f"{prefix}per_repeat_wall_pct"])
            wall, cpu = f[prefix + "overhead_wall_pct"], f[prefix + "overhead_cpu_pct"]
            in_call = f[("log" if v == "log" else v) + "_in_loop_us"]
            sums = f[prefix + "sums_overhead_wall_pct"]
            print(f"  {label:34} {wall:+7.2f}% {cpu:+7.2f}% {in_call:6.2f} us  ({sums:+7.2f}%)    {reps_txt}")
        share = 100 * f["log_in_loop_us"] / f["step_work_us"]
        print(f"  inside log calls: {f['log_in_loop_us']:.2f} us per step ({share:.2f} % of a step)")


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, CASES, "small sample counts: a ~20 s smoke run")
    a = ap.parse_args(argv)

    overhead = timer_overhead_ns()
    out: dict[str, Any] = {"quick": a.quick, "machine_before": machine(), "timer_overhead_ns": overhead}
    print(f"runstream log benchmark{' (--quick)' if a.quick else ''}: {out['machine_before']}")
    print(f"timer overhead {overhead} ns per perf_counter_ns pair (subtracted from every latency sample)")
    cases, targets = {}, []
    for name in a.case or CASES:
        case = load_case(name, a.quick, a.repeat)
        p = case["parameters"]
        load = machine()["load"]
        t0 = time.monotonic()
        fig = CASES[name](p, overhead)
        show(name, p, fig)
        print(f"  ({time.monotonic() - t0:.0f} s; load average at start {load})")
        record_case(cases, targets, case, load, fig)
    print_targets(out, targets)
    print("\nfor scale, measured elsewhere (not on this machine):")
    for tool, figs in REFERENCE.items():
        print(f"  {tool:26} " + ", ".join(f"{k} {v}" for k, v in figs.items()))
    out["reference"] = REFERENCE
    return emit(out, cases, targets, a.json, a.check)


if __name__ == "__main__":
    sys.exit(main())
