"""A TCP proxy on 127.0.0.1 that can delay, stall, cut and reset the path it carries (``tc netem``
is not available here, and needs root besides).

    proxy = Proxy(upstream_port=srv.grpc_port)   # or set proxy.upstream_port later, before traffic
    port = proxy.start()                         # clients connect here
    proxy.set_delay(0.05)   # every chunk, each way, is forwarded 50 ms after it was read
    proxy.stall()           # stop forwarding; connections stay open, new ones are accepted and held
    proxy.held("up")        # bytes read from one side and not yet forwarded (e.g. held by a stall)
    proxy.cut()             # close every connection (FIN) and refuse new ones (ECONNREFUSED)
    proxy.reset()           # the same with RST (SO_LINGER 0) on both sides of every connection
    proxy.restore()         # forward again (a delay stays as set)
    proxy.stop()

The proxy runs its own event loop in a daemon thread, so sync test code drives it; each method
returns once the change is in effect (``cut`` returns with every connection closed and the port
refusing).  While cut or reset, the port stays bound by a socket that does not listen, so the
kernel refuses connections and nothing else can take the port before ``restore``.

Bounds: a connection holds at most ``QUEUE_CHUNKS`` chunks of ``CHUNK`` bytes per direction, so a
stalled or delayed path pushes back on the sender (TCP flow control) instead of buffering without
limit.  Every loop ends at EOF, at an error, or when cut/reset/stop cancels it; a control call
waits at most ``CALL_TIMEOUT`` for the loop thread, and so does a connect to the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

CHUNK = 64 * 1024
QUEUE_CHUNKS = 16
CALL_TIMEOUT = 10.0  # seconds a control call waits for the loop thread; also the upstream connect
T = TypeVar("T")


def bound_socket(port: int) -> socket.socket:
    # SO_REUSEPORT lets the placeholder bind the port while the listener still holds it, so the
    # port is never free between the two (another process could take a free one).
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.setblocking(False)
    return s


class Pipe:
    """One client connection and its upstream connection."""

    def __init__(
        self, client: asyncio.StreamWriter, task: asyncio.Task[Any], registry: dict[asyncio.Task[Any], Pipe]
    ) -> None:
        self.ends: list[asyncio.StreamWriter] = [client]
        self.task = task  # the connection handler: cancelling it stops both pumps
        self.registry = registry
        registry[task] = self

    def close(self, rst: bool) -> None:
        self.registry.pop(self.task, None)  # now, so ``connections`` is right when cut() returns
        if asyncio.current_task() is not self.task:
            self.task.cancel()
        for w in self.ends:
            if rst:
                sock = w.get_extra_info("socket")
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()  # no flush: what the proxy still holds is lost, as on a real cut


class Proxy:
    def __init__(self, upstream_port: int = 0, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port  # may be set after start(), before the first client
        self.port = 0
        self.mode = "new"
        self.accepted = 0
        self.forwarded = {"up": 0, "down": 0}  # bytes delivered each way
        self.received = {"up": 0, "down": 0}  # bytes read each way (from the client: "up")
        self._delay = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None  # bound: listening, or the placeholder
        self._server: asyncio.base_events.Server | None = None
        self._pipes: dict[asyncio.Task[Any], Pipe] = {}
        self._flowing: asyncio.Event | None = None

    # --- the sync face (any thread) ----------------------------------------------------------
    def start(self) -> int:
        """Bind 127.0.0.1 on a free port and start forwarding; returns the port."""
        if self._loop is not None:
            raise RuntimeError("the proxy is already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-proxy", daemon=True)
        self._thread.start()
        self._call(self._open())
        return self.port

    def set_delay(self, seconds: float) -> None:
        """Each chunk read from then on is forwarded ``seconds`` later (both ways, order kept)."""
        if seconds < 0:
            raise ValueError("the delay must be >= 0")
        self._delay = float(seconds)

    def stall(self) -> None:
        self._call(self._set("stalled"))

    def cut(self) -> None:
        self._call(self._set("cut"))

    def reset(self) -> None:
        self._call(self._set("reset"))

    def restore(self) -> None:
        self._call(self._set("forwarding"))

    def held(self, way: str) -> int:
        """Bytes read going ``way`` and not forwarded (yet): what a stall holds back, so a test can
        see that a sender did write to the stalled path.  Bytes a cut or reset dropped count too."""
        return self.received[way] - self.forwarded[way]

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._pipes)

    def stop(self) -> None:
        """Close every connection and the port, and end the thread; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close_all())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CALL_TIMEOUT)
        if not thread.is_alive():
            loop.close()
        self.mode = "stopped"

    def __enter__(self) -> Proxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("start() the proxy first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT)

    # --- on the loop thread ------------------------------------------------------------------
    async def _open(self) -> None:
        self._flowing = asyncio.Event()
        self._sock = bound_socket(0)
        self.port = self._sock.getsockname()[1]
        await self._set("forwarding")

    async def _set(self, mode: str) -> None:
        assert self._flowing is not None and self._sock is not None
        if mode == "forwarding":
            if self._server is None:
                self._server = await asyncio.start_server(self._serve, sock=self._sock, backlog=128)
            self._flowing.set()
        elif mode == "stalled":
            self._flowing.clear()
        else:  # cut or reset: bind the placeholder before the listener goes, then drop everything
            if self._server is not None:
                placeholder = bound_socket(self.port)
                self._server.close()
                self._sock, self._server = placeholder, None
            for pipe in list(self._pipes.values()):
                pipe.close(rst=mode == "reset")
            self._flowing.set()  # nothing is left to hold back
        self.mode = mode

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        pipe = Pipe(writer, task, self._pipes)
        self.accepted += 1
        try:
            await self._forward(reader, writer, pipe)
        except asyncio.CancelledError:
            pass  # closed by cut/reset/stop; asyncio's own callback would log a cancelled handler
        finally:
            self._pipes.pop(task, None)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: Pipe) -> None:
        assert self._flowing is not None
        await self._flowing.wait()  # a stalled path does not reach the upstream either
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), CALL_TIMEOUT
            )
        except (OSError, TimeoutError):
            pipe.close(rst=True)  # upstream down: the client's connection is reset
            return
        pipe.ends.append(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, "up", pipe), self._pump(up_reader, writer, "down", pipe)
        )
        pipe.close(rst=False)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, way: str, pipe: Pipe) -> None:
        """Read from ``src`` into a bounded queue; ``_send`` forwards it when due.  Ends at EOF
        (passed on as a half-close) or at an error (passed on as a reset of the whole pipe)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(queue, dst, way, pipe))
        try:
            while True:
                # Read on while stalled (``_send`` holds what was read), as a stalled network
                # still takes bytes into its buffers: the queue's bound then pushes back.
                data = await src.read(CHUNK)
                self.received[way] += len(data)
                await queue.put((time.monotonic() + self._delay, data))
                if not data:
                    break
            await sender
        except OSError:
            pipe.close(rst=True)
        finally:
            sender.cancel()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter, way: str, pipe: Pipe
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                self.forwarded[way] += len(data)  # first: a reader may see the bytes at once
                dst.write(data)
                await dst.drain()
        except OSError:
            pipe.close(rst=True)

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        elif self._sock is not None:
            self._sock.close()
        for pipe in list(self._pipes.values()):
            pipe.close(rst=False)
        # Let every task unwind and every aborted transport run its close callback before the
        # loop stops: a callback left queued would leave its socket open.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        if rest:
            await asyncio.wait(rest, timeout=CALL_TIMEOUT)
        for _ in range(3):
            await asyncio.sleep(0)
