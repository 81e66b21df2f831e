"""The node sidecar against a real server: every rank's stream and the node writer's share one
connection, and every rank's records land in its own (member) row of the one run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.sidecar.test_node_sidecar import Node, assert_exactly, finish_line
from tests.support.server import ServerProc, start_server


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    try:
        yield n
    finally:
        n.close()


ROWS = 4000


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def online_args(url: str, rank: int) -> str:
    return json.dumps(
        ["--url", url, "--entity", "e", "--project", "p", "--run-id", "job12345",
         "--writer-id", f"r{rank}.a0", "--resume", "allow", "--upload-timeout", "20"]
    )  # fmt: skip


def test_ranks_of_a_node_stream_over_one_connection_into_one_run(node: Node, server: ServerProc) -> None:
    world = 4
    env = {"TEST_WORLD": str(world)}
    ranks = [
        node.rank(r, ROWS, pace=0.0005, TEST_ARGS=online_args(server.url, r), **env) for r in range(world)
    ]
    sc = node.sidecar("--url", server.url, "--entity", "e", "--project", "p", "--run-id", "job12345")
    counts = set()
    while any(p.poll() is None for p in ranks) and sc.poll() is None:
        with contextlib.suppress(psutil.Error):
            conns = psutil.Process(sc.pid).net_connections("tcp")
            counts.add(sum(1 for c in conns if c.raddr and c.raddr.port == server.grpc_port))
        time.sleep(0.05)
    assert max(counts) == 1, counts  # one HTTP/2 connection carries the 4 ranks' and the node's streams
    for p in ranks:
        assert finish_line(p) == "pipeline 0"  # drained and acknowledged
    assert sc.wait(40) == 0
    base = f"{server.url}/api/v1/runs/e/p/job12345"
    for r in range(world):
        assert_exactly(node.dir / f"rank-{r}", r, ROWS, "finished")
        run = get(f"{base}?rank={r}" if r else base)
        assert run["rows"] == ROWS, (r, run)
        marker = json.loads((node.dir / f"rank-{r}" / "upload.json").read_text())
        assert marker["acked_seq"] == ROWS + 3  # RUN, the rows, EXIT, STATS
    top = get(base)
    assert top["state"] == "finished" and top["world_size"] == world
    assert [(x["rank"], x["state"], x["row_count"]) for x in top["ranks"]] == [
        (r, "finished", ROWS) for r in range(4)
    ]
    # The node writer's node-wide samples are the run's system series of node 0.
    samples = get(f"{base}/system?node=0")["samples"]
    assert samples and all("system/cpu" in x and "system/proc.rss_mib" not in x for x in samples)
    node_marker = json.loads((node.dir / "companion" / "upload.json").read_text())
    assert node_marker["acked_seq"] > 0  # the node writer's system samples are on the server too


def sync(url: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RUNSTREAM_HOST": url}
    cmd = [sys.executable, "-m", "runstream.cli.main", "sync", *map(str, paths)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_sync_of_an_offline_node_dir_uploads_every_rank_and_the_node_writer(
    node: Node, server: ServerProc
) -> None:
    meta = json.loads((node.dir / "node.json").read_text())
    (node.dir / "node.json").write_text(json.dumps({**meta, "world_size": 3}))
    ranks = [node.rank(r, 500, pace=0.002, TEST_WORLD="3") for r in range(3)]  # offline: no --url
    sc = node.sidecar()
    for p in ranks:
        assert finish_line(p) == "pipeline 0"
    assert sc.wait(30) == 0
    # One rank alone first: it lands as rank 1's member row of the run.
    one = sync(server.url, node.dir / "rank-1")
    assert one.returncode == 0, one.stderr
    assert "e/p/job12345 rank 1: 503 records uploaded" in one.stderr
    base = f"{server.url}/api/v1/runs/e/p/job12345"
    assert get(f"{base}?rank=1")["rows"] == 500
    first = sync(server.url, node.dir)
    assert first.returncode == 0, first.stderr
    assert "e/p/job12345 rank 1: 0 records uploaded" in first.stderr  # already there
    assert "e/p/job12345 node 0 (system metrics):" in first.stderr
    top = get(base)
    ranks_seen = [(x["rank"], x["state"], x["row_count"]) for x in top["ranks"]]
    assert ranks_seen == [(r, "finished", 500) for r in range(3)]
    assert top["state"] == "finished" and top["world_size"] == 3
    assert get(f"{base}/system?node=0")["samples"]  # the node writer's samples
    again = sync(server.url, node.dir)  # idempotent: nothing twice
    assert again.returncode == 0 and again.stderr.count(" 0 records uploaded") == 7, again.stderr
    assert [x["row_count"] for x in get(base)["ranks"]] == [500, 500, 500]


def test_server_killed_mid_run_and_restarted_every_rank_stored_once(node: Node, tmp_path: Path) -> None:
    """The ranks' streams share one channel: it must come back with the server, for every rank."""
    http, grpc_port = free_port(), free_port()
    srv = start_server(tmp_path / "server", http_port=http, grpc_port=grpc_port)
    try:
        ranks = [node.rank(r, ROWS, pace=0.0005, TEST_ARGS=online_args(srv.url, r)) for r in range(3)]
        sc = node.sidecar("--url", srv.url, "--entity", "e", "--project", "p", "--run-id", "job12345")
        base = f"{srv.url}/api/v1/runs/e/p/job12345"
        deadline = time.monotonic() + 30
        while not all(rows_of(base, r) > 0 for r in range(3)):  # every rank is streaming
            assert time.monotonic() < deadline
            time.sleep(0.1)
        srv.stop(signal.SIGKILL)
        time.sleep(1.5)  # the ranks log on meanwhile
        srv = start_server(tmp_path / "server", http_port=http, grpc_port=grpc_port)
        for p in ranks:
            assert finish_line(p) == "pipeline 0"
        assert sc.wait(40) == 0
        for r in range(3):
            assert_exactly(node.dir / f"rank-{r}", r, ROWS, "finished")
            assert rows_of(base, r) == ROWS  # each row once: none lost, none twice
    finally:
        srv.stop()


def rows_of(base: str, rank: int) -> int:
    try:
        return int(get(f"{base}?rank={rank}" if rank else base)["rows"])
    except urllib.error.HTTPError:
        return 0  # not registered yet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
