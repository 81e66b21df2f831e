"""Who am I, and which run: ``detect`` for each launcher's environment, the job key, and the run
id every rank agrees on (including a real ``torch.distributed`` broadcast over gloo)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runstream.distributed.identity import Who, agree_run_id, derived_run_id, detect
from runstream.errors import UsageError
from runstream.names import is_valid_run_id
from tests.distributed.conftest import clean_environ, finish_all, spawn, torchrun_env


def who(**kw: object) -> Who:
    base: dict[str, object] = dict(
        rank=0, local_rank=0, world_size=2, local_world_size=2, node=0, node_count=1,
        job_key=None, attempt=0, launcher="torchrun",
    )  # fmt: skip
    base.update(kw)
    return Who(**base)  # type: ignore[arg-type]


def test_nothing_or_world_size_one_is_the_single_process_path() -> None:
    assert detect({}) is None
    assert detect({"PATH": "/bin"}) is None
    assert detect(torchrun_env(0, 1)) is None
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "9"}) is None
    assert detect({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1"}) is None
    # Garbled launcher variables (not ours) are not a launcher: a plain run, not an error.
    assert detect({"RANK": "abc", "WORLD_SIZE": "4"}) is None


def test_torchrun_multi_node() -> None:
    env = torchrun_env(5, 8, 4, node=1, TORCHELASTIC_RUN_ID="job-77", TORCHELASTIC_RESTART_COUNT="2")
    w = detect(env)
    assert w == Who(
        rank=5, local_rank=1, world_size=8, local_world_size=4, node=1, node_count=2,
        job_key="torchelastic:job-77", attempt=2, launcher="torchrun",
    )  # fmt: skip


def test_torchrun_static_rendezvous_single_node_keys_on_the_launcher_process() -> None:
    w = detect(torchrun_env(1, 4))
    assert w is not None and w.node_count == 1
    # TORCHELASTIC_RUN_ID "none": the ranks' common parent (for this test: its parent) is the job.
    assert w.job_key is not None and w.job_key.startswith(f"parent:{socket.gethostname()}:{os.getppid()}:")
    # ... which a multi-node job cannot use: its ranks have different parents.
    assert detect(torchrun_env(1, 8, 4, node=0)).job_key is None  # type: ignore[union-attr]


def test_deepspeed() -> None:
    env = {
        "RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8", "LOCAL_SIZE": "4", "CROSS_RANK": "1",
        "CROSS_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
    }  # fmt: skip
    w = detect(env)
    assert w is not None
    assert (w.launcher, w.rank, w.local_rank, w.local_world_size, w.node, w.node_count) == (
        "deepspeed", 6, 2, 4, 1, 2,
    )  # fmt: skip
    assert w.job_key is None  # two nodes and no job id: the run id must come from elsewhere


def test_slurm() -> None:
    env = {
        "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0",
        "SLURM_RESTART_COUNT": "1",
    }  # fmt: skip
    w = detect(env)
    assert w == Who(
        rank=5, local_rank=1, world_size=8, local_world_size=4, node=1, node_count=2,
        job_key="slurm:4242.0", attempt=1, launcher="slurm",
    )  # fmt: skip
    array = detect({**env, "SLURM_ARRAY_JOB_ID": "4200", "SLURM_ARRAY_TASK_ID": "3"})
    assert array is not None and array.job_key == "slurm:4200_3.0"


def test_open_mpi_derives_the_node_from_the_local_size() -> None:
    env = {
        "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "PMIX_NAMESPACE": "prterun-host-123@1",
    }  # fmt: skip
    w = detect(env)
    assert w == Who(
        rank=5, local_rank=1, world_size=8, local_world_size=4, node=1, node_count=2,
        job_key="mpi:prterun-host-123@1", attempt=0, launcher="openmpi",
    )  # fmt: skip


def test_mpich_pmi() -> None:
    w = detect({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "3", "MPI_LOCALNRANKS": "4"})
    assert w is not None
    assert (w.launcher, w.rank, w.world_size, w.local_rank, w.local_world_size, w.node) == (
        "mpich",
        3,
        4,
        3,
        4,
        0,
    )


def test_ray_train() -> None:
    env = {
        "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1",
        "RAY_RAYLET_PID": "123",
    }  # fmt: skip
    w = detect(env)
    assert w is not None
    assert (w.launcher, w.rank, w.node, w.node_count, w.local_rank) == ("ray", 3, 1, 2, 1)


def test_runstream_variables_override_the_launcher() -> None:
    env = {
        **torchrun_env(3, 4, TORCHELASTIC_RUN_ID="x"),
        "RUNSTREAM_NODE": "1", "RUNSTREAM_NODE_COUNT": "2", "RUNSTREAM_LOCAL_WORLD_SIZE": "2",
        "RUNSTREAM_LOCAL_RANK": "1", "RUNSTREAM_JOB_ID": "mine", "RUNSTREAM_ATTEMPT": "4",
    }  # fmt: skip
    w = detect(env)
    assert w is not None
    assert (w.node, w.node_count, w.local_world_size, w.local_rank, w.job_key, w.attempt) == (
        1,
        2,
        2,
        1,
        "mine",
        4,
    )
    alone = detect({"RUNSTREAM_RANK": "2", "RUNSTREAM_WORLD_SIZE": "3"})
    assert alone is not None and (alone.launcher, alone.rank, alone.world_size) == ("runstream", 2, 3)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RUNSTREAM_RANK": "x", "RUNSTREAM_WORLD_SIZE": "2"}, "RUNSTREAM_RANK"),
        ({"RUNSTREAM_RANK": "1"}, "RUNSTREAM_WORLD_SIZE"),
        ({"RUNSTREAM_RANK": "4", "RUNSTREAM_WORLD_SIZE": "4"}, "rank 4 is not below the world size 4"),
        (
            {
                "RUNSTREAM_RANK": "1",
                "RUNSTREAM_WORLD_SIZE": "4",
                "RUNSTREAM_NODE": "3",
                "RUNSTREAM_NODE_COUNT": "2",
            },
            "node 3",
        ),
    ],
)
def test_bad_runstream_variables_are_errors_naming_them(env: dict[str, str], named: str) -> None:
    with pytest.raises(UsageError, match=re.escape(named)):
        detect(env)


def test_derived_run_id_is_stable_valid_and_per_job() -> None:
    a = derived_run_id("team", "proj", "torchelastic:abc")
    assert a == derived_run_id("team", "proj", "torchelastic:abc")
    assert re.fullmatch(r"[a-z0-9]{8}", a) and is_valid_run_id(a)
    others = {
        derived_run_id("team", "proj", "torchelastic:abd"),
        derived_run_id("team", "other", "torchelastic:abc"),
        derived_run_id("me", "proj", "torchelastic:abc"),
    }
    assert a not in others and len(others) == 3


def test_agreeing_on_the_run_id_without_torch() -> None:
    k = f"k-{os.getpid()}-{time.monotonic_ns()}"  # a job key no other test of this process used
    assert agree_run_id(who(rank=1, job_key=k), "given", "e", "p") == ("given", "explicit")
    assert agree_run_id(who(rank=1, job_key=k), None, "e", "p") == (derived_run_id("e", "p", k), "job")
    # A second run in the same process of the job (reinit, a sweep in one launch) is a new run,
    # the same on every rank: each counts its runs of the job alike.
    assert agree_run_id(who(rank=1, job_key=k), None, "e", "p") == (derived_run_id("e", "p", f"{k}#1"), "job")
    rid, how = agree_run_id(who(rank=0), None, "e", "p")
    assert how == "random" and is_valid_run_id(rid)
    with pytest.raises(UsageError) as err:
        agree_run_id(who(rank=1), None, "e", "p")
    assert "RUNSTREAM_RUN_ID" in str(err.value) and "RUNSTREAM_JOB_ID" in str(err.value)


def test_importing_runstream_and_detecting_does_not_import_torch() -> None:
    code = (
        "import sys, runstream; from runstream.distributed.identity import detect, agree_run_id;"
        "w = detect(); print(agree_run_id(w, None, 'e', 'p')[1]); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean_environ(), **torchrun_env(0, 2)},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["job", "False"]


BROADCAST = r"""
import json, os, sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method="env://")
import runstream
run = runstream.init(project="bcast", mode="offline", dir=sys.argv[1], settings={"silent": True})
from runstream.distributed.identity import agree_run_id, detect
print(json.dumps({"id": run.id, "dir": str(run.dir), "how": agree_run_id(detect(), None, "e", "p")[1]}))
runstream.finish()
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_ranks_without_job_id(script: str, tmp_path: Path) -> list[tuple[int, str, str]]:
    """``script`` as ranks 0 and 1 of a torchrun job on two "nodes" with no job id (static
    rendezvous), torch.distributed over gloo on a free port; both must exit 0."""
    port = str(_free_port())
    procs = [
        spawn(
            script,
            {**torchrun_env(r, 2, 1, node=r), "MASTER_PORT": port, "TORCHELASTIC_RUN_ID": "none"},
            str(tmp_path),
        )
        for r in range(2)
    ]
    results = finish_all(procs, timeout=120)
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    return results


def test_torch_distributed_store_agrees_on_one_run(tmp_path: Path) -> None:
    """Two ranks on two "nodes" with no job id: the run id comes from rank 0 through gloo's store."""
    results = two_ranks_without_job_id(BROADCAST, tmp_path)
    seen = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    assert seen[0]["id"] == seen[1]["id"]
    assert [s["how"] for s in seen] == ["torch.distributed", "torch.distributed"]
    node_dirs = sorted(p.name for p in (tmp_path / "runstream").iterdir() if p.name.startswith("run-"))
    assert [n.rsplit("-", 1)[-1] for n in node_dirs] == ["node0", "node1"]
    assert all(f"-{seen[0]['id']}-node" in n for n in node_dirs)
    assert Path(seen[1]["dir"]).name == "rank-1" and Path(seen[1]["dir"]).parent.name.endswith("-node1")


RANK0_ONLY = r"""
import json, os, sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method="env://")
if dist.get_rank() == 0:  # W&B's "log from rank 0 only"
    import runstream
    run = runstream.init(project="r0", mode="offline", dir=sys.argv[1], settings={"silent": True})
    run.log({"x": 1})
    run.finish()
    print(json.dumps({"id": run.id}))
dist.barrier()  # rank 1 is here all along: rank 0's init must not wait for it
dist.destroy_process_group()
"""


def test_rank_0_alone_calling_init_over_torch_distributed_does_not_hang(tmp_path: Path) -> None:
    """No job id, torch.distributed up, and only rank 0 calls init (W&B's usual DDP pattern):
    rank 0 names the run through the store without any collective, so the job finishes."""
    results = two_ranks_without_job_id(RANK0_ONLY, tmp_path)
    assert re.fullmatch(r"[a-z0-9]{8}", json.loads(results[0][1].strip().splitlines()[-1])["id"])
