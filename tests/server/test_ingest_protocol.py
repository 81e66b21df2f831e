"""The ingest wire protocol (docs/protocol.md), spoken by a raw gRPC client to a real server process.

One ``runstream server`` per module (plus a second one with a short heartbeat timeout).  Every
malformed input is checked for its exact status code, and after each one the server must still
be alive and store a good stream: a refusal ends one stream, never the server.
"""

from __future__ import annotations

import functools
import io
import json
import math
import queue
import re
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import yaml
import zstandard
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from runstream.format import record as rec
from runstream_ingest.wire import ingest_pb2 as pb
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc
from tests.support import DOCS
from tests.support.procs import poll
from tests.support.server import ServerProc, start_server

ENTITY, PROJECT = "acme", "proto"
TIMEOUT = 30.0  # seconds for any one stream: a hang fails the test, it does not stall the run
MAX_MESSAGE = 16 << 20  # the server's default --max-message
MAX_BATCH = 64 << 20  # bytes a batch may inflate to
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

HYPO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- building messages ---------------------------------------------------------------------------
def uid() -> str:
    return "r" + uuid.uuid4().hex[:12]


def open_msg(
    run_id: str,
    writer: str = "w1",
    *,
    entity: str = ENTITY,
    project: str = PROJECT,
    resume: str = "",
    version: int = 1,
) -> pb.ClientMessage:
    return pb.ClientMessage(
        open=pb.Open(
            entity=entity,
            project=project,
            run_id=run_id,
            writer_id=writer,
            resume=resume,
            protocol_version=version,
        )
    )


def row_records(first: int, last: int, step_of: Any = None, values: Any = None) -> bytes:
    """Records first..last, each a history row (step = seq - 1 unless ``step_of`` says)."""
    out = []
    for s in range(first, last + 1):
        step = step_of(s) if step_of else s - 1
        body = values(s) if values else {"loss": 1.0 / s, "seq": s}
        out.append(rec.encode(s, rec.KIND_ROW, step, 1000.0 + s, rec.pack_body(body)))
    return b"".join(out)


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def batch_msg(
    first: int,
    last: int,
    data: bytes | None = None,
    *,
    payload: bytes | None = None,
    codec: int = pb.CODEC_ZSTD,
    crc: int | None = None,
    record_count: int | None = None,
) -> pb.ClientMessage:
    """A Batch of records ``data`` (default: rows first..last), zstd-compressed unless ``payload``
    is given as sent.  ``crc`` and ``record_count`` default to the right values."""
    if payload is None:
        raw = data if data is not None else row_records(first, last)
        payload = zstd(raw) if codec == pb.CODEC_ZSTD else raw
    return pb.ClientMessage(
        batch=pb.Batch(
            first_seq=first,
            last_seq=last,
            codec=codec,
            crc32c=rec.crc32c(payload) if crc is None else crc,
            payload=payload,
            record_count=last - first + 1 if record_count is None else record_count,
        )
    )


def heartbeat_msg() -> pb.ClientMessage:
    return pb.ClientMessage(heartbeat=pb.Heartbeat(time=time.time()))


# --- talking to the server -----------------------------------------------------------------------
def stream(
    stub: pb_grpc.IngestStub, msgs: Sequence[pb.ClientMessage], metadata: Sequence[tuple[str, str]] = ()
) -> list[pb.ServerMessage]:
    """Send ``msgs`` on one stream, half-close, and return every answer (raises grpc.RpcError)."""
    return list(stub.Stream(iter(msgs), timeout=TIMEOUT, metadata=tuple(metadata)))


def refusal(
    stub: pb_grpc.IngestStub, msgs: Sequence[pb.ClientMessage], metadata: Sequence[tuple[str, str]] = ()
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stream(stub, msgs, metadata)
    return info.value


def stub_answers(stub: pb_grpc.IngestStub, msgs: Sequence[pb.ClientMessage]) -> list[Any]:
    """Every answer of one stream, then the error that ended it (if one did)."""
    out: list[Any] = []
    try:
        out.extend(stub.Stream(iter(msgs), timeout=TIMEOUT))
    except grpc.RpcError as e:
        out.append(e)
    return out


def acks(answers: Sequence[pb.ServerMessage]) -> list[int]:
    assert answers and answers[0].WhichOneof("msg") == "opened", answers
    assert all(a.WhichOneof("msg") == "ack" for a in answers[1:]), answers
    return [a.ack.seq for a in answers[1:]]


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    """(status, content type, decoded JSON or the text when it is not JSON)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            status, ctype, body = resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as e:
        status, ctype, body = e.code, e.headers.get("content-type", ""), e.read()
    try:
        return status, ctype, json.loads(body)
    except ValueError:
        return status, ctype, body.decode(errors="replace")


def get_run(srv: ServerProc, run_id: str, entity: str = ENTITY) -> dict[str, Any]:
    status, _, body = http_get(f"{srv.url}/api/v1/runs/{entity}/{PROJECT}/{run_id}")
    assert status == 200, body
    return dict(body)


def get_history(srv: ServerProc, run_id: str, query: str = "") -> list[dict[str, Any]]:
    status, _, body = http_get(f"{srv.url}/api/v1/runs/{ENTITY}/{PROJECT}/{run_id}/history{query}")
    assert status == 200, body
    return list(body["rows"])


class Duplex:
    """One open stream fed message by message (a context manager: leaving it ends the stream)."""

    def __init__(self, stub: pb_grpc.IngestStub, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._queue: queue.Queue[pb.ClientMessage | None] = queue.Queue()
        self.answers = stub.Stream(iter(self._queue.get, None), timeout=2 * TIMEOUT, metadata=tuple(metadata))

    def send(self, msg: pb.ClientMessage) -> None:
        self._queue.put(msg)

    def recv(self) -> pb.ServerMessage:
        return next(self.answers)

    def __enter__(self) -> Duplex:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self.answers.cancel()


class Ingest:
    """The module's server and a channel to it."""

    def __init__(self, srv: ServerProc) -> None:
        self.srv = srv
        self.channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        self.stub = pb_grpc.IngestStub(self.channel)

    def expect(self, msgs: Sequence[pb.ClientMessage], code: grpc.StatusCode) -> grpc.RpcError:
        """The stream ends with ``code``; then the server is still up and stores a good stream."""
        err = refusal(self.stub, msgs)
        assert err.code() == code, f"{err.code()}: {err.details()}"
        self.assert_serving()
        return err

    def assert_serving(self) -> None:
        assert self.srv.proc.poll() is None, f"the server died:\n{self.srv.log()[-4000:]}"
        answers = stream(self.stub, [open_msg(uid()), batch_msg(1, 3), batch_msg(4, 4)])
        assert acks(answers) == [3, 4]


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    srv = start_server(tmp_path_factory.mktemp("ingest-server"))
    client = Ingest(srv)
    try:
        yield client
    finally:
        client.channel.close()
        srv.stop()
    assert srv.proc.returncode == 0, srv.log()[-4000:]


# --- the happy path ------------------------------------------------------------------------------
def test_open_then_batches_are_acked_in_order_and_the_run_is_readable_over_http(ingest: Ingest) -> None:
    srv, run_id = ingest.srv, uid()
    start = 1000.0
    run_meta = {"id": run_id, "name": "brave-owl-1", "project": PROJECT, "entity": ENTITY,
                "start_time": start, "host": "gpu-7", "program": "train.py", "tags": ["a", "b"],
                "args": ["--lr", "0.01"], "python": "3.11.7"}  # fmt: skip
    meta = rec.encode(1, rec.KIND_RUN, 0, start, rec.pack_body(run_meta))
    meta += rec.encode(2, rec.KIND_CONFIG, 0, start, rec.pack_body({"lr": 0.01, "opt": {"name": "adam"}}))

    def value(s: int) -> dict[str, Any]:
        specials = {5: math.nan, 6: math.inf, 7: -math.inf}
        return {"loss": 1.0 / s, "acc": specials.get(s, s / 100)}

    def step(s: int) -> int:
        return s - 3  # seqs 3..12 are steps 0..9

    rows_a = row_records(3, 7, step, value)
    rows_b = row_records(8, 12, step, value)
    exit_rec = rec.encode(
        13, rec.KIND_EXIT, 0, start + 60, rec.pack_body({"exit_code": 0, "state": "finished"})
    )
    before = time.time()
    answers = stream(
        ingest.stub,
        [
            open_msg(run_id),
            batch_msg(1, 2, meta),
            batch_msg(3, 7, rows_a),
            heartbeat_msg(),  # answered by nothing: only batches are acked
            batch_msg(8, 12, rows_b, codec=pb.CODEC_NONE),
            batch_msg(13, 13, exit_rec),
        ],
    )
    opened = answers[0].opened
    assert (opened.acked_seq, opened.resumed, opened.last_step) == (0, False, -1)
    assert opened.run_path == f"{ENTITY}/{PROJECT}/{run_id}"
    assert acks(answers) == [2, 7, 12, 13]

    run = get_run(srv, run_id)
    assert run["path"] == f"{ENTITY}/{PROJECT}/{run_id}"
    assert (run["name"], run["host"], run["program"], run["tags"]) == (
        "brave-owl-1",
        "gpu-7",
        "train.py",
        ["a", "b"],
    )
    assert (run["meta"]["args"], run["meta"]["python"]) == (["--lr", "0.01"], "3.11.7")  # the command line
    assert (run["state"], run["exit_code"]) == ("finished", 0)
    assert run["config"] == {"lr": 0.01, "opt": {"name": "adam"}}
    assert (run["rows"], run["last_step"]) == (10, 9)
    assert run["summary"]["loss"] == 1.0 / 12
    assert run["heartbeat_at"] >= before

    rows = get_history(srv, run_id)
    assert [r["_step"] for r in rows] == list(range(10))
    assert [r["loss"] for r in rows] == [1.0 / s for s in range(3, 13)]
    assert [r["_timestamp"] for r in rows] == [1000.0 + s for s in range(3, 13)]
    assert rows[0]["_runtime"] == 3.0
    # JSON has no NaN or infinities: the API writes them as strings.
    assert [rows[i]["acc"] for i in (2, 3, 4)] == ["NaN", "Infinity", "-Infinity"]

    status, _, projects = http_get(f"{srv.url}/api/v1/projects/{ENTITY}")
    assert status == 200 and PROJECT in projects["projects"]
    status, _, runs = http_get(f"{srv.url}/api/v1/runs/{ENTITY}/{PROJECT}?limit=10000")
    assert status == 200 and run_id in [r["id"] for r in runs["runs"]]


def test_info_names_the_grpc_port(ingest: Ingest) -> None:
    status, _, info = http_get(f"{ingest.srv.url}/api/v1/info")
    assert status == 200
    assert info["grpc_port"] == ingest.srv.grpc_port
    assert (info["version"], info["auth"], info["tls"]) == (1, False, False)


def test_history_pages_and_key_filter(ingest: Ingest) -> None:
    run_id = uid()
    assert acks(stream(ingest.stub, [open_msg(run_id), batch_msg(1, 7)])) == [7]
    page = http_get(f"{ingest.srv.url}/api/v1/runs/{ENTITY}/{PROJECT}/{run_id}/history?page_size=3&keys=seq")
    assert page[0] == 200
    assert page[2] == {
        "rows": [{"_step": s - 1, "_timestamp": 1000.0 + s, "_runtime": 0.0, "seq": s} for s in (1, 2, 3)],
        "next_min_step": 3,
    }
    steps = [r["_step"] for r in get_history(ingest.srv, run_id, "?min_step=3&max_step=5")]
    assert steps == [3, 4, 5]
    last = http_get(
        f"{ingest.srv.url}/api/v1/runs/{ENTITY}/{PROJECT}/{run_id}/history?page_size=3&min_step=6"
    )
    assert last[2] == {"rows": [{"_step": 6, "_timestamp": 1007.0, "_runtime": 0.0, "loss": 1 / 7, "seq": 7}]}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/api/v1/runs/{ENTITY}/{PROJECT}/no-such-run", 404, "NOT_FOUND"),
        (f"/api/v1/runs/{ENTITY}/{PROJECT}/no-such-run/history", 404, "NOT_FOUND"),
        (f"/api/v1/runs/{ENTITY}/{PROJECT}?limit=many", 400, "INVALID_ARGUMENT"),
        (f"/api/v1/runs/{ENTITY}/{PROJECT}?limit=0", 400, "INVALID_ARGUMENT"),
        # An integer past SQLite's 64 bits is a bad argument too, not a 500.
        (f"/api/v1/runs/{ENTITY}/{PROJECT}?offset=99999999999999999999", 400, "INVALID_ARGUMENT"),
        # Paths no route matches answer in the same JSON shape.
        ("/api/v1/no-such-endpoint", 404, "NOT_FOUND"),
    ],
)
def test_http_errors_have_one_json_shape(ingest: Ingest, path: str, status: int, code: str) -> None:
    got, ctype, body = http_get(ingest.srv.url + path)
    assert (got, ctype.split(";")[0]) == (status, "application/json"), body
    assert body["error"] == code and body["message"], body


def test_the_docs_list_every_http_endpoint() -> None:
    from runstream_ingest.server.http.api import HttpApi

    app = HttpApi(None, None, None, {}).app()  # type: ignore[arg-type]
    routes = {  # the API's routes (any method); the web UI's static files (web.py) are not API endpoints
        r.resource.canonical
        for r in app.router.routes()
        if r.resource and r.resource.canonical.startswith("/api/")
    }
    docs = DOCS
    assert set(yaml.safe_load((docs / "openapi.yaml").read_text())["paths"]) == routes
    prose = (docs / "http-api.md").read_text()
    headed = set(re.findall(r"^## (?:[A-Z]+ )+(/api/\S+)$", prose, re.M))  # "## GET PUT /api/..."
    assert sorted(routes - headed) == []


# --- exactly once --------------------------------------------------------------------------------
def test_a_batch_sent_again_on_a_new_stream_is_acked_again_and_stored_once(ingest: Ingest) -> None:
    run_id = uid()
    assert acks(stream(ingest.stub, [open_msg(run_id), batch_msg(1, 5), batch_msg(6, 10)])) == [5, 10]
    before = get_history(ingest.srv, run_id)
    # The ack of 6..10 was "lost": the writer reconnects and sends it again, twice for good measure.
    answers = stream(ingest.stub, [open_msg(run_id), batch_msg(6, 10), batch_msg(1, 10)])
    opened = answers[0].opened
    assert (opened.acked_seq, opened.resumed, opened.last_step) == (10, True, 9)
    assert acks(answers) == [10, 10]
    assert get_history(ingest.srv, run_id) == before
    assert get_run(ingest.srv, run_id)["rows"] == 10


def test_an_overlapping_batch_stores_only_the_new_records(ingest: Ingest) -> None:
    run_id = uid()
    assert acks(stream(ingest.stub, [open_msg(run_id), batch_msg(1, 5)])) == [5]
    # Seqs 3..5 again, with other values: the stored ones must win, only 6..8 are new.
    changed = row_records(3, 8, values=lambda s: {"loss": -1.0, "seq": s})
    assert acks(stream(ingest.stub, [open_msg(run_id), batch_msg(3, 8, changed)])) == [8]
    rows = get_history(ingest.srv, run_id)
    assert [r["_step"] for r in rows] == list(range(8))
    assert [r["loss"] for r in rows] == [1.0 / s for s in range(1, 6)] + [-1.0] * 3


def test_a_batch_after_a_gap_is_failed_precondition_and_stores_nothing(ingest: Ingest) -> None:
    run_id = uid()
    assert acks(stream(ingest.stub, [open_msg(run_id), batch_msg(1, 5)])) == [5]
    err = ingest.expect([open_msg(run_id), batch_msg(7, 9)], grpc.StatusCode.FAILED_PRECONDITION)
    assert "5" in err.details() and "7" in err.details()
    # A new writer's first batch must start at seq 1.
    ingest.expect([open_msg(run_id, "w2"), batch_msg(2, 3)], grpc.StatusCode.FAILED_PRECONDITION)
    answers = stream(ingest.stub, [open_msg(run_id)])
    assert answers[0].opened.acked_seq == 5
    assert get_run(ingest.srv, run_id)["rows"] == 5


def test_pipelined_batches_are_acked_in_order_and_a_bad_one_ends_the_stream_after_them(
    ingest: Ingest,
) -> None:
    """The server reads ahead of its acks (it checks the next batch while one is stored): a
    malformed batch still ends the stream only after every batch before it is acked and stored."""
    run_id = uid()
    good = [batch_msg(first, first + 99) for first in range(1, 1000, 100)]
    answers = stub_answers(ingest.stub, [open_msg(run_id), *good, batch_msg(1001, 1010, crc=1), *good[:1]])
    assert [a.ack.seq for a in answers[1:-1]] == list(range(100, 1001, 100))
    assert isinstance(answers[-1], grpc.RpcError) and answers[-1].code() == grpc.StatusCode.DATA_LOSS
    assert get_run(ingest.srv, run_id)["rows"] == 1000


def test_streams_of_many_runs_at_once_are_each_stored_exactly_once(ingest: Ingest) -> None:
    """Concurrent streams share group commits; every batch of each is acked and stored once."""
    runs = [uid() for _ in range(12)]
    results: dict[str, list[int]] = {}

    def one(run_id: str) -> None:
        msgs = [open_msg(run_id)] + [batch_msg(f, f + 9) for f in range(1, 200, 10)] + [batch_msg(1, 10)]
        results[run_id] = acks(stream(ingest.stub, msgs))

    threads = [threading.Thread(target=one, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runs:
        assert results[r] == [*range(10, 201, 10), 200]
        rows = get_history(ingest.srv, r)
        assert [row["_step"] for row in rows] == list(range(200))


# --- resume --------------------------------------------------------------------------------------
def test_resume_must_for_an_unknown_run_is_not_found_and_creates_nothing(ingest: Ingest) -> None:
    run_id = uid()
    ingest.expect([open_msg(run_id, resume="must")], grpc.StatusCode.NOT_FOUND)
    status, _, body = http_get(f"{ingest.srv.url}/api/v1/runs/{ENTITY}/{PROJECT}/{run_id}")
    assert status == 404, body


def test_resume_never_for_a_run_another_writer_fed_is_already_exists(ingest: Ingest) -> None:
    run_id = uid()
    assert acks(stream(ingest.stub, [open_msg(run_id, "w1"), batch_msg(1, 4)])) == [4]
    ingest.expect([open_msg(run_id, "w2", resume="never")], grpc.StatusCode.ALREADY_EXISTS)
    # The same writer reconnecting is not a resume: "never" lets it carry on where it was acked.
    answers = stream(ingest.stub, [open_msg(run_id, "w1", resume="never"), batch_msg(5, 6)])
    assert answers[0].opened.acked_seq == 4 and acks(answers) == [6]
    # resume="must" and "allow" open it for a new writer, whose seqs start at 1.
    for mode, writer in (("must", "w3"), ("allow", "w4")):
        answers = stream(ingest.stub, [open_msg(run_id, writer, resume=mode)])
        opened = answers[0].opened
        assert (opened.acked_seq, opened.resumed, opened.last_step) == (0, True, 5)


# --- heartbeats ----------------------------------------------------------------------------------
def test_an_open_but_silent_run_is_marked_crashed_and_a_heartbeat_revives_it(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv", "--heartbeat-timeout", "2")
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    try:
        stub = pb_grpc.IngestStub(channel)
        run_id = uid()
        with Duplex(stub) as s:
            s.send(open_msg(run_id))
            assert s.recv().WhichOneof("msg") == "opened"
            s.send(batch_msg(1, 2))
            assert s.recv().ack.seq == 2
            # The stream stays open but says nothing: the janitor marks the run crashed.
            wait_for_state(srv, run_id, "crashed", 20)
            s.send(heartbeat_msg())
            wait_for_state(srv, run_id, "running", 5)
            assert get_run(srv, run_id)["finished_at"] is None
    finally:
        channel.close()
        srv.stop()


def wait_for_state(srv: ServerProc, run_id: str, state: str, timeout: float) -> None:
    poll(
        f"run {run_id} to be {state!r}",
        lambda: get_run(srv, run_id)["state"] == state,
        timeout,
        diag=lambda: f"it is {get_run(srv, run_id)['state']!r}",
    )


# --- malformed input -----------------------------------------------------------------------------
batch_fields = st.builds(
    pb.Batch,
    first_seq=st.integers(0, 2**64 - 1),
    last_seq=st.integers(0, 2**64 - 1),
    codec=st.integers(0, 3),
    crc32c=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=256),
    record_count=st.integers(0, 2**32 - 1),
)
not_open = st.one_of(
    batch_fields.map(lambda b: pb.ClientMessage(batch=b)),
    st.floats().map(lambda t: pb.ClientMessage(heartbeat=pb.Heartbeat(time=t))),
    st.just(pb.ClientMessage()),
)


@HYPO
@given(first=not_open, then_open=st.booleans())
def test_a_stream_that_does_not_start_with_open_is_invalid_argument(
    ingest: Ingest, first: pb.ClientMessage, then_open: bool
) -> None:
    msgs = [first, open_msg(uid())] if then_open else [first]
    err = ingest.expect(msgs, grpc.StatusCode.INVALID_ARGUMENT)
    assert "Open" in err.details()


@pytest.mark.parametrize(
    "second",
    [open_msg("again"), pb.ClientMessage()],
    ids=["open-twice", "empty-message"],
)
def test_anything_but_batch_or_heartbeat_after_open_is_invalid_argument(
    ingest: Ingest, second: pb.ClientMessage
) -> None:
    ingest.expect([open_msg(uid()), batch_msg(1, 1), second], grpc.StatusCode.INVALID_ARGUMENT)


bad_names = st.text(max_size=140).filter(lambda s: not NAME_RE.fullmatch(s))


@HYPO
@given(field=st.sampled_from(["entity", "project", "run_id", "writer_id"]), name=bad_names)
@example(field="entity", name="")
@example(field="project", name="-leading-dash")
@example(field="run_id", name="a/b")
@example(field="run_id", name="../etc")
@example(field="writer_id", name="a" * 129)
@example(field="project", name="ünïcode")
@example(field="entity", name="team\n")  # `$` in a regex also matches before a final newline
@example(field="run_id", name="run\n")
def test_bad_names_in_open_are_invalid_argument(ingest: Ingest, field: str, name: str) -> None:
    msg = open_msg(uid())
    setattr(msg.open, field, name)
    err = ingest.expect([msg, batch_msg(1, 1)], grpc.StatusCode.INVALID_ARGUMENT)
    assert field in err.details()


@HYPO
@given(mode=st.text(max_size=20).filter(lambda m: m not in ("", "allow", "auto", "must", "never")))
def test_an_unknown_resume_mode_is_invalid_argument(ingest: Ingest, mode: str) -> None:
    ingest.expect([open_msg(uid(), resume=mode)], grpc.StatusCode.INVALID_ARGUMENT)


@HYPO
@given(version=st.integers(3, 2**32 - 1))  # 2: Lost (docs/protocol.md, "Versioning")
def test_an_unsupported_protocol_version_is_failed_precondition(ingest: Ingest, version: int) -> None:
    ingest.expect([open_msg(uid(), version=version)], grpc.StatusCode.FAILED_PRECONDITION)


@HYPO
@given(
    first=st.integers(0, 2**64 - 1),
    last=st.integers(0, 2**64 - 1),
)
@example(first=0, last=0)
@example(first=0, last=3)
@example(first=5, last=4)
def test_an_empty_or_inverted_seq_range_is_invalid_argument(ingest: Ingest, first: int, last: int) -> None:
    assume(first < 1 or last < first)
    msg = batch_msg(1, 1)
    msg.batch.first_seq, msg.batch.last_seq = first, last
    ingest.expect([open_msg(uid()), msg], grpc.StatusCode.INVALID_ARGUMENT)


@HYPO
@given(
    n=st.integers(1, 20),
    flip=st.integers(1, 2**32 - 1),
    codec=st.sampled_from([pb.CODEC_ZSTD, pb.CODEC_NONE]),
)
def test_a_wrong_crc_is_data_loss(ingest: Ingest, n: int, flip: int, codec: int) -> None:
    good = batch_msg(1, n, codec=codec)
    bad = batch_msg(1, n, payload=good.batch.payload, codec=codec, crc=good.batch.crc32c ^ flip)
    ingest.expect([open_msg(uid()), bad], grpc.StatusCode.DATA_LOSS)


@HYPO
@given(codec=st.integers(2, 2**31 - 1) | st.integers(-(2**31), -1))
def test_an_unknown_codec_is_invalid_argument(ingest: Ingest, codec: int) -> None:
    payload = zstd(row_records(1, 2))
    ingest.expect(
        [open_msg(uid()), batch_msg(1, 2, payload=payload, codec=codec)], grpc.StatusCode.INVALID_ARGUMENT
    )


@HYPO
@given(payload=st.binary(max_size=4096), codec=st.sampled_from([pb.CODEC_ZSTD, pb.CODEC_NONE]))
@example(payload=b"", codec=pb.CODEC_ZSTD)
@example(payload=b"", codec=pb.CODEC_NONE)
@example(payload=ZSTD_MAGIC, codec=pb.CODEC_ZSTD)
def test_a_garbage_payload_with_a_right_crc_is_invalid_argument(
    ingest: Ingest, payload: bytes, codec: int
) -> None:
    # Random bytes starting like a zstd or skippable frame are not garbage enough to be sure of.
    assume(payload == ZSTD_MAGIC or not payload.startswith(ZSTD_MAGIC))
    assume(not (len(payload) >= 4 and payload[1:4] == b"\x2a\x4d\x18" and payload[0] & 0xF0 == 0x50))
    ingest.expect(
        [open_msg(uid()), batch_msg(1, 3, payload=payload, codec=codec)], grpc.StatusCode.INVALID_ARGUMENT
    )


def _spans(bodies: Sequence[bytes]) -> list[tuple[int, int]]:
    """(start, end of header and body) of each record in a batch of these bodies: the bytes a
    record's CRC covers or that are the CRC (its padding is neither)."""
    out, pos = [], 0
    for body in bodies:
        out.append((pos, pos + rec.HEADER_SIZE + len(body)))
        pos += rec.padded(len(body))
    return out


@st.composite
def damaged_batches(draw: st.DrawFn) -> tuple[str, int, int, bytes]:
    """(what, first_seq, last_seq, records) where the records, sent whole in a good zstd frame with
    a right CRC, are not a gapless run of valid records first_seq..last_seq."""
    n = draw(st.integers(1, 8))
    bodies = draw(st.lists(st.binary(max_size=40), min_size=n, max_size=n))
    recs = [rec.encode(i + 1, rec.KIND_ROW, i, 1.0 + i, b) for i, b in enumerate(bodies)]
    data = b"".join(recs)
    spans = _spans(bodies)
    what = draw(st.sampled_from(["truncate", "flip", "append", "swap", "duplicate", "pad", "range"]))
    first, last = 1, n
    if what == "truncate":  # anywhere before the end of the last record's body
        data = data[: draw(st.integers(0, spans[-1][1] - 1))]
    elif what == "flip":  # one bit of a header or body: every CRC-32C catches that
        start, end = spans[draw(st.integers(0, n - 1))]
        pos, bit = draw(st.integers(start, end - 1)), draw(st.integers(0, 7))
        data = data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]
    elif what == "append":
        data += draw(st.binary(min_size=1, max_size=100))
    elif what == "swap":
        assume(n >= 2)
        i = draw(st.integers(0, n - 2))
        recs[i], recs[i + 1] = recs[i + 1], recs[i]
        data = b"".join(recs)
    elif what == "duplicate":
        i = draw(st.integers(0, n - 1))
        data = b"".join([*recs[: i + 1], recs[i], *recs[i + 1 :]])
        last = n + 1
    elif what == "pad":  # a ring padding record, whole and valid, has no place in a batch
        data += rec.encode(n + 1, rec.KIND_PAD, 0, 0.0, b"")
        last = n + 1
    else:  # the header's range disagrees with the records (it starts at 1: no gap)
        first, last = draw(
            st.sampled_from([(1, n + 1), (1, n + 5), (1, n - 1)]).filter(lambda r: r[0] <= r[1])
        )
    return what, first, last, data


@HYPO
@given(case=damaged_batches())
def test_damaged_records_in_a_valid_zstd_frame_are_invalid_argument(
    ingest: Ingest, case: tuple[str, int, int, bytes]
) -> None:
    _, first, last, data = case
    msg = batch_msg(first, last, data, record_count=0)  # 0: no count announced
    ingest.expect([open_msg(uid()), msg], grpc.StatusCode.INVALID_ARGUMENT)


@HYPO
@given(n=st.integers(1, 20), count=st.integers(1, 2**32 - 1))
def test_a_record_count_that_does_not_match_is_invalid_argument(ingest: Ingest, n: int, count: int) -> None:
    assume(count != n)
    ingest.expect([open_msg(uid()), batch_msg(1, n, record_count=count)], grpc.StatusCode.INVALID_ARGUMENT)


def test_a_payload_of_two_zstd_frames_is_invalid_argument(ingest: Ingest) -> None:
    """A payload is ONE zstd frame (docs/protocol.md).  Two small frames are malformed, not a
    batch that "inflates past the limit"."""
    payload = zstd(row_records(1, 2)) + zstd(row_records(3, 3))
    ingest.expect([open_msg(uid()), batch_msg(1, 3, payload=payload)], grpc.StatusCode.INVALID_ARGUMENT)


@functools.cache
def bomb(declare_size: bool) -> bytes:
    """1 GiB of zeros as one zstd frame (about 32 KiB), with or without its size in the header."""
    size = 1 << 30
    chunk = bytes(16 << 20)
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(write_content_size=declare_size)
    with cctx.stream_writer(out, size=size if declare_size else -1, closefd=False) as w:
        for _ in range(size // len(chunk)):
            w.write(chunk)
    payload = out.getvalue()
    assert len(payload) < 64 << 10
    assert zstandard.frame_content_size(payload) == (size if declare_size else -1)
    return payload


def _peak_rss(pid: int) -> int:
    """The process's peak RSS since the last reset (Linux VmHWM), else its current RSS."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(psutil.Process(pid).memory_info().rss)


def _reset_peak_rss(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := the current RSS
    except OSError:
        pass


@pytest.mark.parametrize("declared", [True, False], ids=["size-declared", "size-not-declared"])
def test_a_decompression_bomb_is_resource_exhausted_without_spending_the_memory(
    ingest: Ingest, declared: bool
) -> None:
    payload = bomb(declared)
    pid = ingest.srv.proc.pid
    ingest.assert_serving()
    _reset_peak_rss(pid)
    before = int(psutil.Process(pid).memory_info().rss)
    err = ingest.expect(
        [open_msg(uid()), batch_msg(1, 1, payload=payload)], grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    grown = _peak_rss(pid) - before
    assert grown < 200 << 20, f"the server's RSS grew by {grown >> 20} MiB on a {len(payload)}-byte bomb"
    assert str(MAX_BATCH) in err.details()


def test_a_message_over_the_size_limit_is_resource_exhausted(ingest: Ingest) -> None:
    payload = bytes(MAX_MESSAGE + 1024)
    msg = batch_msg(1, 1, payload=payload, codec=pb.CODEC_NONE)
    err = ingest.expect([open_msg(uid()), msg], grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "larger than max" in err.details()


def test_a_batch_just_under_the_message_limit_is_stored(ingest: Ingest) -> None:
    """The limit is on the message: a big batch within it goes through (and the server's answer
    is a few bytes).  Rows of ~1 MiB string values, uncompressed, about 15 MiB in all."""
    big = "x" * (1 << 20)
    data = row_records(1, 15, values=lambda s: {"blob": big, "seq": s})
    assert len(data) < MAX_MESSAGE - 1024
    run_id = uid()
    assert acks(stream(ingest.stub, [open_msg(run_id), batch_msg(1, 15, data, codec=pb.CODEC_NONE)])) == [15]
    assert get_run(ingest.srv, run_id)["rows"] == 15


def test_header_layout_matches_records_module() -> None:
    """The offsets this module's damage strategy relies on (docs/ring-format.md)."""
    r = rec.encode(7, rec.KIND_ROW, 3, 2.5, b"abc")
    length, _crc, seq, kind, _flags, step, t = struct.unpack_from("<IIQBB6xqd", r)
    assert (length, seq, kind, step, t, len(r)) == (3, 7, rec.KIND_ROW, 3, 2.5, rec.padded(3))
    assert _spans([b"abc", b""]) == [(0, 43), (48, 88)]


# --- Lost: seqs a writer declares it will never send (protocol version 2) -----------------------
def lost_msg(first: int, last: int, reason: str = "journal damage") -> pb.ClientMessage:
    return pb.ClientMessage(lost=pb.Lost(first_seq=first, last_seq=last, reason=reason))


def lost_on(srv: ServerProc, run_id: str) -> int:
    return int(get_run(srv, run_id)["summary"].get("_runstream/server_lost_records", 0))


def test_a_range_lost_to_damage_is_acked_counted_and_the_batches_after_it_are_stored(ingest: Ingest) -> None:
    """Before Lost, the batch after a damaged frame was a sequence gap (FAILED_PRECONDITION) and
    nothing after the damage could ever be uploaded."""
    run_id = uid()
    answers = stream(
        ingest.stub,
        [open_msg(run_id, version=2), batch_msg(1, 5), lost_msg(6, 9), batch_msg(10, 12)],
    )
    assert answers[0].opened.protocol_version == 2
    assert acks(answers) == [5, 9, 12]
    assert [r["_step"] for r in get_history(ingest.srv, run_id)] == [0, 1, 2, 3, 4, 9, 10, 11]
    assert lost_on(ingest.srv, run_id) == 4


def test_a_lost_range_is_never_stored_later_and_a_resent_lost_is_counted_once(ingest: Ingest) -> None:
    run_id = uid()
    assert acks(stream(ingest.stub, [open_msg(run_id, version=2), lost_msg(1, 3)])) == [3]
    # The records turn up after all (a copy elsewhere): too late, they are duplicates now.
    again = stream(
        ingest.stub, [open_msg(run_id, version=2), batch_msg(1, 3), lost_msg(1, 3), batch_msg(2, 6)]
    )
    assert again[0].opened.acked_seq == 3
    assert acks(again) == [3, 3, 6]
    assert [r["_step"] for r in get_history(ingest.srv, run_id)] == [3, 4, 5]
    assert lost_on(ingest.srv, run_id) == 3
    # A Lost overlapping stored records counts only the seqs above them.
    assert acks(stream(ingest.stub, [open_msg(run_id, version=2), lost_msg(5, 8)])) == [8]
    assert lost_on(ingest.srv, run_id) == 5


def test_lost_after_a_gap_or_with_a_bad_range_or_on_a_version_1_stream_is_refused(ingest: Ingest) -> None:
    run_id = uid()
    assert acks(stream(ingest.stub, [open_msg(run_id, version=2), batch_msg(1, 2)])) == [2]
    ingest.expect([open_msg(run_id, version=2), lost_msg(4, 5)], grpc.StatusCode.FAILED_PRECONDITION)
    ingest.expect([open_msg(run_id, version=2), lost_msg(5, 4)], grpc.StatusCode.INVALID_ARGUMENT)
    ingest.expect([open_msg(run_id, version=2), lost_msg(0, 4)], grpc.StatusCode.INVALID_ARGUMENT)
    ingest.expect([open_msg(run_id, version=2), lost_msg(3, 2**63)], grpc.StatusCode.INVALID_ARGUMENT)
    ingest.expect([open_msg(run_id, version=1), lost_msg(3, 4)], grpc.StatusCode.INVALID_ARGUMENT)
    assert stream(ingest.stub, [open_msg(run_id)])[0].opened.acked_seq == 2
    assert lost_on(ingest.srv, run_id) == 0


def test_a_version_1_client_is_answered_in_version_1(ingest: Ingest) -> None:
    for version in (0, 1):
        answers = stream(ingest.stub, [open_msg(uid(), version=version), batch_msg(1, 2)])
        assert answers[0].opened.protocol_version == 1 and acks(answers) == [2]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("kind", [rec.KIND_ROW, rec.KIND_CONSOLE, rec.KIND_RUN, 200])
@pytest.mark.parametrize("n", [3, 400], ids=["small", "numpy"])  # both of decode_batch's paths
def test_a_record_with_a_non_finite_time_is_invalid_argument_naming_the_batch_not_unknown(
    ingest: Ingest, bad: float, kind: int, n: int
) -> None:
    """It used to fail at storage (NOT NULL constraint failed), as gRPC UNKNOWN, which clients
    retry: the same batch forever."""
    body = rec.pack_body({"lines": ["x"], "loss": 1.0})
    data = b"".join(
        rec.encode(s, kind if s == 2 else rec.KIND_ROW, s - 1, bad if s == 2 else 1000.0 + s, body)
        for s in range(1, n + 1)
    )
    run_id = uid()
    err = refusal(ingest.stub, [open_msg(run_id, version=2), batch_msg(1, n, data)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{err.code()}: {err.details()}"
    assert f"batch 1..{n}" in err.details() and "record 2" in err.details(), err.details()
    assert ("runstream-refused-batch", f"1-{n}") in tuple(err.trailing_metadata() or ())
    assert stream(ingest.stub, [open_msg(run_id)])[0].opened.acked_seq == 0
    ingest.assert_serving()
