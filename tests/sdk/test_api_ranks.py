"""``runstream.Api`` on a distributed run (docs/distributed.md, "Reading a distributed run back"):
a real server holding a 3-rank job fed through the real gRPC ingest path, read back with the
SDK's ``ApiRun``: W&B-compatible rank-0 rows by default, any rank's on request, every rank's with
``_rank``, per-rank summaries and the across-rank aggregates.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import runstream
from runstream.errors import UsageError
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc
from tests.support import dist_ingest as di
from tests.support.server import ServerProc, start_server

ENTITY = "acme"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, str]]:
    srv = start_server(tmp_path_factory.mktemp("api-ranks-server"))
    ch = di.channel(srv.grpc_port)
    try:
        project = "p" + uuid.uuid4().hex[:8]
        stub = pb_grpc.IngestStub(ch)
        di.feed_job(stub, ENTITY, project, "ddp1")
        di.send(stub, ENTITY, project, "solo", "w1", di.rank_writer(0, "solo", 0))
        yield srv, project
    finally:
        ch.close()
        srv.stop()


@pytest.fixture
def api(served: tuple[ServerProc, str]) -> runstream.Api:
    return runstream.Api(served[0].url)


@pytest.fixture
def run(api: runstream.Api, served: tuple[ServerProc, str]) -> runstream.read.api_runs.ApiRun:
    return api.run(f"{ENTITY}/{served[1]}/ddp1")


def test_the_run_says_its_world_size_ranks_and_aggregates(run: runstream.read.api_runs.ApiRun) -> None:
    assert (run.world_size, run.node_count, run.state) == (3, 2, "failed")
    assert [(r["rank"], r["node"], r["state"]) for r in run.ranks] == [
        (0, 0, "finished"),
        (1, 0, "finished"),
        (2, 1, "failed"),
    ]
    assert run.first_failure["rank"] == 2
    last = [di.loss(r, di.STEPS - 1) for r in range(3)]
    assert run.rank_aggregates["loss"]["max"] == max(last)
    assert run.rank_aggregates["loss"]["mean"] == pytest.approx(sum(last) / 3)
    assert run.summary["loss"] == last[0]  # the run's summary is rank 0's, as W&B's
    assert run.rank_summary(2)["loss"] == last[2]
    assert run.rank_summary(0)["loss"] == last[0]


def test_history_and_scan_history_default_to_rank_0s_rows(run: runstream.read.api_runs.ApiRun) -> None:
    rows = list(run.scan_history(keys=["loss"]))
    assert [r["loss"] for r in rows] == [di.loss(0, s) for s in range(di.STEPS)]
    assert "_rank" not in rows[0]  # the rows a W&B script expects
    hist = run.history(keys=["loss"], pandas=False)
    assert [r["loss"] for r in hist] == [di.loss(0, s) for s in range(di.STEPS)]


def test_history_of_one_rank(run: runstream.read.api_runs.ApiRun) -> None:
    assert [r["loss"] for r in run.scan_history(rank=1)] == [di.loss(1, s) for s in range(di.STEPS)]
    hist = run.history(rank=2, pandas=False)  # every key of rank 2: the string key read as logged
    assert [(r["_step"], r["loss"], r["tag"]) for r in hist] == [
        (s, di.loss(2, s), f"r2s{s}") for s in range(di.STEPS)
    ]
    df = run.history(keys=["loss"], rank=1)
    assert list(df.columns) == ["_step", "loss"]
    assert df["loss"].tolist() == [di.loss(1, s) for s in range(di.STEPS)]


def test_every_ranks_rows_carry_rank(run: runstream.read.api_runs.ApiRun) -> None:
    rows = list(run.scan_history(keys=["loss"], rank="all", page_size=4))
    assert [(r["_step"], r["_rank"]) for r in rows] == [(s, r) for s in range(di.STEPS) for r in range(3)]
    assert all(r["loss"] == di.loss(r["_rank"], r["_step"]) for r in rows)
    df = run.history(keys=["loss"], rank="all")
    assert list(df.columns) == ["_step", "_rank", "loss"]
    assert len(df) == 3 * di.STEPS
    assert df[df["_rank"] == 2]["loss"].tolist() == [di.loss(2, s) for s in range(di.STEPS)]
    band = run.series(["loss"], rank="band")["loss"]
    assert band["max"] == [di.loss(2, s) for s in range(di.STEPS)]


def test_system_metrics_by_node_and_rank(run: runstream.read.api_runs.ApiRun) -> None:
    assert [s["system/cpu"] for s in run.system(node=1)] == [20.0 + i for i in range(5)]
    assert [s["proc/rss_mb"] for s in run.system(rank=2)] == [102.0] * di.STEPS


def test_bad_ranks_are_refused_clearly(run: runstream.read.api_runs.ApiRun) -> None:
    with pytest.raises(runstream.NotFoundError, match=r"ranks 0\.\.2"):
        run.rank_summary(5)
    with pytest.raises(runstream.NotFoundError, match=r"ranks 0\.\.2"):
        list(run.scan_history(rank=9))
    for bad in (-1, "first", 1.5, True):
        with pytest.raises(UsageError, match="rank must be"):
            run.scan_history(rank=bad)  # at the call, before any request
        with pytest.raises(UsageError, match="rank must be"):
            run.history(rank=bad)
    with pytest.raises(UsageError, match="rank must be"):
        run.rank_summary("all")


def test_a_single_process_run_reads_as_world_size_1(
    api: runstream.Api, served: tuple[ServerProc, str]
) -> None:
    solo = api.run(f"{ENTITY}/{served[1]}/solo")
    assert (solo.world_size, solo.node_count, solo.ranks, solo.rank_aggregates) == (1, 1, [], {})
    rows = list(solo.scan_history(keys=["loss"], rank="all"))
    assert [(r["_rank"], r["loss"]) for r in rows] == [(0, di.loss(0, s)) for s in range(di.STEPS)]
    with pytest.raises(runstream.NotFoundError, match="not distributed"):
        solo.rank_summary(1)
