"""What does a fault cost a live online run?  A server restart, a stalled network, a full disk.

Three cases, parameters and targets in ``bench/cases/faults_*/case.json``.  In each, a real
training script (a subprocess with its sidecar) streams to a real ``runstream server`` and logs
10-scalar rows at a steady pace (``rate`` rows/s, a burst every 10 ms), timing every ``log`` call,
through three phases:

    before (healthy) -> fault (the fault is on for ``fault_s``) -> after (healed, still logging)

* ``faults_server_restart``: the server is stopped (SIGTERM) and started again on the same ports
  and data directory;
* ``faults_network_stall``: the gRPC path goes through tests/support/proxy.py, which stops
  forwarding (connections stay open) and then resumes;
* ``faults_disk_full``: the run directory is a small tmpfs, filled up by another file during the
  fault and freed after it (mounting needs root: skipped, with the reason, otherwise).

Figures: ``log`` p50/p99/max during the fault (and before it, for comparison); ``catch_up_s``, from
the end of the fault until the server holds every row logged before that end; and, once the run
has finished, rows lost and duplicated on the server (``scan_history``).  Lost and duplicated must
be 0 here: no fault outlasts a bound (the journal keeps everything across a restart or a stall;
the sidecar's memory bound holds far more than a full disk's worth of rows here).
Prints text, then the figures as one JSON object on the last line (or into ``--json PATH``).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support
from tests.support.procs import Script, start_script
from tests.support.proxy import Proxy
from tests.support.server import ServerProc, start_server

import runstream
from _common import (
    Skip,
    arg_parser,
    emit,
    fill,
    load_case,
    machine,
    median_of,
    print_targets,
    record_case,
    small_disk,
)
from runstream.read.api import NotFoundError

TRAIN = """
import sys, time
import runstream

cfg = _json.loads(sys.argv[1])
run = runstream.init(project="faults", entity="bench", dir=cfg["dir"], settings=cfg["settings"])
emit("ready", run_dir=run.dir, path=run.path)
pc = time.perf_counter_ns
overhead = sorted(-pc() + pc() for _ in range(10001))[5000]  # an empty timing bracket
d = {f"metric_{i}": 0.5 + i / 7 for i in range(10)}
log, step = run.log, 0
while True:
    cmd = sys.stdin.readline().split()
    if not cmd or cmd[0] == "finish":
        break
    phase, n, burst = cmd[0], int(cmd[1]), int(cmd[2])
    ts, i, due = [0] * n, 0, time.monotonic()
    while i < n:
        for _ in range(min(burst, n - i)):
            d["metric_0"] = 1.0 / (step + 1)
            t0 = pc()
            log(d)
            ts[i] = pc() - t0 - overhead
            i += 1
            step += 1
        due += 0.01
        time.sleep(max(0.0, due - time.monotonic()))
    ts.sort()
    q = lambda f: max(0, ts[min(n - 1, int(f * n))]) / 1e3
    emit("logged", phase=phase, rows=step, p50_us=q(0.5), p99_us=q(0.99), max_us=max(0, ts[-1]) / 1e3)
t0 = time.perf_counter()
runstream.finish()
emit("finished", rows=step, finish_s=time.perf_counter() - t0)
"""


class Scenario:
    """A server, a run streaming to it, and the fault's two halves (``inject``, ``heal``)."""

    def __init__(self, tmp: Path, p: dict[str, Any]) -> None:
        self.tmp, self.p = tmp, p
        self.server: ServerProc | None = None
        self.proxy: Proxy | None = None
        self.run_root = tmp / "runs"
        self.server_args: list[str] = []

    def start(self) -> None:
        self.server = start_server(self.tmp / "server", *self.server_args)

    def inject(self) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.proxy is not None:
            self.proxy.stop()


class ServerRestart(Scenario):
    def inject(self) -> None:
        assert self.server is not None
        self.server.stop()

    def heal(self) -> None:
        old = self.server
        assert old is not None
        self.server = start_server(old.data_dir, http_port=old.http_port, grpc_port=old.grpc_port)


class NetworkStall(Scenario):
    def start(self) -> None:
        self.proxy = Proxy()
        self.server_args = ["--advertise-grpc-port", str(self.proxy.start())]
        super().start()
        assert self.server is not None
        self.proxy.upstream_port = self.server.grpc_port

    def inject(self) -> None:
        assert self.proxy is not None
        self.proxy.stall()

    def heal(self) -> None:
        assert self.proxy is not None
        self.proxy.restore()


class DiskFull(Scenario):
    def __init__(self, tmp: Path, p: dict[str, Any]) -> None:
        super().__init__(tmp, p)
        self.stack = contextlib.ExitStack()
        self.run_root = self.stack.enter_context(small_disk(tmp / "disk", p["disk"]))
        self.filler = self.run_root / "filler"

    def inject(self) -> None:
        fill(self.filler)

    def heal(self) -> None:
        self.filler.unlink()

    def close(self) -> None:
        super().close()
        self.stack.close()


def stored(api: runstream.Api, path: str) -> int:
    try:
        return int(api.run(path).rows)
    except NotFoundError:
        return 0


def wait_rows(api: runstream.Api, path: str, want: int, timeout: float, poll: float = 0.02) -> float:
    """Seconds until the server holds ``want`` rows of the run (AssertionError after timeout)."""
    t0 = time.monotonic()
    while stored(api, path) < want:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"the server holds {stored(api, path)} of {want} rows after {timeout:.0f} s")
        time.sleep(poll)
    return time.monotonic() - t0


def check_history(api: runstream.Api, path: str, rows: int) -> dict[str, int]:
    got = [r["_step"] for r in api.run(path).scan_history(keys=["metric_0"], page_size=10_000)]
    unique = set(got)
    return {
        "rows_logged": rows,
        "rows_lost": len(set(range(rows)) - unique),
        "rows_duplicated": len(got) - len(unique),
    }


def one(kind: Callable[[Path, dict[str, Any]], Scenario], p: dict[str, Any], tmp: Path) -> dict[str, Any]:
    sc = kind(tmp, p)
    script: Script | None = None
    try:
        sc.start()
        assert sc.server is not None
        url = sc.server.url
        cfg = {"dir": str(sc.run_root), "settings": {"silent": True, "finish_timeout": 120}}
        script = start_script(TRAIN, tmp, sc.run_root, cfg, {"RUNSTREAM_HOST": url})
        ready = script.expect("ready")
        script.watch_run(ready["run_dir"])
        path, api = ready["path"], runstream.Api(url)
        burst = max(1, round(p["rate"] / 100))

        def phase(name: str, seconds: float) -> None:
            script.send(f"{name} {round(p['rate'] * seconds)} {burst}")  # type: ignore[union-attr]

        phase("before", p["before_s"])
        before = script.expect("logged", timeout=60)
        wait_rows(api, path, before["rows"], 60)
        sc.inject()
        phase("fault", p["fault_s"])
        during = script.expect("logged", timeout=120)
        t0 = time.monotonic()
        sc.heal()
        heal_s = time.monotonic() - t0
        phase("after", p["after_s"])
        catch_up = heal_s + wait_rows(api, path, during["rows"], 120)
        after = script.expect("logged", timeout=120)
        script.send("finish")
        done = script.expect("finished", timeout=180)
        if script.wait(60) != 0:
            raise RuntimeError(f"the script failed:\n{script.diag()}")
        fig = {
            "log_p50_us_fault": during["p50_us"],
            "log_p99_us_fault": during["p99_us"],
            "log_max_us_fault": during["max_us"],
            "log_p99_us_before": before["p99_us"],
            "log_p99_us_after": after["p99_us"],
            "heal_s": heal_s,
            "catch_up_s": catch_up,
            "finish_s": done["finish_s"],
        }
        return fig | check_history(api, path, done["rows"])
    finally:
        if script is not None:
            script.cleanup()
        sc.close()


CASES: dict[str, Callable[[Path, dict[str, Any]], Scenario]] = {
    "faults_server_restart": ServerRestart,
    "faults_network_stall": NetworkStall,
    "faults_disk_full": DiskFull,
}


def show(name: str, p: dict[str, Any], f: dict[str, Any]) -> None:
    print(
        f"\n[{name}] {p['rate']:,} rows/s of 10 scalars; {p['before_s']} s before, "
        f"{p['fault_s']} s of fault, {p['after_s']} s after; median of {p['repeat']}"
    )
    print(
        f"  log during the fault: p50 {f['log_p50_us_fault']:.2f} us, p99 {f['log_p99_us_fault']:.2f} us, "
        f"max {f['log_max_us_fault']:.0f} us (p99 before {f['log_p99_us_before']:.2f} us, "
        f"after {f['log_p99_us_after']:.2f} us)"
    )
    print(
        f"  caught up {f['catch_up_s']:.2f} s after the fault ended (healing took {f['heal_s']:.2f} s); "
        f"finish {f['finish_s']:.2f} s"
    )
    print(
        f"  server: {f['rows_logged']:,.0f} rows logged, {f['rows_lost']:.0f} lost, "
        f"{f['rows_duplicated']:.0f} duplicated"
    )


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, CASES, "shorter phases, one repetition")
    a = ap.parse_args(argv)

    out: dict[str, Any] = {"quick": a.quick, "machine_before": machine()}
    print(f"runstream faults benchmark{' (--quick)' if a.quick else ''}: {out['machine_before']}")
    cases: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    for name, kind in CASES.items():
        if a.case and name not in a.case:
            continue
        case = load_case(name, a.quick, a.repeat)
        p = case["parameters"]
        load = machine()["load"]
        t0 = time.monotonic()
        reps = []
        try:
            for _ in range(p["repeat"]):
                with tempfile.TemporaryDirectory(prefix="runstream-faults-") as tmp:
                    reps.append(one(kind, p, Path(tmp)))
        except Skip as e:
            print(f"\n[{name}] skipped: {e}")
            cases[name] = {"skipped": str(e)}
            continue
        fig: dict[str, Any] = median_of(reps)
        # Loss and duplication are judged on the worst repetition, not the median.
        for k in ("rows_lost", "rows_duplicated"):
            fig[k] = max(r[k] for r in reps)
        fig["per_repeat"] = reps
        show(name, p, fig)
        print(f"  ({time.monotonic() - t0:.0f} s; load average at start {load}, now {machine()['load']})")
        record_case(cases, targets, case, load, fig)
    print_targets(out, targets)
    return emit(out, cases, targets, a.json, a.check)


if __name__ == "__main__":
    sys.exit(main())
