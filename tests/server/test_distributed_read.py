"""Reading a distributed run back over HTTP (docs/http-api.md, "Distributed runs"): a real server,
a job of 3 ranks on 2 nodes fed through the real gRPC ingest path (one stream per writer, each
Open with its Member), read back through the routes a dashboard and ``runstream.Api`` use.
"""

from __future__ import annotations

import hashlib
import http.client
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from runstream.format import record as rec
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc
from tests.support import dist_ingest as di
from tests.support.server import ServerProc, start_server

ENTITY = "acme"


class Job:
    def __init__(self, srv: ServerProc, project: str, run_id: str) -> None:
        self.srv, self.project, self.run_id = srv, project, run_id

    def url(self, tail: str = "", run: str | None = None) -> str:
        return f"{self.srv.url}/api/v1/runs/{ENTITY}/{self.project}/{run or self.run_id}{tail}"

    def get(self, tail: str = "", run: str | None = None) -> Any:
        status, body = di.get(self.url(tail, run))
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = start_server(tmp_path_factory.mktemp("dist-read-server"))
    try:
        yield s
    finally:
        s.stop()
    assert s.proc.returncode == 0, s.log()[-4000:]


@pytest.fixture(scope="module")
def stub(srv: ServerProc) -> Iterator[pb_grpc.IngestStub]:
    ch = di.channel(srv.grpc_port)
    try:
        yield pb_grpc.IngestStub(ch)
    finally:
        ch.close()


def new_job(srv: ServerProc, stub: pb_grpc.IngestStub, **kw: Any) -> Job:
    """A project of its own holding the 3-rank job and one single-process run beside it."""
    project = "p" + uuid.uuid4().hex[:8]
    job = Job(srv, project, "job" + uuid.uuid4().hex[:6])
    di.feed_job(stub, ENTITY, project, job.run_id, **kw)
    single = di.rank_writer(0, "solo", 0)
    di.send(stub, ENTITY, project, "solo", "w1", single)
    return job


@pytest.fixture(scope="module")
def job(srv: ServerProc, stub: pb_grpc.IngestStub) -> Job:
    return new_job(srv, stub)


def project_url(job: Job, what: str = "runs") -> str:
    return f"{job.srv.url}/api/v1/{what}/{ENTITY}/{job.project}"


# --- member rows never show as runs ----------------------------------------------------------------
def test_the_runs_table_counts_and_filters_show_one_run_per_job(job: Job) -> None:
    status, page = di.get(project_url(job))
    assert status == 200, page
    assert page["total"] == 2
    by_id = {r["id"]: r for r in page["runs"]}
    assert set(by_id) == {job.run_id, "solo"}
    assert (by_id[job.run_id]["world_size"], by_id[job.run_id]["node_count"]) == (3, 2)
    assert (by_id["solo"]["world_size"], by_id["solo"]["node_count"]) == (1, 1)
    # rank 2 logs losses of 20 and more: a filter on them must not find its hidden row
    status, page = di.get(project_url(job) + '?filters={"summary.loss":{"$gt":15}}')
    assert (status, page["total"], page["runs"]) == (200, 0, [])
    status, page = di.get(project_url(job) + '?filters={"world_size":{"$gt":1}}')
    assert [r["id"] for r in page["runs"]] == [job.run_id]
    status, page = di.get(project_url(job) + f"?search={job.run_id}")
    assert [r["id"] for r in page["runs"]] == [job.run_id]
    status, page = di.get(project_url(job) + "?search=~r")  # the member rows' ids hold "~r"
    assert page["total"] == 0, page
    status, groups = di.get(project_url(job, "groups") + "?by=state")
    assert sum(g["count"] for g in groups["groups"]) == 2
    status, keys = di.get(project_url(job, "keys"))
    assert "only_rank0" in keys["config"] and "only_rank1" not in keys["config"], keys
    assert "world_size" in keys["columns"]
    status, projects = di.get(f"{job.srv.url}/api/v1/projects")
    assert [p["runs"] for p in projects["projects"] if p["name"] == job.project] == [2]


def test_a_member_row_is_not_a_path(job: Job) -> None:
    for tail in ("", "/history", "/series?keys=loss", "/console"):
        status, body = di.get(job.url(tail, run=f"{job.run_id}~r1"))
        assert (status, body["error"]) == (404, "NOT_FOUND"), (tail, body)
    status, body = di.get(
        f"{job.srv.url}/api/v1/series/{ENTITY}/{job.project}?keys=loss&runs={job.run_id}~r1"
    )
    assert body["runs"][f"{job.run_id}~r1"]["error"] == "NOT_FOUND"


# --- the run's JSON ------------------------------------------------------------------------------
def test_the_run_json_says_which_ranks_ran_and_which_failed_first(job: Job) -> None:
    run = job.get()
    assert run["state"] == "failed"  # ranks 0 and 1 finished, rank 2 exited 1
    assert (run["world_size"], run["node_count"]) == (3, 2)
    assert run["summary"]["loss"] == di.loss(0, di.STEPS - 1)  # rank 0's, as W&B shows
    assert "only_rank1" not in run["config"]
    ranks = run["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2]
    assert [r["node"] for r in ranks] == [0, 0, 1]
    assert [r["local_rank"] for r in ranks] == [0, 1, 0]
    assert [r["host"] for r in ranks] == ["gpu-a", "gpu-a", "gpu-b"]
    assert [r["state"] for r in ranks] == ["finished", "finished", "failed"]
    assert [r["exit_code"] for r in ranks] == [0, 0, 1]
    assert [r["last_step"] for r in ranks] == [di.STEPS - 1] * 3
    assert [r["row_count"] for r in ranks] == [di.STEPS] * 3
    assert [(n["node"], n["host"], n["state"]) for n in run["nodes"]] == [
        (0, "gpu-a", "finished"),
        (1, "gpu-b", "failed"),
    ]
    ff = run["first_failure"]
    assert (ff["rank"], ff["node"], ff["state"], ff["exit_code"], ff["last_step"]) == (2, 1, "failed", 1, 9)
    assert ff["time"] == pytest.approx(di.T0 + 102)
    assert run["rank_states"] == {"finished": 2, "running": 0, "failed": 1, "crashed": 0, "missing": 0}
    agg = run["rank_aggregates"]["loss"]
    last = [di.loss(r, di.STEPS - 1) for r in range(3)]
    assert agg == {"mean": pytest.approx(sum(last) / 3), "min": min(last), "max": max(last), "count": 3}
    assert "tag" not in run["rank_aggregates"]  # strings are not aggregated


def test_rank_n_of_the_run_json_is_that_ranks_own_row(job: Job) -> None:
    r1 = job.get("?rank=1")
    assert (r1["id"], r1["rank"], r1["state"], r1["exit_code"]) == (job.run_id, 1, "finished", 0)
    assert r1["summary"]["loss"] == di.loss(1, di.STEPS - 1)
    assert r1["config"]["only_rank1"] == 1
    assert job.get("?rank=0")["summary"]["loss"] == di.loss(0, di.STEPS - 1)


def test_a_single_process_run_has_world_size_1_and_no_rank_fields(job: Job) -> None:
    solo = job.get(run="solo")
    assert (solo["world_size"], solo["node_count"]) == (1, 1)
    assert not {"ranks", "nodes", "first_failure", "rank_states", "rank_aggregates"} & set(solo)
    assert job.get("/history?rank=0", run="solo")["rows"][0]["loss"] == di.loss(0, 0)
    status, body = di.get(job.url("/history?rank=1", run="solo"))
    assert status == 404 and "not distributed" in body["message"], body


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ("?rank=3", 404, "ranks 0..2"),
        ("/history?rank=7", 404, "ranks 0..2"),
        ("/history?rank=-1", 400, "0 or more"),
        ("/history?rank=one", 400, "rank must be a rank number"),
        ("/console?rank=every", 400, "'all'"),
        ("/system?node=2", 404, "nodes 0..1"),
        ("/system?node=0&rank=1", 400, "not both"),
        ("/series?keys=loss&ranks=some", 400, "'band'"),
        ("/series?keys=loss&ranks=all&rank=1", 400, "not both"),
    ],
)
def test_a_rank_or_node_the_run_does_not_have_is_refused_clearly(
    job: Job, query: str, status: int, says: str
) -> None:
    got, body = di.get(job.url(query))
    assert got == status and says in body["message"], body


def test_a_rank_that_has_not_reported_yet_is_missing(srv: ServerProc, stub: pb_grpc.IngestStub) -> None:
    late = new_job(srv, stub, exits={0: None, 1: 0})  # rank 2 never opened; rank 0 still running
    run = late.get()
    assert run["state"] == "running"
    assert run["rank_states"] == {"finished": 1, "running": 1, "failed": 0, "crashed": 0, "missing": 1}
    assert run["first_failure"] is None
    status, body = di.get(late.url("/history?rank=2"))
    assert status == 404 and "rank 2" in body["message"] and "not reported" in body["message"], body


# --- per-rank data -----------------------------------------------------------------------------
def test_history_keys_files_of_rank_n_are_that_ranks(job: Job) -> None:
    for rank in range(3):
        rows = job.get(f"/history?rank={rank}")["rows"]
        assert [r["_step"] for r in rows] == list(range(di.STEPS))
        assert [r["loss"] for r in rows] == [di.loss(rank, s) for s in range(di.STEPS)]
        assert rows[0]["tag"] == f"r{rank}s0"
        assert job.get(f"/keys?rank={rank}")["keys"][:2] == ["loss", "tag"]
        assert job.get(f"/files?rank={rank}")["files"] == []
    assert job.get("/history")["rows"] == job.get("/history?rank=0")["rows"]


def test_a_file_rank_n_saved_is_read_with_its_rank(srv: ServerProc, stub: pb_grpc.IngestStub) -> None:
    saver = new_job(srv, stub)
    content = b"rank 1's own checkpoint notes\n"
    sha = hashlib.sha256(content).hexdigest()
    req = urllib.request.Request(
        f"{srv.url}/api/v1/blobs/{sha}?offset=0&size={len(content)}", data=content, method="PUT"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 201
    w = di.Writer().add(
        rec.KIND_FILE, {"path": "notes.txt", "policy": "now", "sha256": sha, "size": len(content)}
    )
    di.send(stub, ENTITY, saver.project, saver.run_id, "r1.files", w, di.member(1))
    assert [f["path"] for f in saver.get("/files?rank=1")["files"]] == ["notes.txt"]
    assert saver.get("/files")["files"] == []  # rank 0 saved none
    with urllib.request.urlopen(saver.url("/files/notes.txt?rank=1"), timeout=30) as resp:
        assert resp.read() == content
    status, body = di.get(saver.url("/files/notes.txt"))
    assert status == 404 and "no file" in body["message"], body


def test_series_of_every_rank_and_the_band_across_ranks(job: Job) -> None:
    one = job.get("/series?keys=loss&rank=2")["series"]["loss"]
    assert one["mean"] == [di.loss(2, s) for s in range(di.STEPS)]
    every = job.get("/series?keys=loss&ranks=all")
    assert every["ranks"] == "all"
    per = every["series"]["loss"]
    assert [s["rank"] for s in per] == [0, 1, 2]
    for s in per:
        assert s["exact"] and s["x"] == list(range(di.STEPS))
        assert s["mean"] == [di.loss(s["rank"], x) for x in range(di.STEPS)]
    band = job.get("/series?keys=loss&ranks=band")["series"]["loss"]
    assert band["exact"] and band["x"] == list(range(di.STEPS))
    assert band["min"] == [di.loss(0, s) for s in range(di.STEPS)]
    assert band["max"] == [di.loss(2, s) for s in range(di.STEPS)]
    assert band["mean"] == pytest.approx([sum(di.loss(r, s) for r in range(3)) / 3 for s in range(di.STEPS)])
    assert band["rank_count"] == [3] * di.STEPS


def test_the_band_in_buckets_lines_ranks_up_on_the_same_steps(job: Job) -> None:
    band = job.get("/series?keys=loss&ranks=band&buckets=5")["series"]["loss"]
    assert not band["exact"]
    cuts = [range(b, b + 2) for b in range(0, di.STEPS, 2)]  # 5 buckets of 2 steps
    assert (band["x"], band["x_last"]) == ([c[0] for c in cuts], [c[-1] for c in cuts])
    assert band["min"] == [di.loss(0, c[0]) for c in cuts]
    assert band["max"] == [di.loss(2, c[-1]) for c in cuts]
    means = [[sum(di.loss(r, s) for s in c) / 2 for r in range(3)] for c in cuts]
    assert band["mean"] == pytest.approx([sum(m) / 3 for m in means])
    assert band["count"] == [6] * 5 and band["rank_count"] == [3] * 5


def test_the_band_on_a_time_axis_uses_common_buckets(job: Job) -> None:
    # ranks log at different times (rank r at 1 + step + r/10 s): equal times never line up
    band = job.get("/series?keys=loss&ranks=band&x_axis=_runtime&buckets=5")["series"]["loss"]
    assert not band["exact"] and len(band["x"]) == 5
    assert band["rank_count"] == [3] * 5 and sum(band["count"]) == 3 * di.STEPS
    assert band["x"][0] == pytest.approx(1.0) and band["x_last"][-1] == pytest.approx(1 + 9 + 0.2)
    assert band["min"][0] == di.loss(0, 0) and band["max"][-1] == di.loss(2, 9)


def test_ranks_that_log_different_numbers_of_steps(srv: ServerProc, stub: pb_grpc.IngestStub) -> None:
    counts = {0: 10, 1: 4, 2: 7}
    uneven = new_job(srv, stub, steps=counts)
    assert [r["last_step"] for r in uneven.get()["ranks"]] == [9, 3, 6]
    per = uneven.get("/series?keys=loss&ranks=all")["series"]["loss"]
    assert [s["x"] for s in per] == [list(range(counts[r])) for r in range(3)]
    band = uneven.get("/series?keys=loss&ranks=band")["series"]["loss"]
    assert band["x"] == list(range(10))
    assert band["rank_count"] == [3] * 4 + [2] * 3 + [1] * 3
    assert band["max"] == [di.loss(2, s) for s in range(7)] + [di.loss(0, s) for s in range(7, 10)]
    assert band["min"] == [di.loss(0, s) for s in range(10)]


def test_console_of_one_rank_and_of_all_ranks_merged_by_time(job: Job) -> None:
    r2 = job.get("/console?rank=2")["lines"]
    assert [ln["line"] for ln in r2] == [f"rank 2 step {s}" for s in range(di.STEPS)]
    assert {ln["rank"] for ln in r2} == {2}
    merged = job.get("/console?rank=all")["lines"]
    assert [(ln["rank"], ln["line"]) for ln in merged] == [
        (r, f"rank {r} step {s}") for s in range(di.STEPS) for r in range(3)
    ]
    assert [ln["time"] for ln in merged] == sorted(ln["time"] for ln in merged)
    # paging continues in arrival order and misses nothing
    seen, after = [], 0
    while True:
        page = job.get(f"/console?rank=all&limit=7&after_id={after}")
        seen += page["lines"]
        if "next_after_id" not in page:
            break
        after = page["next_after_id"]
    assert sorted((ln["rank"], ln["line"]) for ln in seen) == sorted(
        (ln["rank"], ln["line"]) for ln in merged
    )
    assert "rank" not in job.get("/console")["lines"][0]


def test_system_metrics_by_node_and_by_rank(job: Job) -> None:
    default = job.get("/system")["samples"]  # rank 0's node: node 0's own writer
    assert [s["system/cpu"] for s in default] == [10.0 + i for i in range(5)]
    node1 = job.get("/system?node=1")["samples"]
    assert [s["system/cpu"] for s in node1] == [20.0 + i for i in range(5)]
    rank1 = job.get("/system?rank=1")["samples"]
    assert [s["proc/rss_mb"] for s in rank1] == [101.0] * di.STEPS
    assert "system/cpu" not in rank1[0]
    assert [s["proc/rss_mb"] for s in job.get("/system?rank=0")["samples"]] == [100.0] * di.STEPS


# --- edits, deletes and live updates -------------------------------------------------------------
def test_a_member_writing_wakes_the_runs_live_events(srv: ServerProc, stub: pb_grpc.IngestStub) -> None:
    job = new_job(srv, stub)  # its own: this test writes to rank 1 again
    conn = http.client.HTTPConnection("127.0.0.1", job.srv.http_port, timeout=10)
    try:
        conn.request("GET", f"/api/v1/events/{ENTITY}/{job.project}")
        resp = conn.getresponse()
        assert resp.readline() == b"retry: 1000\n"
        # rank 1 writes again (a new writer of its hidden row: an elastic restart); the event
        # names the run, never the member row (which a dashboard would take for a deleted run)
        w = di.Writer().add(rec.KIND_CONSOLE, {"stream": "stdout", "lines": ["again"]}, time=time.time())
        w.add(rec.KIND_EXIT, {"exit_code": 0, "state": "finished"}, time=time.time())
        di.send(stub, ENTITY, job.project, job.run_id, "r1.a1", w, di.member(1))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = resp.readline()
            if line.startswith(b"data: "):
                assert f'"id": "{job.run_id}"'.encode() in line, line
                break
        else:
            pytest.fail("no event for the run after its rank 1 wrote")
    finally:
        conn.close()


def test_patch_edits_the_run_and_delete_removes_its_ranks(srv: ServerProc, stub: pb_grpc.IngestStub) -> None:
    doomed = new_job(srv, stub)
    status, body = di.request(doomed.url(), "PATCH", {"name": "renamed", "tags": ["ddp"]})
    assert status == 200 and body["name"] == "renamed" and body["world_size"] == 3, body
    assert doomed.get("?rank=1")["name"] != "renamed"  # rank 1's own row is not the run
    status, body = di.request(doomed.url("?rank=1"), "PATCH", {"name": "x"})
    assert status == 400 and "whole run" in body["message"], body
    status, body = di.request(doomed.url(), "DELETE")
    assert status == 200, body
    for tail in ("", "?rank=1", "/history?rank=2", "/system?node=1"):
        status, body = di.get(doomed.url(tail))
        assert status == 404, (tail, body)
    with sqlite3.connect(f"file:{srv.data_dir / 'runstream.db'}?mode=ro", uri=True) as db:
        left = db.execute("SELECT run_id FROM runs WHERE run_id LIKE ?", (doomed.run_id + "%",)).fetchall()
    assert left == []


def test_a_rank_coming_back_after_delete_starts_a_new_run(srv: ServerProc, stub: pb_grpc.IngestStub) -> None:
    again = new_job(srv, stub)
    assert di.request(again.url(), "DELETE")[0] == 200
    di.send(
        stub, ENTITY, again.project, again.run_id, "r1.a0", di.rank_writer(1, again.run_id, 0), di.member(1)
    )
    run = again.get()
    assert [r["rank"] for r in run["ranks"]] == [1]  # rank 0 has not reported to the new run
    assert run["rank_states"]["missing"] == 2
