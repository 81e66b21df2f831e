"""``runstream server``: gRPC ingest and the HTTP API on one event loop, SQLite under a data dir.

    runstream server [--host 127.0.0.1] [--port 7780] [--grpc-port 7781] [--data-dir ~/.runstream/server]

Clients are given one address, ``http://HOST:PORT``; ``/api/v1/info`` names the gRPC port.  The
chosen ports are also written to ``<data-dir>/server.json`` (handy with ``--port 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import signal
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from runstream_ingest.server.alert_config import parse_webhooks
from runstream_ingest.server.alerts import AlertDelivery
from runstream_ingest.server.args import DB_NAME, data_dir
from runstream_ingest.server.auth.guard import Authenticator, auth_required, insecure_warning
from runstream_ingest.server.auth.keys import KeyStore
from runstream_ingest.server.commit import StorageWriter
from runstream_ingest.server.http.api import HttpApi
from runstream_ingest.server.http.blobs import BlobLimits, BlobStore
from runstream_ingest.server.http.live import LiveHub
from runstream_ingest.server.ingest_service import IngestService, Limits
from runstream_ingest.server.storage.interface import MEMBER_SEP
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc

log = logging.getLogger("runstream.server")

# Open files kept out of the HTTP connection cap's reach: gRPC connections and streams, the
# database and its WAL, blobs being read or written, the log.  Without them a flood of HTTP
# connections would leave ingest unable to accept (docs/server-limits.md).
FD_RESERVE = 256
CAP_LOG_EVERY = 10.0  # seconds between two log lines about the HTTP connection cap
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 34\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\ntoo many open connections, retry\r\n"
)


def raise_open_files_limit(target: int = 1 << 20) -> int:
    """Raise the soft limit on open files as far as the hard limit allows (or ``target``), and
    return it: the usual soft limit of 1,024 is a few hundred idle HTTP clients away from a server
    that can no longer accept anything, ingest included."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    for n in (want, 65536):  # the kernel's nr_open may be below the hard limit
        if n <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
            return n
        except (ValueError, OSError):
            continue
    return soft


def _blob_limits(a: argparse.Namespace) -> BlobLimits:
    """The file limits: command-line options over RUNSTREAM_SERVER_* variables over defaults."""
    env = BlobLimits.from_env()
    return BlobLimits(
        a.max_file_size if a.max_file_size is not None else env.max_file_size,
        a.upload_quota if a.upload_quota is not None else env.upload_quota,
        a.upload_expiry if a.upload_expiry is not None else env.upload_expiry,
    )


class _GuardedServer(web.Server):
    """aiohttp's connection manager with a cap on open connections and a deadline for the first
    request head (aiohttp bounds only the wait between requests, ``keepalive_timeout``).

    At the cap, a new connection closes the oldest idle one (waiting for a request head: idle
    keep-alives, slow or silent clients) or, when none is idle, is answered 503 and closed, so
    the process never runs out of open files for gRPC.  Refusals are logged once per
    ``CAP_LOG_EVERY``, not once per connection.

    Concurrency contract: event loop only, like aiohttp's own.
    """

    def __init__(self, base: web.Server, cap: int, header_timeout: float) -> None:
        # The runner's server, rebuilt as this class with the same handler and handler arguments.
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            **base._kwargs,
        )
        self.cap = cap
        self.header_timeout = header_timeout
        # Open connections, oldest first, with their first-request-head deadline (None once past).
        self._open: dict[RequestHandler, asyncio.TimerHandle | None] = {}
        self._evicted = self._refused = 0
        self._logged = 0.0

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        loop = asyncio.get_running_loop()
        if len(self._open) >= self.cap:
            # Closed on the next turn of the loop, after the handler's task started: aiohttp's
            # handler fails an assertion when its connection is lost before it starts.
            idle = next((h for h in self._open if _idle(h)), None)
            if idle is None:  # every connection is busy (requests, live updates): refuse this one
                self._refused += 1
                self._note_cap()
                transport.write(BUSY)
                loop.call_soon(handler.force_close)  # the 503 is flushed before the socket closes
                return
            self._evicted += 1
            self._note_cap()
            self._forget(idle)
            loop.call_soon(idle.force_close)
        self._open[handler] = loop.call_later(self.header_timeout, self._header_deadline, handler)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._forget(handler)

    def _forget(self, handler: RequestHandler) -> None:
        timer = self._open.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _header_deadline(self, handler: RequestHandler) -> None:
        if handler in self._open:
            self._open[handler] = None
        if handler._request_count == 0:  # not one whole request head since it connected
            handler.force_close()

    def _note_cap(self) -> None:
        now = time.monotonic()
        if now - self._logged >= CAP_LOG_EVERY:
            log.warning(
                "HTTP connection cap (%d) reached: %d idle connections closed and %d new ones "
                "refused (503) since the last report; next report in %.0f s at the earliest",
                self.cap, self._evicted, self._refused, CAP_LOG_EVERY,
            )  # fmt: skip
            self._logged = now
            self._evicted = self._refused = 0


def _idle(handler: RequestHandler) -> bool:
    """Waiting for a request head (an idle keep-alive, a slow or silent client), or not started."""
    return handler._waiter is not None or handler._request_count == 0


class _GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose connections go through ``_GuardedServer``."""

    def __init__(self, app: web.Application, cap: int, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._cap, self._header_timeout = cap, header_timeout

    async def _make_server(self) -> web.Server:
        return _GuardedServer(await super()._make_server(), self._cap, self._header_timeout)


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.open_files = raise_open_files_limit()
        # The HTTP side may use all open files but FD_RESERVE (gRPC's reserve), whatever asked.
        self.http_cap = max(1, min(args.http_max_connections, self.open_files - FD_RESERVE))
        if self.http_cap < args.http_max_connections:
            log.warning(
                "at most %d HTTP connections (not %d): the open-files limit is %d",
                self.http_cap, args.http_max_connections, self.open_files,
            )  # fmt: skip
        self.data_dir = data_dir(args.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        db = self.data_dir / DB_NAME
        self.storage = SqliteStorage(db)
        self.keys = KeyStore(db)
        self.required = auth_required(args.host, args.auth)
        self.auth = Authenticator(self.keys, required=self.required)
        self.store = StorageWriter(self.storage)  # group commit of batches
        self.writer = self.store.executor  # the storage's one writer thread, for other writes
        self.readers = ThreadPoolExecutor(4, thread_name_prefix="storage-reader")
        self.limits = Limits(max_message=args.max_message, memory_budget=args.memory_budget)
        self.touched: set[str] = set()  # runs stored to since the last compaction pass
        self.live = LiveHub()  # dashboards following runs (server-sent events)
        self.ingest = IngestService(self.storage, self.auth, self.store, self.limits, on_stored=self._stored)
        self.webhooks = parse_webhooks(args.alert_webhook)  # args.py checked each; this, repeats
        self._stop = asyncio.Event()

    def _stored(self, run_path: str, acked: int) -> None:
        self.touched.add(run_path)  # the row stored to (a distributed run's member row: its own)
        self.live.notify(job_path(run_path))

    def _credentials(self) -> grpc.ServerCredentials | None:
        a = self.args
        if not (a.tls_cert and a.tls_key):
            return None
        return grpc.ssl_server_credentials([(a.tls_key.read_bytes(), a.tls_cert.read_bytes())])

    async def run(self) -> int:
        a = self.args
        warning = insecure_warning(a.host, bool(a.tls_cert))
        if warning:
            print(warning, file=sys.stderr)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.limits.max_message),
                ("grpc.max_send_message_length", self.limits.max_message),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        pb_grpc.add_IngestServicer_to_server(self.ingest, server)  # type: ignore[no-untyped-call]
        grpc_port = a.grpc_port if a.grpc_port is not None else (a.port + 1 if a.port else 0)
        creds = self._credentials()
        addr = f"{a.host}:{grpc_port}"
        grpc_port = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
        await server.start()
        advertised = a.advertise_grpc_port or grpc_port
        info: dict[str, Any] = {
            "version": 1,
            "grpc_port": advertised,
            "bound_grpc_port": grpc_port,
            "auth": self.required,
            "tls": creds is not None,
        }
        http = HttpApi(
            self.storage, self.auth, self.readers, info, writer=self.writer, live=self.live,
            blobs=BlobStore(self.data_dir / "blobs", _blob_limits(a)),
        )  # fmt: skip
        runner = _GuardedRunner(
            http.app(), self.http_cap, a.http_header_timeout,
            access_log=None, keepalive_timeout=a.http_idle_timeout,
        )  # fmt: skip
        await runner.setup()
        https = None
        if creds is not None:  # the same certificate on both ports: keys never cross in clear
            https = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            https.load_cert_chain(a.tls_cert, a.tls_key)
        site = web.TCPSite(runner, a.host, a.port, ssl_context=https)
        await site.start()
        http_port = runner.addresses[0][1]
        scheme = "https" if creds else "http"
        (self.data_dir / "server.json").write_text(
            json.dumps(
                {
                    "url": f"{scheme}://{a.host}:{http_port}",
                    "http_port": http_port,
                    **info,
                    "pid": os.getpid(),
                }
            )
        )
        print(
            f"runstream server: {scheme}://{a.host}:{http_port} (gRPC port {grpc_port}), "
            f"data in {self.data_dir}" + (", API keys required" if self.required else ""),
            flush=True,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        # Everything made so far (modules, gRPC, the app) lives as long as the server: the
        # collector need not walk it again and again while batches come in.
        gc.freeze()
        alerts = AlertDelivery(
            self.storage, self.readers, self.writer, self.webhooks,
            a.public_url or f"{scheme}://{a.host}:{http_port}",
            retry_base=a.alert_retry_base, max_attempts=a.alert_max_attempts,
        )  # fmt: skip
        alerts.start()
        janitor = asyncio.create_task(self._janitor())
        await self._stop.wait()
        janitor.cancel()
        await alerts.stop()
        await server.stop(grace=3)
        await runner.cleanup()
        self.writer.shutdown(wait=True)
        if self.store.groups:
            log.info("stored %d batches in %d group commits", self.store.batches, self.store.groups)
        self.readers.shutdown(wait=True)
        self.storage.close()
        self.keys.close()
        return 0

    async def _janitor(self) -> None:
        """Marks runs whose machine went silent as crashed, and compacts the history chunks of
        runs that received data (small per-batch chunks merge into chunks of a few thousand)."""
        loop = asyncio.get_running_loop()
        timeout = self.args.heartbeat_timeout
        while True:
            await asyncio.sleep(min(10.0, max(timeout / 4, 0.5)))
            try:
                crashed = await loop.run_in_executor(
                    self.writer, self.storage.mark_stale_runs_crashed, time.time() - timeout
                )
                for path in crashed:
                    top = job_path(path)
                    # Only ranks go stale ("<id>~r<rank>"): node rows follow their ranks.
                    what = "run" if top == path else f"rank {path.rsplit(MEMBER_SEP, 1)[1][1:]} of run"
                    log.warning("%s %s went silent for %.0fs: marked crashed", what, top, timeout)
                    self.live.notify(top)
                touched, self.touched = self.touched, set()
                for path in touched:
                    entity, project, run_id = path.split("/")
                    await loop.run_in_executor(self.writer, self.storage.compact, entity, project, run_id)
            except Exception:  # the janitor must outlive any one bad run
                log.exception("janitor pass failed")


def job_path(path: str) -> str:
    """The run a stored row belongs to: a distributed run's member row ("e/p/id~r3") is part of
    run "e/p/id" (dashboards follow that one); any other row is its own run."""
    return path.split(MEMBER_SEP, 1)[0]


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parse_webhooks(args.alert_webhook)
    except ValueError as e:  # an entity given twice (args.py checked each option alone)
        print(f"runstream server: {e}", file=sys.stderr)
        return 2
    return asyncio.run(Server(args).run())
