"""Real ``torchrun`` with the gloo backend on the CPU: a DistributedDataParallel job whose every
rank calls ``runstream.init`` and logs, online against a real server, is ONE run holding each
rank's rows as that rank's, all of them, once (docs/distributed.md, "Steps").

Two ways torchrun names a job are covered: 4 ranks of a test script under the default static
rendezvous (``TORCHELASTIC_RUN_ID=none``: the ranks agree through their common parent, torchrun's
agent), and 2 ranks of the README's example, examples/ddp_train.py, under a c10d rendezvous with
an ``--rdzv-id`` (the ranks see it as ``TORCHELASTIC_RUN_ID``, which names the run).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import runstream
from runstream.distributed.identity import derived_run_id
from tests.distributed._e2e import (
    base_env,
    check_rank_rows,
    free_port,
    get_json,
    kill_all,
    sidecars,
    wait_until,
)
from tests.support.server import ServerProc

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_train.py"

DDP = """
import json, os, sys
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
import runstream

steps = int(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DistributedDataParallel(nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
gen = torch.Generator().manual_seed(rank)  # each rank its own data
run = runstream.init(project=os.environ["E2E_PROJECT"], settings={"silent": True})
print(f"hello from rank {rank}", flush=True)
for i in range(steps + rank):  # a rank that logs more steps than another is fine
    x = torch.randn(16, 4, generator=gen)
    loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    if i < steps:  # the last rank's extra steps have no collective: the others are done
        loss.backward()
        opt.step()
    w = float(sum(p.detach().sum() for p in model.parameters()))
    run.log({"i": i, "r": rank, "loss": loss.item(), "w": w})
with open(os.path.join(os.environ["E2E_CTL"], f"ready-{rank}"), "w") as f:
    json.dump({"path": run.path, "dir": str(run.dir)}, f)
run.finish()
dist.barrier()
dist.destroy_process_group()
"""


def torchrun(
    tmp: Path, server: ServerProc, nproc: int, script: list[str], rdzv: list[str], project: str
) -> subprocess.CompletedProcess[str]:
    env = base_env() | {
        "RUNSTREAM_HOST": server.url,
        "E2E_PROJECT": project,
        "E2E_CTL": str(tmp),
        "GLOO_SOCKET_IFNAME": "lo",  # gloo on loopback only
        "OMP_NUM_THREADS": "1",
    }
    cmd = [TORCHRUN, "--nnodes", "1", "--nproc-per-node", str(nproc), *rdzv, *script]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=240, check=False)


def node_sidecar_exits(tmp: Path) -> None:
    """The node sidecar exits on its own once every rank is done; none is left behind either way."""
    try:
        wait_until("the node sidecar to exit on its own", lambda: not sidecars([tmp]), 15)
    finally:
        kill_all(sidecars([tmp]))


def test_ddp_job_of_4_ranks_is_one_run_with_every_ranks_rows(tmp_path: Path, server: ServerProc) -> None:
    """4 ranks, torchrun's default static rendezvous (``TORCHELASTIC_RUN_ID=none``: the ranks
    agree through their common parent, torchrun's agent)."""
    nproc, steps = 4, 40
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    rdzv = ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    try:
        done = torchrun(tmp_path, server, nproc, [str(script), str(steps)], rdzv, "ddp4")
    finally:
        node_sidecar_exits(tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    paths = {json.loads((tmp_path / f"ready-{r}").read_text())["path"] for r in range(nproc)}
    assert len(paths) == 1, f"{nproc} ranks made {len(paths)} runs: {paths}"
    path = paths.pop()
    # One node directory, holding every rank's run directory.
    node_dirs = list((tmp_path / "runstream").glob("run-*"))
    assert len(node_dirs) == 1, node_dirs
    assert sorted(p.name for p in node_dirs[0].glob("rank-*")) == [f"rank-{r}" for r in range(nproc)]

    data = get_json(f"{server.url}/api/v1/runs/{path}")
    assert data["state"] == "finished", {k: data.get(k) for k in ("state", "ranks", "nodes", "rank_states")}
    assert data["world_size"] == nproc and data["node_count"] == 1
    assert [r["rank"] for r in data["ranks"]] == list(range(nproc))
    assert {r["state"] for r in data["ranks"]} == {"finished"}
    assert data["rank_states"]["finished"] == nproc and data["rank_states"]["missing"] == 0
    assert data["first_failure"] is None
    assert [r["last_step"] for r in data["ranks"]] == [steps - 1 + r for r in range(nproc)]

    by_rank = {}
    for r in range(nproc):
        check_rank_rows(server.url, path, r, steps + r)
        by_rank[r] = rank_history(server.url, path, r, ["loss", "w"])
    # DDP really ran: the same weights on every rank after each synchronised step ...
    for i in range(steps):
        ws = [by_rank[r][i]["w"] for r in range(nproc)]
        assert max(ws) - min(ws) <= 1e-5 * max(1.0, abs(ws[0])), f"step {i}: weights differ across ranks {ws}"
    # ... while each rank's loss is its own data's.
    assert len({round(by_rank[r][0]["loss"], 9) for r in range(nproc)}) == nproc
    # Rank 0's rows are the run's W&B-compatible history (no rank given).
    plain = list(runstream.Api(server.url).run(path).scan_history(keys=["r"], page_size=10_000))
    assert [row["r"] for row in plain] == [0] * steps
    # Each rank's console line is that rank's.
    for r in range(nproc):
        lines = get_json(f"{server.url}/api/v1/runs/{path}/console?rank={r}")["lines"]
        texts = [ln["line"] for ln in lines]
        assert f"hello from rank {r}" in texts, f"rank {r}'s console: {texts[:10]}"
        assert not [t for t in texts if t.startswith("hello from rank") and t != f"hello from rank {r}"]


def rank_history(url: str, path: str, rank: int, keys: list[str]) -> list[dict[str, float]]:
    run = runstream.Api(url).run(path)
    rows = list(run.scan_history(keys=keys, rank=rank, page_size=10_000))
    assert all(math.isfinite(row["loss"]) for row in rows)
    return rows


def test_readme_example_under_torchrun_logs_every_rank_into_one_run(
    tmp_path: Path, server: ServerProc
) -> None:
    """examples/ddp_train.py, 2 ranks, c10d rendezvous with an ``--rdzv-id``."""
    steps = 25
    rdzv_id = uuid.uuid4().hex
    rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", rdzv_id]
    args = [str(EXAMPLE), "--steps", str(steps), "--project", "readme"]
    try:
        done = torchrun(tmp_path, server, 2, args, rdzv, "readme")
    finally:
        node_sidecar_exits(tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    entity = runstream.Api(server.url).default_entity
    runs = get_json(f"{server.url}/api/v1/runs/{entity}/readme")["runs"]
    assert len(runs) == 1, [r["id"] for r in runs]
    assert (runs[0]["world_size"], runs[0]["state"]) == (2, "finished")
    assert runs[0]["id"] == derived_run_id(entity, "readme", f"torchelastic:{rdzv_id}")
    path = f"{entity}/readme/{runs[0]['id']}"
    data = get_json(f"{server.url}/api/v1/runs/{path}")
    assert [(x["rank"], x["state"]) for x in data["ranks"]] == [(0, "finished"), (1, "finished")]
    assert data["config"]["world_size"] == 2
    rows = {r: rank_history(server.url, path, r, ["loss", "weight_norm"]) for r in range(2)}
    for r in range(2):
        assert [row["_step"] for row in rows[r]] == list(range(steps)), f"rank {r}"
        lines = [ln["line"] for ln in get_json(f"{server.url}/api/v1/runs/{path}/console?rank={r}")["lines"]]
        assert any(t.startswith(f"rank {r} of 2 on pid") for t in lines), lines[:10]
    assert [x["loss"] for x in rows[0]] != [x["loss"] for x in rows[1]]  # each rank's own shard
    for a, b in zip(rows[0], rows[1], strict=True):  # DDP keeps the ranks' weights equal
        assert abs(a["weight_norm"] - b["weight_norm"]) <= 1e-5 * abs(a["weight_norm"]), (a, b)
