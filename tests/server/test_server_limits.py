"""The server's resource limits (docs/server-limits.md): open files and HTTP connections, and the
memory that batches of all streams may hold together.

Each test starts its own small server with small configured limits, so that the limit is reached
with tens of connections or megabytes, not thousands; one test uses the real defaults with the
common soft limit of 1,024 open files.  Every socket, channel and process is closed at the end of
its test, and bounds are generous: the machine may be loaded.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
import zstandard

from runstream.format import record as rec
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc
from tests.server.test_ingest_protocol import TIMEOUT, Duplex, batch_msg, http_get, open_msg
from tests.support.server import ServerProc, start_server

SOON = 20.0  # seconds in which something that takes one second must have happened, even when loaded


@contextlib.contextmanager
def server(tmp_path: Path, *extra: str) -> Iterator[ServerProc]:
    srv = start_server(tmp_path / "srv", *extra)
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def idle_sockets(port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` TCP connections to ``port`` that never send a byte."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.settimeout(TIMEOUT)
            s.connect(("127.0.0.1", port))
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def ingest_is_acked(srv: ServerProc) -> None:
    """A gRPC stream opens and its one batch is acked."""
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
        with Duplex(pb_grpc.IngestStub(ch)) as d:
            d.send(open_msg("r" + uuid.uuid4().hex[:12]))
            assert d.recv().WhichOneof("msg") == "opened"
            d.send(batch_msg(1, 3))
            assert d.recv().ack.seq == 3


def info_answers(srv: ServerProc) -> None:
    status, _, body = http_get(f"{srv.url}/api/v1/info")
    assert status == 200, body


def http_connections(pid: int, port: int) -> int:
    return sum(
        1
        for c in psutil.Process(pid).net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def closed_within(s: socket.socket, seconds: float, drip: bytes = b"") -> float:
    """Seconds until the server closes ``s`` (reads past any response); ``drip``: sent every
    0.2 s meanwhile, as a slow client would.  Fails if it stays open ``seconds``."""
    start = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            if not s.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            if drip:
                try:
                    s.sendall(drip)
                except OSError:  # closed under us: that is the answer
                    return time.monotonic() - start
        except OSError:  # reset
            return time.monotonic() - start
    raise AssertionError(f"the server kept the connection open for {seconds} s")


# --- open files and HTTP connections ---------------------------------------------------------------
def _soft_nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), (resource.RLIM_INFINITY if hard == "unlimited" else int(hard))
    raise AssertionError("no 'Max open files' in /proc/<pid>/limits")


@contextlib.contextmanager
def low_soft_nofile(limit: int = 1024) -> Iterator[None]:
    """Processes started inside inherit a soft open-files limit of ``limit`` (the usual one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, soft), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_open_file_limit_stays_at_1024_when_the_hard_limit_allows_more(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with low_soft_nofile():
        srv = start_server(tmp_path / "srv")
    try:
        soft, srv_hard = _soft_nofile(srv.proc.pid)
        assert srv_hard == hard
        if hard == resource.RLIM_INFINITY or hard > 1024:
            assert soft > 1024, f"the server kept the soft limit of {soft} open files (hard {hard})"
    finally:
        srv.stop()


def test_1100_idle_connections_lock_every_client_out_at_the_default_limits(tmp_path: Path) -> None:
    """The issue's case, with the real defaults: started with a soft limit of 1,024 open files,
    1,100 idle connections to the HTTP port must not stop HTTP or ingest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"this test process may open only {hard} files")
    with low_soft_nofile():
        srv = start_server(tmp_path / "srv")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))  # room for our own sockets
    try:
        with idle_sockets(srv.http_port, 1100):
            info_answers(srv)
            ingest_is_acked(srv)
        assert srv.log().count("Too many open files") == 0, srv.log()[-2000:]
    finally:
        srv.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_connections_beyond_the_http_cap_lock_out_http_and_ingest(tmp_path: Path) -> None:
    cap = 20
    with (
        server(tmp_path, "--http-max-connections", str(cap), "--http-header-timeout", "300") as srv,
        idle_sockets(srv.http_port, 3 * cap),
    ):
        info_answers(srv)  # the oldest idle connection made room for it
        ingest_is_acked(srv)
        # Idle connections past the cap were closed: the server holds at most the cap.
        assert http_connections(srv.proc.pid, srv.http_port) <= cap
        assert srv.log().count("connection cap") <= 2, srv.log()[-2000:]  # once per interval


def test_a_slow_header_connection_is_never_closed(tmp_path: Path) -> None:
    with server(tmp_path, "--http-header-timeout", "1", "--http-idle-timeout", "300") as srv:
        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=TIMEOUT) as s:
            s.sendall(b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\n")
            closed_within(s, SOON, drip=b"X-Slow: 1\r\n")
        info_answers(srv)


def test_an_idle_keep_alive_connection_is_never_closed(tmp_path: Path) -> None:
    with (
        server(tmp_path, "--http-idle-timeout", "1", "--http-header-timeout", "300") as srv,
        socket.create_connection(("127.0.0.1", srv.http_port), timeout=TIMEOUT) as s,
    ):
        s.sendall(b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        closed_within(s, SOON)


def test_a_connection_that_sends_nothing_is_never_closed(tmp_path: Path) -> None:
    with (
        server(tmp_path, "--http-header-timeout", "1", "--http-idle-timeout", "300") as srv,
        socket.create_connection(("127.0.0.1", srv.http_port), timeout=TIMEOUT) as s,
    ):
        closed_within(s, SOON)


# --- memory shared by all streams ------------------------------------------------------------------
BUDGET = 8 << 20  # --memory-budget of these tests
STREAMS = 12
BATCHES = 3  # per stream: without the budget each stream holds two or three decoded
RECORDS = 2000  # per batch, about 4 KiB each: 8 MiB decoded, some 60 KiB compressed
# Console output: stored as it came, so storing costs little beside what the batch holds.
KIND = rec.KIND_CONSOLE


def _peak_rss(pid: int) -> int:
    """The process's peak RSS since the last reset (Linux VmHWM), else its current RSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return int(psutil.Process(pid).memory_info().rss)


def _reset_peak_rss(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := the current RSS


def big_batches() -> list[tuple[int, int, bytes]]:
    """(first, last, compressed payload) of BATCHES batches of RECORDS rows, each about 4 KiB."""
    out = []
    for i in range(BATCHES):
        first, last = i * RECORDS + 1, (i + 1) * RECORDS
        raw = b"".join(
            rec.encode(
                s, KIND, s - 1, 1000.0 + s, rec.pack_body({"stream": "stdout", "lines": [f"{s:08d}" * 500]})
            )
            for s in range(first, last + 1)
        )
        out.append((first, last, zstandard.ZstdCompressor().compress(raw)))
    return out


def send_run(srv: ServerProc, batches: list[tuple[int, int, bytes]], errors: list[BaseException]) -> None:
    """One run's batches on one stream, all sent at once; every one must be acked."""
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
            msgs = [open_msg("r" + uuid.uuid4().hex[:12])]
            msgs += [batch_msg(first, last, payload=payload) for first, last, payload in batches]
            answers = list(pb_grpc.IngestStub(ch).Stream(iter(msgs), timeout=120))
            acks = [a.ack.seq for a in answers if a.WhichOneof("msg") == "ack"]
            assert acks == [last for _, last, _ in batches], acks
    except BaseException as e:
        errors.append(e)


def test_concurrent_large_batches_grow_the_server_without_bound(tmp_path: Path) -> None:
    batches = big_batches()
    decoded = RECORDS * BATCHES * STREAMS * 4000
    with server(tmp_path, "--memory-budget", str(BUDGET)) as srv:
        pid = srv.proc.pid
        errors: list[BaseException] = []
        send_run(srv, batches[:1], errors)  # warms the server up: imports, numpy, SQLite caches
        assert not errors, errors
        before = int(psutil.Process(pid).memory_info().rss)
        _reset_peak_rss(pid)
        threads = [threading.Thread(target=send_run, args=(srv, batches, errors)) for _ in range(STREAMS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert not any(t.is_alive() for t in threads), "streams still waiting for their acks"
        assert not errors, errors  # back-pressure, not loss: every batch acked
        grown = _peak_rss(pid) - before
        # What the budget lets batches hold many times over (their copies while decoded and
        # stored, the allocator's slack) plus SQLite's 64 MiB page cache: some 200 MiB, where
        # every stream's pipeline (two or three batches each) took over 330 MiB without it.
        bound = 12 * BUDGET + (100 << 20)
        assert grown < bound, f"the server grew by {grown >> 20} MiB for {decoded >> 20} MiB of batches"


def test_a_batch_larger_than_the_whole_memory_budget_is_refused(tmp_path: Path) -> None:
    first, last, payload = big_batches()[0]
    bomb = zstandard.ZstdCompressor().compress(bytes(8 << 20))  # declares 8 MiB in a few hundred bytes
    with (
        server(tmp_path, "--memory-budget", str(4 << 20)) as srv,
        grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch,
    ):
        stub = pb_grpc.IngestStub(ch)
        for data in (payload, bomb):
            msgs = [open_msg("r" + uuid.uuid4().hex[:12]), batch_msg(first, last, payload=data)]
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Stream(iter(msgs), timeout=TIMEOUT))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
            assert "memory budget" in (info.value.details() or ""), info.value.details()
        ingest_is_acked(srv)  # the server goes on


def test_a_new_connection_hangs_when_every_connection_is_busy(tmp_path: Path) -> None:
    """At the cap with no idle connection to close (a live-updates stream is a request in
    progress), a new connection is answered 503 at once and closed; the busy one goes on."""
    with server(tmp_path, "--http-max-connections", "1") as srv:
        ingest_is_acked(srv)  # the project exists
        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=TIMEOUT) as live:
            live.sendall(b"GET /api/v1/events/acme/proto HTTP/1.1\r\nHost: x\r\n\r\n")
            head = live.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head
            status, _, body = http_get(f"{srv.url}/api/v1/info")
            assert status == 503, body
            assert "too many open connections" in str(body)
        info_answers(srv)  # the live stream closed: room again
