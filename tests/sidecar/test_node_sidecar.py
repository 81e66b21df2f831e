"""The node sidecar (``runstream_ingest.sidecar.node``): one process drains every rank of a node.

Ranks are real child processes that create their ring with the SDK's RingMap/RingWriter and
register in ``rank-<r>/sidecar.json`` as docs/distributed.md says, so producer pids are real and
a ``kill -9`` is real; the node sidecar is started as the SDK starts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from runstream.format import record as rec
from runstream.format.journal_read import read_journal
from runstream.format.ring_layout import W_PIPELINE_EXIT, RingMap, exit_code_of
from tests.support import FAKE_NVML

RANK = r"""
import json, os, sys, time
from pathlib import Path
from runstream.format import record as rec
from runstream.format.atomic import write_json_atomic
from runstream.format.ring_layout import W_EXIT, W_PIPELINE_EXIT, W_SIDECAR_PID, RingMap, exit_word
from runstream.format.ring_layout import exit_code_of
from runstream.ring import RingWriter

node_dir, rank, rows, mode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pace = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
world = int(os.environ.get("TEST_WORLD", "4"))
rank_dir = node_dir / f"rank-{rank}"
for sub in ("journal", "files", "logs"):
    (rank_dir / sub).mkdir(parents=True, exist_ok=True)
ring_path = node_dir / f"ring-{rank}-{os.getpid()}"
ring = RingMap.create(ring_path, 4 << 20)
w = RingWriter(ring, overflow_limit=1 << 26)
meta = {"id": "job12345", "entity": "e", "project": "p", "pid": os.getpid(), "host": "h",
        "writer_id": f"r{rank}.a0", "created": time.time(), "rank": rank, "local_rank": rank,
        "world_size": world, "local_world_size": world, "node": 0, "node_count": 1,
        "attempt": 0, "job_key": "k", "launcher": "runstream"}
write_json_atomic(rank_dir / "run.json", meta)
run = {"id": "job12345", "rank": rank, "start_time": time.time()}
w.push(rec.KIND_RUN, 0, time.time(), rec.pack_body(run))
args = ["--batch-age", "0.05", "--stats-interval", os.environ.get("TEST_STATS", "0.2")]
args += json.loads(os.environ.get("TEST_ARGS", "[]"))
reg = {"ring": str(ring_path), "producer_pid": os.getpid(), "args": args}
write_json_atomic(rank_dir / "sidecar.json", reg)
print("ready", flush=True)
for i in range(rows):
    w.push(rec.KIND_ROW, i, time.time(), rec.pack_body({"rank": rank, "i": i}))
    if pace:
        time.sleep(pace)
    if i % 64 == 0:
        w.drain_overflow()
while not w.drain_overflow():
    time.sleep(0.01)
print("logged", flush=True)
linger = float(os.environ.get("TEST_LINGER", "0"))
while linger and not ring.words[W_SIDECAR_PID]:  # stay until a node sidecar drains us, then a while
    time.sleep(0.01)
time.sleep(linger)
if mode == "hang":
    time.sleep(3600)
w.push(rec.KIND_EXIT, 0, time.time(), rec.pack_body({"exit_code": 0, "state": "finished"}))
ring.words[W_EXIT] = exit_word(0)
w.close()
deadline = time.monotonic() + 60
while not ring.words[W_PIPELINE_EXIT] and time.monotonic() < deadline:
    time.sleep(0.02)
print("pipeline", exit_code_of(int(ring.words[W_PIPELINE_EXIT])), flush=True)
"""


class Node:
    """A node directory with rank processes and node sidecars, all cleaned up at the end."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "run-20261208_000000-job12345"
        self.dir.mkdir(parents=True)
        node = {"id": "job12345", "entity": "e", "project": "p", "node": 0, "node_count": 1, "world_size": 4}
        (self.dir / "node.json").write_text(json.dumps({**node, "host": "h", "created": time.time()}))
        self.procs: list[subprocess.Popen[str]] = []

    def rank(
        self, r: int, rows: int, mode: str = "finish", pace: float = 0.0, **env: str
    ) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", RANK, str(self.dir), str(r), str(rows), mode, str(pace)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p

    def sidecar(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "runstream_ingest.sidecar.node", "--node-dir", str(self.dir)]
        cmd += ["--loop", "asyncio", "--stats-interval", "0.2", *extra]
        p = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ, **(env or {})}
        )
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    try:
        yield n
    finally:
        n.close()


def records_of(writer_dir: Path) -> list[rec.Record]:
    return list(read_journal(writer_dir / "journal").iter_records())


def assert_exactly(rank_dir: Path, rank: int, rows: int, state: str) -> None:
    """The rank's journal holds every row it logged once, gapless seqs, and its exit."""
    records = records_of(rank_dir)
    seqs = [r.seq for r in records]
    assert seqs == list(range(1, len(seqs) + 1)), f"rank {rank}: seqs not gapless and unique"
    got = [r.value() for r in records if r.kind == rec.KIND_ROW]
    assert got == [{"rank": rank, "i": i} for i in range(rows)]
    exits = [r.value() for r in records if r.kind == rec.KIND_EXIT]
    assert exits and exits[-1]["state"] == state, exits


def finish_line(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    out = p.stdout.read()
    assert p.wait(30) == 0
    return out.strip().splitlines()[-1]


def test_one_node_sidecar_drains_every_rank_into_its_own_journal_and_exits(node: Node) -> None:
    # Each rank stays 1 s after the node sidecar attached it: process stats are taken meanwhile.
    ranks = [node.rank(r, 3000, pace=0.0005, TEST_LINGER="1.0") for r in range(4)]
    sc = node.sidecar()
    for p in ranks:
        assert finish_line(p) == "pipeline 0"  # W_PIPELINE_EXIT = exit_word(0) for each rank
    assert sc.wait(30) == 0  # every rank done, none new for 2 s: it leaves by itself
    for r in range(4):
        assert_exactly(node.dir / f"rank-{r}", r, 3000, "finished")
        # summary.json is the run's, rank 0's: the other ranks' summaries are folded where read.
        assert (node.dir / f"rank-{r}" / "files" / "summary.json").exists() == (r == 0)
        assert not list(node.dir.glob(f"ring-{r}-*"))  # drained rings are removed
        # Each rank's companion holds that rank's process stats, not the node's.
        companion = records_of(node.dir / f"rank-{r}" / "companion")
        system = [x.value() for x in companion if x.kind == rec.KIND_SYSTEM]
        assert system and all("system/proc.rss_mib" in s for s in system)
        assert not any("system/cpu" in s for s in system)
    # One node writer, with the node-wide system metrics.
    writer = json.loads((node.dir / "companion" / "writer.json").read_text())["writer_id"]
    assert writer.startswith("node0.")
    node_system = [r.value() for r in records_of(node.dir / "companion") if r.kind == rec.KIND_SYSTEM]
    assert node_system and all("system/cpu" in s and "system/mem.used_mib" in s for s in node_system)
    assert not any("system/proc.rss_mib" in s for s in node_system)
    log = (node.dir / "logs" / "sidecar.log").read_text()
    assert log.count("attached rank-") == 4 and len({line.split()[2] for line in log.splitlines()}) == 1


def test_a_second_node_sidecar_exits_at_once_while_one_holds_the_lock(node: Node) -> None:
    rank = node.rank(0, 10, mode="hang")
    first = node.sidecar()
    wait_for(lambda: "attached rank-0" in _log(node))
    second = node.sidecar()
    assert second.wait(10) == 0 and first.poll() is None
    rank.kill()
    assert first.wait(30) == 0


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _log(node: Node) -> str:
    try:
        return (node.dir / "logs" / "sidecar.log").read_text()
    except FileNotFoundError:
        return ""


def test_a_killed_rank_gets_its_crashed_exit_and_the_others_go_on(node: Node) -> None:
    victim = node.rank(1, 500, mode="hang")
    others = [node.rank(r, 4000, pace=0.0005) for r in (0, 2)]
    sc = node.sidecar()
    assert victim.stdout is not None and victim.stdout.readline().strip() == "logged"
    victim.send_signal(signal.SIGKILL)  # not reaped yet: a zombie must read as dead too
    ring = next(node.dir.glob(f"ring-1-{victim.pid}"))
    words = RingMap.attach(ring)
    deadline = time.monotonic() + 20
    while not words.words[W_PIPELINE_EXIT] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exit_code_of(int(words.words[W_PIPELINE_EXIT])) == 0
    assert all(p.poll() is None for p in others)  # they are still logging
    assert_exactly(node.dir / "rank-1", 1, 500, "crashed")
    for p in others:
        assert finish_line(p) == "pipeline 0"
    assert sc.wait(30) == 0
    for r in (0, 2):
        assert_exactly(node.dir / f"rank-{r}", r, 4000, "finished")
    words.close()
    victim.wait()


def test_node_sidecar_killed_mid_run_and_restarted_loses_and_duplicates_nothing(node: Node) -> None:
    ranks = [node.rank(r, 6000, pace=0.0005) for r in range(3)]
    first = node.sidecar()
    wait_for(lambda: _log(node).count("attached rank-") == 3)
    time.sleep(0.3)
    assert first.poll() is None and all(p.poll() is None for p in ranks)  # mid-run
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(0.5)  # records pile up in the rings meanwhile
    second = node.sidecar()
    for p in ranks:
        assert finish_line(p) == "pipeline 0"
    assert second.wait(30) == 0
    for r in range(3):
        assert_exactly(node.dir / f"rank-{r}", r, 6000, "finished")
    assert _log(node).count("attached rank-") == 6  # each ring attached once by each sidecar


def test_a_rank_registering_after_the_sidecar_started_is_attached(node: Node) -> None:
    early = node.rank(0, 200, mode="hang")
    sc = node.sidecar()
    wait_for(lambda: "attached rank-0" in _log(node))
    late = node.rank(1, 300)
    assert finish_line(late) == "pipeline 0"
    assert_exactly(node.dir / "rank-1", 1, 300, "finished")
    assert sc.poll() is None  # rank 0 still runs
    early.kill()
    early.wait()
    assert sc.wait(30) == 0
    assert_exactly(node.dir / "rank-0", 0, 200, "crashed")


def test_sidecar_json_args_reach_the_pipeline_and_console_fds_are_not_taken(node: Node) -> None:
    """The registration's arguments configure the rank's pipeline (here: no process stats);
    ``--console`` (the rank's own file descriptors) is never used by the node sidecar."""
    args = json.dumps(["--console", "stdout:5:6", "--stats-interval", "0", "--frobnicate"])
    p = node.rank(0, 50, TEST_ARGS=args)
    sc = node.sidecar()
    assert finish_line(p) == "pipeline 0"
    assert sc.wait(30) == 0
    assert_exactly(node.dir / "rank-0", 0, 50, "finished")
    companion = records_of(node.dir / "rank-0" / "companion")
    assert not [r for r in companion if r.kind == rec.KIND_SYSTEM]
    assert "ignoring arguments this sidecar does not know: ['--frobnicate']" in _log(node)


def test_one_sidecar_process_drains_all_ranks(node: Node) -> None:
    ranks = [node.rank(r, 2000, pace=0.0005) for r in range(4)]
    sc = node.sidecar()
    wait_for(lambda: _log(node).count("attached rank-") == 4)
    helpers = []  # no sidecar process per rank (rank 0's environment may run git meanwhile)
    for child in psutil.Process(sc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            helpers += [child] if "runstream_ingest" in " ".join(child.cmdline()) else []
    assert not helpers
    for p in ranks:
        assert finish_line(p) == "pipeline 0"
    assert sc.wait(30) == 0


def test_a_rank_whose_pipeline_cannot_start_gets_an_exit_code_instead_of_a_hang(node: Node) -> None:
    """A registration the node sidecar cannot run (here a bad option value) is retried with a
    growing pause, then given up with code 70 in W_PIPELINE_EXIT; the other ranks are unaffected."""
    bad = node.rank(1, 10, TEST_ARGS=json.dumps(["--batch-bytes", "lots"]))
    good = node.rank(0, 100)
    sc = node.sidecar()
    assert finish_line(good) == "pipeline 0"
    assert finish_line(bad) == "pipeline 70"
    assert sc.wait(30) == 0
    assert_exactly(node.dir / "rank-0", 0, 100, "finished")
    assert _log(node).count("rank-1: could not start its pipeline") == 5


def test_gpu_memory_of_each_rank_goes_to_that_rank_and_gpu_metrics_to_the_node(
    node: Node, tmp_path: Path
) -> None:
    """Two fake GPUs (tests/support/fake_nvml): each rank's companion gets the memory its own
    process holds on each GPU; the node writer gets every GPU's node-wide metrics, once."""
    ranks = [node.rank(r, 100, TEST_LINGER="1.5") for r in range(2)]
    MiB = 1 << 20
    gpu = {
        "name": "NVIDIA H100",
        "uuid": "GPU-0",
        "memory_total": 80 << 30,
        "memory_used": 4 << 30,
        "util": 50,
    }
    config = {
        "driver": "550.54.15",
        "cuda": 12040,
        "gpus": [
            {**gpu, "processes": [{"pid": ranks[0].pid, "used": 512 * MiB}, {"pid": 1, "used": 64 * MiB}]},
            {**gpu, "uuid": "GPU-1", "processes": [{"pid": ranks[1].pid, "used": 1024 * MiB}]},
        ],
    }
    (tmp_path / "nvml.json").write_text(json.dumps(config))
    env = {"PYTHONPATH": f"{FAKE_NVML}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    sc = node.sidecar(env={**env, "RUNSTREAM_FAKE_NVML": str(tmp_path / "nvml.json")})
    for p in ranks:
        assert finish_line(p) == "pipeline 0"
    assert sc.wait(30) == 0
    for r, want in ((0, (512.0, 0.0)), (1, (0.0, 1024.0))):
        samples = [
            x.value() for x in records_of(node.dir / f"rank-{r}" / "companion") if x.kind == rec.KIND_SYSTEM
        ]
        assert samples
        for s in samples:
            assert (s["system/gpu.0.proc_mem_mib"], s["system/gpu.1.proc_mem_mib"]) == want
            assert "system/gpu.0.util" not in s  # node-wide: the node writer's
    node_samples = [x.value() for x in records_of(node.dir / "companion") if x.kind == rec.KIND_SYSTEM]
    assert node_samples and all(s["system/gpu.1.util"] == 50.0 for s in node_samples)
    assert not any("system/gpu.0.proc_mem_mib" in s for s in node_samples)
