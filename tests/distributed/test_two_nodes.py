"""Two nodes on one machine: a job of 4 ranks, 2 per simulated node, each node with its own
directory root (as two machines have two disks), its own node sidecar, all logging to ONE run on
one server.  The ranks get what a multi-node ``torchrun --nnodes 2 --nproc-per-node 2`` gives them
(``GROUP_RANK`` is the node).  As root, a second variant runs each node in a mount namespace of its
own (``unshare --mount``) with a private ``/dev/shm`` tmpfs, so the nodes share no shared memory at
all, as two machines do not.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import uuid
from pathlib import Path

import pytest

from tests.distributed._e2e import (
    check_rank_rows,
    free_port,
    get_json,
    job,
    launch_node,
    run_json,
    torchrun_env,
    wait_until,
)
from tests.support.server import ServerProc

pytestmark = pytest.mark.slow

NODES, PER_NODE = 2, 2
WORLD = NODES * PER_NODE
ROWS = 400
RATE = 400  # rows/s per rank; each logs at least ROWS + 13 x rank rows, then until told to stop

# Each simulated node's launcher in a mount namespace of its own with a fresh /dev/shm.
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
           'mount -t tmpfs -o size=512m tmpfs /dev/shm && exec "$@"', "sh"]  # fmt: skip


def namespaces_available() -> str | None:
    """Why the namespace variant cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "unshare --mount and mounting a tmpfs need root"
    if not shutil.which("unshare"):
        return "no unshare (util-linux) on this machine"
    return None


@pytest.mark.parametrize("isolation", ["dirs", pytest.param("namespaces", marks=pytest.mark.root)])
def test_two_nodes_two_sidecars_one_run(tmp_path: Path, server: ServerProc, isolation: str) -> None:
    if isolation == "namespaces" and (why := namespaces_available()):
        pytest.skip(why)
    wrap = UNSHARE if isolation == "namespaces" else []
    rdzv_id, port = uuid.uuid4().hex, free_port()
    cfg = {
        "rows": ROWS,
        "rows_per_rank": 13,
        "rate": RATE,
        "until_stop": True,
        "settings": {"stats_interval": 0.2},
    }
    with job(tmp_path, "two-nodes") as j:
        for node in range(NODES):
            ranks = range(node * PER_NODE, (node + 1) * PER_NODE)
            envs = {r: torchrun_env(r, WORLD, PER_NODE, rdzv_id, port) for r in ranks}
            launch_node(j, node, envs, cfg, server.url, wrap=wrap)
        path = j.path()
        run_id = path.split("/")[2]

        # One node sidecar per node, each serving its node's directory only.
        def one_each() -> bool:
            return all(len(j.node_sidecars(n)) == 1 for n in range(NODES))

        wait_until("one node sidecar on each node", one_each, 30, j.diag)
        assert len({p.pid for p in j.node_sidecars()}) == NODES
        if isolation == "namespaces":  # the rings are in each node's own /dev/shm, not this one's
            assert not list(Path("/dev/shm").glob(f"runstream-{run_id}-*.ring"))
            for node in range(NODES):
                pid = j.node_sidecars(node)[0].pid
                rings = list(Path(f"/proc/{pid}/root/dev/shm").glob(f"runstream-{run_id}-*.ring"))
                assert len(rings) == PER_NODE, f"node {node}'s /dev/shm holds {rings}"

        # System metrics once per node, from each node's own sidecar, and each rank's process
        # stats as that rank's, while the ranks run.
        def samples(query: str) -> list[dict[str, float]]:
            try:
                return list(get_json(f"{server.url}/api/v1/runs/{path}/system?{query}")["samples"])
            except urllib.error.HTTPError as e:
                if e.code == 404:  # that node or rank has not reported yet
                    return []
                raise

        for node in range(NODES):
            wait_until(f"system metrics of node {node}", lambda n=node: samples(f"node={n}"), 30, j.diag)
        wait_until("process stats of rank 3", lambda: samples("rank=3"), 30, j.diag)
        j.stop()
        assert j.wait_exit() == [0] * NODES, j.diag()
        wait_until("both node sidecars to exit on their own", lambda: not j.node_sidecars(), 20, j.diag)
        logged = {r: j.logged(r) for r in range(WORLD)}

    # Each node's directory, under its own root, holds that node's ranks only.
    for node in range(NODES):
        dirs = list((tmp_path / f"node{node}" / "runstream").glob(f"run-*-{run_id}-node{node}"))
        assert len(dirs) == 1, list((tmp_path / f"node{node}" / "runstream").iterdir())
        want = [f"rank-{r}" for r in range(node * PER_NODE, (node + 1) * PER_NODE)]
        assert sorted(p.name for p in dirs[0].glob("rank-*")) == want

    data = run_json(server.url, path) or {}
    assert data.get("state") == "finished", data
    assert (data["world_size"], data["node_count"]) == (WORLD, NODES)
    assert [(x["rank"], x["node"], x["state"]) for x in data["ranks"]] == [
        (r, r // PER_NODE, "finished") for r in range(WORLD)
    ]
    assert sorted(n["node"] for n in data["nodes"]) == list(range(NODES))
    for r in range(WORLD):
        assert logged[r] >= ROWS + 13 * r
        check_rank_rows(server.url, path, r, logged[r])
    for node in range(NODES):
        keys = {k for s in samples(f"node={node}") for k in s}
        assert any(k.startswith("system/cpu") for k in keys), f"node {node}'s system keys: {sorted(keys)}"
