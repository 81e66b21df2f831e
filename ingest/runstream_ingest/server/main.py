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
import signal
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from aiohttp import web

from runstream_ingest.server.args import DB_NAME, data_dir
from runstream_ingest.server.auth.guard import Authenticator, auth_required, insecure_warning
from runstream_ingest.server.auth.keys import KeyStore
from runstream_ingest.server.commit import StorageWriter
from runstream_ingest.server.http.api import HttpApi
from runstream_ingest.server.http.blobs import BlobStore
from runstream_ingest.server.http.live import LiveHub
from runstream_ingest.server.ingest_service import IngestService, Limits
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc

log = logging.getLogger("runstream.server")


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
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
        self.limits = Limits(max_message=args.max_message)
        self.touched: set[str] = set()  # runs stored to since the last compaction pass
        self.live = LiveHub()  # dashboards following runs (server-sent events)
        self.ingest = IngestService(self.storage, self.auth, self.store, self.limits, on_stored=self._stored)
        self._stop = asyncio.Event()

    def _stored(self, run_path: str, acked: int) -> None:
        self.touched.add(run_path)
        self.live.notify(run_path)

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
            blobs=BlobStore(self.data_dir / "blobs"),
        )  # fmt: skip
        runner = web.AppRunner(http.app(), access_log=None)
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
        janitor = asyncio.create_task(self._janitor())
        await self._stop.wait()
        janitor.cancel()
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
                    log.warning("run %s went silent for %.0fs: marked crashed", path, timeout)
                    self.live.notify(path)
                touched, self.touched = self.touched, set()
                for path in touched:
                    entity, project, run_id = path.split("/")
                    await loop.run_in_executor(self.writer, self.storage.compact, entity, project, run_id)
            except Exception:  # the janitor must outlive any one bad run
                log.exception("janitor pass failed")


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(Server(args).run())
