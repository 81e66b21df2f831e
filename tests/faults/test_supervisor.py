"""The sidecar's supervisor, with real processes: the training process must stay recoverable
however often its sidecar dies.

Failures covered:

* the supervisor gave up after 20 restarts (``MAX_RESTARTS``): a sidecar ``kill -9``'d 25 times
  was never started again, ``finish()`` returned, and the records still in the ring were thrown
  away without a loss counter anywhere (118,052 of 200,000 rows, in the issue);
* the finish line counted only the last sidecar's records as journaled (each sidecar started its
  count at 0), so after a restart it understated what the journal holds;
* no sidecar can run at finish (each one started exits at once): the rows the ring still held were
  thrown away with it, counted nowhere.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runstream
from tests.conftest import sidecars_under
from tests.faults.test_crash import run_dir, script, stderr
from tests.support.procs import runstream_inspect
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

KILLS = 25  # more than the 20 restarts the supervisor used to allow
KILL_GAP = 0.6  # seconds between kills, as in the issue

# Logs at a modest pace (the rows must fit the ring while no sidecar runs) until told to stop.
# RUNSTREAM_SIDECAR_MAX_BACKOFF keeps the test short: the restart delay's cap, 4 s by default.
PACED = """
    import os, time, runstream
    os.environ["RUNSTREAM_SIDECAR_MAX_BACKOFF"] = "0.2"
    run = runstream.init(project="sup", mode="offline",
                         settings={"console": "off", "disable_stats": True, "disable_code": True})
    i = 0
    while not os.path.exists("stop"):
        for _ in range(100):
            run.log({"i": i})
            i += 1
        time.sleep(0.01)
    run.finish()
    with open("logged", "w") as f:
        f.write(str(i))
"""


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """The training script is killed and waited for when the block ends, however it ends."""
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def exited_ok(proc: subprocess.Popen[bytes], tmp_path: Path) -> str:
    """Its stderr, once it is known to have exited 0 (the finish line is in there)."""
    err = stderr(tmp_path)
    assert proc.returncode == 0, err
    return err


def test_sidecar_killed_more_than_twenty_times_is_still_restarted_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    proc = script(tmp_path, PACED)
    kills = 0
    with reaped(proc):
        for _ in range(KILLS):
            try:
                wait_for(lambda: len(sidecars_under(tmp_path)) == 1, 10, "a sidecar to kill")
            except AssertionError:
                break  # the supervisor gave up: what follows shows what that cost
            for victim in sidecars_under(tmp_path):
                victim.kill()
                victim.wait(5)
            kills += 1
            time.sleep(KILL_GAP)
        (tmp_path / "stop").touch()
        proc.wait(timeout=120)
    err = exited_ok(proc, tmp_path)
    logged = int((tmp_path / "logged").read_text())
    data = runstream.read_run(run_dir(tmp_path))
    steps = [r["i"] for r in data.history]
    assert steps == sorted(set(steps)) and set(steps) <= set(range(logged))
    # Every logged row is in the journal or counted lost: no loss goes uncounted.
    assert data.history_rows + data.dropped == logged, (
        f"{logged} rows logged, {data.history_rows} journaled, {data.dropped} counted lost "
        f"({data.stats}); after {kills} kills\n{err[-3000:]}"
    )
    # A sidecar that is restarted drains the ring: with this pace, nothing needs to be lost.
    assert kills == KILLS, f"no sidecar to kill after {kills} kills\n{err[-3000:]}"
    assert data.history_rows == logged and data.dropped == 0, data.stats
    assert data.run["state"] == "finished"
    # The finish line counts every record in the journal: the rows plus the run, config and exit
    # records (each sidecar used to count from 0, so it showed only the last one's share).
    m = re.search(r"(\d+) records journaled", err)
    assert m, err[-3000:]
    assert int(m.group(1)) == logged + 3, err[-3000:]


# The first sidecar runs; once the file "broken" exists, every sidecar started exits at once.
WRAPPER = """#!/bin/sh
[ -e {broken} ] && exit 1
exec "$@"
"""

BROKEN_AT_FINISH = """
    import os, sys, time, runstream
    os.environ["RUNSTREAM_SIDECAR_WRAPPER"] = {wrapper!r}
    os.environ["RUNSTREAM_SIDECAR_MAX_BACKOFF"] = "0.2"
    run = runstream.init(project="sup", mode="offline",
                         settings={{"console": "off", "disable_stats": True, "disable_code": True,
                                   "finish_timeout": 10}})
    for i in range(1000):
        run.log({{"i": i}})
    open("first", "w").close()
    while not os.path.exists("more"):
        time.sleep(0.01)
    for i in range(1000, 3000):
        run.log({{"i": i}})
    run.finish()
"""


def test_no_sidecar_can_run_at_finish_and_the_rows_left_in_the_ring_are_counted_lost(tmp_path: Path) -> None:
    # The supervisor keeps starting sidecars, and finish starts more, but none can run: what the
    # ring still holds cannot be kept.  It must be counted where the user looks: the finish line,
    # inspect and the summary, not thrown away with the ring.
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(WRAPPER.format(broken=tmp_path / "broken"))
    wrapper.chmod(0o755)
    proc = script(tmp_path, BROKEN_AT_FINISH.format(wrapper=str(wrapper)))
    with reaped(proc):
        wait_for((tmp_path / "first").exists, 60, "the first rows logged")
        wait_for(lambda: runstream.read_run(run_dir(tmp_path)).history_rows == 1000, 30, "them journaled")
        (tmp_path / "broken").touch()
        for victim in sidecars_under(tmp_path):
            victim.kill()
            victim.wait(5)
        (tmp_path / "more").touch()
        proc.wait(timeout=60)
    err = exited_ok(proc, tmp_path)
    data = runstream.read_run(run_dir(tmp_path))
    assert [r["i"] for r in data.history] == list(range(1000))
    assert data.run["state"] == "finished", err[-3000:]  # the exit record is kept
    assert data.dropped == 2000 and data.summary.get("_runstream/sidecar_lost_records") == 2000, data.stats
    shown = json.loads(runstream_inspect(run_dir(tmp_path), "--json"))
    assert shown["dropped"] == 2000
    m = re.search(r"(\d+) records journaled in .*?, (\d+) lost\b", err)
    assert m, err[-3000:]
    assert (int(m.group(1)), int(m.group(2))) == (1000 + 3, 2000), err[-3000:]
    assert "no sidecar could run" in err
