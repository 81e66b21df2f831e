"""Stage 4 of the sidecar, ``Shipper``, on its own: real journal files (written by the real
``JournalWriter``, framed the way the sidecar frames batches), a real ``runstream server`` process,
and between them the TCP fault proxy (tests/support/proxy.py): the server advertises the proxy's
port in ``/api/v1/info``, so the shipper's gRPC stream goes through it.

Covered, each against what the server ends up storing (rows over the HTTP API, per-writer
``acked_seq`` and stored batches in its database):

* acks advance the shipper (``acked``, ``on_acked``, ``wait_acked``, ``upload.json``), and a new
  shipper on an uploaded journal sends nothing again, with or without the marker;
* the stream cut (FIN or RST) with batches in flight: the shipper reconnects, resends what was not
  acked, and the server stores every record once;
* a stalled path: acks stop, at most the window of unacked bytes goes out, nothing is lost or
  resent, and the same stream carries on;
* the server stopped and started again on the same ports and data dir: the shipper resumes from
  the server's ``acked_seq`` and sends nothing twice.

Two failures found here when these tests were written, now fixed and covered: a stream that ends
between two batch writes (grpc's ``InvalidStateError``) killed the shipper, and an ``upload.json``
from another server made records that server never got count as acked.

The shipper runs on an event loop in a thread of the test process (``LoopThread``), as it runs on
the sidecar's loop; the test drives the proxy and the server from the main thread and waits on
conditions, never on guessed times.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import runstream
from runstream.format import record as rec
from runstream.format.frame import CODEC_ZSTD, TYPE_BATCH, encode_frame
from runstream.format.fs import OsFileSystem
from runstream.format.journal_read import ScannedFrame, scan_segment
from runstream_ingest.sidecar import shipper as shipper_mod
from runstream_ingest.sidecar.batcher import Batcher, Compressor
from runstream_ingest.sidecar.journal import JournalWriter
from runstream_ingest.sidecar.ring_reader import Span
from runstream_ingest.sidecar.shipper import UPLOAD_MARKER
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc
from tests.support.proxy import Proxy
from tests.support.server import ServerProc, start_server
from tests.support.shipping import IDENT, PATH, WAIT_S, LoopThread
from tests.support.waiting import wait_for


# --- the journal ----------------------------------------------------------------------------------
class Journal:
    """A run dir's journal, appended the way the sidecar does it: records -> Batcher -> zstd ->
    frame -> JournalWriter.  Small batches and segments, so a few thousand records make many
    frames over several segments."""

    def __init__(self, run_dir: Path, batch_bytes: int = 4096) -> None:
        self.run_dir = run_dir
        self.writer = JournalWriter(run_dir / "journal", fsync="never", segment_bytes=8 << 10)
        self.writer.open()
        self.batcher = Batcher(batch_bytes, float("inf"))
        self.compressor = Compressor(1)
        self.last_seq = 0
        self.max_payload = 0  # the largest frame payload so far

    def append_rows(self, n: int) -> int:
        """Rows with steps ``seq - 1`` (so history steps map to seqs one to one); returns the new
        last seq."""
        for _ in range(n):
            seq = self.last_seq + 1
            body = rec.pack_body({"i": seq - 1, "loss": 1.0 / seq})
            self.batcher.add(Span(rec.encode(seq, rec.KIND_ROW, seq - 1, 1000.0 + seq, body), 1, seq, seq))
            self.last_seq = seq
            if self.batcher.due():
                self._cut()
        self._cut()
        assert self.writer.written_seq == self.last_seq  # written: the shipper can read it
        return self.last_seq

    def _cut(self) -> None:
        batch = self.batcher.cut()
        if batch is not None:
            payload = self.compressor.compress(batch.data)
            self.max_payload = max(self.max_payload, len(payload))
            frame = encode_frame(TYPE_BATCH, CODEC_ZSTD, batch.first_seq, batch.last_seq, payload)
            self.writer.append(frame, batch.first_seq, batch.last_seq)

    def close(self) -> None:
        self.writer.close()


# --- the server behind the proxy ----------------------------------------------------------------
def rows_on(url: str) -> int:
    try:
        return int(runstream.Api(url).run(PATH).rows)
    except runstream.NotFoundError:
        return 0  # the run is created by the first Open


def serve(data_dir: Path, proxy: Proxy, **ports: int) -> ServerProc:
    """A server that advertises the proxy's port, so clients reach its gRPC port through it."""
    srv = start_server(data_dir, "--advertise-grpc-port", str(proxy.port), **ports)
    proxy.upstream_port = srv.grpc_port  # read at each new connection
    return srv


@dataclass
class Net:
    proxy: Proxy
    data_dir: Path
    server: ServerProc

    @property
    def url(self) -> str:
        return self.server.url

    def start_server(self, **ports: int) -> None:
        self.server = serve(self.data_dir, self.proxy, **ports)

    # What the server stored, as a user reads it and as its database holds it.
    def rows(self) -> int:
        return rows_on(self.url)

    def steps(self) -> list[int]:
        run = runstream.Api(self.url).run(PATH)
        return [r["_step"] for r in run.scan_history(keys=["i"], page_size=5000)]

    def db(self, sql: str) -> list[tuple[object, ...]]:
        c = sqlite3.connect(f"file:{self.data_dir / 'runstream.db'}?mode=ro", uri=True, timeout=10)
        try:
            return c.execute(sql, (IDENT.writer_id,)).fetchall()
        finally:
            c.close()

    def check_stored_once(self, last_seq: int) -> None:
        """Seqs 1..last_seq stored exactly once: the writer's acked_seq, stored batches that tile
        the range without overlap, and each row once (a duplicate row would be a step regression)."""
        assert self.db("SELECT acked_seq FROM writers WHERE writer_id = ?") == [(last_seq,)]
        batches = self.db("SELECT last_seq, records FROM batches WHERE writer_id = ? ORDER BY last_seq")
        seq = 0
        for last, records in batches:
            assert isinstance(last, int) and isinstance(records, int)
            assert last - records == seq, f"stored batches overlap or leave a gap at seq {seq}: {batches}"
            seq = last
        assert seq == last_seq
        assert self.db(
            "SELECT r.regressions FROM runs r JOIN writers w ON w.run = r.id WHERE w.writer_id = ?"
        ) == [(0,)]
        assert self.rows() == last_seq
        assert self.steps() == list(range(last_seq))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    # The proxy starts first: the server must advertise its port.
    with Proxy() as proxy:
        n = Net(proxy, tmp_path / "server", serve(tmp_path / "server", proxy))
        try:
            yield n
        finally:
            n.server.stop()  # the one running now (a test may have restarted it)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "run")
    try:
        yield j
    finally:
        j.close()


def marker(run_dir: Path) -> dict[str, object]:
    return dict(json.loads((run_dir / UPLOAD_MARKER).read_text()))


# --- acks ---------------------------------------------------------------------------------------
def test_acks_advance_the_shipper_its_callback_and_its_upload_marker(
    net: Net, loop_thread: LoopThread, journal: Journal
) -> None:
    last = journal.append_rows(3000)
    assert journal.writer.segments > 2  # the shipper follows the journal across segments
    s = loop_thread.start(journal.run_dir, net.url)
    assert loop_thread.wait_acked(s, last), f"acked {s.shipper.acked} of {last}\n{net.server.log()[-3000:]}"
    assert s.shipper.acked == last and s.shipper.fatal is None
    # on_acked is called as the acked seq goes up (never down, never repeated), up to the last.
    assert s.acks == sorted(set(s.acks)) and s.acks[-1] == last
    assert s.shipper.sent_records == last, "a healthy stream sends each record once"
    assert marker(journal.run_dir) == {"acked_seq": last, "writer_id": IDENT.writer_id, "url": net.url}
    net.check_stored_once(last)

    # More records later: the shipper follows the journal as it grows.
    more = journal.append_rows(500)
    loop_thread.wake(s)
    assert loop_thread.wait_acked(s, more)
    assert s.shipper.sent_records == more
    net.check_stored_once(more)


@pytest.mark.parametrize("marker_kept", [True, False], ids=["marker-kept", "marker-lost"])
def test_a_new_shipper_on_an_uploaded_journal_sends_nothing_again(
    net: Net, loop_thread: LoopThread, journal: Journal, marker_kept: bool
) -> None:
    """A restarted sidecar (or ``runstream sync``) resumes from the server's ``Opened.acked_seq``,
    the authority (docs/run-dir.md), with or without ``upload.json``, and sends nothing twice."""
    last = journal.append_rows(2000)
    first = loop_thread.start(journal.run_dir, net.url)
    assert loop_thread.wait_acked(first, last)
    loop_thread.stop(first)
    if not marker_kept:
        (journal.run_dir / UPLOAD_MARKER).unlink()

    again = loop_thread.start(journal.run_dir, net.url)
    # What the marker says is shown, but only the server's answer counts as acked.
    assert again.shipper.marker_acked == (last if marker_kept else 0)
    wait_for(lambda: again.shipper.connected and again.shipper.acked == last, WAIT_S, "the server's answer")
    more = journal.append_rows(300)
    assert loop_thread.wait_acked(again, more)
    assert again.shipper.sent_records == more - last, "records the server had were sent again"
    net.check_stored_once(more)


# --- network faults -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["cut", "reset"])
def test_a_connection_cut_mid_stream_is_resumed_without_losing_or_duplicating_records(
    net: Net, loop_thread: LoopThread, journal: Journal, how: str
) -> None:
    """Batches are in flight when the path dies (FIN or RST): they were sent, never acked, and
    never reached the server.  The shipper reconnects, resends them, and the server stores every
    record once."""
    s = loop_thread.start(journal.run_dir, net.url)
    acked = journal.append_rows(1000)
    assert loop_thread.wait_acked(s, acked)
    # A stalled proxy forwards nothing, so what the shipper sends next is surely in flight (and
    # surely not stored) when the connection is cut: the cut falls mid-stream by construction.
    net.proxy.stall()
    last = journal.append_rows(2000)
    loop_thread.wake(s)
    # The cut comes once the shipper has handed every batch to the stream (gRPC buffers them):
    # a cut while it is still writing is the case of the test below.
    wait_for(lambda: s.shipper.sent_records == last, WAIT_S, "the shipper to send into the stalled path")
    getattr(net.proxy, how)()
    wait_for(lambda: not s.shipper.connected, WAIT_S, "the shipper to see the stream die")
    assert s.shipper.acked == acked and s.shipper.sent_records == last
    net.proxy.restore()

    assert loop_thread.wait_acked(s, last), f"acked {s.shipper.acked} of {last}\n{net.server.log()[-3000:]}"
    assert net.proxy.accepted >= 2, "the shipper did not reconnect"
    # What was in flight was sent again, from the server's acked seq on: once more, no more.
    assert s.shipper.sent_records == last + (last - acked)
    net.check_stored_once(last)


class HeldWrites:
    """The shipper's real gRPC stub, whose calls can hold a batch write until the stream has
    ended: this forces one interleaving of a real cut (the call's status arrives between two of
    the shipper's writes) that otherwise happens now and then, when a cut falls mid-burst."""

    def __init__(self) -> None:
        self.hold = threading.Event()  # set by the test: hold the next batch write
        self.holding = threading.Event()  # set here: a write is held

    def stub(self, channel: object) -> object:
        held = self
        real = pb_grpc.IngestStub(channel)  # type: ignore[no-untyped-call]

        class Call:
            def __init__(self, call: Any) -> None:
                self._call = call

            def __getattr__(self, name: str) -> Any:
                return getattr(self._call, name)

            async def write(self, msg: Any) -> None:
                if held.hold.is_set() and msg.WhichOneof("msg") == "batch":
                    held.holding.set()
                    while not self._call.done():  # the real status, from the real broken socket
                        await asyncio.sleep(0.01)
                await self._call.write(msg)

        class Stub:
            def Stream(self, **kw: Any) -> Call:
                return Call(real.Stream(**kw))

        return Stub()


def test_a_stream_that_ends_between_two_batch_writes_is_resumed(
    net: Net, loop_thread: LoopThread, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldWrites()
    monkeypatch.setattr(shipper_mod, "pb_grpc", SimpleNamespace(IngestStub=held.stub))
    s = loop_thread.start(journal.run_dir, net.url)
    try:
        acked = journal.append_rows(1000)
        assert loop_thread.wait_acked(s, acked)
        net.proxy.stall()
        held.hold.set()
        last = journal.append_rows(1000)
        loop_thread.wake(s)
        wait_for(held.holding.is_set, WAIT_S, "the shipper to start a batch write")
        net.proxy.reset()  # the call ends (UNAVAILABLE) while that write waits
        held.hold.clear()  # the next streams write freely
        net.proxy.restore()
        wait_for(lambda: s.task.done() or s.shipper.acked == last, WAIT_S, "the shipper to catch up")
        assert not s.task.done(), f"the shipper died: {s.task.exception()!r}"
        net.check_stored_once(last)
    finally:
        loop_thread.stop(s, check=False)  # a shipper that died is this test's failure, reported above


def test_a_stalled_path_stops_acks_holds_at_most_the_window_and_the_same_stream_resumes(
    net: Net, loop_thread: LoopThread, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing passes a stalled path, but the connection stays up: the shipper fills its window of
    unacked bytes and waits; once the path recovers, the same stream carries the rest."""
    # A small window (8 MiB in production), so that a few thousand records overfill it.
    window = 16 << 10
    monkeypatch.setattr(shipper_mod, "WINDOW_BYTES", window)
    s = loop_thread.start(journal.run_dir, net.url)
    acked = journal.append_rows(1000)
    assert loop_thread.wait_acked(s, acked)
    net.proxy.stall()
    up, sent_before = net.proxy.forwarded["up"], s.shipper.sent_bytes
    written = journal.writer.bytes_written
    last = journal.append_rows(5000)
    assert journal.writer.bytes_written - written > 3 * window
    loop_thread.wake(s)

    def in_flight() -> int:
        return s.shipper.sent_bytes - sent_before

    wait_for(lambda: in_flight() >= window, WAIT_S, "the shipper to fill its window")
    # Full: it sends no more until acks come (it polls within the room left, and the frame that
    # crosses the limit is the last).  Nothing reached the server, no ack came back.
    assert in_flight() < window + journal.max_payload
    assert s.shipper.acked == acked and net.proxy.forwarded["up"] == up
    assert net.db("SELECT acked_seq FROM writers WHERE writer_id = ?") == [(acked,)]
    assert s.shipper.connected, "a stall is not an error: the stream stays up"
    net.proxy.restore()

    assert loop_thread.wait_acked(s, last), f"acked {s.shipper.acked} of {last}\n{net.server.log()[-3000:]}"
    assert net.proxy.accepted == 1, "the stream should have survived the stall"
    assert s.shipper.sent_records == last, "the same stream carries on: nothing is sent twice"
    net.check_stored_once(last)


# --- the server goes away -----------------------------------------------------------------------
@pytest.mark.slow
def test_a_restarted_server_is_resumed_from_its_acked_seq_and_nothing_is_sent_twice(
    net: Net, loop_thread: LoopThread, journal: Journal
) -> None:
    s = loop_thread.start(journal.run_dir, net.url)
    acked = journal.append_rows(1500)
    assert loop_thread.wait_acked(s, acked)
    assert s.shipper.sent_records == acked

    http, grpc_port = net.server.http_port, net.server.grpc_port
    net.server.stop()
    wait_for(lambda: not s.shipper.connected, WAIT_S, "the shipper to see the server go")
    last = journal.append_rows(1500)  # written while the server is down
    net.start_server(http_port=http, grpc_port=grpc_port)

    assert loop_thread.wait_acked(s, last), f"acked {s.shipper.acked} of {last}\n{net.server.log()[-3000:]}"
    # Everything sent before the restart had been acked, and nothing could be sent while the
    # server was down (batches go only after Opened): so each record was sent exactly once.
    assert s.shipper.sent_records == last
    net.check_stored_once(last)


@pytest.mark.slow
def test_a_marker_from_another_server_does_not_make_records_this_server_lacks_count_as_acked(
    net: Net, loop_thread: LoopThread, journal: Journal, tmp_path: Path
) -> None:
    """docs/run-dir.md: upload.json is "a progress marker ... The server's own answer at connect
    time is the authority".  A run uploaded to one server, then synced to another (or to the same
    address after its data dir was replaced), must be sent whole to the one that lacks it."""
    last = journal.append_rows(1000)
    first = loop_thread.start(journal.run_dir, net.url)
    assert loop_thread.wait_acked(first, last)
    loop_thread.stop(first)
    assert marker(journal.run_dir)["acked_seq"] == last

    other = start_server(tmp_path / "other-server")
    try:
        s = loop_thread.start(journal.run_dir, other.url)
        # What ``runstream sync`` and the sidecar's finish wait on: it must mean "stored there".
        assert loop_thread.wait_acked(s, last)
        assert s.shipper.fatal is None, s.shipper.fatal
        stored = rows_on(other.url)
        assert stored == last, (
            f"the shipper reports seq {s.shipper.acked} acked; the server has {stored} rows"
        )
        # And the run goes on there: the next records are not a gap.
        more = journal.append_rows(100)
        assert loop_thread.wait_acked(s, more) and s.shipper.fatal is None, s.shipper.fatal
        assert rows_on(other.url) == more
    finally:
        other.stop()


# --- what can never be uploaded -----------------------------------------------------------------
def test_a_damaged_frame_in_the_journal_is_declared_lost_and_shipping_goes_on(
    net: Net, loop_thread: LoopThread, journal: Journal
) -> None:
    """A flipped byte in a frame the server never got: the shipper used to send the next frame,
    a sequence gap, and the server's FAILED_PRECONDITION stopped it for good; now it declares the
    seqs no valid frame holds lost (``Lost``), and the records after them, and those the run
    logs later, arrive."""
    last = journal.append_rows(2000)
    seg = journal.run_dir / "journal" / "seg-000002.rsj"
    frames = [f for f in scan_segment(OsFileSystem(), str(seg)) if isinstance(f, ScannedFrame)]
    victim = frames[len(frames) // 2]
    data = bytearray(seg.read_bytes())
    data[victim.offset + 40] ^= 0x10
    seg.write_bytes(bytes(data))
    lost = (victim.header.first_seq, victim.header.last_seq)

    s = loop_thread.start(journal.run_dir, net.url)
    assert loop_thread.wait_acked(s, last), f"acked {s.shipper.acked}, fatal {s.shipper.fatal}"
    more = journal.append_rows(300)
    loop_thread.wake(s)
    assert loop_thread.wait_acked(s, more), f"acked {s.shipper.acked}, fatal {s.shipper.fatal}"
    assert s.shipper.fatal is None
    assert [(r.first_seq, r.last_seq) for r in s.shipper.lost_acked()] == [lost]
    assert "journal damage" in s.shipper.lost_acked()[0].reason
    assert net.steps() == [q - 1 for q in range(1, more + 1) if not lost[0] <= q <= lost[1]]
    summary = runstream.Api(net.url).run(PATH).summary
    assert summary["_runstream/server_lost_records"] == lost[1] - lost[0] + 1
    assert net.db("SELECT acked_seq FROM writers WHERE writer_id = ?") == [(more,)]
