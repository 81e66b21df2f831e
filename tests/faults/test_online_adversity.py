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

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.format.ring_layout import W_HEAD, W_OVERFLOW_BYTES, W_TAIL
from runstream.read.api import NotFoundError
from tests.support.procs import Script, poll, ring_words, running_script
from tests.support.proxy import Proxy
from tests.support.server import ServerProc, running_server

pytestmark = pytest.mark.slow

MAX_LOG_S = 0.05  # "never blocks": a log() call takes microseconds; waiting on the network would not
CATCH_UP_S = 15.0  # backoff after a cut tops out near 2x the outage here; this is a generous bound
# An outage lasts until the sidecar has journaled what the script logged meanwhile (the backlog) and
# the shipper has met the broken path; waiting for those is bounded by this.
OUTAGE_WAIT_S = 30.0
# What the shipper logs (logs/sidecar.log) when its stream dies, and when reconnecting is refused.
STREAM_ENDED = r"stream to \S+ ended: "
REFUSED = STREAM_ENDED + r"UNAVAILABLE .*Connection refused"

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
    run_dir: Path
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

    def wait_journaled(self, what: str) -> None:
        """Wait until the sidecar has taken every row logged so far from the ring (it releases ring
        space once the journal writer has them): the backlog the shipper must deliver later."""

        def taken() -> bool:
            w = ring_words(self.run_dir)
            assert w is not None, f"the run's ring is gone while the script runs\n{self.script.diag()}"
            return w[W_TAIL] == w[W_HEAD] and w[W_OVERFLOW_BYTES] == 0

        poll(f"every row in the journal ({what})", taken, OUTAGE_WAIT_S, diag=self.script.diag)

    def log_size(self) -> int:
        """Where the sidecar's log ends now: ``wait_logged`` looks only at what comes after."""
        return (self.run_dir / "logs" / "sidecar.log").stat().st_size

    def wait_logged(self, since: int, pattern: str, what: str) -> None:
        """Wait until the sidecar logs a line matching ``pattern`` after offset ``since``."""

        def logged() -> bool:
            with open(self.run_dir / "logs" / "sidecar.log", "rb") as f:
                f.seek(since)
                return re.search(pattern, f.read().decode(errors="replace")) is not None

        poll(what, logged, OUTAGE_WAIT_S, interval=0.05, diag=self.script.diag)

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
            run_dir = script.watch_run(ready["run_dir"])
            yield Online(srv, proxy, script, ready["path"], runstream.Api(srv.url), run_dir)


def test_stalled_then_restored_network(online: Online) -> None:
    o = online
    o.log("warmup", 500)
    o.wait_stored("through the proxy")
    assert o.proxy.forwarded["up"] > 0 and o.proxy.accepted == 1

    o.proxy.stall()
    held = o.proxy.held("up")
    up = o.proxy.forwarded["up"]
    o.log("stalled", 3000)
    before = o.stored()
    # The outage itself: the sidecar journals the rows as batches, and the shipper writes them to
    # its stream, which the stall holds.  Rows could only reach the server through those bytes.
    o.wait_journaled("during the stall")
    poll("the shipper writing into the stalled path", lambda: o.proxy.held("up") > held, OUTAGE_WAIT_S)
    assert o.proxy.forwarded["up"] == up, "bytes got through a stalled network"
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

    mark = o.log_size()
    o.proxy.cut()
    o.log("cut", 3000)
    # The outage lasts until the backlog is journaled and the shipper has retried against the
    # refusing port (not just seen its stream die).
    o.wait_journaled("during the cut")
    o.wait_logged(mark, REFUSED, "the shipper retrying against the refusing port")
    assert o.stored() == 500
    o.proxy.restore()
    o.log("restored", 500)  # logged while the shipper may still be backing off
    o.wait_stored("after the cut")
    reconnects = o.proxy.accepted

    mark = o.log_size()
    o.proxy.reset()  # RSTs the live stream (acks may be lost in flight: resent batches)
    o.log("reset", 3000)
    # Restored once the backlog is journaled and the shipper has seen its stream die (its next try
    # may be seconds away: the backoff has grown through the cut).
    o.wait_journaled("during the reset")
    o.wait_logged(mark, STREAM_ENDED, "the shipper seeing its stream reset")
    o.proxy.restore()
    o.log("final", 500)
    done = o.finish()  # finish waits for the acks: no wait_stored before it
    assert o.proxy.accepted > reconnects > 1, "the shipper did not reconnect through the proxy"
    o.check_exactly_once(done)
