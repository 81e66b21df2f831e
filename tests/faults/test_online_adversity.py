"""An online run through a bad network: every row reaches the server exactly once, and ``log``
never waits for the network.

A real training script (subprocess, real sidecar) streams to a real ``runstream server`` whose
gRPC port is reached through the fault proxy (tests/support/proxy.py): the server advertises the
proxy's port in ``/api/v1/info``, so the shipper connects through it.  The test steps the script
through phases and changes the network between them:

* stalled: nothing is forwarded but connections stay open, so the shipper's stream just stops
  moving; once restored, the same stream carries the backlog;
* cut (FIN, refused) and reset (RST, refused): the stream dies; the shipper reconnects with
  backoff once the path is back and resumes from the server's ``acked_seq``, resending what was in
  flight -- which the server must store once.

What the server holds is read back with ``runstream.Api`` (``scan_history``), as a user would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.read.api import NotFoundError
from tests.support.procs import Script, poll, running_script
from tests.support.proxy import Proxy
from tests.support.server import ServerProc, running_server

pytestmark = pytest.mark.slow

MAX_LOG_S = 0.05  # "never blocks": a log() call takes microseconds; waiting on the network would not
CATCH_UP_S = 15.0  # backoff after a cut tops out near 2x the outage here; this is a generous bound
OUTAGE_S = 1.0  # how long the network stays broken while the script logs

TRAIN = """
import sys, time
import runstream

cfg = _json.loads(sys.argv[1])
run = runstream.init(project="adversity", entity="tests", dir=cfg["root"], settings=cfg["settings"])
emit("ready", run_dir=run.dir, path=run.path)
perf = time.perf_counter
max_log = 0.0
step = 0
while True:
    line = sys.stdin.readline().split()
    if line[0] == "finish":
        break
    for _ in range(int(line[1])):
        t0 = perf()
        run.log({"i": step, "loss": 1.0 / (step + 1)})
        dt = perf() - t0
        if dt > max_log:
            max_log = dt
        step += 1
    emit("logged", rows=step, max_log=max_log)
t0 = perf()
runstream.finish()
emit("finished", rows=step, max_log=max_log, finish_s=perf() - t0)
"""


@dataclass
class Online:
    server: ServerProc
    proxy: Proxy
    script: Script
    path: str
    api: runstream.Api
    rows: int = 0  # logged so far

    def log(self, phase: str, n: int) -> None:
        self.script.send(f"{phase} {n}")
        self.rows = self.script.expect("logged")["rows"]

    def stored(self) -> int:
        try:
            return int(self.api.run(self.path).rows)
        except NotFoundError:  # the sidecar has not opened its stream yet
            return 0

    def wait_stored(self, what: str) -> None:
        want = self.rows
        poll(
            f"{want} rows on the server ({what})",
            lambda: self.stored() >= want,
            CATCH_UP_S,
            interval=0.05,
            diag=lambda: f"server has {self.stored()}\n{self.script.diag()}\n{self.server.log()[-3000:]}",
        )

    def finish(self) -> dict[str, Any]:
        self.script.send("finish")
        done = self.script.expect("finished", timeout=40)
        assert self.script.wait(30) == 0, self.script.diag()
        assert not self.script.leftovers(), self.script.leftovers()
        return done

    def check_exactly_once(self, done: dict[str, Any]) -> None:
        run = self.api.run(self.path)
        rows = list(run.scan_history(page_size=5000))
        steps = [r["_step"] for r in rows]
        dupes = len(steps) - len(set(steps))
        missing = sorted(set(range(done["rows"])) - set(steps))
        assert not dupes and not missing, f"{dupes} duplicated, {len(missing)} missing: {missing[:10]}"
        assert steps == list(range(done["rows"]))
        assert all(r["i"] == r["_step"] for r in rows)
        assert run.state == "finished", run.state
        assert done["max_log"] < MAX_LOG_S, f"a log() call took {done['max_log'] * 1000:.1f} ms"


@pytest.fixture
def online(tmp_path: Path) -> Iterator[Online]:
    # The server advertises the proxy's port and the proxy forwards to the server's bound port:
    # so the proxy starts first and learns its upstream once the server is up.
    root = tmp_path / "runs"
    cfg = {"root": str(root), "settings": {"silent": True, "finish_timeout": 30}}
    with (
        Proxy() as proxy,
        running_server(tmp_path / "server", "--advertise-grpc-port", str(proxy.port)) as srv,
    ):
        proxy.upstream_port = srv.grpc_port
        with running_script(TRAIN, tmp_path, root, cfg, {"RUNSTREAM_HOST": srv.url}) as script:
            ready = script.expect("ready")
            script.watch_run(ready["run_dir"])
            yield Online(srv, proxy, script, ready["path"], runstream.Api(srv.url))


def test_stalled_then_restored_network(online: Online) -> None:
    o = online
    o.log("warmup", 500)
    o.wait_stored("through the proxy")
    assert o.proxy.forwarded["up"] > 0 and o.proxy.accepted == 1

    o.proxy.stall()
    o.log("stalled", 3000)
    before = o.stored()
    time.sleep(OUTAGE_S)  # the outage itself: the sidecar cuts ~10 batches meanwhile
    assert o.stored() == before == 500, "rows got through a stalled network"
    o.proxy.restore()
    o.wait_stored("after the stall")
    assert o.proxy.accepted == 1, "the stream survives a stall: no reconnection"

    o.proxy.set_delay(0.05)  # a slow path (50 ms each way) on top
    o.log("delayed", 2000)
    o.wait_stored("through a delayed path")
    o.proxy.set_delay(0)
    o.check_exactly_once(o.finish())


def test_cut_and_reset_network(online: Online) -> None:
    o = online
    o.log("warmup", 500)
    o.wait_stored("through the proxy")

    o.proxy.cut()
    o.log("cut", 3000)
    time.sleep(OUTAGE_S)  # the shipper retries against a refusing port meanwhile
    assert o.stored() == 500
    o.proxy.restore()
    o.log("restored", 500)  # logged while the shipper may still be backing off
    o.wait_stored("after the cut")
    reconnects = o.proxy.accepted

    o.proxy.reset()  # RSTs the live stream (acks may be lost in flight: resent batches)
    o.log("reset", 3000)
    time.sleep(OUTAGE_S)
    o.proxy.restore()
    o.log("final", 500)
    done = o.finish()  # finish waits for the acks: no wait_stored before it
    assert o.proxy.accepted > reconnects > 1, "the shipper did not reconnect through the proxy"
    o.check_exactly_once(done)
