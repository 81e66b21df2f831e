"""A fault campaign: does every record logged end up stored on the server or counted as lost?

For ``--duration`` seconds, real training scripts (subprocesses with their sidecars) log numbered
rows ``{"i": n}`` to a real ``runstream server`` on 127.0.0.1, whose gRPC port is reached through
tests/support/proxy.py, while faults chosen at random (``--seed``) hit them.  One fault kind per
run, kinds taken in a seeded shuffled round so a short campaign still covers each:

* ``none``: no fault (the control);
* ``sidecar_kill``: the run's sidecar is killed (SIGKILL) one to three times while it logs;
* ``server_kill``: the server is killed (SIGKILL) and started again on the same ports and data;
* ``train_kill``: the training process is killed (SIGKILL) mid-logging;
* ``net_cut`` / ``net_stall`` / ``net_reset``: the proxy closes (FIN), holds, or resets (RST)
  every connection for a while, then forwards again;
* ``journal_damage``: an offline run whose finished journal gets one byte flipped, then
  ``runstream sync`` (which must declare what the damage cost);
* ``disk_full``: the run directory is a 16 MiB tmpfs filled up by another file for a while, then
  freed (mounting needs root: skipped, with a note, otherwise);
* ``hostile``: between rows, ``log`` gets values runstream must refuse (nested 1000 deep, a dict
  containing itself, a non-str key, an object); each must raise in that call.

"Logged" is exact: after each ``log`` returns, the script writes the count into a side file
(``pwrite``; only the process dies, the page cache survives).  After each run everything still
local is uploaded (``runstream sync``, after any orphan sidecar has finished), then per run:

* stored: distinct ``i`` on the server (``scan_history``; duplicates are flagged);
* counted lost: the loss counters the server holds for the run (its summary's
  ``_runstream/dropped_records``, ``step_regressions`` and ``sidecar_lost_records``, which the
  journal's STATS records carry up, plus the server's own ``server_lost_records`` and
  ``server_step_regressions``); a local counter (``read_run``) is taken instead of the server's
  same counter only where it is larger (the same loss is never added twice);
* lost uncounted = logged - stored - counted lost, floored at 0 (a counter may cover records that
  are not rows, e.g. the run record in a damaged frame).  It must be 0.

Prints a table per fault kind, the totals, the target, and then one JSON object on the last line
(or into ``--json PATH``), as the other benches do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support
from tests.support.procs import Script, sidecar_processes, start_script
from tests.support.proxy import Proxy
from tests.support.server import ServerProc, start_server

import runstream
from _common import Skip, emit, fill, machine, print_targets, small_disk
from runstream.format.fold import LOSS_KEYS, STATS_KEYS
from runstream.read.api import NotFoundError

SERVER_LOST = "_runstream/server_lost_records"
SERVER_REGRESSIONS = "_runstream/server_step_regressions"
KINDS = (
    "none",
    "sidecar_kill",
    "server_kill",
    "train_kill",
    "net_cut",
    "net_stall",
    "net_reset",
    "journal_damage",
    "disk_full",
    "hostile",
)

TRAIN = """
import os, sys, time
import runstream

cfg = _json.loads(sys.argv[1])
run = runstream.init(
    project="campaign", entity="bench", mode=cfg["mode"], dir=cfg["dir"], settings=cfg["settings"]
)
side = os.open(cfg["side"], os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(side, (0).to_bytes(8, "little"), 0)
emit("ready", run_dir=run.dir, path=run.path)
rows, burst, hostile = cfg["rows"], cfg["burst"], cfg["hostile"]


def hostile_values():
    deep = {}
    cur = deep
    for _ in range(1000):
        cur["x"] = {}
        cur = cur["x"]
    loop = {"a": 1}
    loop["self"] = loop
    return [{"deep": deep}, loop, {object(): 1}, {"obj": object()}]


refused = accepted = 0
for i in range(rows):
    run.log({"i": i})
    os.pwrite(side, (i + 1).to_bytes(8, "little"), 0)  # logged: the call returned
    if hostile and i % 97 == 50:
        for v in hostile_values():
            try:
                run.log(v)
            except (ValueError, TypeError):
                refused += 1
            else:
                accepted += 1
    if i % burst == burst - 1:
        if i // burst == 2:
            emit("logging", rows=i + 1)
        time.sleep(0.01)
emit("logged", rows=rows, hostile_refused=refused, hostile_accepted=accepted)
t0 = time.monotonic()
runstream.finish()
emit("finished", finish_s=time.monotonic() - t0)
"""


class Campaign:
    """The server, the proxy in front of its gRPC port, and one run at a time."""

    def __init__(self, tmp: Path, rng: random.Random, seconds: tuple[float, float]) -> None:
        self.tmp, self.rng, self.seconds = tmp, rng, seconds
        self.proxy = Proxy()
        self.proxy_port = self.proxy.start()
        self.server: ServerProc = self._start_server()
        self.proxy.upstream_port = self.server.grpc_port
        self.api = runstream.Api(self.server.url)
        self.script: Script | None = None
        self.seq = 0

    def _start_server(self, old: ServerProc | None = None) -> ServerProc:
        extra = ("--advertise-grpc-port", str(self.proxy_port))
        if old is None:
            return start_server(self.tmp / "server", *extra)
        return start_server(old.data_dir, *extra, http_port=old.http_port, grpc_port=old.grpc_port)

    def server_kill(self, down_s: float) -> None:
        self.server.proc.kill()
        self.server.proc.wait()
        time.sleep(down_s)
        self.server = self._start_server(self.server)

    def close(self) -> None:
        if self.script is not None:
            self.script.cleanup()
            self.script = None
        self.server.stop(signal.SIGKILL)
        self.proxy.stop()

    # --- one run --------------------------------------------------------------------------------
    def one(self, kind: str) -> dict[str, Any]:
        self.seq += 1
        work = self.tmp / f"run-{self.seq:04d}-{kind}"
        work.mkdir()
        with contextlib.ExitStack() as stack:
            root = work / "runs"
            if kind == "disk_full":
                root = stack.enter_context(small_disk(work / "disk", "16m"))
            try:
                return self._one(kind, work, root)
            finally:
                if self.script is not None:
                    self.script.cleanup()
                    self.script = None
                shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    def _one(self, kind: str, work: Path, root: Path) -> dict[str, Any]:
        rng = self.rng
        burst = rng.choice((10, 30, 60))  # rows every 10 ms: 1k to 6k rows/s
        rows = round(rng.uniform(*self.seconds) * burst * 100)
        side = work / "logged"
        cfg = {
            "mode": "offline" if kind == "journal_damage" else "online",
            "dir": str(root),
            "side": str(side),
            "rows": rows,
            "burst": burst,
            "hostile": kind == "hostile",
            "settings": {"silent": True, "finish_timeout": 30, "disable_stats": True, "console": "off"},
        }
        env = {"RUNSTREAM_HOST": self.server.url, "RUNSTREAM_SIDECAR_MAX_BACKOFF": "0.5"}
        script = self.script = start_script(TRAIN, work, root, cfg, env)
        notes: dict[str, Any] = {"kind": kind, "rows_planned": rows, "faults": 0, "logged_at_fault": []}
        ready = script.expect("ready", timeout=60)
        run_dir = script.watch_run(ready["run_dir"])
        path = ready["path"]
        script.expect("logging", timeout=60)
        self._inject(kind, script, side, root, notes)
        killed = kind == "train_kill"
        if not killed:
            logged_ev = script.expect("logged", timeout=300)
            notes["hostile_refused"] = logged_ev["hostile_refused"]
            notes["hostile_accepted"] = logged_ev["hostile_accepted"]
            script.expect("finished", timeout=300)
            notes["script_exit"] = script.wait(60)
        # An orphan sidecar (its training process killed) journals what is left, ships, and exits.
        deadline = time.monotonic() + 120
        while sidecar_processes(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        notes["sidecar_left_running"] = len(sidecar_processes(root))
        script.cleanup()
        self.script = None
        if kind == "journal_damage":
            notes["damage"] = flip_byte(run_dir, rng)
            notes["faults"] += 1
        notes["sync_exit"] = sync(run_dir, self.server.url)
        logged = int.from_bytes(side.read_bytes()[:8], "little")
        return notes | {"logged": logged} | self.account(path, run_dir, logged)

    def _inject(self, kind: str, script: Script, side: Path, root: Path, notes: dict[str, Any]) -> None:
        """The fault, while the script logs; notes how many rows were logged as each one struck."""
        rng = self.rng

        def struck() -> None:
            notes["faults"] += 1
            notes["logged_at_fault"].append(int.from_bytes(side.read_bytes()[:8], "little"))

        if kind == "sidecar_kill":
            for _ in range(rng.randint(1, 3)):
                time.sleep(rng.uniform(0.1, 1.0))
                for p in sidecar_processes(root):
                    with contextlib.suppress(Exception):
                        p.kill()
                        struck()
        elif kind == "server_kill":
            time.sleep(rng.uniform(0.1, 1.0))
            struck()
            self.server_kill(rng.uniform(0.2, 2.0))
        elif kind == "train_kill":
            time.sleep(rng.uniform(0.0, 1.5))
            with contextlib.suppress(ProcessLookupError):
                os.kill(script.proc.pid, signal.SIGKILL)
            script.proc.wait(30)
            struck()
        elif kind in ("net_cut", "net_stall", "net_reset"):
            for _ in range(rng.randint(1, 2)):
                time.sleep(rng.uniform(0.1, 0.8))
                struck()
                getattr(self.proxy, kind[4:])()
                time.sleep(rng.uniform(0.5, 2.5))
                self.proxy.restore()
        elif kind == "disk_full":
            filler = root / "filler"
            time.sleep(rng.uniform(0.1, 0.5))
            struck()
            fill(filler)
            time.sleep(rng.uniform(0.5, 2.0))
            filler.unlink()
        elif kind == "hostile":
            struck()

    def account(self, path: str, run_dir: Path, logged: int) -> dict[str, Any]:
        try:
            r = self.api.run(path)
            summary = dict(r.summary)
            got = [row.get("i") for row in r.scan_history(keys=["i"], page_size=10_000)]
        except NotFoundError:
            summary, got = {}, []
        vals = [g for g in got if isinstance(g, int)]
        unique = set(vals)
        local: dict[str, int] = {}
        with contextlib.suppress(Exception):
            local = {k: int(v) for k, v in runstream.read_run(run_dir).stats.items() if isinstance(v, int)}
        counters = {}
        for k in LOSS_KEYS:
            counters[k] = max(int(summary.get(STATS_KEYS[k], 0) or 0), local.get(k, 0))
        counters["server_lost_records"] = int(summary.get(SERVER_LOST, 0) or 0)
        counters["server_step_regressions"] = int(summary.get(SERVER_REGRESSIONS, 0) or 0)
        counted = sum(counters.values())
        stored_logged = len(unique & set(range(logged)))
        missing = logged - stored_logged
        # the row being logged when the training process died may be stored: it is not "extra"
        extra = sorted(i for i in unique if i > logged or i < 0)
        return {
            "stored": stored_logged,
            "missing": missing,
            "counted_lost": counted,
            "lost_uncounted": max(0, missing - counted),
            "overcounted": max(0, counted - missing),
            "duplicated": len(vals) - len(unique),
            "extra_rows": len(extra),
            "counters": {k: v for k, v in counters.items() if v},
            "first_missing": sorted(set(range(logged)) - unique)[:10],
        }


def flip_byte(run_dir: Path, rng: random.Random) -> str:
    """Flip one byte in the middle half of the run's largest journal segment."""
    segs = [p for p in (run_dir / "journal").iterdir() if p.is_file()]
    if not segs:
        return "no journal segment"
    seg = max(segs, key=lambda p: p.stat().st_size)
    size = seg.stat().st_size
    off = rng.randint(size // 4, max(size // 4, 3 * size // 4))
    with open(seg, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))
    return f"{seg.name}@{off} of {size}"


def sync(run_dir: Path, url: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    r = subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", "sync", str(run_dir), "--host", url],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if r.returncode not in (0, 3):
        print(f"    sync exited {r.returncode}: {(r.stdout + r.stderr).strip()[-500:]}")
    return r.returncode


def table(results: list[dict[str, Any]], skipped: dict[str, str]) -> dict[str, dict[str, int]]:
    cols = (
        "runs",
        "faults",
        "logged",
        "stored",
        "counted_lost",
        "lost_uncounted",
        "duplicated",
        "extra_rows",
    )
    per: dict[str, dict[str, int]] = {}
    for r in results:
        row = per.setdefault(r["kind"], dict.fromkeys(cols, 0))
        row["runs"] += 1
        for c in cols[1:]:
            row[c] += int(r[c])
    total = dict.fromkeys(cols, 0)
    for row in per.values():
        for c in cols:
            total[c] += row[c]
    print(f"\n{'fault':<16}" + "".join(f"{c:>15}" for c in cols))
    for kind in KINDS:
        if kind in per:
            print(f"{kind:<16}" + "".join(f"{per[kind][c]:>15,}" for c in cols))
        elif kind in skipped:
            print(f"{kind:<16}  skipped: {skipped[kind]}")
    print(f"{'TOTAL':<16}" + "".join(f"{total[c]:>15,}" for c in cols))
    per["total"] = total
    return per


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of campaign (default 300)")
    ap.add_argument("--quick", action="store_true", help="a 60 s campaign (unless --duration is given)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: printed, from the clock)")
    ap.add_argument("--kind", action="append", choices=KINDS, help="only this fault kind (repeatable)")
    ap.add_argument(
        "--seconds",
        type=float,
        nargs=2,
        default=(2.0, 6.0),
        metavar=("MIN", "MAX"),
        help="each run logs for a random time in this range (default 2 6)",
    )
    ap.add_argument("--json", type=Path, help="write the JSON here instead of the last line of stdout")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    a = ap.parse_args(argv)
    duration = 60.0 if a.quick and "--duration" not in (argv or sys.argv) else a.duration
    seed = a.seed if a.seed is not None else int(time.time())
    rng = random.Random(seed)
    kinds = list(a.kind or KINDS)
    out: dict[str, Any] = {
        "quick": a.quick,
        "seed": seed,
        "duration_s": duration,
        "machine_before": machine(),
    }
    print(f"runstream fault campaign: {duration:.0f} s, seed {seed}, {out['machine_before']}")

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    errors: list[dict[str, str]] = []
    interrupted = False
    tmp = Path(tempfile.mkdtemp(prefix="runstream-campaign-"))
    camp: Campaign | None = None
    try:
        camp = Campaign(tmp, rng, tuple(a.seconds))  # type: ignore[arg-type]
        t0 = time.monotonic()
        queue: list[str] = []
        while time.monotonic() - t0 < duration:
            if not queue:
                queue = [k for k in kinds if k not in skipped]
                if not queue:
                    break
                rng.shuffle(queue)
            kind = queue.pop()
            if camp.server.proc.poll() is not None:  # died by itself: a failure, then go on
                errors.append({"kind": "server", "error": f"server exited {camp.server.proc.returncode}"})
                print(f"  the server exited by itself ({camp.server.proc.returncode}): restarting it")
                camp.server = camp._start_server(camp.server)
            try:
                r = camp.one(kind)
            except Skip as e:
                skipped[kind] = str(e)
                print(f"  [{kind}] skipped: {e}")
                continue
            except (AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as e:
                errors.append({"kind": kind, "error": str(e)[-3000:]})
                print(f"  [{time.monotonic() - t0:5.0f} s] {kind:<15} FAILED: {str(e)[-1500:]}")
                continue
            results.append(r)
            flag = (
                "  <-- LOST UNCOUNTED / DUPLICATED / EXTRA"
                if r["lost_uncounted"] or r["duplicated"] or r["extra_rows"]
                else ""
            )
            print(
                f"  [{time.monotonic() - t0:5.0f} s] {kind:<15} faults {r['faults']}  "
                f"logged {r['logged']:>6,}  "
                f"stored {r['stored']:>6,}  counted lost {r['counted_lost']:>4}  "
                f"uncounted {r['lost_uncounted']}  dup {r['duplicated']}  sync {r['sync_exit']}"
                + (
                    f"  hostile refused {r['hostile_refused']}/accepted {r['hostile_accepted']}"
                    if kind == "hostile"
                    else ""
                )
                + (f"  at rows {r['logged_at_fault']}" if r["logged_at_fault"] else "")
                + (f"  {r['counters']}" if r["counters"] else "")
                + flag
            )
            if flag:
                print(f"      first missing i: {r['first_missing']}; details: {json.dumps(r)}")
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: cleaning up")
    finally:
        if camp is not None:
            camp.close()
        for p in sidecar_processes(tmp):  # anything a run left behind
            with contextlib.suppress(Exception):
                p.kill()
        for line in open("/proc/mounts").read().splitlines():  # noqa: SIM115
            mnt = line.split()[1]
            if mnt.startswith(str(tmp)):
                subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    per = table(results, skipped)
    total = per["total"]
    hostile_accepted = sum(r.get("hostile_accepted", 0) for r in results)
    orphans = sum(r["sidecar_left_running"] for r in results)
    bad_sync = sum(1 for r in results if r["sync_exit"] not in (0, 3))
    print(
        f"\nrecords logged {total['logged']:,} / stored {total['stored']:,} / counted lost "
        f"{total['counted_lost']:,} / lost uncounted {total['lost_uncounted']:,}"
        f"  (duplicated {total['duplicated']}, extra {total['extra_rows']}, hostile values accepted "
        f"{hostile_accepted}, syncs failed {bad_sync}, orphan sidecars {orphans}, runs failed {len(errors)})"
    )
    fig = {
        "runs": len(results),
        "logged": total["logged"],
        "stored": total["stored"],
        "counted_lost": total["counted_lost"],
        "lost_uncounted": total["lost_uncounted"],
        "duplicated": total["duplicated"],
        "extra_rows": total["extra_rows"],
        "hostile_accepted": hostile_accepted,
        "syncs_failed": bad_sync,
        "runs_failed": len(errors),
    }
    case = {"name": "campaign", "optimises": "nothing logged is lost without being counted, under faults"}
    targets = [
        {"metric": m, "op": "==", "value": 0, "case": case["name"], "measured": fig[m], "pass": fig[m] == 0}
        for m in (
            "lost_uncounted",
            "duplicated",
            "extra_rows",
            "hostile_accepted",
            "syncs_failed",
            "runs_failed",
        )
    ]
    targets.append(
        {
            "metric": "runs",
            "op": ">=",
            "value": 1,
            "case": case["name"],
            "measured": len(results),
            "pass": bool(results),
        }
    )
    cases = {
        "campaign": {
            **case,
            "figures": fig,
            "per_kind": per,
            "skipped": skipped,
            "errors": errors,
            "per_run": results,
        }
    }
    out["interrupted"] = interrupted
    print_targets(out, targets)
    return emit(out, cases, targets, a.json, a.check)


if __name__ == "__main__":
    sys.exit(main())
