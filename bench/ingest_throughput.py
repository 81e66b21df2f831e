"""How much can one ``runstream server`` ingest, how fast does it ack, what does an idle run cost?

Five cases, parameters and targets in ``bench/cases/<name>/case.json``:

* ``ingest_runs``: N real runs (separate processes, each with its sidecar) log 10-scalar rows as
  fast as they can into one server; rows/s and values/s stored end to end, from "go" until the
  server holds every row, and the sustained rate between 10 % and 90 % stored.  On a small machine
  the runs and their sidecars take most of the CPU: this is the whole system's rate.
* ``ingest_max``: N raw gRPC streams send pre-built batches (what a fast run's sidecar cuts: ~1 MiB
  of records, zstd level 3) as fast as the server acks, within the shipper's 8 MiB window.  The
  client costs almost nothing, so this is the server's own rate (the throughput target).
* ``ingest_ack_latency``: raw streams at a fixed total rate (half the target load), one batch per
  stream every 100 ms as a sidecar cuts them at that rate; the time from each batch's write on the
  stream to its ack.  (A real shipper writes a batch within a poll of the journal append.)
* ``ingest_many_runs``: the same with many streams at a low rate each (100 runs cutting a small
  batch every 100 ms): what a fixed cost per batch does to acks (group commit shares a transaction).
* ``ingest_idle``: K live runs that log nothing; the server's CPU over a window, minus the same
  server's CPU over the same window before the runs started, per run.

Server CPU (user+system, all threads) and RSS come from psutil on the server's pid.  ``--profile
DIR`` runs the server under cProfile (per thread, CPU time) and prints where its time went.
Prints text, then the figures as one JSON object on the last line (or into ``--json PATH``);
exits 0 even when a target fails unless ``--check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support
from tests.support.server import ServerProc, start_server

import _common
from _common import arg_parser, emit, load_case, machine, median_of, pct, print_targets, record_case

_common.OPS.setdefault("<", operator.lt)  # "an idle run costs < 1 %" is a strict bound
ENTITY = "bench"
KEYS = 10
WINDOW_BYTES = 8 << 20  # as the shipper: unacked bytes in flight on one stream
ACK_WAIT_S = 120.0  # after its last write, how long a stream waits for its acks
PROFILE_ENV = "RUNSTREAM_BENCH_PROFILE"

# Put on the server's PYTHONPATH by --profile: a cProfile per thread (the storage writer is a
# thread; plain ``python -m cProfile`` sees only the main one), timed in thread CPU time so that
# waiting for the GIL or the disk is not counted as work; dumped at exit.
SITECUSTOMIZE = f"""
import os
if os.environ.get({PROFILE_ENV!r}):
    import atexit, cProfile, threading, time
    _out, _profiles, _run = os.environ[{PROFILE_ENV!r}], [], threading.Thread.run
    def _profiled(self):
        p = cProfile.Profile(time.thread_time)
        _profiles.append((self.name, p))
        p.runcall(_run, self)
    threading.Thread.run = _profiled
    _main = cProfile.Profile(time.thread_time)
    _profiles.append(("main", _main))
    _main.enable()
    def _dump():
        _main.disable()
        for i, (name, p) in enumerate(_profiles):
            p.dump_stats(f"{{_out}}.{{i}}.{{name.replace(' ', '_').replace('/', '_')}}")
    atexit.register(_dump)
"""


# --- batches as a sidecar cuts them ------------------------------------------------------------
def build_batches(rows: int, batch_rows: int, seed: int) -> list[tuple[int, int, int, bytes]]:
    """(first_seq, last_seq, crc32c, zstd payload) for rows 0..rows-1 of 10 float metrics."""
    import msgpack
    import zstandard

    from runstream.format import record as rec

    rnd = random.Random(seed)
    z = zstandard.ZstdCompressor(level=3, write_content_size=True)
    out = []
    for b0 in range(0, rows, batch_rows):
        parts = []
        for s in range(b0, min(rows, b0 + batch_rows)):
            d = {f"metric_{i}": 1.0 / (s + 1) + i + rnd.random() * 1e-3 for i in range(KEYS)}
            parts.append(rec.encode(s + 1, rec.KIND_ROW, s, 1.7e9 + s * 1e-3, msgpack.packb(d)))
        payload = z.compress(b"".join(parts))
        out.append((b0 + 1, b0 + len(parts), rec.crc32c(payload), payload))
    return out


# --- raw stream worker (a subprocess: ``--stream-worker CFG``) --------------------------------
async def stream_run(stub: Any, cfg: dict[str, Any], run_id: str, msgs: list[Any]) -> list[Any]:
    """Open one run and send ``msgs``, paced or as fast as the window allows; returns
    [(write_time, ack_time, rows)] per acked batch."""
    import grpc

    from runstream_ingest.wire import ingest_pb2 as pb

    call = stub.Stream()
    o = pb.Open(entity=ENTITY, project=cfg["project"], run_id=run_id, writer_id="w", protocol_version=1)
    await call.write(pb.ClientMessage(open=o))
    await call.read()
    pending: dict[int, tuple[float, int, int]] = {}  # last_seq -> (write time, rows, bytes)
    done: list[Any] = []
    room = asyncio.Condition()
    inflight = 0

    async def read_acks() -> None:
        nonlocal inflight
        while (m := await call.read()) is not grpc.aio.EOF:
            now = time.monotonic()
            async with room:
                for seq in [s for s in pending if s <= m.ack.seq]:
                    t, n, size = pending.pop(seq)
                    done.append((t, now, n))
                    inflight -= size
                room.notify_all()

    def has_room() -> bool:
        return inflight < WINDOW_BYTES

    reader = asyncio.create_task(read_acks())
    t0 = time.monotonic() + cfg.get("phase", 0.0)
    for k, (last, n, size, msg) in enumerate(msgs):
        if cfg["interval"]:
            await asyncio.sleep(max(0.0, t0 + k * cfg["interval"] - time.monotonic()))
        if time.monotonic() > cfg["deadline"]:
            break
        async with room:
            await room.wait_for(has_room)
            inflight += size
            pending[last] = (time.monotonic(), n, size)
        await call.write(msg)
    with contextlib.suppress(TimeoutError):  # a server far behind: report, do not wait forever
        async with room:
            await asyncio.wait_for(room.wait_for(lambda: not pending), ACK_WAIT_S)
    if pending:
        call.cancel()
        reader.cancel()
        return done + [(t, None, n) for t, n, _ in pending.values()]
    await call.done_writing()
    await asyncio.wait_for(reader, 10)
    return done


async def stream_worker(cfg: dict[str, Any]) -> None:
    import grpc

    from runstream_ingest.wire import ingest_pb2 as pb
    from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc

    msgs = [
        (last, last - first + 1, len(p), pb.ClientMessage(batch=pb.Batch(
            first_seq=first, last_seq=last, codec=pb.CODEC_ZSTD, crc32c=crc, payload=p,
            record_count=last - first + 1)))
        for first, last, crc, p in build_batches(cfg["rows_per_run"], cfg["batch_rows"], cfg["seed"])
    ]  # fmt: skip
    print(json.dumps({"ready": True}), flush=True)
    go = json.loads(sys.stdin.readline())
    cfg["deadline"] = go["deadline"]
    acks: list[Any] = []

    async def one(j: int) -> None:
        # Paced streams spread over the interval: real sidecars do not cut batches in step.
        mine = cfg | {"phase": cfg["interval"] * (cfg["index"] * per + j) / (cfg["workers"] * per)}
        r = 0
        while time.monotonic() < cfg["deadline"]:  # a new run each time the batches run out
            acks.extend(await stream_run(stub, mine, f"{cfg['name']}-{j}-{r}", msgs))
            r += 1

    per = cfg["streams_per_worker"]
    async with grpc.aio.insecure_channel(cfg["addr"], [("grpc.max_send_message_length", 16 << 20)]) as ch:
        stub = pb_grpc.IngestStub(ch)  # type: ignore[no-untyped-call]
        await asyncio.gather(*(one(j) for j in range(per)))
    print(json.dumps({"acks": acks}), flush=True)


# --- processes ---------------------------------------------------------------------------------
class Meter:
    """CPU seconds and peak RSS of the server process (RSS sampled every 100 ms)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)

    def cpu(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)


def launch_server(tmp: Path, profile: Path | None) -> ServerProc:
    env = None
    if profile is not None:
        site = tmp / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        profile.mkdir(parents=True, exist_ok=True)
        env = {"PYTHONPATH": str(site), PROFILE_ENV: str(profile / f"server-{time.time_ns()}")}
    return start_server(tmp / "server", env=env)


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")} | (env or {})
    return subprocess.Popen(
        [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=full
    )


def expect(p: subprocess.Popen[str], key: str) -> dict[str, Any]:
    assert p.stdout is not None
    for line in p.stdout:
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if key in msg:
                return dict(msg)
    raise RuntimeError(f"process {p.pid} exited ({p.wait()}) before reporting {key!r}")


def send(procs: list[subprocess.Popen[str]], msg: dict[str, Any]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(json.dumps(msg) + "\n")
        p.stdin.flush()


def reap(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def stored_rows(srv: ServerProc, project: str) -> dict[str, int]:
    runs = get_json(f"{srv.url}/api/v1/runs/{ENTITY}/{project}?limit=10000")["runs"]
    return {r["id"]: int(r["rows"]) for r in runs}


# --- real runs -----------------------------------------------------------------------------------
RUN_SCRIPT = """
import json, sys, time
import runstream
cfg = json.loads(sys.argv[1])
run = runstream.init(project=cfg["project"], entity=cfg["entity"], dir=cfg["dir"],
                     settings={"silent": True, "finish_timeout": 600})
d = {f"metric_{i}": 0.5 + i / 7 for i in range(cfg["keys"])}
print(json.dumps({"ready": run.id}), flush=True)
sys.stdin.readline()
log = run.log
t0 = time.monotonic()
for i in range(cfg["rows"]):
    d["metric_0"] = 1.0 / (i + 1)  # a changing value, as a loss
    log(d)
t1 = time.monotonic()
print(json.dumps({"logged": cfg["rows"], "log_s": t1 - t0}), flush=True)
sys.stdin.readline()
run.finish()
print(json.dumps({"finished": run.id}), flush=True)
"""


def start_runs(tmp: Path, srv: ServerProc, project: str, n: int, rows: int) -> list[subprocess.Popen[str]]:
    procs = []
    for i in range(n):
        cfg = {"project": project, "entity": ENTITY, "dir": str(tmp / f"run{i}"), "keys": KEYS, "rows": rows}
        procs.append(spawn(["-c", RUN_SCRIPT, json.dumps(cfg)], {"RUNSTREAM_HOST": srv.url}))
    for p in procs:
        expect(p, "ready")
    # Each run is live once its stream is open: the server lists it.
    deadline = time.monotonic() + 60
    while len(stored_rows(srv, project)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("the runs did not open their streams within 60 s")
        time.sleep(0.1)
    return procs


def case_runs(p: dict[str, Any], tmp: Path, profile: Path | None) -> dict[str, Any]:
    srv = launch_server(tmp, profile)
    meter = Meter(srv.proc.pid)
    try:
        procs = start_runs(tmp, srv, "runs", p["runs"], p["rows"])
        total = p["runs"] * p["rows"]
        c0, t0 = meter.cpu(), time.monotonic()
        send(procs, {"go": True})
        samples = []  # (time, rows stored)
        while True:
            time.sleep(p["poll_s"])
            stored = sum(stored_rows(srv, "runs").values())
            samples.append((time.monotonic(), stored))
            if stored >= total or time.monotonic() - t0 > p["timeout_s"]:
                break
        t1, c1 = samples[-1][0], meter.cpu()
        log_s = statistics.median(expect(q, "logged")["log_s"] for q in procs)
        send(procs, {"finish": True})
        for q in procs:
            expect(q, "finished")
        reap(procs)
        per_run = stored_rows(srv, "runs")
    finally:
        meter.close()
        srv.stop()
    t10 = next(t for t, s in samples if s >= 0.1 * total)
    t90 = next((t for t, s in samples if s >= 0.9 * total), t1)
    sustained = 0.8 * total / (t90 - t10) if t90 > t10 else float("nan")
    rows = sum(per_run.values())
    return {
        "rows_per_s": total / (t1 - t0),
        "values_per_s": total * KEYS / (t1 - t0),
        "sustained_rows_per_s": sustained,
        "client_log_calls_per_s": p["rows"] / log_s,
        "server_cpu_pct": 100 * (c1 - c0) / (t1 - t0),
        "server_peak_rss_mib": meter.peak_rss / 2**20,
        "rows_expected": total,
        "rows_missing": max(0, total - rows),
        "rows_duplicated": max(0, rows - total),
        "seconds": t1 - t0,
    }


# --- raw streams ---------------------------------------------------------------------------------
def raw_streams(p: dict[str, Any], srv: ServerProc, interval: float, rows_per_run: int) -> tuple[Any, float]:
    """p["streams"] streams for p["seconds"], from p["workers"] processes (default: one each);
    returns (the worker processes, go time)."""
    procs = []
    workers = p.get("workers", p["streams"])
    for i in range(workers):
        cfg = {
            "addr": f"127.0.0.1:{srv.grpc_port}", "project": "raw", "name": f"s{i}-{time.time_ns()}",
            "rows_per_run": rows_per_run, "batch_rows": p["batch_rows"], "seed": i, "interval": interval,
            "index": i, "workers": workers, "streams_per_worker": p["streams"] // workers,
        }  # fmt: skip
        procs.append(spawn([__file__, "--stream-worker", json.dumps(cfg)]))
    for q in procs:
        expect(q, "ready")
    go = time.monotonic()
    send(procs, {"deadline": go + p["seconds"]})
    return procs, go


def case_max(p: dict[str, Any], tmp: Path, profile: Path | None) -> dict[str, Any]:
    srv = launch_server(tmp, profile)
    meter = Meter(srv.proc.pid)
    try:
        procs, go = raw_streams(p, srv, 0.0, p["rows_per_run"])
        # The window measured: after a warm-up, until the streams stop sending.
        w0, w1 = go + p["warmup_s"], go + p["seconds"]
        time.sleep(max(0.0, w0 - time.monotonic()))
        c0 = meter.cpu()
        time.sleep(max(0.0, w1 - time.monotonic()))
        c1 = meter.cpu()
        acks = [a for q in procs for a in expect(q, "acks")["acks"]]
        reap(procs)
        stored = sum(stored_rows(srv, "raw").values())
    finally:
        meter.close()
        srv.stop()
    rows = sum(n for _, t, n in acks if t is not None and w0 <= t <= w1)
    lat = sorted(t - w for w, t, _ in acks if t is not None)
    acked = sum(n for _, t, n in acks if t is not None)
    return {
        "rows_per_s": rows / (w1 - w0),
        "values_per_s": rows * KEYS / (w1 - w0),
        "server_cpu_pct": 100 * (c1 - c0) / (w1 - w0),
        # Rows per second of server CPU: what the server does with the CPU it gets, which moves
        # less than rows/s when other work shares the machine.
        "rows_per_server_cpu_s": rows / (c1 - c0),
        "server_peak_rss_mib": meter.peak_rss / 2**20,
        "ack_p50_ms": pct(lat, 0.5) * 1e3,
        "ack_p99_ms": pct(lat, 0.99) * 1e3,
        "rows_acked_not_stored": acked - stored,
    }


def case_ack_latency(p: dict[str, Any], tmp: Path, profile: Path | None) -> dict[str, Any]:
    srv = launch_server(tmp, profile)
    meter = Meter(srv.proc.pid)
    per_stream = p["rows_per_s"] / p["streams"]
    batch_rows = max(1, round(per_stream * p["interval_s"]))
    rows_per_run = batch_rows * (int(p["seconds"] / p["interval_s"]) + 1)
    try:
        procs, go = raw_streams(p | {"batch_rows": batch_rows}, srv, p["interval_s"], rows_per_run)
        c0 = meter.cpu()
        acks = [a for q in procs for a in expect(q, "acks")["acks"]]
        c1, t1 = meter.cpu(), time.monotonic()
        reap(procs)
    finally:
        meter.close()
        srv.stop()
    w0, w1 = go + p["warmup_s"], go + p["seconds"]
    lat = sorted(t - w for w, t, _ in acks if w >= w0 and t is not None)
    # Acks that arrived inside the window: below the offered rate, the server is falling behind.
    in_window = [(t, n) for _, t, n in acks if t is not None and w0 <= t <= w1]
    return {
        "offered_rows_per_s": p["rows_per_s"],
        "acked_rows_per_s": sum(n for _, n in in_window) / (w1 - w0),
        "acked_batches_per_s": len(in_window) / (w1 - w0),
        "batch_rows": batch_rows,
        "batches": len(lat),
        "batches_unacked": sum(t is None for _, t, _ in acks),  # after ACK_WAIT_S
        "ack_p50_ms": pct(lat, 0.5) * 1e3,
        "ack_p99_ms": pct(lat, 0.99) * 1e3,
        "ack_max_ms": lat[-1] * 1e3,
        "server_cpu_pct": 100 * (c1 - c0) / (t1 - go),
        "server_peak_rss_mib": meter.peak_rss / 2**20,
    }


def case_idle(p: dict[str, Any], tmp: Path, profile: Path | None) -> dict[str, Any]:
    srv = launch_server(tmp, profile)
    meter = Meter(srv.proc.pid)
    try:
        time.sleep(p["settle_s"])
        c0 = meter.cpu()
        time.sleep(p["window_s"])
        base = meter.cpu() - c0
        procs = start_runs(tmp, srv, "idle", p["runs"], 0)
        send(procs, {"go": True})  # zero rows: the runs stay open and idle
        time.sleep(p["settle_s"])
        c0 = meter.cpu()
        time.sleep(p["window_s"])
        busy = meter.cpu() - c0
        send(procs, {"finish": True})
        reap(procs)
    finally:
        meter.close()
        srv.stop()
    w = p["window_s"]
    return {
        "server_cpu_pct_no_runs": 100 * base / w,
        "server_cpu_pct_idle_runs": 100 * busy / w,
        "server_cpu_pct_per_run": 100 * max(0.0, busy - base) / w / p["runs"],
        "server_peak_rss_mib": meter.peak_rss / 2**20,
    }


CASES = {
    "ingest_runs": case_runs,
    "ingest_max": case_max,
    "ingest_ack_latency": case_ack_latency,
    "ingest_many_runs": case_ack_latency,
    "ingest_idle": case_idle,
}


def show(name: str, p: dict[str, Any], f: dict[str, Any]) -> None:
    reps = f"median of {p['repeat']}"
    if name == "ingest_runs":
        print(f"\n[{name}] {p['runs']} real runs x {p['rows']:,} rows of {KEYS} scalars, {reps}")
        print(
            f"  stored {f['rows_per_s']:,.0f} rows/s = {f['values_per_s']:,.0f} values/s end to end "
            f"({f['seconds']:.1f} s); sustained 10-90 %: {f['sustained_rows_per_s']:,.0f} rows/s"
        )
        print(f"  each run's log loop: {f['client_log_calls_per_s']:,.0f} calls/s")
        print(
            f"  missing {f['rows_missing']}, duplicated {f['rows_duplicated']}; server CPU "
            f"{f['server_cpu_pct']:.0f} %, peak RSS {f['server_peak_rss_mib']:.0f} MiB"
        )
    elif name == "ingest_max":
        print(f"\n[{name}] {p['streams']} raw streams of {p['batch_rows']:,}-row batches, max rate, {reps}")
        print(
            f"  stored {f['rows_per_s']:,.0f} rows/s = {f['values_per_s']:,.0f} values/s; "
            f"{f['rows_per_server_cpu_s']:,.0f} rows per second of server CPU"
        )
        print(
            f"  ack p50 {f['ack_p50_ms']:.0f} ms, p99 {f['ack_p99_ms']:.0f} ms (a full 8 MiB window); "
            f"server CPU {f['server_cpu_pct']:.0f} %, peak RSS {f['server_peak_rss_mib']:.0f} MiB"
        )
    elif name in ("ingest_ack_latency", "ingest_many_runs"):
        print(
            f"\n[{name}] {p['streams']} raw streams, {p['rows_per_s']:,} rows/s in all, a "
            f"{f['batch_rows']:,.0f}-row batch per stream every {p['interval_s'] * 1e3:.0f} ms, {reps}"
        )
        print(
            f"  ack p50 {f['ack_p50_ms']:.1f} ms, p99 {f['ack_p99_ms']:.1f} ms, max {f['ack_max_ms']:.1f} ms "
            f"over {f['batches']:,.0f} batches"
        )
        if f["batches_unacked"]:
            print(
                f"  {f['batches_unacked']:.0f} batches still unacked {ACK_WAIT_S:.0f} s after the last write"
            )
        print(
            f"  acked in the window: {f['acked_rows_per_s']:,.0f} rows/s, {f['acked_batches_per_s']:,.0f} "
            f"batches/s (offered {p['streams'] / p['interval_s']:,.0f} batches/s)"
        )
        print(f"  server CPU {f['server_cpu_pct']:.0f} %, peak RSS {f['server_peak_rss_mib']:.0f} MiB")
    else:
        print(f"\n[{name}] {p['runs']} live runs logging nothing, {p['window_s']} s windows, {reps}")
        print(
            f"  server CPU: {f['server_cpu_pct_no_runs']:.2f} % with no run, "
            f"{f['server_cpu_pct_idle_runs']:.2f} % with them: {f['server_cpu_pct_per_run']:.3f} % per run; "
            f"peak RSS {f['server_peak_rss_mib']:.0f} MiB"
        )


def print_profile(profile: Path, top: int = 25) -> None:
    """Where the server's CPU went, all threads together, then per thread (thread CPU time)."""
    import pstats

    files = sorted(str(f) for f in profile.glob("server-*"))
    if not files:
        print(f"\nno profile in {profile} (did the server exit cleanly?)")
        return
    print(f"\n[profile] server CPU by function, all threads, from {len(files)} dumps in {profile}")
    stats = pstats.Stats(files[0])
    for f in files[1:]:
        stats.add(f)
    stats.sort_stats("tottime").print_stats(top)
    by_thread: dict[str, float] = {}
    for f in files:
        name = f.rsplit(".", 1)[-1]
        by_thread[name] = by_thread.get(name, 0.0) + pstats.Stats(f).total_tt  # type: ignore[attr-defined]
    print("  CPU seconds per thread: " + ", ".join(f"{k} {v:.2f}" for k, v in by_thread.items()))


def stage_split(rows: int = 100_000, batch_rows: int = 4681) -> dict[str, float]:
    """The server's work per row, stage by stage, timed in this process without a profiler: CPU
    microseconds per row (``store_wall`` adds the fsync waits).  cProfile's per-call cost inflates
    code made of many small calls several times over; this split does not."""
    import gc

    from runstream.format import record as rec
    from runstream_ingest.server.decode import RecordBatch, decode_batch
    from runstream_ingest.server.ingest_service import Limits, inflate
    from runstream_ingest.server.storage.history import chunks as ck
    from runstream_ingest.server.storage.history import columns as cl
    from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
    from runstream_ingest.wire import ingest_pb2 as pb

    batches = build_batches(rows, batch_rows, 0)
    t = dict.fromkeys(("wire_crc", "inflate", "decode_batch", "store", "store_wall", "gc"), 0.0)
    t |= dict.fromkeys(("store.batch_columns", "store.encode_chunks"), 0.0)
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = time.process_time()
        else:
            t["gc"] += time.process_time() - gc_start[0]

    gc.callbacks.append(on_gc)
    clock = time.process_time
    try:
        with tempfile.TemporaryDirectory() as d:
            st = SqliteStorage(Path(d) / "split.db")
            st.open_run(ENTITY, "split", "r", "w", "")
            for first, last, crc, payload in batches:
                c0 = clock()
                ok = rec.crc32c(payload) == crc
                c1 = clock()
                data = inflate(pb.CODEC_ZSTD, payload, Limits().max_batch)
                c2 = clock()
                records = decode_batch(data, first, last)
                c3, w3 = clock(), time.perf_counter()
                st.store_batch(ENTITY, "split", "r", "w", first, last, records)
                c4, w4 = clock(), time.perf_counter()
                # The two costliest parts of store_batch, again on the same rows, outside it.
                assert isinstance(records, RecordBatch)
                cols, _, _ = cl.batch_columns(records, first - 2)
                c5 = clock()
                assert ok and cols is not None
                for col in cols.numeric.values():
                    ck.encode_points(col.steps, col.times, col.values, col.vtype, {})
                c6 = clock()
                for k, v in zip(t, (c1 - c0, c2 - c1, c3 - c2, c4 - c3, w4 - w3), strict=False):
                    t[k] += v
                t["store.batch_columns"] += c5 - c4
                t["store.encode_chunks"] += c6 - c5
            st.close()
    finally:
        gc.callbacks.remove(on_gc)
    return {k: v / rows * 1e6 for k, v in t.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--stream-worker"]:
        asyncio.run(stream_worker(json.loads(argv[1])))
        return 0
    ap = arg_parser(__doc__, CASES, "short runs: a ~1 minute smoke run")
    ap.add_argument("--profile", type=Path, help="profile the server (cProfile per thread) into this dir")
    a = ap.parse_args(argv)

    out: dict[str, Any] = {"quick": a.quick, "machine_before": machine()}
    print(f"runstream ingest benchmark{' (--quick)' if a.quick else ''}: {out['machine_before']}")
    cases, targets = {}, []
    for name in a.case or CASES:
        case = load_case(name, a.quick, a.repeat)
        p = case["parameters"]
        load = machine()["load"]
        t0 = time.monotonic()
        reps = []
        for _ in range(p["repeat"]):
            with tempfile.TemporaryDirectory(prefix="runstream-ingest-") as tmp:
                reps.append(CASES[name](p, Path(tmp), a.profile))
        fig: dict[str, Any] = median_of(reps)
        fig["per_repeat"] = reps
        show(name, p, fig)
        print(f"  ({time.monotonic() - t0:.0f} s; load average at start {load}, now {machine()['load']})")
        record_case(cases, targets, case, load, fig)
    if a.profile:
        print_profile(a.profile)
        split = stage_split()
        load = machine()["load"]
        print(f"\n[profile] the server's stages in-process, no profiler (us of CPU per row; load {load})")
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))
        out["stage_split_us_per_row"] = split
    print_targets(out, targets)
    return emit(out, cases, targets, a.json, a.check)


if __name__ == "__main__":
    sys.exit(main())
