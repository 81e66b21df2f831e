"""A distributed run in the dashboard, in a real browser (Debian's chromium via Playwright) against
a real ``runstream server`` fed through its real ingest path: one gRPC stream per rank and one per
node writer, each opened with its ``Member`` (docs/distributed.md), as a node sidecar ships them.

The job: 4 ranks on 2 nodes (ranks 0, 1 on node 0; 2, 3 on node 1).  Rank 2 is killed at step 30
(crashed, the first failure), rank 3 fails later, ranks 0 and 1 finish.  Every rank logs its own
``loss`` curve, console lines and process stats; each node writer its node's CPU and two GPUs.
A single-process run in the same project checks that such runs look exactly as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import zstandard
from playwright.sync_api import Page, expect

from runstream.distributed.identity import derived_run_id
from runstream.format import record as rec
from runstream_ingest.server.storage.interface import KIND_CONSOLE, KIND_SYSTEM
from runstream_ingest.wire import ingest_pb2 as pb
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc
from tests.support.server import ServerProc, running_server
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ENTITY, PROJECT, JOB, SOLO = "acme", "ddp", "ddpjob01", "solo0001"
WORLD, NODES, STEPS = 4, 2, 50
HOSTS = ("node-a", "node-b")
T0 = time.time() - 600  # recent: the stale janitor must not touch anything before the test reads it
CRASH_STEP, CRASH_T, FAIL_T, END_T = 30, T0 + 40.0, T0 + 70.0, T0 + 80.0
CONSOLE_LINES = 5
TIMEOUT = 30.0


def node_of(rank: int) -> int:
    return rank // 2


def steps_of(rank: int) -> range:
    return range(CRASH_STEP if rank == 2 else STEPS)


def loss(rank: int, step: int) -> float:
    # distinct per rank and step, with a rank whose curve crosses the others (min/max change sides)
    return round(1.0 / (1 + step) + 0.1 * rank + (0.5 if rank == 3 and step % 10 == 0 else 0.0), 6)


def rss(rank: int, i: int) -> float:
    return 1000.0 + 100 * rank + i


def node_cpu(node: int, i: int) -> float:
    return 10.0 + 40 * node + i


# --- feeding the server as node sidecars do ------------------------------------------------------
class Records:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def add(self, kind: int, body: Any, step: int = 0, t: float = T0) -> None:
        self.out.append(rec.encode(len(self.out) + 1, kind, step, t, rec.pack_body(body)))

    def messages(self, opened: pb.Open) -> list[pb.ClientMessage]:
        payload = zstandard.ZstdCompressor().compress(b"".join(self.out))
        batch = pb.Batch(first_seq=1, last_seq=len(self.out), codec=pb.CODEC_ZSTD,
                         crc32c=rec.crc32c(payload), payload=payload, record_count=len(self.out))  # fmt: skip
        return [pb.ClientMessage(open=opened), pb.ClientMessage(batch=batch)]


def rank_records(rank: int) -> Records:
    r = Records()
    meta = {"name": "ddp-job", "host": HOSTS[node_of(rank)], "start_time": T0, "program": "train.py",
            "rank": rank, "world_size": WORLD, "node": node_of(rank), "node_count": NODES,
            "local_rank": rank % 2, "attempt": 0, "launcher": "torchrun", "job_key": "job-7"}  # fmt: skip
    r.add(rec.KIND_RUN, meta)
    r.add(rec.KIND_CONFIG, {"lr": 0.1, "batch": 32})
    for s in steps_of(rank):
        r.add(rec.KIND_ROW, {"loss": loss(rank, s)}, s, T0 + 1 + s * 0.5)
    lines = [f"rank {rank} says {i}" for i in range(CONSOLE_LINES)]
    r.add(KIND_CONSOLE, {"stream": "stdout", "lines": lines}, t=T0 + 2 + rank)
    for i in range(5):
        # and its own GPU's (its local rank's): the memory this process holds there
        sample = {
            "system/proc.memory.rssMB": rss(rank, i),
            f"system/gpu.{rank % 2}.proc_mem_mib": 500.0 + rank,
        }
        r.add(KIND_SYSTEM, sample, t=T0 + 5 * i)
    if rank == 2:
        r.add(rec.KIND_EXIT, {"exit_code": 137, "state": "crashed"}, t=CRASH_T)
    else:
        r.add(rec.KIND_EXIT, {"exit_code": 1 if rank == 3 else 0}, t=FAIL_T if rank == 3 else END_T)
    return r


def node_records(node: int) -> Records:
    r = Records()
    for i in range(6):
        sample = {
            "system/cpu": node_cpu(node, i),
            "system/gpu.0.util": 50.0 + node,
            "system/gpu.1.util": 60.0 + node,
        }
        r.add(KIND_SYSTEM, sample, t=T0 + 5 * i)
    return r


def member(rank: int = 0, node: int = 0, writer: bool = False) -> pb.Member:
    return pb.Member(rank=rank, node=node, world_size=WORLD, node_count=NODES, local_rank=rank % 2,
                     node_writer=writer, host=HOSTS[node])  # fmt: skip


def send(stub: pb_grpc.IngestStub, msgs: list[pb.ClientMessage]) -> None:
    answers = list(stub.Stream(iter(msgs), timeout=TIMEOUT))
    assert [a.WhichOneof("msg") for a in answers] == ["opened", "ack"], answers


def seed(srv: ServerProc) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
        stub = pb_grpc.IngestStub(channel)  # type: ignore[no-untyped-call]
        for rank in (1, 3, 0, 2):  # rank 0 is not first: a member may register the job before it
            opened = pb.Open(entity=ENTITY, project=PROJECT, run_id=JOB, writer_id=f"rank{rank}w",
                             protocol_version=1, member=member(rank, node_of(rank)))  # fmt: skip
            send(stub, rank_records(rank).messages(opened))
        for node in range(NODES):
            opened = pb.Open(entity=ENTITY, project=PROJECT, run_id=JOB, writer_id=f"node{node}w",
                             resume="companion", protocol_version=1,
                             member=member(node * 2, node, writer=True))  # fmt: skip
            send(stub, node_records(node).messages(opened))
        solo = Records()
        solo.add(rec.KIND_RUN, {"name": "solo", "host": "laptop", "start_time": T0, "program": "train.py"})
        for s in range(10):
            solo.add(rec.KIND_ROW, {"loss": 1.0 / (1 + s)}, s, T0 + s)
        solo.add(KIND_CONSOLE, {"stream": "stdout", "lines": ["solo line"]}, t=T0 + 1)
        solo.add(KIND_SYSTEM, {"system/cpu": 5.0}, t=T0 + 1)
        solo.add(rec.KIND_EXIT, {"exit_code": 0}, t=T0 + 20)
        send(
            stub,
            solo.messages(
                pb.Open(entity=ENTITY, project=PROJECT, run_id=SOLO, writer_id="solo-w", protocol_version=1)
            ),
        )


@dataclass
class Job:
    url: str

    def run_page(self, run_id: str = JOB, **params: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{self.url}/#/r/{ENTITY}/{PROJECT}/{run_id}" + (f"?{q}" if q else "")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    with running_server(tmp_path_factory.mktemp("dist-ui")) as srv:
        seed(srv)
        yield Job(srv.url)


# --- reading what the page drew -----------------------------------------------------------------
DRAWN = """(el) => {
  const p = el.__panel;
  if (!p.u) return null;
  return p.runs.map((r, i) => ({label: r.label, x: p.u.data[0],
    min: p.u.data[1 + 4 * i], max: p.u.data[2 + 4 * i], mean: p.u.data[3 + 4 * i]}));
}"""


def drawn(page: Page, key: str, where: str = "") -> list[dict[str, Any]]:
    """Each line of panel ``key``: its label and the x, min, max and mean uPlot draws, once the
    panel has data."""
    panel = page.locator(f'{where} [data-testid="panel"][data-key="{key}"]').first
    expect(panel.locator("canvas").first).to_be_attached(timeout=15_000)
    out = panel.evaluate(DRAWN)
    assert out is not None
    return list(out)


def points(line: dict[str, Any], field: str = "mean") -> dict[float, float]:
    return {x: v for x, v in zip(line["x"], line[field], strict=True) if v is not None}


def wait_lines(page: Page, key: str, labels: list[str], where: str = "") -> list[dict[str, Any]]:
    panel = f'{where} [data-testid="panel"][data-key="{key}"]'
    page.wait_for_function(
        "([sel, want]) => { const el = document.querySelector(sel); const p = el && el.__panel;"
        " return !!p && !!p.u && JSON.stringify(p.runs.map((r) => r.label)) === JSON.stringify(want); }",
        arg=[panel, labels],
        timeout=15_000,
    )
    return drawn(page, key, where)


def local_seconds(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# --- the tests ------------------------------------------------------------------------------------
def test_runs_table_shows_world_size_and_nodes_blank_for_a_single_process_run(job: Job, page: Page) -> None:
    page.goto(f"{job.url}/#/p/{ENTITY}/{PROJECT}")
    expect(page.get_by_test_id("runs-total")).to_have_text("2 runs")  # member rows never listed
    dist = page.locator(f'[data-testid="run-row"][data-id="{JOB}"]')
    expect(dist.locator('[data-col="world_size"]')).to_have_text(str(WORLD))
    expect(dist.locator('[data-col="node_count"]')).to_have_text(str(NODES))
    expect(dist.locator('[data-col="state"]')).to_have_text("crashed")  # the job's state
    solo = page.locator(f'[data-testid="run-row"][data-id="{SOLO}"]')
    expect(solo.locator('[data-col="state"]')).to_have_text("finished")
    expect(solo.locator('[data-col="world_size"]')).to_have_text("")
    expect(solo.locator('[data-col="node_count"]')).to_have_text("")
    # sorting by world size: largest first, then smallest first
    rows = page.get_by_test_id("run-row")
    page.locator('[data-testid="runs-head"] [data-col="world_size"]').click()
    expect(rows.locator('[data-col="name"]')).to_have_text(["ddp-job", "solo"])
    page.locator('[data-testid="runs-head"] [data-col="world_size"]').click()
    expect(rows.locator('[data-col="name"]')).to_have_text(["solo", "ddp-job"])


def test_header_shows_world_size_nodes_rank_states_and_who_died_first(job: Job, page: Page) -> None:
    page.goto(job.run_page())
    expect(page.get_by_test_id("run-state")).to_have_text("crashed")
    expect(page.get_by_test_id("run-world-size")).to_have_text("4 ranks")
    expect(page.get_by_test_id("run-nodes")).to_have_text("2 nodes")
    states = page.get_by_test_id("rank-states").locator("[data-state]")
    expect(states).to_have_text(["2 finished", "1 failed", "1 crashed"])
    first = page.get_by_test_id("first-failure")
    expect(first).to_have_attribute("data-rank", "2")
    expect(first).to_contain_text(f"rank 2 crashed first (node 1) at {local_seconds(CRASH_T)}")
    expect(first).to_contain_text("exit 137")
    expect(first).to_contain_text(f"last step {CRASH_STEP - 1}")
    # the overview lists every rank with its own state, node and host
    rows = page.get_by_test_id("rank-row")
    expect(rows).to_have_count(WORLD)
    expect(page.get_by_test_id("rank-state")).to_have_text(["finished", "finished", "crashed", "failed"])
    expect(rows.nth(3)).to_contain_text(HOSTS[1])
    expect(page.get_by_test_id("config")).to_contain_text("lr")


def test_charts_show_one_rank_every_rank_or_the_band_across_ranks(job: Job, page: Page) -> None:
    want = {r: {float(s): loss(r, s) for s in steps_of(r)} for r in range(WORLD)}
    page.goto(job.run_page(tab="charts"))
    rank_sel = page.get_by_test_id("chart-rank")
    expect(rank_sel).to_have_value("0")  # rank 0 by default
    [line] = wait_lines(page, "loss", ["rank 0"])
    assert points(line) == want[0]

    rank_sel.select_option("2")
    [line] = wait_lines(page, "loss", ["rank 2"])
    assert points(line) == want[2]  # a rank that logged fewer steps: its own 30
    assert "rank=2" in page.url

    rank_sel.select_option("all")
    lines = wait_lines(page, "loss", [f"rank {r}" for r in range(WORLD)])
    assert [points(ln) for ln in lines] == [want[r] for r in range(WORLD)]
    expect(page.get_by_test_id("legend").locator("[data-rank]")).to_have_text(
        [f"rank {r}" for r in range(WORLD)]
    )

    rank_sel.select_option("band")
    [line] = wait_lines(page, "loss", ["mean across ranks"])
    for s in range(STEPS):
        vals = [want[r][s] for r in range(WORLD) if s in want[r]]
        assert points(line)[s] == pytest.approx(sum(vals) / len(vals)), s
        assert points(line, "min")[s] == pytest.approx(min(vals)), s
        assert points(line, "max")[s] == pytest.approx(max(vals)), s

    # the choice is in the link: opening it again shows every rank
    page.goto(job.run_page(tab="charts", rank="all"))
    page.reload()
    expect(page.get_by_test_id("chart-rank")).to_have_value("all")
    assert len(wait_lines(page, "loss", [f"rank {r}" for r in range(WORLD)])) == WORLD


def test_system_tab_shows_one_node_at_a_time_with_its_gpus_and_its_ranks_processes(
    job: Job, page: Page
) -> None:
    page.goto(job.run_page(tab="system"))
    node_sel = page.get_by_test_id("system-node")
    expect(node_sel).to_have_value("0")  # rank 0's node
    sections = page.get_by_test_id("system-section")
    expect(sections.locator("summary")).to_have_text(
        ["CPU", "GPU 0", "GPU 1", "Rank processes (rank 0, rank 1)"]
    )
    for node, ranks in ((0, [0, 1]), (1, [2, 3])):
        if node:
            node_sel.select_option("1")
            expect(sections.locator("summary")).to_have_text(
                ["CPU", "GPU 0", "GPU 1", "Rank processes (rank 2, rank 3)"]
            )
        where = f'[data-node="{node}"]'
        [cpu] = drawn(page, "system/cpu", where)
        assert cpu["label"] == HOSTS[node]
        assert list(points(cpu).values()) == [node_cpu(node, i) for i in range(6)]
        [gpu1] = drawn(page, "system/gpu.1.util", where)
        assert set(points(gpu1).values()) == {60.0 + node}
        procs = wait_lines(page, "system/proc.memory.rssMB", [f"rank {r}" for r in ranks], where)
        assert [list(points(p).values()) for p in procs] == [[rss(r, i) for i in range(5)] for r in ranks]
        # a rank's memory on GPU i is drawn in GPU i's section, beside the node's own metrics
        gpu_section = f'{where} [data-testid="system-section"][data-section="gpu1"]'
        [mem] = wait_lines(page, "system/gpu.1.proc_mem_mib", [f"rank {ranks[1]}"], gpu_section)
        assert set(points(mem).values()) == {500.0 + ranks[1]}


def test_console_filters_by_rank_and_labels_lines_when_all_ranks_are_shown(job: Job, page: Page) -> None:
    page.goto(job.run_page(tab="console"))
    lines = page.locator('[data-testid="console"] .line')
    rank_sel = page.get_by_test_id("console-rank")
    expect(rank_sel).to_have_value("0")
    expect(lines).to_have_text([f"rank 0 says {i}" for i in range(CONSOLE_LINES)])
    expect(page.get_by_test_id("line-rank")).to_have_count(0)  # one rank: no labels

    rank_sel.select_option("3")
    expect(lines).to_have_text([f"rank 3 says {i}" for i in range(CONSOLE_LINES)])

    rank_sel.select_option("all")
    expect(lines).to_have_count(WORLD * CONSOLE_LINES)
    texts = lines.all_inner_texts()
    got = sorted(texts)
    assert got == sorted(f"[{r}] rank {r} says {i}" for r in range(WORLD) for i in range(CONSOLE_LINES))
    expect(page.get_by_test_id("console-count")).to_have_text(f"{WORLD * CONSOLE_LINES} lines")
    page.get_by_test_id("console-search").fill("says 4")
    expect(lines).to_have_count(WORLD)


def test_a_single_process_run_page_has_no_rank_controls(job: Job, page: Page) -> None:
    page.goto(job.run_page(SOLO))
    expect(page.get_by_test_id("run-state")).to_have_text("finished")
    expect(page.get_by_test_id("job-facts")).to_have_count(0)
    expect(page.get_by_test_id("ranks-table")).to_have_count(0)
    page.goto(job.run_page(SOLO, tab="charts"))
    [line] = wait_lines(page, "loss", ["solo"])
    assert points(line) == {float(s): 1.0 / (1 + s) for s in range(10)}
    expect(page.get_by_test_id("chart-rank")).to_have_count(0)
    page.goto(job.run_page(SOLO, tab="console"))
    expect(page.locator('[data-testid="console"] .line')).to_have_text(["solo line"])
    expect(page.get_by_test_id("console-rank")).to_have_count(0)
    page.goto(job.run_page(SOLO, tab="system"))
    expect(page.get_by_test_id("system-section").locator("summary")).to_have_text(["CPU"])
    expect(page.get_by_test_id("system-node")).to_have_count(0)


# --- real rank processes ---------------------------------------------------------------------------
RANK_SCRIPT = r"""
import json, os, sys, time, urllib.request
import runstream

rank = int(os.environ["RANK"])
run = runstream.init(project=sys.argv[1], entity=sys.argv[2], dir=sys.argv[3],
                     settings={"silent": True, "stats_interval": 0.2})
print(f"hello from rank {rank}", flush=True)
for s in range(20):
    run.log({"loss": 10.0 * rank + s})
# live on until the server holds two samples of this rank's process stats (the node sidecar
# starts sampling a rank once it attaches to it)
url = f"{os.environ['RUNSTREAM_HOST']}/api/v1/runs/{run.entity}/{run.project}/{run.id}/system?rank={rank}"
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            if len(json.loads(r.read())["samples"]) >= 2:
                break
    except OSError:
        pass
    time.sleep(0.1)
run.finish()
"""


def rank_env(rank: int, world: int, job_id: str, url: str) -> dict[str, str]:
    """This environment less runstream/W&B/launcher variables, plus what torchrun gives a worker."""
    drop = ("RUNSTREAM_", "WANDB_", "SLURM_", "OMPI_", "PMI", "TORCHELASTIC_", "RAY_")
    launcher = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in launcher}
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               GROUP_RANK="0", GROUP_WORLD_SIZE="1", TORCHELASTIC_RUN_ID=job_id,
               TORCHELASTIC_RESTART_COUNT="0", RUNSTREAM_HOST=url)  # fmt: skip
    return env


def kill_node_sidecars(root: Path) -> None:
    """A node sidecar runs in a session of its own (a rank starts it): end any left under root."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "runstream_ingest.sidecar.node" in cmd and any(str(root) in c for c in cmd):
            with contextlib.suppress(psutil.Error):
                p.kill()
                p.wait(5)
    for info in root.rglob("sidecar.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            ring = Path(json.loads(info.read_text())["ring"])
            if str(ring).startswith("/dev/shm/"):
                ring.unlink(missing_ok=True)


def test_a_job_of_real_rank_processes_shows_each_ranks_rows_console_and_process_stats(
    tmp_path: Path, page: Page
) -> None:
    world, project, job_id = 2, "ddp-real", f"ui-{uuid.uuid4().hex[:8]}"
    run_id = derived_run_id(ENTITY, project, f"torchelastic:{job_id}")
    root = tmp_path / "ranks"
    with running_server(tmp_path / "server") as srv:
        try:
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", RANK_SCRIPT, project, ENTITY, str(root)],
                    env=rank_env(r, world, job_id, srv.url),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for r in range(world)
            ]
            for p in procs:
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0, f"rank exited {p.returncode}:\n{out}\n{err}"
            api = f"{srv.url}/api/v1/runs/{ENTITY}/{project}/{run_id}"

            seen: list[Any] = [None]

            def shipped() -> bool:
                try:
                    with urllib.request.urlopen(api, timeout=10) as r:
                        seen[0] = run = json.loads(r.read())
                except urllib.error.HTTPError as e:
                    seen[0] = f"HTTP {e.code}"
                    return False
                return (
                    run["state"] == "finished"
                    and [x["row_count"] for x in run.get("ranks", [])] == [20] * world
                )

            try:
                wait_for(shipped, 60, "both ranks' rows on the server, the job finished")
            except AssertionError:
                logs = "\n".join(f"{p}:\n{p.read_text()[-3000:]}" for p in root.rglob("*.log"))
                raise AssertionError(f"the server has: {json.dumps(seen[0])[:3000]}\n{logs}") from None
        finally:
            kill_node_sidecars(root)

        page.goto(f"{srv.url}/#/r/{ENTITY}/{project}/{run_id}?tab=charts&rank=all")
        expect(page.get_by_test_id("run-world-size")).to_have_text("2 ranks")
        expect(page.get_by_test_id("run-nodes")).to_have_text("1 node")
        expect(page.get_by_test_id("rank-states").locator("[data-state]")).to_have_text(["2 finished"])
        expect(page.get_by_test_id("first-failure")).to_have_count(0)
        lines = wait_lines(page, "loss", ["rank 0", "rank 1"])
        assert [points(ln) for ln in lines] == [
            {float(s): 10.0 * r + s for s in range(20)} for r in range(world)
        ]

        page.goto(f"{srv.url}/#/r/{ENTITY}/{project}/{run_id}?tab=console&rank=all")
        console_lines = page.locator('[data-testid="console"] .line')
        hello = console_lines.filter(has_text="hello from rank")
        expect(hello).to_have_count(world)  # in the order they were printed: either rank first
        assert sorted(hello.all_inner_texts()) == [f"[{r}] hello from rank {r}" for r in range(world)]

        page.goto(f"{srv.url}/#/r/{ENTITY}/{project}/{run_id}?tab=system")
        rss = page.locator('[data-section="ranks"] [data-testid="panel"]').first
        expect(rss).to_be_attached(timeout=15_000)
        labels = rss.evaluate("(el) => el.__panel.runs.map((r) => r.label)")
        assert labels == ["rank 0", "rank 1"]


def test_a_running_jobs_header_follows_its_ranks_live(tmp_path: Path, page: Page) -> None:
    """Rank 1 of a running 2-rank job dies while the page is open: without a reload, the header
    names it as the first failure and counts one rank running, one crashed; the job runs on."""
    world = 2
    feeds: list[queue.Queue[pb.ClientMessage | None]] = []
    with (
        running_server(tmp_path / "server") as srv,
        grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch,
    ):
        stub = pb_grpc.IngestStub(ch)  # type: ignore[no-untyped-call]
        answers = []
        try:
            for rank in range(world):
                r = Records()
                r.add(rec.KIND_RUN, {"name": "live-job", "host": "node-a", "start_time": time.time()})
                for s in range(5):
                    r.add(rec.KIND_ROW, {"loss": 1.0 + rank + s}, s, time.time())
                mem = pb.Member(
                    rank=rank, node=0, world_size=world, node_count=1, local_rank=rank, host="node-a"
                )
                opened = pb.Open(entity=ENTITY, project="live", run_id="livejob1", writer_id=f"live{rank}",
                                 protocol_version=1, member=mem)  # fmt: skip
                feed: queue.Queue[pb.ClientMessage | None] = queue.Queue()
                feeds.append(feed)
                for m in r.messages(opened):
                    feed.put(m)
                answers.append(stub.Stream(iter(feed.get, None), timeout=120))
                assert [next(answers[-1]).WhichOneof("msg") for _ in range(2)] == ["opened", "ack"]

            page.goto(f"{srv.url}/#/r/{ENTITY}/live/livejob1")
            expect(page.get_by_test_id("run-state")).to_have_text("running")
            expect(page.get_by_test_id("rank-states").locator("[data-state]")).to_have_text(["2 running"])
            expect(page.get_by_test_id("first-failure")).to_have_count(0)

            died = time.time()
            exit_rec = rec.encode(
                7, rec.KIND_EXIT, 0, died, rec.pack_body({"exit_code": -9, "state": "crashed"})
            )
            payload = zstandard.ZstdCompressor().compress(exit_rec)
            feeds[1].put(
                pb.ClientMessage(
                    batch=pb.Batch(
                        first_seq=7,
                        last_seq=7,
                        codec=pb.CODEC_ZSTD,
                        crc32c=rec.crc32c(payload),
                        payload=payload,
                        record_count=1,
                    )
                )
            )
            assert next(answers[1]).ack.seq == 7

            first = page.get_by_test_id("first-failure")
            expect(first).to_contain_text(
                f"rank 1 crashed first (node 0) at {local_seconds(died)}", timeout=15_000
            )
            expect(page.get_by_test_id("rank-states").locator("[data-state]")).to_have_text(
                ["1 running", "1 crashed"]
            )
            expect(page.get_by_test_id("run-state")).to_have_text("running")  # rank 0 goes on
        finally:
            for feed in feeds:
                feed.put(None)
            for a in answers:
                a.cancel()
