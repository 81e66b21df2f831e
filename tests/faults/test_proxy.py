"""The fault-injecting TCP proxy (tests/support/proxy.py) against a plain echo server."""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.proxy import Proxy
from tests.support.waiting import wait_for


class Echo(socketserver.BaseRequestHandler):
    errors: list[BaseException]

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError as e:
            self.server.errors.append(e)  # type: ignore[attr-defined]


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Echo)
        self.errors: list[BaseException] = []


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[Proxy]:
    p = Proxy(upstream_port=echo.server_address[1])
    p.start()
    yield p
    p.stop()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def roundtrip(s: socket.socket, data: bytes = b"ping") -> float:
    t0 = time.monotonic()
    s.sendall(data)
    assert recv_exactly(s, len(data)) == data
    return time.monotonic() - t0


def test_forwards_both_ways_on_loopback(proxy: Proxy) -> None:
    assert proxy._sock is not None and proxy._sock.getsockname()[0] == "127.0.0.1"
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(connect(proxy.port)) for _ in range(3)]
        for i, c in enumerate(conns):
            roundtrip(c, f"hello {i}".encode())
        assert proxy.connections == 3 and proxy.accepted == 3
        assert proxy.forwarded == {"up": 21, "down": 21}


def test_large_transfer_arrives_whole_and_in_order(proxy: Proxy) -> None:
    data = os.urandom(4 << 20)  # far more than the proxy's queues hold: flow control must work
    with connect(proxy.port) as c:
        sender = threading.Thread(target=c.sendall, args=(data,))
        sender.start()
        got = recv_exactly(c, len(data))
        sender.join(10)
    assert got == data


def test_delay_applies_each_way(proxy: Proxy) -> None:
    with connect(proxy.port) as c:
        roundtrip(c)  # connected upstream
        proxy.set_delay(0.1)
        assert 0.2 <= roundtrip(c) < 1.5
        proxy.set_delay(0)
        assert roundtrip(c) < 0.2
    with pytest.raises(ValueError):
        proxy.set_delay(-1)


def test_stall_holds_connections_and_data_until_restore(proxy: Proxy) -> None:
    with connect(proxy.port) as old:
        roundtrip(old)
        proxy.stall()
        old.sendall(b"held")
        # read and held, not forwarded (what a test waits on to know a sender met the stall)
        wait_for(lambda: proxy.held("up") == 4, 5, "the proxy to hold the bytes", interval=0.01)
        new = connect(proxy.port)  # accepted, but not carried upstream yet
        new.sendall(b"new")
        for s in (old, new):
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.recv(10)
            s.settimeout(5)
        assert proxy.connections == 2
        proxy.restore()
        assert recv_exactly(old, 4) == b"held"
        assert recv_exactly(new, 3) == b"new"
        assert proxy.held("up") == proxy.held("down") == 0
        new.close()


def test_cut_closes_connections_and_refuses_new_ones(proxy: Proxy) -> None:
    port = proxy.port
    with connect(port) as c:
        roundtrip(c)
        proxy.cut()
        assert c.recv(10) == b""  # FIN, not RST
    assert proxy.connections == 0
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    proxy.restore()
    assert proxy.port == port
    with connect(port) as c:
        roundtrip(c)


def test_reset_sends_rst_both_ways(proxy: Proxy, echo: EchoServer) -> None:
    with connect(proxy.port) as c:
        roundtrip(c)
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            c.recv(10)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy.port)
    wait_for(lambda: echo.errors, 5, "the echo server to see the reset", interval=0.01)
    assert any(isinstance(e, ConnectionResetError) for e in echo.errors), echo.errors
    proxy.restore()
    with connect(proxy.port) as c:
        roundtrip(c)


def test_upstream_closing_reaches_the_client(proxy: Proxy, echo: EchoServer) -> None:
    with connect(proxy.port) as c:
        roundtrip(c)
        c.shutdown(socket.SHUT_WR)  # the echo handler ends and closes: EOF comes back
        assert c.recv(10) == b""
    wait_for(lambda: proxy.connections == 0, 5, "the proxy to close the connection", interval=0.01)


def test_upstream_down_resets_the_client() -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    # Under load the reset may land before connect() returns, so both calls are inside raises.
    with Proxy(upstream_port=port) as p, pytest.raises(ConnectionResetError), connect(p.port) as c:
        c.recv(10)


def test_stop_closes_everything_and_is_idempotent(echo: EchoServer) -> None:
    p = Proxy(upstream_port=echo.server_address[1])
    port = p.start()
    c = connect(port)
    roundtrip(c)
    p.stop()
    assert c.recv(10) == b""
    c.close()
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    assert p._thread is not None and not p._thread.is_alive()
    p.stop()
    with pytest.raises(RuntimeError):
        p.start()
