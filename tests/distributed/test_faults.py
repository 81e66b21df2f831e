"""Faults in a distributed job, with real processes and a real server (docs/distributed.md,
"Faults"): ``kill -9`` of one rank, of the node sidecar, of a whole simulated node, and of the
server.  After each: every row a surviving rank logged is on the server once, the dead rank's rows
up to its death are there once (rows left in its ring are drained by the node sidecar), and the
run says which rank died.

Every rank logs numbered rows at a steady rate until the test makes the ``stop`` file; its count
of logged rows is in a side file that outlives ``kill -9`` (tests/distributed/_e2e.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import runstream
from tests.distributed._e2e import (
    Job,
    base_env,
    check_rank_rows,
    free_port,
    gaps,
    job,
    launch_node,
    rank_rows,
    run_json,
    runstream_env,
    wait_rank_states,
    wait_until,
)
from tests.support.server import ServerProc, start_server

pytestmark = pytest.mark.slow

RATE = 300  # rows/s per rank
LOGGING = {"rows": 0, "until_stop": True, "rate": RATE}


def start_node(j: Job, node: int, world: int, per_node: int, url: str, job_id: str) -> None:
    ranks = range(node * per_node, (node + 1) * per_node)
    envs = {r: runstream_env(r, world, per_node, world // per_node, job_id) for r in ranks}
    launch_node(j, node, envs, LOGGING, url)


def logging_on_server(j: Job, url: str, path: str, ranks: list[int], rows: int = 100) -> None:
    """Wait until every rank in ``ranks`` has at least ``rows`` rows stored on the server."""

    def stored() -> bool:
        data = run_json(url, path) or {}
        got = {x["rank"]: x.get("row_count") or 0 for x in data.get("ranks", [])}
        return all(got.get(r, 0) >= rows for r in ranks)

    wait_until(f"ranks {ranks} to have {rows} rows each on the server", stored, 60, j.diag)


def keeps_logging(j: Job, ranks: list[int], more: int = 150) -> None:
    """The ranks go on logging: each logs ``more`` further rows."""
    start = {r: j.logged(r) for r in ranks}
    wait_until(
        f"ranks {ranks} to keep logging",
        lambda: all(j.logged(r) >= start[r] + more for r in ranks),
        30,
        j.diag,
    )


def test_rank_killed_is_crashed_on_its_own_and_named_first(tmp_path: Path, server: ServerProc) -> None:
    with job(tmp_path, "fault-rank") as j:
        start_node(j, 0, 3, 3, server.url, "job-rank-kill")
        path = j.path()
        logging_on_server(j, server.url, path, [0, 1, 2])
        victim = j.ready(1)["pid"]  # type: ignore[index]
        os.kill(victim, signal.SIGKILL)
        # Marked crashed while the others still run; the job is running while any rank is.
        wait_rank_states(server.url, path, {1: "crashed", 0: "running", 2: "running"}, 30, j.diag)
        live = run_json(server.url, path) or {}
        assert live["state"] == "running"
        assert live["first_failure"]["rank"] == 1 and live["first_failure"]["state"] == "crashed"
        keeps_logging(j, [0, 2])
        j.stop()
        j.wait_exit()
        assert j.done(0) and j.done(2) and not j.done(1), j.diag()
        wait_until("the node sidecar to exit on its own", lambda: not j.node_sidecars(), 20, j.diag)
        logged = {r: j.logged(r) for r in range(3)}

    data = run_json(server.url, path) or {}
    assert data["state"] == "crashed"  # the job ended without every rank finishing
    assert [(x["rank"], x["state"]) for x in data["ranks"]] == [
        (0, "finished"),
        (1, "crashed"),
        (2, "finished"),
    ]
    assert data["rank_states"] == {"finished": 2, "running": 0, "failed": 0, "crashed": 1, "missing": 0}
    first = data["first_failure"]
    assert (first["rank"], first["node"], first["state"]) == (1, 0, "crashed")
    assert first["last_step"] in (logged[1] - 1, logged[1])
    check_rank_rows(server.url, path, 1, logged[1], killed=True)
    for r in (0, 2):
        check_rank_rows(server.url, path, r, logged[r])


def test_node_sidecar_killed_is_restarted_by_a_rank_and_nothing_is_lost(
    tmp_path: Path, server: ServerProc
) -> None:
    with job(tmp_path, "fault-sidecar") as j:
        start_node(j, 0, 3, 3, server.url, "job-sidecar-kill")
        path = j.path()
        logging_on_server(j, server.url, path, [0, 1, 2])
        first = j.node_sidecars()
        assert len(first) == 1, [p.cmdline() for p in first]
        first[0].kill()
        first[0].wait(10)

        def replaced() -> bool:
            now = j.node_sidecars()
            return len(now) == 1 and now[0].pid != first[0].pid

        wait_until("a rank to start a new node sidecar", replaced, 10, j.diag)
        keeps_logging(j, [0, 1, 2])
        logging_on_server(j, server.url, path, [0, 1, 2], rows=min(j.logged(r) for r in range(3)))
        j.stop()
        assert j.wait_exit() == [0], j.diag()
        wait_until("the node sidecar to exit on its own", lambda: not j.node_sidecars(), 20, j.diag)
        logged = {r: j.logged(r) for r in range(3)}

    data = run_json(server.url, path) or {}
    assert data["state"] == "finished"
    assert {x["state"] for x in data["ranks"]} == {"finished"} and data["first_failure"] is None
    for r in range(3):
        check_rank_rows(server.url, path, r, logged[r])


def test_node_lost_goes_stale_and_the_other_node_is_unaffected(tmp_path: Path) -> None:
    timeout = 8  # > the shippers' 5 s heartbeat
    srv = start_server(tmp_path / "server", "--heartbeat-timeout", str(timeout))
    try:
        with job(tmp_path, "fault-node") as j:
            for node in range(2):
                start_node(j, node, 4, 2, srv.url, "job-node-lost")
            path = j.path()
            logging_on_server(j, srv.url, path, [0, 1, 2, 3])
            j.kill_node(1)
            lost = {r: j.logged(r) for r in (2, 3)}
            # Node 1's ranks go stale after the heartbeat timeout, while node 0's keep running.
            states = wait_rank_states(srv.url, path, {2: "crashed", 3: "crashed", 0: "running", 1: "running"},
                                      timeout + 30, j.diag)  # fmt: skip
            assert {states[r]["ended_by"] for r in (2, 3)} == {"stale"}
            keeps_logging(j, [0, 1])
            j.stop()
            assert j.nodes[0].proc.wait(60) == 0, j.diag()
            wait_until("node 0's sidecar to exit on its own", lambda: not j.node_sidecars(0), 20, j.diag)
            logged = {r: j.logged(r) for r in (0, 1)}

        data = run_json(srv.url, path) or {}
        assert data["state"] == "crashed"
        assert [(x["rank"], x["node"], x["state"]) for x in data["ranks"]] == [
            (0, 0, "finished"), (1, 0, "finished"), (2, 1, "crashed"), (3, 1, "crashed"),
        ]  # fmt: skip
        assert (data["first_failure"]["node"], data["first_failure"]["state"]) == (1, "crashed")
        assert {n["node"]: n["state"] for n in data["nodes"]}[1] == "crashed"
        for r in (0, 1):  # nothing node 0 logged is affected
            check_rank_rows(srv.url, path, r, logged[r])
        for r in (2, 3):  # node 1's rows: what reached the server before it died, once each
            steps = [row["_step"] for row in rank_rows(srv.url, path, r)]
            assert steps == list(range(len(steps))) and 0 < len(steps) <= lost[r] + 1
        # Its disk survived: `runstream sync <node dir>` uploads the rest of what it journaled.
        node_dir = next((tmp_path / "node1" / "runstream").glob("run-*-node1"))
        env = base_env() | {"RUNSTREAM_HOST": srv.url}
        sync = subprocess.run([sys.executable, "-m", "runstream.cli.main", "sync", str(node_dir)], env=env,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert sync.returncode == 0, sync.stderr[-3000:]
        for r in (2, 3):
            journaled = [row["_step"] for row in runstream.read_run(node_dir / f"rank-{r}").history]
            steps = [row["_step"] for row in rank_rows(srv.url, path, r)]
            assert steps == journaled == list(range(len(journaled))), f"rank {r} after sync: {gaps(steps)}"
    finally:
        srv.stop()


def test_server_killed_and_restarted_keeps_every_row_once(tmp_path: Path) -> None:
    http, grpc = free_port(), free_port()
    srv = start_server(tmp_path / "server", http_port=http, grpc_port=grpc)
    try:
        with job(tmp_path, "fault-server") as j:
            start_node(j, 0, 2, 2, srv.url, "job-server-kill")
            path = j.path()
            logging_on_server(j, srv.url, path, [0, 1])
            srv.stop(signal.SIGKILL)
            keeps_logging(j, [0, 1], more=RATE)  # a second of rows while the server is gone
            srv = start_server(tmp_path / "server", http_port=http, grpc_port=grpc)
            keeps_logging(j, [0, 1])
            j.stop()
            assert j.wait_exit(120) == [0], j.diag()
            wait_until("the node sidecar to exit on its own", lambda: not j.node_sidecars(), 20, j.diag)
            logged = {r: j.logged(r) for r in (0, 1)}

        data = run_json(srv.url, path) or {}
        assert data["state"] == "finished"
        assert {x["state"] for x in data["ranks"]} == {"finished"}
        for r in (0, 1):
            check_rank_rows(srv.url, path, r, logged[r])
    finally:
        srv.stop()


def slurm_env(rank: int, world: int, restart: int) -> dict[str, str]:
    """``srun --ntasks <world>`` of SLURM job 88001 on one node, after ``restart`` requeues."""
    return {
        "SLURM_JOB_ID": "88001", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0", "SLURM_NTASKS": str(world), "SLURM_NNODES": "1",
        "SLURM_TASKS_PER_NODE": str(world), "SLURM_RESTART_COUNT": str(restart),
    }  # fmt: skip


def test_preempted_job_requeued_goes_on_in_the_same_run(tmp_path: Path, server: ServerProc) -> None:
    """A SLURM job killed whole (preemption: ranks and node sidecar ``kill -9``) and requeued
    (same job id, ``SLURM_RESTART_COUNT=1``) goes on in the same run: each rank resumes its own
    rank directory, its steps continue after what its journal holds, and nothing logged before
    the kill is lost or stored twice."""
    world = 2
    with job(tmp_path, "fault-requeue") as j:
        launch_node(j, 0, {r: slurm_env(r, world, 0) for r in range(world)}, LOGGING, server.url)
        path = j.path()
        logging_on_server(j, server.url, path, list(range(world)))
        j.kill_node(0)
        first = {r: j.logged(r) for r in range(world)}
        # The requeued attempt: the same node directory, a fresh launcher.
        j.nodes.clear()
        for f in [*j.ctl.glob("ready-*"), *j.ctl.glob("done-*")]:
            f.unlink()
        launch_node(j, 0, {r: slurm_env(r, world, 1) for r in range(world)}, LOGGING, server.url)
        assert j.path() == path, "the requeued job made a new run"
        keeps_logging(j, list(range(world)))
        j.stop()
        assert j.wait_exit() == [0], j.diag()
        wait_until("the node sidecar to exit on its own", lambda: not j.node_sidecars(), 20, j.diag)
        second = {r: j.logged(r) for r in range(world)}
        node_dirs = list((tmp_path / "node0" / "runstream").glob("run-*"))
        assert len(node_dirs) == 1, node_dirs
        for r in range(world):  # the rank directory of attempt 0, now attempt 1's
            assert json.loads((node_dirs[0] / f"rank-{r}" / "run.json").read_text())["attempt"] == 1

    data = run_json(server.url, path) or {}
    assert data["state"] == "finished", data
    assert [(x["rank"], x["state"]) for x in data["ranks"]] == [(r, "finished") for r in range(world)]
    for r in range(world):
        rows = rank_rows(server.url, path, r)
        steps = [row["_step"] for row in rows]
        assert steps == list(range(len(steps))), f"rank {r}: steps not 0..n-1 once each"
        # Attempt 1's rows (the last one possibly logged just before its count was written), then
        # attempt 2's, numbered from 0 again by the script.
        assert len(rows) in (first[r] + second[r], first[r] + 1 + second[r]), (len(rows), first[r], second[r])
        assert [row["i"] for row in rows[-second[r] :]] == list(range(second[r]))
        assert {row["r"] for row in rows} == {r}
