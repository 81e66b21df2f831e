"""A poison batch: records the server can never store, shipped by the real shipper to a real server
(issue 10, B).

A record whose header time was NaN used to reach SQLite and fail there (``NOT NULL constraint
failed: chunks.first_time``); the handler's exception became gRPC ``UNKNOWN``, which the shipper
retries, so that batch was sent again forever and nothing after it was ever uploaded.  Now:

* the server's ``decode.py`` refuses a batch holding a record with a NaN or infinite time with
  ``INVALID_ARGUMENT``, naming the batch and the record, and names the batch in the trailing
  metadata (``runstream-refused-batch``);
* the shipper then declares the records it can see are unstorable lost (``Lost``) and sends the
  rest of that batch again without them, so only those records are lost, and counted;
* a batch that fails inside the storage for any reason that is not the storage's trouble (here
  an injected ``TypeError``) is refused the same way, and the shipper declares it lost whole;
  the storage's trouble (an injected ``disk I/O error``) is still retried, and nothing is lost.

The faults inside the server are injected with a ``sitecustomize`` module on the server process's
``PYTHONPATH``: the server is the real one, only its ``_console`` is wrapped.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import zstandard

import runstream
from runstream.format import record as rec
from runstream.format.frame import CODEC_ZSTD, TYPE_BATCH, encode_frame
from runstream_ingest.sidecar.journal import JournalWriter
from runstream_ingest.wire import ingest_pb2 as pb
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc
from tests.support.server import ServerProc, start_server
from tests.support.shipping import PATH, LoopThread

FRAMES, PER_FRAME = 8, 40
WAIT_S = 60.0


def write_journal(run_dir: Path, poison: dict[int, tuple[int, float, bytes]]) -> int:
    """FRAMES frames of rows (step = seq - 1); ``poison``: seq -> (kind, time, body) instead of
    that row.  Returns the last seq."""
    z = zstandard.ZstdCompressor(level=1)
    w = JournalWriter(run_dir / "journal", fsync="never")
    w.open()
    for f in range(FRAMES):
        first, last = f * PER_FRAME + 1, (f + 1) * PER_FRAME
        parts = []
        for s in range(first, last + 1):
            kind, t, body = poison.get(s, (rec.KIND_ROW, 1000.0 + s, rec.pack_body({"i": s - 1})))
            parts.append(rec.encode(s, kind, s - 1, t, body))
        w.append(encode_frame(TYPE_BATCH, CODEC_ZSTD, first, last, z.compress(b"".join(parts))), first, last)
    assert w.close()
    return FRAMES * PER_FRAME


def steps_on(srv: ServerProc) -> list[int]:
    run = runstream.Api(srv.url).run(PATH)
    return [r["_step"] for r in run.scan_history(keys=["i"], page_size=5000)]


def summary_on(srv: ServerProc) -> dict[str, object]:
    return dict(runstream.Api(srv.url).run(PATH).summary)


def ship(loop_thread: LoopThread, run_dir: Path, srv: ServerProc, last: int) -> None:
    s = loop_thread.start(run_dir, srv.url)
    assert loop_thread.wait_acked(s, last, WAIT_S), (
        f"acked {s.shipper.acked} of {last}, fatal {s.shipper.fatal}\n{srv.log()[-3000:]}"
    )
    assert s.shipper.fatal is None and not s.task.done()
    loop_thread.stop(s)


@pytest.mark.parametrize("bad_time", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_record_with_a_non_finite_time_is_lost_alone_and_everything_after_it_arrives(
    server: ServerProc, loop_thread: LoopThread, tmp_path: Path, bad_time: float
) -> None:
    run_dir = tmp_path / "run"
    poison = {100: (rec.KIND_ROW, bad_time, rec.pack_body({"i": 99})),
              101: (rec.KIND_ROW, bad_time, rec.pack_body({"i": 100})),
              250: (rec.KIND_CONSOLE, bad_time, rec.pack_body({"lines": ["x"]}))}  # fmt: skip
    last = write_journal(run_dir, poison)
    ship(loop_thread, run_dir, server, last)
    rows = [s - 1 for s in range(1, last + 1) if s not in poison]
    assert steps_on(server) == rows
    assert summary_on(server).get("_runstream/server_lost_records") == len(poison)
    assert "cannot be stored" in server.log() and "INVALID_ARGUMENT" in server.log()


SITECUSTOMIZE = """
    import os, sqlite3
    from runstream_ingest.server.storage.sqlite import ingest

    _real = ingest._console
    _tries = {"n": 0}

    def _console(store, c, rid, r):
        lines = r.value().get("lines")
        if lines == ["poison"]:
            raise TypeError("injected: a bug on these bytes")
        if lines == ["flaky"] and _tries["n"] < 2:
            _tries["n"] += 1
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return _real(store, c, rid, r)

    ingest._console = _console
"""


@pytest.fixture
def faulty_server(tmp_path: Path) -> Iterator[ServerProc]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    srv = start_server(tmp_path / "server", env={"PYTHONPATH": path})
    try:
        yield srv
    finally:
        srv.stop()


def test_a_batch_that_fails_in_the_storage_is_lost_whole_instead_of_retried_forever(
    faulty_server: ServerProc, loop_thread: LoopThread, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    poison = {130: (rec.KIND_CONSOLE, 1130.0, rec.pack_body({"lines": ["poison"]}))}
    last = write_journal(run_dir, poison)
    ship(loop_thread, run_dir, faulty_server, last)
    frame = range(4 * PER_FRAME + 1 - PER_FRAME, 4 * PER_FRAME + 1)  # seqs 121..160 hold seq 130
    assert 130 in frame
    assert steps_on(faulty_server) == [s - 1 for s in range(1, last + 1) if s not in frame]
    assert summary_on(faulty_server).get("_runstream/server_lost_records") == PER_FRAME
    assert "injected: a bug on these bytes" in faulty_server.log()


def test_a_storage_error_that_may_pass_is_retried_and_nothing_is_lost(
    faulty_server: ServerProc, loop_thread: LoopThread, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    poison = {130: (rec.KIND_CONSOLE, 1130.0, rec.pack_body({"lines": ["flaky"]}))}
    last = write_journal(run_dir, poison)
    ship(loop_thread, run_dir, faulty_server, last)
    assert steps_on(faulty_server) == [s - 1 for s in range(1, last + 1) if s != 130]
    assert "_runstream/server_lost_records" not in summary_on(faulty_server)
    assert "disk I/O error (injected)" in faulty_server.log()


# --- the siblings: bodies whose values failed at storage, so their batch was retried forever ---
SIBLINGS = {
    "file-size-past-64-bits": (rec.KIND_FILE, {"path": "a.bin", "sha256": "00", "size": 2**64 - 1}),
    "exit-code-past-64-bits": (rec.KIND_EXIT, {"exit_code": 2**64 - 1}),
    "run-start-time-not-a-number": (rec.KIND_RUN, {"name": "n", "start_time": "yesterday"}),
    "summary-set-not-a-map": (rec.KIND_SUMMARY, {"set": [1, 2]}),
    "summary-del-not-strings": (rec.KIND_SUMMARY, {"set": {"a": 1}, "del": [[1]]}),
}


@pytest.mark.parametrize("name", list(SIBLINGS))
def test_a_body_with_a_value_the_database_cannot_hold_is_stored_not_unknown(
    server: ServerProc, name: str
) -> None:
    """Each of these used to raise inside the storage (OverflowError, TypeError, AttributeError),
    answered as gRPC UNKNOWN, which clients retry: the batch was sent again forever.  A body that
    does not suit its kind is stored (raw when it cannot be folded) and the stream goes on."""
    kind, body = SIBLINGS[name]
    data = rec.encode(1, rec.KIND_ROW, 0, 1001.0, rec.pack_body({"i": 0}))
    data += rec.encode(2, kind, 0, 1002.0, rec.pack_body(body))
    data += rec.encode(3, rec.KIND_ROW, 1, 1003.0, rec.pack_body({"i": 1}))
    payload = zstandard.ZstdCompressor().compress(data)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    try:
        stub = pb_grpc.IngestStub(channel)  # type: ignore[no-untyped-call]
        msgs = [
            pb.ClientMessage(open=pb.Open(entity="tests", project="shipping", run_id=name, writer_id="w",
                                          protocol_version=2)),
            pb.ClientMessage(batch=pb.Batch(first_seq=1, last_seq=3, codec=pb.CODEC_ZSTD,
                                            crc32c=rec.crc32c(payload), payload=payload)),
        ]  # fmt: skip
        answers = list(stub.Stream(iter(msgs), timeout=30))
    finally:
        channel.close()
    assert [a.ack.seq for a in answers[1:]] == [3]
    run = runstream.Api(server.url).run(f"tests/shipping/{name}")
    assert [r["_step"] for r in run.scan_history(keys=["i"])] == [0, 1]
