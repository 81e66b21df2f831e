"""Helpers shared by the benchmarks: case files, percentiles, real runs, journal checks."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import runstream
from runstream.format.ring_layout import W_DROPPED, W_JOURNALED_SEQ, W_OVERFLOW_PEAK, W_SIDECAR_PID
from runstream.read.local import replay

CASES = Path(__file__).parent / "cases"

# Figures measured elsewhere (not on this machine), printed for scale only.
REFERENCE = {
    "wandb 0.31 offline": {"p50_us": 77, "p99_us": 262, "p50_1000_us": 1900, "train_overhead_pct": 79},
    "MLflow 3.17 (file store)": {"p50_us": 742, "train_overhead_pct": 387},
    "Aim 3.29": {"p50_us": 493, "train_overhead_pct": 281},
    "orjson into a file": {"p50_us": 0.64},
}

OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "==": lambda a, b: a == b}


def arg_parser(doc: str, cases: Any, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; a benchmark adds its own after."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--repeat", type=int, help="repetitions per case (default: each case.json's)")
    ap.add_argument("--case", action="append", choices=list(cases), help="run only this case (repeatable)")
    ap.add_argument("--json", type=Path, help="write the JSON here instead of the last line of stdout")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    return ap


def load_case(name: str, quick: bool, repeat: int | None) -> dict[str, Any]:
    """A case's parameters, with its ``quick`` overrides applied and ``--repeat`` on top."""
    case = json.loads((CASES / name / "case.json").read_text())
    params = dict(case["parameters"])
    if quick:
        params.update(case.get("quick", {}))
    if repeat is not None:
        params["repeat"] = repeat
    case["parameters"] = params
    return case


def record_case(
    cases: dict[str, Any], targets: list[dict[str, Any]], case: dict[str, Any], load: Any, fig: dict[str, Any]
) -> None:
    """File one case's figures under its name in ``cases`` and its judged targets in ``targets``."""
    cases[case["name"]] = {
        "optimises": case["optimises"],
        "parameters": case["parameters"],
        "load_at_start": load,
        "figures": fig,
    }
    targets += judge(case, fig)


def judge(case: dict[str, Any], figures: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in case.get("targets", []):
        value = figures.get(t["metric"])
        ok = value is not None and OPS[t["op"]](value, t["value"])
        out.append({**t, "case": case["name"], "measured": value, "pass": ok})
    return out


def pct(sorted_ns: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))]


def latency_us(samples_ns: list[int], overhead_ns: int) -> dict[str, float]:
    s = sorted(max(0, x - overhead_ns) for x in samples_ns)
    return {
        "p50_us": pct(s, 0.5) / 1e3,
        "p99_us": pct(s, 0.99) / 1e3,
        "p999_us": pct(s, 0.999) / 1e3,
        "max_us": s[-1] / 1e3,
    }


def median_of(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(d[k] for d in dicts) for k in dicts[0]}


def timer_overhead_ns(n: int = 200_000) -> int:
    """Median cost of the back-to-back ``perf_counter_ns`` pair that brackets each timed call."""
    pc = time.perf_counter_ns
    ts = [0] * n
    for i in range(n):
        t0 = pc()
        t1 = pc()
        ts[i] = t1 - t0
    return int(statistics.median(ts))


def scalars(n: int) -> dict[str, float]:
    return {f"metric_{i}": 0.5 + i / 7 for i in range(n)}


def start_run(settings: dict[str, Any]) -> Any:
    """A real offline run whose sidecar is up and has journaled the run's first records."""
    tmp = tempfile.mkdtemp(prefix="runstream-bench-")
    run = runstream.init(project="bench", mode="offline", dir=tmp, settings={"silent": True, **settings})
    run._bench_tmp = tmp  # removed by finish_and_verify: 3M-row journals add up
    deadline = time.monotonic() + 30
    while not run._ring.words[W_SIDECAR_PID] and time.monotonic() < deadline:
        time.sleep(0.005)
    wait_journaled(run)
    gc.collect()
    return run


def wait_journaled(run: Any, timeout: float = 300.0) -> float:
    """Poll until the sidecar has journaled every record published so far; returns when (monotonic).

    Records left in the in-process overflow only reach the ring on a later push or at finish, so
    this moves them along the way ``finish`` does.
    """
    words, writer = run._ring.words, run._writer
    deadline = time.monotonic() + timeout
    while True:
        if writer.overflow_bytes:
            writer.drain_overflow()
        elif words[W_JOURNALED_SEQ] >= writer.last_seq:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"sidecar journaled seq {words[W_JOURNALED_SEQ]} of {writer.last_seq}")
        time.sleep(0.001)


def ring_counters(run: Any) -> dict[str, int]:
    w = run._ring.words
    return {"dropped": int(w[W_DROPPED]), "overflow_peak_bytes": int(w[W_OVERFLOW_PEAK])}


def finish_and_verify(run: Any, rows: int) -> dict[str, Any]:
    """Finish, then fold the journal back and check every row is there and nothing was dropped.

    ``read_run`` is this same ``replay`` plus every row kept in memory (GBs for 3M rows), so the
    counts come from ``replay(keep_rows=False)``: its ``row_count`` and ``dropped`` are exactly
    ``read_run``'s ``history_rows`` and ``dropped``.
    """
    counters = ring_counters(run)
    t0 = time.perf_counter()
    run.finish()
    finish_s = time.perf_counter() - t0
    state, health = replay(Path(run.dir), keep_rows=False)
    shutil.rmtree(run._bench_tmp, ignore_errors=True)
    last_step = state.last_step if hasattr(state, "last_step") else (state.last_row or {}).get("_step", -1)
    ok = state.row_count == rows and last_step == rows - 1 and state.dropped == 0 and not counters["dropped"]
    return {
        "rows_expected": rows,
        "rows_journaled": state.row_count,
        "rows_missing": rows - state.row_count,
        "dropped": state.dropped + counters["dropped"],
        "overflow_peak_bytes": counters["overflow_peak_bytes"],
        "journal_skipped_bytes": health["skipped_bytes"],
        "state": state.state(running=False),
        "finish_s": finish_s,
        "verified": ok and health["skipped_bytes"] == 0,
    }


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()]}


def print_targets(out: dict[str, Any], targets: list[dict[str, Any]]) -> None:
    """The PASS/FAIL table every bench ends with, against the machine's state afterwards."""
    out["machine_after"] = after = machine()
    print(f"\ntargets (this {after['cpus']}-CPU machine; load average after: {after['load']})")
    for t in targets:
        m = t["measured"]
        shown = f"{m:,.2f}" if isinstance(m, float) else str(m)
        verdict = "PASS" if t["pass"] else "FAIL"
        print(f"  {verdict}  {t['case']}.{t['metric']} = {shown} (target {t['op']} {t['value']:,})")


def emit(
    out: dict[str, Any], cases: dict[str, Any], targets: list[dict[str, Any]], json_path: Any, check: bool
) -> int:
    """The same figures as JSON (to ``json_path`` or as the last line); exit 1 only with --check."""
    out |= {"cases": cases, "targets": targets, "all_pass": all(t["pass"] for t in targets)}
    text = json.dumps(out)
    if json_path:
        json_path.write_text(text + "\n")
    else:
        print(text)
    return 1 if check and not out["all_pass"] else 0


# --- faults both fault benchmarks inject --------------------------------------------------------
class Skip(Exception):
    """A fault (or scenario) cannot run on this machine; the message says why."""


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``where`` (tests/support/disk.py), unmounted afterwards; Skip where
    none can be mounted."""
    from tests.support.disk import CannotMount, small_tmpfs

    try:
        with small_tmpfs(where, size) as mnt:
            yield mnt
    except CannotMount as e:
        raise Skip(str(e)) from None


def fill(path: Path) -> None:
    """Write ``path`` until its file system is full."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            block = bytes(size)
            with contextlib.suppress(OSError):
                while f.write(block):
                    pass
