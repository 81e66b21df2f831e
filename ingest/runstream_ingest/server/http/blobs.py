"""Files kept with runs: a content-addressed blob store on disk beside the database, its upload
routes, and the download of a run's file (docs/files.md, docs/http-api.md "Files").

    HEAD /api/v1/blobs/{sha256}                    200: held whole; 404: Upload-Offset bytes held
    PUT  /api/v1/blobs/{sha256}?offset=N&size=S    one part, appended at N (must be what is held)
    GET  /api/v1/runs/{e}/{p}/{id}/files/{path}    the content of the run's file

A blob lives at ``<data dir>/blobs/<sha[:2]>/<sha>``; an upload in progress at
``<data dir>/blobs/partial/<sha>``, growing part by part, so an upload cut anywhere resumes from
what reached the disk.  When it reaches its size the server hashes it and moves it into place only
if the content is what it is named; otherwise it is discarded (422).  A blob is stored once
whatever the number of runs or files that have that content.

Concurrency contract: ``BlobStore`` methods block (disk I/O) and run on the loop's default
executor; the handlers run on the event loop and hold one ``asyncio.Lock`` per sha256 while they
append, so two uploads of the same content never interleave their parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from aiohttp import web

from runstream_ingest.server.http.util import bad, error, int_param, respond
from runstream_ingest.server.storage.interface import RunNotFound, Storage

T = TypeVar("T")
log = logging.getLogger("runstream.server.blobs")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_PART = 64 << 20  # bytes per PUT
CHUNK = 1 << 20
OFFSET_HEADER = "Upload-Offset"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial_dir = root / "partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def size(self, sha: str) -> int | None:
        """The blob's size when it is held whole, else None."""
        try:
            return self.path(sha).stat().st_size
        except FileNotFoundError:
            return None

    def held(self, sha: str) -> int:
        """Bytes of an unfinished upload of ``sha``."""
        try:
            return (self.partial_dir / sha).stat().st_size
        except FileNotFoundError:
            return 0

    def open_partial(self, sha: str) -> BinaryIO:
        return open(self.partial_dir / sha, "ab")

    def discard(self, sha: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.partial_dir / sha).unlink()

    def complete(self, sha: str) -> str:
        """Hash the finished upload; keep it if it is ``sha`` (returns it), else discard it and
        return what its content hashes to."""
        part = self.partial_dir / sha
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with open(part, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        got = h.hexdigest()
        if got != sha:
            part.unlink()
            return got
        dest = self.path(sha)
        dest.parent.mkdir(exist_ok=True)
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, dest)
        return got


class FileRoutes:
    """Handlers mixed into ``HttpApi``, which provides what is declared here."""

    storage: Storage
    blobs: BlobStore | None
    _blob_locks: dict[str, asyncio.Lock]

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    def _where(self, request: web.Request) -> tuple[str, str, str]:
        raise NotImplementedError

    def _authorise(self, request: web.Request, entity: str | None) -> Any:
        raise NotImplementedError

    def _blob_request(self, request: web.Request) -> tuple[BlobStore, str]:
        self._authorise(request, None)  # any valid key may upload; reading is per entity
        if self.blobs is None:
            raise error(
                501, "UNIMPLEMENTED", "this server keeps no files (it was started without a blob store)"
            )
        sha = request.match_info["sha256"]
        if not SHA256.fullmatch(sha):
            raise bad(f"{sha!r} is not a sha256: 64 lowercase hex digits")
        return self.blobs, sha

    async def head_blob(self, request: web.Request) -> web.Response:
        blobs, sha = self._blob_request(request)
        loop = asyncio.get_running_loop()
        size = await loop.run_in_executor(None, blobs.size, sha)
        if size is not None:
            return web.Response(status=200, headers={OFFSET_HEADER: str(size)})
        held = await loop.run_in_executor(None, blobs.held, sha)
        return web.Response(status=404, headers={OFFSET_HEADER: str(held)})

    async def put_blob(self, request: web.Request) -> web.Response:
        blobs, sha = self._blob_request(request)
        offset = int_param(request, "offset", None, 0, None)
        size = int_param(request, "size", None, 0, None)
        if offset is None or size is None:
            raise bad("offset and size are required: where this part starts, and the whole blob's size")
        length = request.content_length
        if length is None:
            raise bad("a part needs a Content-Length")
        if length > MAX_PART:
            raise bad(f"a part may be at most {MAX_PART} bytes, not {length}")
        if offset + length > size:
            raise bad(f"a part of {length} bytes at offset {offset} runs past the blob's size {size}")
        loop = asyncio.get_running_loop()
        lock = self._blob_locks.setdefault(sha, asyncio.Lock())
        async with lock:
            have = await loop.run_in_executor(None, blobs.size, sha)
            if have is not None:  # dedup: someone uploaded this content already
                return respond({"sha256": sha, "offset": have, "complete": True})
            held = await loop.run_in_executor(None, blobs.held, sha)
            if held != offset:
                e = error(409, "FAILED_PRECONDITION", f"the server holds {held} bytes of blob {sha}; "
                          f"send the part at offset {held}, not {offset}")  # fmt: skip
                e.headers[OFFSET_HEADER] = str(held)
                raise e
            written = await self._append(blobs, sha, request)
            end = offset + written
            if end < size:
                return respond({"sha256": sha, "offset": end, "complete": False})
            got = await loop.run_in_executor(None, blobs.complete, sha)
            if got != sha:
                raise error(422, "DATA_LOSS", f"the uploaded content hashes to {got}, not {sha}: discarded")
            log.info("blob %s stored: %d bytes", sha, size)
            self._blob_locks.pop(sha, None)
            return web.json_response({"sha256": sha, "offset": size, "complete": True}, status=201)

    async def _append(self, blobs: BlobStore, sha: str, request: web.Request) -> int:
        """Append the request's body as it arrives; a cut connection keeps what came."""
        loop = asyncio.get_running_loop()
        f = await loop.run_in_executor(None, blobs.open_partial, sha)
        written = 0
        try:
            async for chunk in request.content.iter_chunked(CHUNK):
                await loop.run_in_executor(None, f.write, chunk)
                written += len(chunk)
        except ConnectionError:  # the client went away: what came stays, its next HEAD sees it
            log.info("upload of blob %s cut: %d bytes of the part came", sha, written)
        finally:
            await loop.run_in_executor(None, f.close)
        return written

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        """The content of one of the run's files, streamed from its blob."""
        entity, project, run_id = self._where(request)
        path = request.match_info["path"]
        try:
            files = await self._read(self.storage.files, entity, project, run_id)
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        found = next((f for f in files if f.path == path), None)
        where = f"{entity}/{project}/{run_id}"
        if found is None:
            raise error(404, "NOT_FOUND", f"run {where} has no file {path!r}")
        blob = None
        if found.sha256 is not None and self.blobs is not None and SHA256.fullmatch(found.sha256):
            blob = self.blobs.path(found.sha256)
            if not await asyncio.get_running_loop().run_in_executor(None, blob.is_file):
                blob = None
        if blob is None:
            raise error(409, "FAILED_PRECONDITION", f"file {path!r} of run {where} is not uploaded yet "
                        "(an offline run's files arrive with `runstream sync`)")  # fmt: skip
        name = urllib.parse.quote(path.rsplit("/", 1)[-1])
        return web.FileResponse(
            blob,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
                "X-Runstream-Sha256": str(found.sha256),
            },
        )


def add_routes(app: web.Application, api: FileRoutes) -> None:
    run = "/api/v1/runs/{entity}/{project}/{run_id}"
    app.add_routes(
        [
            web.head("/api/v1/blobs/{sha256}", api.head_blob),
            web.put("/api/v1/blobs/{sha256}", api.put_blob),
            web.get(run + "/files/{path:.+}", api.get_file),
        ]
    )
