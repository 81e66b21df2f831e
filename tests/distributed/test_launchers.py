"""The launchers a user runs a job under, simulated: each rank is a real process started with the
variables SLURM's ``srun``, Open MPI's ``mpirun``, MPICH's Hydra and the DeepSpeed launcher give
it, by one launcher process per job (so their common parent is what a real launcher's would be).
Each job must make ONE run on the server, with every rank's rows as that rank's, its run
directory saying which launcher it found (docs/distributed.md, "Identity").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runstream.distributed.identity import derived_run_id
from tests.distributed._e2e import (
    Job,
    check_rank_rows,
    job,
    launch_node,
    run_json,
    wait_until,
)
from tests.support.server import ServerProc, start_server

pytestmark = pytest.mark.slow

WORLD = 3
ROWS = 300
RATE = 400  # rows/s: a job lasts about a second, so two started together overlap


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One server for the module's jobs (each job its own project)."""
    s = start_server(tmp_path_factory.mktemp("server"))
    yield s
    s.stop()


def slurm(rank: int) -> dict[str, str]:
    """``srun --ntasks 3`` on one node, job 73101, step 0 (the variables ``env`` shows under srun)."""
    return {
        "SLURM_JOB_ID": "73101", "SLURM_JOBID": "73101", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
        "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
        "SLURM_NTASKS": str(WORLD), "SLURM_NPROCS": str(WORLD), "SLURM_STEP_NUM_TASKS": str(WORLD),
        "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_STEP_NUM_NODES": "1",
        "SLURM_TASKS_PER_NODE": str(WORLD), "SLURM_STEP_TASKS_PER_NODE": str(WORLD),
        "SLURM_JOB_NAME": "train", "SLURM_SUBMIT_DIR": "/tmp", "SLURM_CLUSTER_NAME": "test",
    }  # fmt: skip


def openmpi(rank: int) -> dict[str, str]:
    """``mpirun -np 3`` of Open MPI 5 (PRRTE): its OMPI_COMM_WORLD_* and PMIx variables."""
    return {
        "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(WORLD),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(rank), "OMPI_COMM_WORLD_LOCAL_SIZE": str(WORLD),
        "OMPI_COMM_WORLD_NODE_RANK": "0", "OMPI_UNIVERSE_SIZE": str(WORLD),
        "PMIX_NAMESPACE": "prterun-e2ehost-41877@1", "PMIX_RANK": str(rank),
    }  # fmt: skip


def mpich(rank: int) -> dict[str, str]:
    """``mpiexec -n 3`` of MPICH's Hydra: no job id at all, only the PMI variables."""
    return {
        "PMI_RANK": str(rank), "PMI_SIZE": str(WORLD), "PMI_FD": "9",
        "MPI_LOCALRANKID": str(rank), "MPI_LOCALNRANKS": str(WORLD),
    }  # fmt: skip


def deepspeed(rank: int) -> dict[str, str]:
    """``deepspeed --num_gpus 3 train.py`` on one node (deepspeed/launcher/launch.py's variables)."""
    return {
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_SIZE": str(WORLD),
        "CROSS_RANK": "0", "CROSS_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
    }  # fmt: skip


LAUNCHERS = {"slurm": slurm, "openmpi": openmpi, "mpich": mpich, "deepspeed": deepspeed}
# The job key the ranks must have found (None: the launcher process, not predictable here).
JOB_KEYS = {"slurm": "73101", "openmpi": "prterun-e2ehost-41877@1", "mpich": None, "deepspeed": None}


def start_job(j: Job, srv: ServerProc, launcher: str) -> None:
    envs = {r: LAUNCHERS[launcher](r) for r in range(WORLD)}
    launch_node(j, 0, envs, {"rows": ROWS, "rows_per_rank": 11, "rate": RATE}, srv.url)


def check_job(j: Job, srv: ServerProc, path: str, launcher: str) -> dict[str, Any]:
    """The job ran as one run of WORLD ranks; returns its node.json."""
    assert j.wait_exit() == [0], j.diag()
    node_dir = Path(j.ready(0)["dir"]).parent  # type: ignore[index]
    node = json.loads((node_dir / "node.json").read_text())
    assert node["world_size"] == WORLD and node["launcher"] == launcher
    for r in range(WORLD):
        meta = json.loads((node_dir / f"rank-{r}" / "run.json").read_text())
        assert (meta["rank"], meta["world_size"], meta["launcher"]) == (r, WORLD, launcher)
    wait_until("the node sidecar to exit on its own", lambda: not j.node_sidecars(), 15, j.diag)
    data = run_json(srv.url, path) or {}
    assert data.get("state") == "finished", data
    assert data["world_size"] == WORLD
    assert [(x["rank"], x["state"]) for x in data["ranks"]] == [(r, "finished") for r in range(WORLD)]
    for r in range(WORLD):
        check_rank_rows(srv.url, path, r, ROWS + 11 * r)
    return dict(node)


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_job_under_launcher_is_one_run_with_each_ranks_rows(
    tmp_path: Path, srv: ServerProc, launcher: str
) -> None:
    with job(tmp_path, f"launch-{launcher}") as j:
        start_job(j, srv, launcher)
        path = j.path()
        node = check_job(j, srv, path, launcher)
        entity, project, run_id = path.split("/")
        if JOB_KEYS[launcher] is not None:  # the launcher's job id names the run: a requeue finds it again
            assert JOB_KEYS[launcher] in node["job_key"]
            assert run_id == derived_run_id(entity, project, node["job_key"])


def test_two_mpich_jobs_at_once_are_two_runs(tmp_path: Path, srv: ServerProc) -> None:
    """Without a job id, the ranks' common parent names the job: two mpiexec at the same time, in
    the same project, are two runs, never one run of six ranks."""
    with job(tmp_path / "a", "launch-two") as a, job(tmp_path / "b", "launch-two") as b:
        start_job(a, srv, "mpich")
        start_job(b, srv, "mpich")
        path_a, path_b = a.path(), b.path()
        assert path_a != path_b
        check_job(a, srv, path_a, "mpich")
        check_job(b, srv, path_b, "mpich")
