"""What one node of a distributed job costs: N ranks through one node sidecar, beside N runs.

Case ``distributed_node`` (``cases/distributed_node/case.json``): N real rank processes on this
machine, each with the ``RUNSTREAM_*`` identity of one rank of an N-rank job on one node (the
variables every launcher's are mapped to; docs/distributed.md), each ``runstream.init`` then
logging rows of 4 scalars at a steady ``rows_per_s`` for ``seconds``, online to a real
``runstream server`` on 127.0.0.1.  All their rings are drained by ONE node sidecar.  Measured:

* every ``log`` call on every rank (``perf_counter_ns`` around it, the timer's own median cost
  subtracted): per rank p50/p99/p99.9/max, then the worst rank's p99 (the target) and the median
  rank's;
* records dropped (each ring's ``W_DROPPED`` word, read before ``finish``);
* on the server after every rank's ``finish``: each rank's stored row count and last step against
  what it logged (missing / duplicated);
* the node sidecar's CPU (user + system from ``/proc``) over the logging window, as % of one core,
  and the server's.

Beside it, the same load as N separate single-process runs (no rank variables: today's path, one
sidecar per process), the same figures, and the N sidecars' CPU summed; and the floor: N processes
with the same pacing timing ``orjson.dumps(row)`` instead of ``log`` (no tracker), which shows what
this machine's scheduling and caches do to a sub-microsecond call's p99 under this load.

Each rank paces itself: every 10 ms it logs the 10 rows due (``rows_per_s`` / 100), so N x 100
wake-ups per second instead of N x 1,000; a rank that falls behind logs at once to catch up, so
every rank logs exactly ``rows_per_s x seconds`` rows.

    .venv/bin/python bench/distributed.py            # 64 ranks x 1,000 rows/s x 60 s (+ the same as 64 runs)
    .venv/bin/python bench/distributed.py --quick    # 8 ranks x 5 s
      --ranks N --seconds S --no-separate --no-floor # override; skip the separate runs / the floor

Prints the figures, PASS/FAIL per target, then the JSON (last line, or ``--json PATH``); exits 0
unless ``--check`` and a target failed.  Needs a mostly idle machine: on 2 cores, 64 ranks and
their sidecar(s) share them with the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support
from tests.support.server import ServerProc, start_server

from _common import arg_parser, emit, load_case, machine, print_targets, record_case

NODE_SIDECAR = "runstream_ingest.sidecar.node"
RANK_SIDECAR = "runstream_ingest.sidecar.main"
TICK_S = 0.01  # a rank logs the rows due every 10 ms

RANK = r"""
import json, os, resource, sys, time
import runstream
from runstream.format.ring_layout import W_DROPPED

cfg = json.loads(sys.argv[1])
if cfg["floor"]:  # the floor: serialising the row, no tracker
    import orjson
    run, log, path = None, orjson.dumps, None
else:
    settings = {"silent": True, "finish_timeout": 600}
    run = runstream.init(project=cfg["project"], dir=cfg["dir"], settings=settings)
    log, path = run.log, run.path
pc = time.perf_counter_ns
ts = []
for _ in range(20000):
    a = pc(); b = pc(); ts.append(b - a)
overhead = sorted(ts)[len(ts) // 2]
row = {f"m{k}": 0.5 + k for k in range(cfg["keys"])}
print(json.dumps({"ready": path, "pid": os.getpid()}), flush=True)
sys.stdin.readline()
n, per_tick, tick = cfg["rows"], cfg["per_tick"], cfg["tick"]
lat = [0] * n
ru0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.monotonic()
i = 0
while i < n:
    due = min(n, per_tick * (int((time.monotonic() - t0) / tick) + 1))
    while i < due:
        row["m0"] = 1.0 / (i + 1)
        a = pc(); log(row); b = pc()
        lat[i] = b - a
        i += 1
    wait = t0 + (due // per_tick) * tick - time.monotonic()
    if wait > 0:
        time.sleep(wait)
t1 = time.monotonic()
ru1 = resource.getrusage(resource.RUSAGE_SELF)
dropped = int(run._ring.words[W_DROPPED]) if run else 0
lat = sorted(max(0, x - overhead) for x in lat)
q = lambda p: lat[min(n - 1, int(p * n))] / 1e3
print(json.dumps({"logged": n, "log_s": t1 - t0, "p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999),
                  "max_us": lat[-1] / 1e3, "dropped": dropped,
                  "minflt_per_1k": 1e3 * (ru1.ru_minflt - ru0.ru_minflt) / n,
                  "nivcsw_per_1k": 1e3 * (ru1.ru_nivcsw - ru0.ru_nivcsw) / n}), flush=True)
t2 = time.monotonic()
if run:
    run.finish()
print(json.dumps({"finished": time.monotonic() - t2}), flush=True)
"""


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def expect(p: subprocess.Popen[str], key: str) -> dict[str, Any]:
    assert p.stdout is not None
    for line in p.stdout:
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if key in msg:
                return dict(msg)
    raise RuntimeError(f"rank process {p.pid} exited ({p.wait()}) before reporting {key!r}")


def sidecar_procs(root: Path, module: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            cmd = p.cmdline()
            if module in cmd and any(str(root) in c for c in cmd):
                out.append(p)
    return out


def cpu_s(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def rank_env(rank: int, world: int, job_id: str) -> dict[str, str]:
    return {
        "RUNSTREAM_RANK": str(rank), "RUNSTREAM_LOCAL_RANK": str(rank), "RUNSTREAM_WORLD_SIZE": str(world),
        "RUNSTREAM_LOCAL_WORLD_SIZE": str(world), "RUNSTREAM_NODE": "0", "RUNSTREAM_NODE_COUNT": "1",
        "RUNSTREAM_JOB_ID": job_id,
    }  # fmt: skip


def one_side(p: dict[str, Any], srv: ServerProc, tmp: Path, mode: str) -> dict[str, Any]:
    """N rank processes logging; figures for one side: ``node`` (one job, one node sidecar),
    ``separate`` (N single-process runs) or ``floor`` (no tracker: the row serialised instead)."""
    n, rows = p["ranks"], int(p["rows_per_s"] * p["seconds"])
    distributed, floor = mode == "node", mode == "floor"
    root = tmp / mode
    root.mkdir()
    cfg = {"project": mode, "dir": str(root), "keys": p["keys"], "rows": rows, "floor": floor,
           "per_tick": max(1, round(p["rows_per_s"] * TICK_S)), "tick": TICK_S}  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    base["RUNSTREAM_HOST"] = srv.url
    job_id = uuid.uuid4().hex
    procs = []
    try:
        for r in range(n):
            env = base | (rank_env(r, n, job_id) if distributed else {})
            cmd = [sys.executable, "-c", RANK, json.dumps(cfg)]
            pipe = subprocess.PIPE
            procs.append(subprocess.Popen(cmd, env=env, cwd=root, text=True, stdin=pipe, stdout=pipe))
        paths = [expect(q, "ready")["ready"] for q in procs]
        module = NODE_SIDECAR if distributed else RANK_SIDECAR
        deadline = time.monotonic() + 30
        while (
            not floor
            and len(sidecar_procs(root, module)) < (1 if distributed else n)
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        scs = sidecar_procs(root, module)
        server = psutil.Process(srv.proc.pid)
        c0, s0, t0 = cpu_s(scs), server.cpu_times(), time.monotonic()
        for q in procs:
            assert q.stdin is not None
            q.stdin.write("go\n")
            q.stdin.flush()
        logged = [expect(q, "logged") for q in procs]
        c1, s1, t1 = cpu_s(scs), server.cpu_times(), time.monotonic()
        finished = [expect(q, "finished")["finished"] for q in procs]
        for q in procs:
            q.wait(120)
    finally:
        for q in procs:
            if q.poll() is None:
                q.kill()
                q.wait()
        for sc in sidecar_procs(root, NODE_SIDECAR) + sidecar_procs(root, RANK_SIDECAR):
            with contextlib.suppress(psutil.Error):
                sc.wait(30)  # they exit once drained and shipped
    window = t1 - t0
    sidecar_cpu = {pid: 100 * (c1[pid] - c0[pid]) / window for pid in c1 if pid in c0}
    stored = [rows] * n if floor else stored_rows(srv, paths, distributed)
    p99s = sorted(x["p99_us"] for x in logged)
    fig = {
        "ranks": n,
        "rows_per_rank": rows,
        "rows_per_s_total": n * rows / statistics.median(x["log_s"] for x in logged),
        "runs_on_server": len(set(paths)),
        "worst_rank_p99_us": p99s[-1],
        "median_rank_p99_us": statistics.median(p99s),
        "median_rank_p50_us": statistics.median(x["p50_us"] for x in logged),
        "worst_rank_p999_us": max(x["p999_us"] for x in logged),
        "worst_max_us": max(x["max_us"] for x in logged),
        "dropped": sum(x["dropped"] for x in logged),
        # Why a p99 is what it is: minor page faults (a ring's first lap maps its pages) and
        # involuntary context switches (a busy machine) per 1,000 rows, the median rank's.
        "minflt_per_1k_rows": statistics.median(x["minflt_per_1k"] for x in logged),
        "nivcsw_per_1k_rows": statistics.median(x["nivcsw_per_1k"] for x in logged),
        "rows_missing": sum(max(0, rows - s) for s in stored),
        "rows_duplicated": sum(max(0, s - rows) for s in stored),
        "sidecars": len(scs),
        "sidecar_cpu_pct_total": sum(sidecar_cpu.values()) if sidecar_cpu else None,
        "sidecar_cpu_pct_each_median": statistics.median(sidecar_cpu.values()) if sidecar_cpu else None,
        "server_cpu_pct": 100 * (s1.user + s1.system - s0.user - s0.system) / window,
        "finish_s_max": max(finished),
        "log_window_s": window,
    }
    if floor:  # only the call's figures mean something here
        keep = ("ranks", "rows_per_rank", "p99", "p50", "p999", "max_us", "per_1k")
        fig = {k: v for k, v in fig.items() if any(w in k for w in keep)}
    return fig


def stored_rows(srv: ServerProc, paths: list[str], distributed: bool) -> list[int]:
    """Rows stored per rank (one run's ranks) or per run (N runs), once every count has settled."""

    def read() -> list[int]:
        if distributed:
            data = get_json(f"{srv.url}/api/v1/runs/{paths[0]}")
            by_rank = {x["rank"]: int(x.get("row_count") or 0) for x in data.get("ranks", [])}
            return [by_rank.get(r, 0) for r in range(len(paths))]
        return [int(get_json(f"{srv.url}/api/v1/runs/{path}")["rows"]) for path in paths]

    last: list[int] = []
    for _ in range(30):  # every finish waited for its acks; a moment more for any late count
        now = read()
        if now == last:
            break
        last = now
        time.sleep(0.5)
    return last


def case_node(p: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="runstream-dist-") as tmp:
        srv = start_server(Path(tmp) / "server")
        try:
            fig = one_side(p, srv, Path(tmp), "node")
            if p.get("separate", True):
                sep = one_side(p, srv, Path(tmp), "separate")
                fig |= {f"separate_{k}": v for k, v in sep.items()}
            if p.get("floor", True):
                flo = one_side(p, srv, Path(tmp), "floor")
                fig |= {f"floor_{k}": v for k, v in flo.items()}
        finally:
            srv.stop()
    return fig


def show(fig: dict[str, Any]) -> None:
    def side(prefix: str, title: str) -> None:
        f = {k[len(prefix) :]: v for k, v in fig.items() if k.startswith(prefix)} if prefix else fig
        if "ranks" not in f:
            return
        lat = (f"median rank p50 {f['median_rank_p50_us']:.2f} us, p99 median rank "
               f"{f['median_rank_p99_us']:.2f} us, worst rank {f['worst_rank_p99_us']:.2f} us; worst p99.9 "
               f"{f['worst_rank_p999_us']:.1f} us, worst max {f['worst_max_us']:.0f} us")  # fmt: skip
        faults = (f"per 1k rows (median rank): {f['minflt_per_1k_rows']:.1f} minor faults, "
                  f"{f['nivcsw_per_1k_rows']:.1f} involuntary context switches")  # fmt: skip
        if "sidecars" not in f:  # the floor
            print(f"  {title}: {f['ranks']} processes x {f['rows_per_rank']:,} rows")
            print(f"    per call: {lat}\n    {faults}")
            return
        cpu = f["sidecar_cpu_pct_total"]
        cpu_s = "n/a (no sidecar seen)" if cpu is None else f"{cpu:.1f} % of a core"
        print(f"  {title}: {f['ranks']} ranks x {f['rows_per_rank']:,} rows, "
              f"{f['runs_on_server']} run(s) on the server")  # fmt: skip
        print(f"    log per call: {lat}\n    {faults}")
        print(f"    dropped {f['dropped']}, missing on the server {f['rows_missing']}, "
              f"duplicated {f['rows_duplicated']}")  # fmt: skip
        print(f"    {f['sidecars']} sidecar(s): {cpu_s} in all over {f['log_window_s']:.1f} s of logging; "
              f"server {f['server_cpu_pct']:.1f} %; slowest finish {f['finish_s_max']:.2f} s")  # fmt: skip

    side("", "one job, one node sidecar")
    side("separate_", "the same load as separate runs (today's path)")
    side("floor_", "the floor: the same pacing, orjson.dumps(row) in place of log, no tracker")


def main(argv: list[str] | None = None) -> int:
    cases = {"distributed_node": case_node}
    ap = arg_parser(__doc__, cases, "8 ranks for 5 s: a smoke run")
    ap.add_argument("--ranks", type=int, help="ranks on the node (default: the case's)")
    ap.add_argument("--seconds", type=float, help="seconds of logging (default: the case's)")
    ap.add_argument("--no-separate", action="store_true", help="skip the separate-runs side")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor side")
    a = ap.parse_args(argv)
    out: dict[str, Any] = {"quick": a.quick, "machine_before": machine()}
    print(f"runstream distributed benchmark{' (--quick)' if a.quick else ''}: {out['machine_before']}")
    results: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    for name in a.case or cases:
        case = load_case(name, a.quick, a.repeat)
        p = case["parameters"]
        p |= {k: v for k, v in (("ranks", a.ranks), ("seconds", a.seconds)) if v is not None}
        if a.no_separate:
            p["separate"] = False
        if a.no_floor:
            p["floor"] = False
        load = machine()["load"]
        t0 = time.monotonic()
        reps = [cases[name](p) for _ in range(p["repeat"])]
        # The repetition whose worst-rank p99 is the median (its figures belong together).
        fig: dict[str, Any] = dict(sorted(reps, key=lambda f: f["worst_rank_p99_us"])[len(reps) // 2])
        fig["per_repeat"] = reps if len(reps) > 1 else None
        print(f"\n{name}: {case['optimises'][:100]}...")
        show(fig)
        print(f"  ({time.monotonic() - t0:.0f} s; load average at start {load}, now {machine()['load']})")
        record_case(results, targets, case, load, fig)
    print_targets(out, targets)
    return emit(out, results, targets, a.json, a.check)


if __name__ == "__main__":
    sys.exit(main())
