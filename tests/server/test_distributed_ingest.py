"""The server side of distributed runs (docs/distributed.md, "On the server"; docs/protocol.md,
"Member"; docs/storage.md, "Distributed runs"), over real gRPC streams to a real server process.

Ranks and node writers open with ``Open.member``; every job must come out as ONE run in the
project's list, its other ranks and node writers as hidden member rows (read here straight from
the server's SQLite file, read-only: the server's HTTP views of ranks belong to the read side),
each rank's rows and seqs its own, and the job's state following its ranks' states.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runstream.format import record as rec
from runstream_ingest.server.args import DB_NAME
from runstream_ingest.server.storage.interface import Member
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from runstream_ingest.server.storage.sqlite.schema import DIST_COLUMNS, SCHEMA_VERSION
from runstream_ingest.wire import ingest_pb2 as pb
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc
from tests.server.test_ingest_protocol import (
    ENTITY,
    PROJECT,
    Duplex,
    acks,
    batch_msg,
    get_run,
    heartbeat_msg,
    http_get,
    refusal,
    stream,
    uid,
)
from tests.support.procs import poll
from tests.support.server import ServerProc, start_server

TIMEOUT = 30.0


# --- messages ------------------------------------------------------------------------------------
def member_open(
    run_id: str,
    writer: str,
    rank: int,
    world: int,
    *,
    node: int = 0,
    nodes: int = 1,
    node_writer: bool = False,
    resume: str = "allow",
    host: str = "",
) -> pb.ClientMessage:
    member = pb.Member(
        rank=rank, node=node, world_size=world, node_count=nodes, local_rank=rank % max(1, world // nodes),
        node_writer=node_writer, host=host or f"host-{node}",
    )  # fmt: skip
    return pb.ClientMessage(
        open=pb.Open(
            entity=ENTITY, project=PROJECT, run_id=run_id, writer_id=writer, resume=resume,
            protocol_version=2, member=member,
        )
    )  # fmt: skip


def rank_rows(rank: int, first: int, last: int) -> bytes:
    """Rows of seqs first..last of ``rank``: step = seq - 1, loss = rank + step / 1000 (so every
    value says whose it is)."""
    return b"".join(
        rec.encode(s, rec.KIND_ROW, s - 1, 1000.0 + s, rec.pack_body({"loss": rank + (s - 1) / 1000}))
        for s in range(first, last + 1)
    )


def run_record(seq: int, run_id: str, name: str) -> bytes:
    meta = {"id": run_id, "name": name, "project": PROJECT, "entity": ENTITY, "start_time": 1000.0}
    return rec.encode(seq, rec.KIND_RUN, 0, 1000.0, rec.pack_body(meta))


def exit_record(seq: int, code: int = 0, state: str | None = None) -> bytes:
    body: dict[str, Any] = {"exit_code": code}
    if state:
        body["state"] = state
    return rec.encode(seq, rec.KIND_EXIT, 0, 2000.0 + seq, rec.pack_body(body))


def system_record(seq: int, t: float) -> bytes:
    return rec.encode(
        seq, rec.KIND_SYSTEM, 0, t, rec.pack_body({"system/cpu": 12.5, "system/gpu.0.util": 99.0})
    )


def lost_msg(first: int, last: int, reason: str) -> pb.ClientMessage:
    return pb.ClientMessage(lost=pb.Lost(first_seq=first, last_seq=last, reason=reason))


# --- the server and its database -------------------------------------------------------------------
class Server:
    def __init__(self, srv: ServerProc) -> None:
        self.srv = srv
        self.channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        self.stub = pb_grpc.IngestStub(self.channel)

    def db(self) -> sqlite3.Connection:
        """A read-only connection to the server's live database (WAL: it sees committed data)."""
        return sqlite3.connect(f"file:{self.srv.data_dir / DB_NAME}?mode=ro", uri=True, timeout=10)

    def rows(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Every row of the job ``run_id`` (the top row and its members) by run_id."""
        with closing(self.db()) as c:
            c.row_factory = sqlite3.Row
            top = c.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if top is None:
                return {}
            found = [top, *c.execute("SELECT * FROM runs WHERE parent = ?", (top["id"],))]
            return {r["run_id"]: {**dict(r), "summary": rec.unpack_body(r["summary"])} for r in found}

    def history(self, row_id: str, key: str = "loss") -> list[tuple[int, float]]:
        """(step, value) of ``key`` in one row, read back through the server's own storage code."""
        store = SqliteStorage(self.srv.data_dir / DB_NAME)
        try:
            return [
                (r["_step"], r[key])
                for page in store.scan_history(ENTITY, PROJECT, row_id, [key])
                for r in page
            ]
        finally:
            store.close()

    def run_list(self) -> list[str]:
        status, _, body = http_get(f"{self.srv.url}/api/v1/runs/{ENTITY}/{PROJECT}?limit=10000")
        assert status == 200, body
        return [r["id"] for r in body["runs"]]

    def job_state(self, run_id: str) -> str:
        return str(get_run(self.srv, run_id)["state"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("dist-ingest"))
    s = Server(srv)
    try:
        yield s
    finally:
        s.channel.close()
        srv.stop()
    assert srv.proc.returncode == 0, srv.log()[-4000:]


def together(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``jobs`` on threads released at once; their results in order (a failure re-raised)."""
    gate = threading.Barrier(len(jobs))
    out: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = jobs[i]()
        except BaseException as e:  # re-raised below, in the test's thread
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * TIMEOUT)
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return out


# --- one run per job -----------------------------------------------------------------------------
@pytest.mark.parametrize("rank0_last", [False, True], ids=["all-together", "rank0-opens-last"])
def test_ranks_and_node_writers_opening_together_make_one_run_with_hidden_member_rows(
    server: Server, rank0_last: bool
) -> None:
    run_id, world, nodes = uid(), 8, 2
    per_node = world // nodes

    def rank_stream(r: int) -> list[int]:
        if rank0_last and r == 0:
            time.sleep(0.5)  # every other rank and both node writers register first
        first = [batch_msg(1, 1, run_record(1, run_id, "brave-owl"))] if r == 0 else []
        start = 2 if r == 0 else 1
        msgs = [
            member_open(run_id, f"w{r}", r, world, node=r // per_node, nodes=nodes),
            *first,
            batch_msg(start, 20, rank_rows(r, start, 20)),
            batch_msg(21, 30 + r, rank_rows(r, 21, 30 + r)),
        ]
        return acks(stream(server.stub, msgs))

    def node_stream(k: int) -> list[int]:
        t0 = time.time()
        data = b"".join(system_record(s, t0 + s) for s in range(1, 6))
        msgs = [member_open(run_id, f"n{k}.companion", 0, world, node=k, nodes=nodes, node_writer=True,
                            resume="companion"), batch_msg(1, 5, data)]  # fmt: skip
        return acks(stream(server.stub, msgs))

    got = together(
        [
            *(lambda r=r: rank_stream(r) for r in range(world)),
            *(lambda k=k: node_stream(k) for k in range(nodes)),
        ]
    )
    assert got[:world] == [([1] if r == 0 else []) + [20, 30 + r] for r in range(world)]
    assert got[world:] == [[5]] * nodes

    # One run in the project's list; no member row anywhere in it.
    listed = server.run_list()
    assert listed.count(run_id) == 1
    assert not [i for i in listed if "~" in i]
    rows = server.rows(run_id)
    members = {f"{run_id}~r{r}" for r in range(1, world)} | {f"{run_id}~n{k}" for k in range(nodes)}
    assert set(rows) == {run_id} | members
    top = rows[run_id]
    assert (top["parent"], top["rank"], top["world_size"], top["node_count"], top["node"]) == (
        None,
        0,
        world,
        nodes,
        0,
    )
    assert top["name"] == "brave-owl"  # rank 0's RUN record made it the run's
    for r in range(1, world):
        row = rows[f"{run_id}~r{r}"]
        assert (row["parent"], row["rank"], row["node"], row["host"]) == (
            top["id"],
            r,
            r // per_node,
            f"host-{r // per_node}",
        )
        assert (row["row_count"], row["last_step"]) == (30 + r, 29 + r)  # each rank's own steps
        assert row["summary"]["loss"] == r + (29 + r) / 1000
    for k in range(nodes):
        row = rows[f"{run_id}~n{k}"]
        assert (row["parent"], row["rank"], row["node"]) == (top["id"], None, k)
    # Each rank's history is its own: same keys, same steps, its own values.
    for r in (0, 5):
        row_id = run_id if r == 0 else f"{run_id}~r{r}"
        assert server.history(row_id) == [(s, r + s / 1000) for s in range(1 if r == 0 else 0, 30 + r)]
    # The node writers' system samples went to their node rows, not to a rank.
    with closing(server.db()) as c:
        kinds = c.execute(
            "SELECT r.run_id, count(*) FROM series s JOIN runs r ON r.id = s.run WHERE s.kind = 1 AND"
            " (r.run_id = ? OR r.parent = (SELECT id FROM runs WHERE run_id = ?)) GROUP BY r.run_id",
            (run_id, run_id),
        ).fetchall()
    assert dict(kinds) == {f"{run_id}~n{k}": 2 for k in range(nodes)}
    assert server.job_state(run_id) == "running"

    # Every rank finishes: the job is finished, and so is each node.
    def finish(r: int) -> None:
        msgs = [
            member_open(run_id, f"w{r}", r, world, node=r // per_node, nodes=nodes),
            batch_msg(31 + r, 31 + r, exit_record(31 + r)),
        ]
        assert acks(stream(server.stub, msgs)) == [31 + r]

    together([lambda r=r: finish(r) for r in range(world)])
    assert server.job_state(run_id) == "finished"
    rows = server.rows(run_id)
    assert rows[run_id]["own_state"] == "finished"
    assert {rows[m]["state"] for m in members} == {"finished"}


def test_a_member_before_rank_0_makes_a_placeholder_that_rank_0_takes_over(server: Server) -> None:
    run_id = uid()
    answers = stream(server.stub, [member_open(run_id, "w1", 1, 2), batch_msg(1, 3, rank_rows(1, 1, 3))])
    assert acks(answers) == [3]
    assert answers[0].opened.run_path == f"{ENTITY}/{PROJECT}/{run_id}"  # the run the user sees
    assert server.run_list().count(run_id) == 1
    assert server.job_state(run_id) == "running"
    placeholder = server.rows(run_id)[run_id]
    assert (placeholder["rank"], placeholder["own_state"], placeholder["row_count"]) == (0, "running", 0)

    answers = stream(
        server.stub,
        [member_open(run_id, "w0", 0, 2), batch_msg(1, 1, run_record(1, run_id, "late-zero")),
         batch_msg(2, 4, rank_rows(0, 2, 4))],
    )  # fmt: skip
    assert acks(answers) == [1, 4]
    assert not answers[0].opened.resumed  # the placeholder held nothing of rank 0's
    rows = server.rows(run_id)
    assert rows[run_id]["id"] == placeholder["id"] and rows[run_id]["name"] == "late-zero"
    assert rows[f"{run_id}~r1"]["parent"] == placeholder["id"]
    assert server.run_list().count(run_id) == 1


# --- job state -------------------------------------------------------------------------------------
def test_one_failed_rank_fails_the_job_once_every_rank_ended(server: Server) -> None:
    run_id, world = uid(), 3
    for r in range(world):
        assert acks(
            stream(server.stub, [member_open(run_id, f"w{r}", r, world), batch_msg(1, 5, rank_rows(r, 1, 5))])
        ) == [5]
    stream(server.stub, [member_open(run_id, "w1", 1, world), batch_msg(6, 6, exit_record(6, code=3))])
    assert server.rows(run_id)[f"{run_id}~r1"]["state"] == "failed"
    assert server.job_state(run_id) == "running"  # ranks 0 and 2 still run
    stream(server.stub, [member_open(run_id, "w0", 0, world), batch_msg(6, 6, exit_record(6))])
    rows = server.rows(run_id)
    assert (rows[run_id]["own_state"], rows[run_id]["exit_code"]) == ("finished", 0)  # rank 0's own
    assert server.job_state(run_id) == "running"
    stream(server.stub, [member_open(run_id, "w2", 2, world), batch_msg(6, 6, exit_record(6))])
    assert server.job_state(run_id) == "failed"
    # A new attempt of rank 1 (a new writer) runs again: so does the job.
    stream(server.stub, [member_open(run_id, "w1.a1", 1, world), batch_msg(1, 1, rank_rows(1, 1, 1))])
    assert server.job_state(run_id) == "running"
    stream(server.stub, [member_open(run_id, "w1.a1", 1, world), batch_msg(2, 2, exit_record(2))])
    assert server.job_state(run_id) == "finished"


def test_a_crashed_rank_exit_crashes_the_job(server: Server) -> None:
    run_id = uid()
    stream(server.stub, [member_open(run_id, "w0", 0, 2), batch_msg(1, 1, exit_record(1))])
    # The node sidecar writes EXIT{state: crashed} for a rank whose process died.
    stream(
        server.stub,
        [member_open(run_id, "w1", 1, 2), batch_msg(1, 1, exit_record(1, code=-9, state="crashed"))],
    )
    assert server.job_state(run_id) == "crashed"


def test_a_silent_rank_is_crashed_alone_and_the_job_says_so_when_the_rest_end(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv", "--heartbeat-timeout", "2")
    s = Server(srv)
    run_id, world = uid(), 3
    stop = threading.Event()
    try:
        with Duplex(s.stub) as r0, Duplex(s.stub) as r1, Duplex(s.stub) as r2:
            for r, d in enumerate((r0, r1, r2)):
                d.send(member_open(run_id, f"w{r}", r, world))
                assert d.recv().WhichOneof("msg") == "opened"
                d.send(batch_msg(1, 2, rank_rows(r, 1, 2)))
                assert d.recv().ack.seq == 2

            def beat() -> None:  # ranks 0 and 1 stay alive; rank 2 says nothing
                while not stop.wait(0.3):
                    r0.send(heartbeat_msg())
                    r1.send(heartbeat_msg())

            beater = threading.Thread(target=beat)
            beater.start()
            try:
                poll(f"rank 2 of {run_id} to be marked crashed",
                     lambda: s.rows(run_id)[f"{run_id}~r2"]["state"] == "crashed", 20)  # fmt: skip
                rows = s.rows(run_id)
                assert rows[f"{run_id}~r2"]["ended_by"] == "stale"
                assert (rows[run_id]["own_state"], rows[f"{run_id}~r1"]["state"]) == ("running", "running")
                assert s.job_state(run_id) == "running"  # the others go on
            finally:
                stop.set()
                beater.join()
            r0.send(batch_msg(3, 3, exit_record(3)))
            assert r0.recv().ack.seq == 3
            r1.send(batch_msg(3, 3, exit_record(3)))
            assert r1.recv().ack.seq == 3
            assert s.job_state(run_id) == "crashed"  # not every rank finished
            # Rank 2 was only slow: its next sign of life revives it, and the job with it.
            r2.send(heartbeat_msg())
            poll("the job to run again", lambda: s.job_state(run_id) == "running", 10)
            r2.send(batch_msg(3, 3, exit_record(3)))
            assert r2.recv().ack.seq == 3
            assert s.job_state(run_id) == "finished"
    finally:
        s.channel.close()
        srv.stop()
    assert srv.proc.returncode == 0, srv.log()[-4000:]


def test_rank_0_going_silent_is_its_own_state_not_the_jobs(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv", "--heartbeat-timeout", "1")
    s = Server(srv)
    run_id = uid()
    try:
        with Duplex(s.stub) as r0:
            r0.send(member_open(run_id, "w0", 0, 2))
            assert r0.recv().WhichOneof("msg") == "opened"
            with Duplex(s.stub) as r1:
                r1.send(member_open(run_id, "w1", 1, 2))
                assert r1.recv().WhichOneof("msg") == "opened"
                deadline = time.monotonic() + 20
                while s.rows(run_id)[run_id]["own_state"] != "crashed":
                    assert time.monotonic() < deadline, "rank 0 was never marked crashed"
                    r1.send(heartbeat_msg())
                    time.sleep(0.2)
                assert s.job_state(run_id) == "running"  # rank 1 still beats
                r1.send(batch_msg(1, 1, exit_record(1)))
                assert r1.recv().ack.seq == 1
            assert s.job_state(run_id) == "crashed"
            assert "went silent" in srv.log()
    finally:
        s.channel.close()
        srv.stop()


# --- writers and exactly-once per rank ----------------------------------------------------------------
def test_reconnecting_ranks_resume_each_from_their_own_acked_seq_exactly_once(server: Server) -> None:
    run_id, world = uid(), 3

    def first(r: int) -> list[int]:
        return acks(
            stream(
                server.stub,
                [member_open(run_id, f"w{r}", r, world), batch_msg(1, 5 + r, rank_rows(r, 1, 5 + r))],
            )
        )

    assert together([lambda r=r: first(r) for r in range(world)]) == [[5 + r] for r in range(world)]
    for r in range(world):
        # The same writer again (a sidecar restarted, a lost ack): Opened says where it stands.
        again = batch_msg(3, 10, rank_rows(r, 3, 10))
        answers = stream(server.stub, [member_open(run_id, f"w{r}", r, world, resume="never"), again, again])
        opened = answers[0].opened
        assert (opened.acked_seq, opened.last_step, opened.resumed) == (5 + r, 4 + r, True)
        assert acks(answers) == [10, 10]
    rows = server.rows(run_id)
    for r in range(world):
        row_id = run_id if r == 0 else f"{run_id}~r{r}"
        assert rows[row_id]["row_count"] == 10  # stored once each
        assert server.history(row_id) == [(s, r + s / 1000) for s in range(10)]
    with closing(server.db()) as c:
        writers = c.execute(
            "SELECT r.run_id, w.writer_id, w.acked_seq FROM writers w JOIN runs r ON r.id = w.run"
            " WHERE r.run_id = ? OR r.parent = (SELECT id FROM runs WHERE run_id = ?) ORDER BY 1",
            (run_id, run_id),
        ).fetchall()
    assert writers == sorted([(run_id, "w0", 10), (f"{run_id}~r1", "w1", 10), (f"{run_id}~r2", "w2", 10)])


def test_lost_records_are_counted_in_the_rank_that_lost_them(server: Server) -> None:
    run_id = uid()
    stream(server.stub, [member_open(run_id, "w0", 0, 2), batch_msg(1, 3, rank_rows(0, 1, 3))])
    msgs = [
        member_open(run_id, "w1", 1, 2),
        batch_msg(1, 2, rank_rows(1, 1, 2)),
        lost_msg(3, 9, "journal damage"),
        batch_msg(10, 10, rank_rows(1, 10, 10)),
    ]
    answers = stream(server.stub, msgs)
    assert acks(answers) == [2, 9, 10]
    rows = server.rows(run_id)
    assert rows[f"{run_id}~r1"]["summary"]["_runstream/server_lost_records"] == 7
    assert "_runstream/server_lost_records" not in rows[run_id]["summary"]
    assert "_runstream/server_lost_records" not in get_run(server.srv, run_id)["summary"]


# --- resume modes ------------------------------------------------------------------------------------
def test_resume_modes_judge_a_rank_by_its_own_row(server: Server) -> None:
    run_id = uid()
    stream(
        server.stub, [member_open(run_id, "w0", 0, 4, resume="never"), batch_msg(1, 2, rank_rows(0, 1, 2))]
    )
    # Other ranks are not "another writer": "never" lets every rank of the job in.
    assert acks(
        stream(
            server.stub,
            [member_open(run_id, "w1", 1, 4, resume="never"), batch_msg(1, 2, rank_rows(1, 1, 2))],
        )
    ) == [2]
    # ... but a second writer for the same rank is.
    err = refusal(server.stub, [member_open(run_id, "other", 1, 4, resume="never")])
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "w1" in err.details()
    # "must" asks for the job's run: a rank new to an existing job may open with it ...
    assert stream(server.stub, [member_open(run_id, "w3", 3, 4, resume="must")])[0].opened.acked_seq == 0
    # ... and no rank can make a run that does not exist.
    missing = uid()
    err = refusal(server.stub, [member_open(missing, "w2", 2, 4, resume="must")])
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert missing not in server.run_list() and server.rows(missing) == {}


def test_a_job_cannot_take_over_a_single_process_run_that_resume_never_protects(server: Server) -> None:
    run_id = uid()
    single = pb.ClientMessage(open=pb.Open(entity=ENTITY, project=PROJECT, run_id=run_id, writer_id="solo"))
    assert acks(stream(server.stub, [single, batch_msg(1, 2, rank_rows(0, 1, 2))])) == [2]
    for rank in (0, 1):
        err = refusal(server.stub, [member_open(run_id, f"w{rank}", rank, 2, resume="never")])
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
    assert server.rows(run_id)[run_id]["world_size"] is None  # still a single-process run
    assert set(server.rows(run_id)) == {run_id}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"rank": 0, "world_size": 1}, "world_size"),
        ({"rank": 4, "world_size": 4}, "rank"),
        ({"rank": 0, "world_size": 2, "node": 2, "node_count": 2}, "node"),
        ({"rank": 0, "world_size": 2, "node_count": 0}, "node_count"),
        ({"rank": 1, "world_size": 2, "local_rank": 2}, "local_rank"),
    ],
)
def test_an_impossible_member_is_refused_naming_the_field(
    server: Server, fields: dict[str, int], named: str
) -> None:
    m = {"node_count": 1, **fields}
    msg = pb.ClientMessage(open=pb.Open(entity=ENTITY, project=PROJECT, run_id=uid(), writer_id="w",
                                        member=pb.Member(**m)))  # fmt: skip
    err = refusal(server.stub, [msg])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"Open.member: Member.{named}" in err.details()


def test_an_elastic_restart_with_fewer_ranks_leaves_the_dropped_ranks_out_of_the_jobs_state(
    server: Server,
) -> None:
    run_id = uid()
    for r in range(4):
        stream(server.stub, [member_open(run_id, f"a0.r{r}", r, 4), batch_msg(1, 1, rank_rows(r, 1, 1))])
    stream(
        server.stub,
        [member_open(run_id, "a0.r3", 3, 4), batch_msg(2, 2, exit_record(2, state="crashed", code=-9))],
    )
    # The job restarts on 2 ranks (new writers); ranks 2 and 3 are no longer part of it.
    for r in range(2):
        stream(server.stub, [member_open(run_id, f"a1.r{r}", r, 2), batch_msg(1, 1, exit_record(1))])
    rows = server.rows(run_id)
    assert rows[run_id]["world_size"] == 2
    assert rows[f"{run_id}~r2"]["state"] == "running" and rows[f"{run_id}~r3"]["state"] == "crashed"
    assert server.job_state(run_id) == "finished"


# --- storage -------------------------------------------------------------------------------------------
def test_a_version_1_database_gains_the_distributed_columns_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SqliteStorage(path)
    store.open_run(ENTITY, PROJECT, "solo", "w", "")
    store.store_batch(ENTITY, PROJECT, "solo", "w", 1, 3, rec.parse_batch(rank_rows(0, 1, 3), 1, 3))
    store.close()
    with closing(sqlite3.connect(path)) as c:  # what a version-1 server left behind
        c.execute("DROP INDEX runs_by_parent")
        c.execute("DROP INDEX runs_top_by_created")
        for name, _ in DIST_COLUMNS:
            c.execute(f"ALTER TABLE runs DROP COLUMN {name}")
        c.execute("UPDATE storage_meta SET value = '1' WHERE key = 'schema_version'")
        c.commit()
    store = SqliteStorage(path)
    try:
        assert store.get_run(ENTITY, PROJECT, "solo").row_count == 3  # type: ignore[union-attr]
        opened = store.open_run(ENTITY, PROJECT, "job", "w1", "", Member(1, 0, 2, 1, 1))
        assert opened.row_id == "job~r1" and opened.run_path == f"{ENTITY}/{PROJECT}/job"
        assert [r.run_id for r in store.list_runs(ENTITY, PROJECT)] in (["solo", "job"], ["job", "solo"])
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as c:
        cols = {r[1] for r in c.execute("PRAGMA table_info(runs)")}
        assert {n for n, _ in DIST_COLUMNS} <= cols
        assert c.execute("SELECT value FROM storage_meta").fetchone()[0] == str(SCHEMA_VERSION)
        c.execute("UPDATE storage_meta SET value = '99'")
        c.commit()
    with pytest.raises(Exception, match="schema version 99"):
        SqliteStorage(path)


# --- the job's state against a model ---------------------------------------------------------------
WORLD = 2


def rule(states: Iterable[str]) -> str | None:
    """docs/storage.md's job rule, written out on its own: the model the server must agree with."""
    s = list(states)
    if not s:
        return None
    if "running" in s:
        return "running"
    if "crashed" in s:
        return "crashed"
    return "failed" if "failed" in s else "finished"


events = st.lists(
    st.tuples(
        st.sampled_from(["open", "reopen", "exit", "stale", "beat"]),
        st.integers(0, WORLD - 1),
        st.sampled_from(["finished", "failed", "crashed"]),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(todo=events)
@example(todo=[("open", 0, ""), ("open", 1, ""), ("exit", 0, "failed"), ("exit", 1, "crashed")])
@example(todo=[("open", 0, ""), ("open", 1, ""), ("exit", 0, "finished"), ("stale", 1, ""), ("beat", 1, "")])
@example(
    todo=[("open", 1, ""), ("stale", 0, ""), ("exit", 1, "finished"), ("open", 0, ""), ("exit", 0, "failed")]
)
def test_the_jobs_state_follows_its_ranks_states_whatever_happens(tmp_path: Path, todo: list[Any]) -> None:
    """Random opens (new and returning writers), EXITs, janitor passes and heartbeats on one job's
    ranks: the run's state is always the rule over the ranks' states, node 0's state the same rule
    over the ranks it has seen, and each rank's own state what its own events made it."""
    now = [1000.0]

    def clock() -> float:
        now[0] += 1
        return now[0]

    path = tmp_path / f"model-{uuid.uuid4().hex}.db"
    store = SqliteStorage(path, clock=clock)
    run_id = "job"
    model: dict[int, dict[str, Any]] = {}  # rank -> {"state", "stale", "writer", "writers", "seq"}
    placeholder = False
    try:
        store.open_run(
            ENTITY, PROJECT, run_id, "node0", "companion", Member(0, 0, WORLD, 1, node_writer=True)
        )
        placeholder = True  # the node writer came first: rank 0 is a placeholder, running
        for what, r, end in todo:
            m = model.get(r)
            row_id = run_id if r == 0 else f"{run_id}~r{r}"
            if what in ("open", "reopen"):
                if what == "reopen" and m is None:
                    continue
                writer = m["writer"] if what == "reopen" else f"w{r}.{len(m['writers']) if m else 0}"
                store.open_run(ENTITY, PROJECT, run_id, writer, "allow", Member(r, 0, WORLD, 1, r))
                if m is None:
                    m = model[r] = {
                        "state": "running",
                        "stale": False,
                        "writer": writer,
                        "writers": set(),
                        "seq": {},
                    }
                if writer not in m["writers"] or m["stale"]:
                    m["state"], m["stale"] = "running", False
                m["writer"] = writer
                m["writers"].add(writer)
            elif m is None:
                continue
            elif what == "exit":
                seq = m["seq"].get(m["writer"], 0) + 1
                m["seq"][m["writer"]] = seq
                code = 0 if end == "finished" else 1
                body = exit_record(seq, code, end)
                store.store_batch(
                    ENTITY, PROJECT, row_id, m["writer"], seq, seq, rec.parse_batch(body, seq, seq)
                )
                m["state"], m["stale"] = end, False
            elif what == "beat":
                store.heartbeat(ENTITY, PROJECT, row_id, clock())
                if m["stale"]:
                    m["state"], m["stale"] = "running", False
            elif what == "stale" and m["state"] == "running":
                # Every other running rank beats far ahead; the janitor then finds only rank r silent.
                big = now[0] + 10_000
                others = [q for q, o in model.items() if q != r and o["state"] == "running"]
                if 0 not in model and placeholder and r != 0:
                    others.append(0)
                for q in others:
                    store.heartbeat(ENTITY, PROJECT, run_id if q == 0 else f"{run_id}~r{q}", big)
                marked = store.mark_stale_runs_crashed(big - 1)
                assert marked == [f"{ENTITY}/{PROJECT}/{row_id}"]
                now[0] = big + 1
                m["state"], m["stale"] = "crashed", True
            ranks = [o["state"] for o in model.values()]
            if 0 not in model:
                ranks.append("running")  # the placeholder
            with closing(sqlite3.connect(path)) as c:
                got = dict(c.execute("SELECT run_id, coalesce(own_state, state) FROM runs").fetchall())
                job = c.execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
            assert job == rule(ranks), (what, r, model, got)
            assert got[f"{run_id}~n0"] == (rule(o["state"] for o in model.values()) or "running")
            for q, o in model.items():
                assert got[run_id if q == 0 else f"{run_id}~r{q}"] == o["state"], (q, got)
    finally:
        store.close()
