"""How fast does the server answer the dashboard: chart series, runs-table pages, live updates?

Three cases, parameters and targets in ``bench/cases/<name>/case.json``:

* ``query_series``: runs of 10^4 and 10^6 steps x 10 metrics and one metric of 10^7 points are
  written through ``store_batch`` (sidecar-sized batches, then compaction, as real ingest lays
  chunks out); then one metric as a 1,000-bucket series, timed in the storage layer
  (``SqliteQueries.series``) and through HTTP from a real server process, side by side: cold
  (the first request for the run after the storage or the server starts: nothing cached in the
  process; median over ``cold_repeats`` restarts) and warm (median of ``requests`` more).  The
  target: the same time whatever the run's length, cold or warm.
* ``query_table``: 10,000 runs, each with 10 config and 20 summary keys; a page of 50 sorted by a
  summary key, one filtered on a config key, one 9,000 runs deep, and a group-by.
* ``query_live``: a running run's batches arrive every 50 ms on a raw gRPC stream; the lag from
  each ack until the dashboard's event stream shows the run there.

Databases live on tmpfs (/dev/shm) so that building them does not wait on fsync; a freshly written
database is in the page cache anyway (a cold request finds the file there too).  Figures are
medians over requests; for the table, the first request of each kind is printed beside them.
Prints text, then the figures as one JSON object on the last line (or into ``--json PATH``);
exits 0 even when a target fails unless ``--check``.
"""

from __future__ import annotations

import http.client
import json
import math
import queue
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ormsgpack
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support
from tests.support.server import ServerProc, start_server

from _common import arg_parser, emit, load_case, machine, print_targets, record_case
from runstream.format import record as rec
from runstream_ingest.server.args import DB_NAME
from runstream_ingest.server.storage import filters as fl
from runstream_ingest.server.storage.interface import RunQuery
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from runstream_ingest.server.storage.sqlite.query import SqliteQueries

E, P = "bench", "query"
START = 1_700_000_000.0
SHM = Path("/dev/shm")


def tmp_root() -> str | None:
    return str(SHM) if SHM.is_dir() and shutil.disk_usage(SHM).free > 4 << 30 else None


# --- writing runs ------------------------------------------------------------------------------
def store_run(
    s: SqliteStorage, run: str, steps: int, make_body: Callable[[int], bytes], batch: int, head: list[Any]
) -> None:
    """RUN/CONFIG records, ``steps`` rows in batches of ``batch``, EXIT; then compaction."""
    s.open_run(E, P, run, "w", "")
    recs = [rec.Record(i + 1, kind, 0, 0, START, rec.pack_body(body)) for i, (kind, body) in enumerate(head)]
    s.store_batch(E, P, run, "w", 1, len(recs), recs)
    seq = len(recs) + 1
    for a in range(0, steps, batch):
        rows = [
            rec.Record(seq + i, rec.KIND_ROW, 0, st, START + st * 0.01, make_body(st))
            for i, st in enumerate(range(a, min(steps, a + batch)))
        ]
        s.store_batch(E, P, run, "w", seq, seq + len(rows) - 1, rows)
        seq += len(rows)
    end = rec.Record(seq, rec.KIND_EXIT, 0, 0, START + steps, rec.pack_body({"exit_code": 0}))
    s.store_batch(E, P, run, "w", seq, seq, [end])
    s.compact(E, P, run)


def metric_rows(n_metrics: int) -> Callable[[int], bytes]:
    rnd = random.Random(1)
    names = [f"m{k}" for k in range(n_metrics)]

    def body(step: int) -> bytes:
        base = math.sin(step / 5000)
        return ormsgpack.packb({k: base + rnd.random() * 0.1 for k in names})

    return body


# --- timing ------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], n: int) -> tuple[float, float, Any]:
    """(first call ms, median ms of the next ``n`` (NaN when none), the last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return first, statistics.median(times) if times else math.nan, out


class Http:
    """GETs on one kept-alive connection; returns (status, body bytes)."""

    def __init__(self, srv: ServerProc) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)

    def get(self, path: str, **query: Any) -> bytes:
        q = urllib.parse.urlencode(query)
        self.conn.request("GET", f"{path}?{q}" if q else path)
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
        return body

    def close(self) -> None:
        self.conn.close()


# --- cases -------------------------------------------------------------------------------------
def case_series(p: dict[str, Any], tmp: Path) -> dict[str, Any]:
    s = SqliteStorage(tmp / DB_NAME)
    runs = {"1e4": ("short", p["steps_short"], p["metrics"]), "1e6": ("long", p["steps_long"], p["metrics"]),
            "1e7": ("huge", p["points_huge"], 1)}  # fmt: skip
    fig: dict[str, Any] = {}
    for label, (run, steps, metrics) in runs.items():
        t0 = time.perf_counter()
        batch = p["batch_rows"] * max(1, 10 // metrics)  # ~1 MiB of records either way
        store_run(s, run, steps, metric_rows(metrics), batch, [(rec.KIND_RUN, {"start_time": START})])
        fig[f"write_s_{label}"] = round(time.perf_counter() - t0, 1)
        print(
            f"  wrote {run}: {steps:,} steps x {metrics} metrics in {fig[f'write_s_{label}']} s", flush=True
        )
    s.close()
    n, buckets, colds = p["requests"], p["buckets"], p["cold_repeats"]
    # Cold: the first request for a run after the storage (or server) starts, with nothing of it
    # cached in the process; the database file stays in the page cache (tmpfs).
    for label, (run, _, _) in runs.items():
        cold = []
        for _ in range(colds):
            s = SqliteStorage(tmp / DB_NAME)
            q = SqliteQueries(s)
            cold.append(timed(lambda run=run, q=q: q.series(E, P, run, ["m0"], buckets), 0)[0])
            q.close()
            s.close()
        fig[f"storage_cold_ms_{label}"] = statistics.median(cold)
    s = SqliteStorage(tmp / DB_NAME)
    q = SqliteQueries(s)
    fig["storage_cold_ms_1e6_all_10_metrics"], fig["storage_ms_1e6_all_10_metrics"], _ = timed(
        lambda: q.series(E, P, "long", [f"m{k}" for k in range(10)], buckets), max(3, n // 4)
    )
    for label, (run, _, _) in runs.items():
        _, fig[f"storage_ms_{label}"], out = timed(lambda run=run: q.series(E, P, run, ["m0"], buckets), n)
        fig[f"buckets_{label}"] = len(out["m0"].x)
    q.close()
    s.close()
    for label, (run, _, _) in runs.items():
        path = f"/api/v1/runs/{E}/{P}/{run}/series"
        cold = []
        for i in range(colds):
            srv = start_server(tmp)
            h = Http(srv)
            try:  # the last server also gives the warm median
                warm = n if i == colds - 1 else 0
                first, med, body = timed(lambda path=path, h=h: h.get(path, keys="m0", buckets=buckets), warm)
                cold.append(first)
            finally:
                h.close()
                srv.stop()
        fig[f"http_cold_ms_{label}"], fig[f"http_ms_{label}"] = statistics.median(cold), med
        fig[f"http_bytes_{label}"] = len(body)
    return fig


def case_table(p: dict[str, Any], tmp: Path) -> dict[str, Any]:
    s = SqliteStorage(tmp / DB_NAME)
    rnd = random.Random(2)
    t0 = time.perf_counter()
    for i in range(p["runs"]):
        config = {f"c{k}": rnd.random() for k in range(8)}
        config |= {"opt": rnd.choice(["adam", "sgd", "lion"]), "model": {"depth": rnd.randint(1, 12)}}
        row = ormsgpack.packb({f"train/m{k}": rnd.random() for k in range(17)})
        head = [(rec.KIND_RUN, {"start_time": START + i, "name": f"run-{i}", "tags": [rnd.choice("abcd")]}),
                (rec.KIND_CONFIG, config)]  # fmt: skip
        store_run(s, f"r{i:05d}", 1, lambda _, row=row: row, 1, head)
    write_s = round(time.perf_counter() - t0, 1)
    print(f"  wrote {p['runs']:,} runs in {write_s} s", flush=True)
    q = SqliteQueries(s)
    n, page = p["requests"], p["page"]
    order = tuple(fl.parse_order("-summary.train/m3"))
    fig: dict[str, Any] = {"write_s": write_s}
    first, fig["storage_page_ms"], got = timed(
        lambda: q.query_runs(E, P, RunQuery(order=order, limit=page)), n
    )
    fig["storage_page_first_ms"] = first
    assert got.total == p["runs"] and len(got.runs) == page
    q.close()
    s.close()
    srv = start_server(tmp)
    h = Http(srv)
    base = f"/api/v1/runs/{E}/{P}"
    flt = json.dumps({"config.c1": {"$gt": 0.5}, "config.opt": {"$in": ["adam", "sgd"]}})
    asks = {
        "page": lambda: h.get(base, order="-summary.train/m3", limit=page),
        "filtered_page": lambda: h.get(base, order="-summary.train/m3", limit=page, filters=flt),
        "deep_page": lambda: h.get(base, order="-summary.train/m3", limit=page, offset=p["runs"] - 1000),
        "newest_page": lambda: h.get(base, limit=page),
        "search_page": lambda: h.get(base, limit=page, search="run-99"),
        "group": lambda: h.get(f"/api/v1/groups/{E}/{P}", by="config.opt", metrics="summary.train/m3"),
    }
    try:
        for name, ask in asks.items():
            first, fig[f"http_{name}_ms"], _ = timed(ask, n)
            fig[f"http_{name}_first_ms"] = first
    finally:
        h.close()
        srv.stop()
    return fig


def _batch_msg(pb: Any, first: int, n: int) -> Any:
    raw = b"".join(
        rec.encode(seq, rec.KIND_ROW, seq - 1, time.time(), rec.pack_body({"loss": 1.0 / seq}))
        for seq in range(first, first + n)
    )
    payload = zstandard.ZstdCompressor().compress(raw)
    return pb.ClientMessage(
        batch=pb.Batch(first_seq=first, last_seq=first + n - 1, codec=pb.CODEC_ZSTD,
                       crc32c=rec.crc32c(payload), payload=payload, record_count=n)
    )  # fmt: skip


def case_live(p: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import grpc

    from runstream_ingest.wire import ingest_pb2 as pb
    from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc

    srv = start_server(tmp)
    events: queue.Queue[tuple[float, int]] = queue.Queue()
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)
    conn.request("GET", f"/api/v1/events/{E}/{P}")
    resp = conn.getresponse()

    def read() -> None:
        try:
            for line in resp:
                if line.startswith(b"data: "):
                    events.put((time.perf_counter(), json.loads(line[6:])["last_step"]))
        except Exception:  # the connection closed under us: done
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    sends: queue.Queue[Any] = queue.Queue()
    lags: list[float] = []
    try:
        answers = pb_grpc.IngestStub(channel).Stream(iter(sends.get, None), timeout=120)
        sends.put(pb.ClientMessage(open=pb.Open(entity=E, project=P, run_id="live", writer_id="w",
                                                protocol_version=1)))  # fmt: skip
        next(answers)
        acked: list[tuple[float, int]] = []  # (ack time, last step of the batch)
        seq, n = 1, p["rows_per_batch"]
        end = time.perf_counter() + p["seconds"]
        while time.perf_counter() < end:
            sends.put(_batch_msg(pb, seq, n))
            next(answers)
            acked.append((time.perf_counter(), seq + n - 2))
            seq += n
            time.sleep(p["batch_every_s"])
        seen: list[tuple[float, int]] = []
        deadline = time.perf_counter() + 10
        while (not seen or seen[-1][1] < acked[-1][1]) and time.perf_counter() < deadline:
            try:
                seen.append(events.get(timeout=1))
            except queue.Empty:
                pass
        for t_ack, step in acked:
            t_seen = next((t for t, s in seen if s >= step), None)
            lags.append(math.inf if t_seen is None else max(0.0, t_seen - t_ack) * 1e3)
        sends.put(None)
    finally:
        channel.close()
        conn.close()
        srv.stop()
        reader.join(10)
    ordered = sorted(lags)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"batches": len(lags), "p50_ms": statistics.median(ordered), "p99_ms": p99, "max_ms": ordered[-1]}


CASES: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {
    "query_series": case_series,
    "query_table": case_table,
    "query_live": case_live,
}


def show(name: str, fig: dict[str, Any]) -> None:
    if name == "query_series":
        print("  1,000-bucket series of one metric, ms: warm (median of requests) and cold (first")
        print("  request after a start, median of restarts)")
        print("    run             storage warm  cold    HTTP warm  cold    buckets  HTTP bytes")
        for label, what in (("1e4", "10^4 steps"), ("1e6", "10^6 steps"), ("1e7", "10^7 points")):
            f = {k.removesuffix(f"_{label}"): v for k, v in fig.items() if k.endswith(f"_{label}")}
            storage = f"{f['storage_ms']:10.1f} {f['storage_cold_ms']:6.1f}"
            over_http = f"{f['http_ms']:10.1f} {f['http_cold_ms']:6.1f}"
            print(f"    {what:<14}  {storage}  {over_http}  {f['buckets']:7}  {f['http_bytes']:,}")
        all10, all10_cold = fig["storage_ms_1e6_all_10_metrics"], fig["storage_cold_ms_1e6_all_10_metrics"]
        print(f"    10^6 steps, all 10 metrics in one request (storage): {all10:.1f} (cold {all10_cold:.1f})")
    elif name == "query_table":
        first = fig["storage_page_first_ms"]
        print(f"  storage: sorted page {fig['storage_page_ms']:.1f} ms (first {first:.1f})")
        for k in ("page", "filtered_page", "deep_page", "newest_page", "search_page", "group"):
            print(f"  HTTP {k:<14} {fig[f'http_{k}_ms']:6.1f} ms (first {fig[f'http_{k}_first_ms']:.1f})")
    else:
        print(f"  {fig['batches']} batches: lag p50 {fig['p50_ms']:.0f} ms, p99 {fig['p99_ms']:.0f} ms, "
              f"max {fig['max_ms']:.0f} ms")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, CASES, "smaller runs: a ~1 minute smoke run")
    a = ap.parse_args(argv)
    out: dict[str, Any] = {"quick": a.quick, "machine_before": machine()}
    print(f"runstream query benchmark{' (--quick)' if a.quick else ''}: {out['machine_before']}")
    cases, targets = {}, []
    for name in a.case or CASES:
        case = load_case(name, a.quick, a.repeat)
        p = case["parameters"]
        print(f"\n{name}: {case['optimises']}", flush=True)
        load = machine()["load"]
        reps = []
        for _ in range(p["repeat"]):
            with tempfile.TemporaryDirectory(prefix="runstream-query-", dir=tmp_root()) as tmp:
                reps.append(CASES[name](p, Path(tmp)))
        fig = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
        show(name, fig)
        record_case(cases, targets, case, load, fig)
    print_targets(out, targets)
    return emit(out, cases, targets, a.json, a.check)


if __name__ == "__main__":
    sys.exit(main())
