"""Files kept with runs: a content-addressed blob store on disk beside the database, its upload
routes, and the download of a run's file (docs/files.md, docs/http-api.md "Files").

    HEAD /api/v1/blobs/{sha256}                    200: the caller's entity holds it whole;
                                                   404: Upload-Offset bytes of its upload held
    PUT  /api/v1/blobs/{sha256}?offset=N&size=S    one part, appended at N (must be what is held)
    GET  /api/v1/runs/{e}/{p}/{id}/files/{path}    the content of the run's file

A blob lives at ``<data dir>/blobs/<sha[:2]>/<sha>``, stored once whoever uploaded it.  Access is
per entity: ``blobs/owners/<entity tag>/<sha[:2]>/<sha>`` (an empty file) says that entity
uploaded that content, and only then may its runs' files be read from the blob and does HEAD
say it is held.  With auth on, knowing a sha256 is not owning the content: an entity that has
not uploaded it sends it whole, and only once the server has hashed it does the entity own it
(the disk keeps one copy).  With auth off (one user) every blob is the user's, as before.

An upload in progress lives at ``blobs/partial/<entity tag>/<sha>.<claimed size>``, growing part
by part, so an upload cut anywhere resumes from what reached the disk, and one entity's partial
never touches another's.  When it reaches its size the server hashes it and moves it into place
only if the content is what it is named; otherwise it is discarded (422).  Partials are bounded
(``BlobLimits``): a claimed size at most ``max_file_size``, an entity's unfinished bytes at most
``upload_quota``, and a partial not written to for ``upload_expiry`` seconds is removed (at start,
and by a sweep run lazily from the upload routes).

Concurrency contract: ``BlobStore`` methods block (disk I/O) and run on the loop's default
executor; the handlers run on the event loop and hold one ``asyncio.Lock`` per (entity, sha256)
while they append, so two uploads of the same partial never interleave their parts.  Quota
reservations (``_inflight``) are taken and released on the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from aiohttp import web

from runstream_ingest.server.auth.guard import Authenticator, AuthError
from runstream_ingest.server.http.ranks import rank_param
from runstream_ingest.server.http.util import bad, error, int_param, respond
from runstream_ingest.server.storage.interface import RunNotFound, Storage

T = TypeVar("T")
log = logging.getLogger("runstream.server.blobs")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_PART = 64 << 20  # bytes per PUT
CHUNK = 1 << 20
OFFSET_HEADER = "Upload-Offset"
NO_AUTH = "local"  # the entity tag without auth: not hex, so no entity's tag can be it

ENV_MAX_FILE_SIZE = "RUNSTREAM_SERVER_MAX_FILE_SIZE"
ENV_UPLOAD_QUOTA = "RUNSTREAM_SERVER_UPLOAD_QUOTA"
ENV_UPLOAD_EXPIRY = "RUNSTREAM_SERVER_UPLOAD_EXPIRY"


@dataclass(frozen=True)
class BlobLimits:
    max_file_size: int = 64 << 30  # bytes one blob may claim
    upload_quota: int = 64 << 30  # unfinished bytes per entity (at least one largest file)
    upload_expiry: float = 24 * 3600.0  # seconds a partial may go unwritten before it is removed

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BlobLimits:
        """The defaults, overridden by ``RUNSTREAM_SERVER_MAX_FILE_SIZE`` (bytes),
        ``RUNSTREAM_SERVER_UPLOAD_QUOTA`` (bytes) and ``RUNSTREAM_SERVER_UPLOAD_EXPIRY`` (seconds)."""
        e = dict(os.environ if env is None else env)
        d = cls()
        try:
            return cls(
                int(e.get(ENV_MAX_FILE_SIZE) or d.max_file_size),
                int(e.get(ENV_UPLOAD_QUOTA) or d.upload_quota),
                float(e.get(ENV_UPLOAD_EXPIRY) or d.upload_expiry),
            )
        except ValueError as exc:
            raise ValueError(f"a blob limit in the environment is not a number: {exc}") from None


def entity_tag(entity: str | None) -> str:
    """A directory name for ``entity`` whatever characters its name has (None: auth off)."""
    return NO_AUTH if entity is None else hashlib.sha256(entity.encode()).hexdigest()[:32]


class BlobStore:
    def __init__(self, root: Path, limits: BlobLimits | None = None, clock: Callable[[], float] = time.time):
        self.root = root
        self.limits = limits if limits is not None else BlobLimits.from_env()
        self.clock = clock
        self.partial_dir = root / "partial"
        self.owners_dir = root / "owners"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.owners_dir.mkdir(exist_ok=True)
        self.swept_at = 0.0
        self.sweep()

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def size(self, sha: str) -> int | None:
        """The blob's size when it is held whole, else None."""
        try:
            return self.path(sha).stat().st_size
        except FileNotFoundError:
            return None

    def _owner_mark(self, tag: str, sha: str) -> Path:
        return self.owners_dir / tag / sha[:2] / sha

    def owned_size(self, tag: str, sha: str) -> int | None:
        """The blob's size when ``tag``'s entity may read it, else None."""
        size = self.size(sha)
        if size is None or tag == NO_AUTH:  # without auth every blob is the one user's
            return size
        return size if self._owner_mark(tag, sha).is_file() else None

    def own(self, tag: str, sha: str) -> None:
        if tag == NO_AUTH:
            return
        mark = self._owner_mark(tag, sha)
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()

    # --- partials -----------------------------------------------------------------------------
    def _partial(self, tag: str, sha: str) -> tuple[Path, int] | None:
        """(path, claimed size) of ``tag``'s unfinished upload of ``sha``."""
        for p in (self.partial_dir / tag).glob(sha + ".*"):
            with contextlib.suppress(ValueError):
                return p, int(p.name.rsplit(".", 1)[1])
        return None

    def held(self, tag: str, sha: str) -> int:
        """Bytes of ``tag``'s unfinished upload of ``sha``."""
        found = self._partial(tag, sha)
        if found is None:
            return 0
        try:
            return found[0].stat().st_size
        except FileNotFoundError:
            return 0

    def unfinished(self, tag: str) -> int:
        """Bytes of all of ``tag``'s unfinished uploads (what its quota counts)."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(self.partial_dir / tag):
                with contextlib.suppress(FileNotFoundError):
                    total += e.stat().st_size
        return total

    def prepare(self, tag: str, sha: str, size: int) -> int:
        """Bytes held of ``tag``'s upload of ``sha`` claimed at ``size``; a partial claimed at
        another size is discarded (the content has one size: that claim was wrong) and 0 held."""
        found = self._partial(tag, sha)
        if found is None:
            return 0
        path, claimed = found
        if claimed != size:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return 0
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def open_partial(self, tag: str, sha: str, size: int) -> BinaryIO:
        d = self.partial_dir / tag
        d.mkdir(exist_ok=True)
        return open(d / f"{sha}.{size}", "ab")

    def complete(self, tag: str, sha: str, size: int) -> str:
        """Hash the finished upload; keep it if it is ``sha`` (returns it, and ``tag`` owns it),
        else discard it and return what its content hashes to."""
        part = self.partial_dir / tag / f"{sha}.{size}"
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
        if dest.is_file():  # another entity uploaded it: now that this one proved it, keep one copy
            part.unlink()
        else:
            dest.parent.mkdir(exist_ok=True)
            with open(part, "rb") as f:
                os.fsync(f.fileno())
            os.replace(part, dest)
        self.own(tag, sha)
        return got

    def sweep(self) -> int:
        """Remove partials not written to for ``upload_expiry`` seconds, and any left in the
        layout before partials were per entity (no entity could resume them).  Returns how many."""
        now = self.clock()
        self.swept_at = now
        removed = 0
        for e in list(os.scandir(self.partial_dir)):
            if not e.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)
                    removed += 1
                continue
            for p in list(os.scandir(e.path)):
                with contextlib.suppress(FileNotFoundError):
                    if now - p.stat().st_mtime > self.limits.upload_expiry:
                        os.unlink(p.path)
                        removed += 1
        if removed:
            log.info("%d unfinished uploads expired and were removed", removed)
        return removed

    def sweep_due(self) -> bool:
        # Often enough that a partial outlives its expiry by at most half of it (or a minute).
        return self.clock() - self.swept_at >= min(self.limits.upload_expiry / 2, 60.0)


class FileRoutes:
    """Handlers mixed into ``HttpApi``, which provides what is declared here."""

    storage: Storage
    auth: Authenticator
    blobs: BlobStore | None
    _blob_locks: dict[str, asyncio.Lock]

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    def _where(self, request: web.Request) -> tuple[str, str, str]:
        raise NotImplementedError

    async def _target(self, entity: str, project: str, run_id: str, rank: Any = None) -> str:
        raise NotImplementedError

    def _authorise(self, request: web.Request, entity: str | None) -> Any:
        raise NotImplementedError

    def _blob_request(self, request: web.Request) -> tuple[BlobStore, str, str]:
        """(store, entity tag of the caller, sha256).  Any valid key may upload; what it uploads
        (and what HEAD tells it) is its entity's."""
        session = self._authorise(request, None)
        if self.blobs is None:
            raise error(
                501, "UNIMPLEMENTED", "this server keeps no files (it was started without a blob store)"
            )
        sha = request.match_info["sha256"]
        if not SHA256.fullmatch(sha):
            raise bad(f"{sha!r} is not a sha256: 64 lowercase hex digits")
        entity: str | None = None
        if self.auth.required:
            if session is not None:
                entity = session.entity
            else:
                try:
                    key = self.auth.check(list(request.headers.items()), None)
                except AuthError as e:  # _authorise checked it already; revoked in between
                    raise error(e.http_status, e.code.name, e.message) from None
                entity = None if key is None else key.entity
            if entity is None:  # a session without a key on a server that needs one
                raise error(401, "UNAUTHENTICATED", "uploading files needs an API key")
        return self.blobs, entity_tag(entity), sha

    async def _maybe_sweep(self, blobs: BlobStore) -> None:
        if blobs.sweep_due():
            blobs.swept_at = blobs.clock()  # one sweep at a time, even while this one runs
            await asyncio.get_running_loop().run_in_executor(None, blobs.sweep)

    async def head_blob(self, request: web.Request) -> web.Response:
        blobs, tag, sha = self._blob_request(request)
        await self._maybe_sweep(blobs)
        loop = asyncio.get_running_loop()
        size = await loop.run_in_executor(None, blobs.owned_size, tag, sha)
        if size is not None:
            return web.Response(status=200, headers={OFFSET_HEADER: str(size)})
        held = await loop.run_in_executor(None, blobs.held, tag, sha)
        return web.Response(status=404, headers={OFFSET_HEADER: str(held)})

    async def put_blob(self, request: web.Request) -> web.Response:
        blobs, tag, sha = self._blob_request(request)
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
        limits = blobs.limits
        if size > limits.max_file_size:
            raise error(413, "RESOURCE_EXHAUSTED", f"a file may be at most {limits.max_file_size} bytes "
                        f"on this server, not {size}")  # fmt: skip
        await self._maybe_sweep(blobs)
        loop = asyncio.get_running_loop()
        key = f"{tag}/{sha}"
        lock = self._blob_locks.setdefault(key, asyncio.Lock())
        async with lock:
            have = await loop.run_in_executor(None, blobs.owned_size, tag, sha)
            if have is not None:  # dedup: this entity uploaded this content already
                return respond({"sha256": sha, "offset": have, "complete": True})
            held = await loop.run_in_executor(None, blobs.prepare, tag, sha, size)
            if held != offset:
                e = error(409, "FAILED_PRECONDITION", f"the server holds {held} bytes of blob {sha}; "
                          f"send the part at offset {held}, not {offset}")  # fmt: skip
                e.headers[OFFSET_HEADER] = str(held)
                raise e
            # The quota counts what is on disk and what other requests are writing now, so
            # parallel parts cannot together slip past it.
            unfinished = await loop.run_in_executor(None, blobs.unfinished, tag)
            inflight = self._inflight.get(tag, 0)
            if unfinished + inflight + length > limits.upload_quota:
                raise error(507, "RESOURCE_EXHAUSTED", f"unfinished uploads of this entity would hold "
                            f"{unfinished + inflight + length} bytes, past the server's quota of "
                            f"{limits.upload_quota}: finish them, or wait until they expire "
                            f"({limits.upload_expiry:g} s unwritten)")  # fmt: skip
            self._inflight[tag] = inflight + length
            try:
                written = await self._append(blobs, tag, sha, size, request)
            finally:
                left = self._inflight[tag] - length
                if left:
                    self._inflight[tag] = left
                else:
                    del self._inflight[tag]
            end = offset + written
            if end < size:
                return respond({"sha256": sha, "offset": end, "complete": False})
            got = await loop.run_in_executor(None, blobs.complete, tag, sha, size)
            if got != sha:
                raise error(422, "DATA_LOSS", f"the uploaded content hashes to {got}, not {sha}: discarded")
            log.info("blob %s stored: %d bytes", sha, size)
            self._blob_locks.pop(key, None)
            return web.json_response({"sha256": sha, "offset": size, "complete": True}, status=201)

    @property
    def _inflight(self) -> dict[str, int]:
        """Bytes being appended now, per entity tag (created on first use: HttpApi need not)."""
        d: dict[str, int] | None = getattr(self, "_inflight_bytes", None)
        if d is None:
            d = {}
            self._inflight_bytes = d
        return d

    async def _append(self, blobs: BlobStore, tag: str, sha: str, size: int, request: web.Request) -> int:
        """Append the request's body as it arrives, never past its Content-Length (the quota
        reserved that much); a cut connection keeps what came."""
        loop = asyncio.get_running_loop()
        f = await loop.run_in_executor(None, blobs.open_partial, tag, sha, size)
        written = 0
        limit = request.content_length or 0
        try:
            async for chunk in request.content.iter_chunked(CHUNK):
                chunk = chunk[: limit - written]
                if not chunk:
                    break
                await loop.run_in_executor(None, f.write, chunk)
                written += len(chunk)
        except ConnectionError:  # the client went away: what came stays, its next HEAD sees it
            log.info("upload of blob %s cut: %d bytes of the part came", sha, written)
        finally:
            await loop.run_in_executor(None, f.close)
        return written

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        """The content of one of the run's files, streamed from its blob if the run's entity
        uploaded that content (naming a sha256 in a FILE record grants nothing)."""
        entity, project, run_id = self._where(request)
        path = request.match_info["path"]
        row_id = await self._target(entity, project, run_id, rank_param(request))  # ?rank=N: its file
        try:
            files = await self._read(self.storage.files, entity, project, row_id)
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        found = next((f for f in files if f.path == path), None)
        where = f"{entity}/{project}/{run_id}"
        if found is None:
            raise error(404, "NOT_FOUND", f"run {where} has no file {path!r}")
        blob = None
        if found.sha256 is not None and self.blobs is not None and SHA256.fullmatch(found.sha256):
            tag = entity_tag(entity if self.auth.required else None)
            size = await asyncio.get_running_loop().run_in_executor(
                None, self.blobs.owned_size, tag, found.sha256
            )
            blob = None if size is None else self.blobs.path(found.sha256)
        if blob is None:
            raise error(409, "FAILED_PRECONDITION", f"file {path!r} of run {where} is not uploaded yet "
                        "(an offline run's files arrive with `runstream sync`)")  # fmt: skip
        name = urllib.parse.quote(path.rsplit("/", 1)[-1])
        # Media the dashboard shows (docs/media.md) by their type, inline; everything else --
        # HTML above all, which would run in the dashboard's origin -- as a download.
        kind = INLINE_TYPES.get(os.path.splitext(path)[1].lower())
        return web.FileResponse(
            blob,
            headers={
                "Content-Type": kind or "application/octet-stream",
                "Content-Disposition": f"{'inline' if kind else 'attachment'}; filename*=UTF-8''{name}",
                "X-Content-Type-Options": "nosniff",
                "X-Runstream-Sha256": str(found.sha256),
            },
        )


INLINE_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".mp4": "video/mp4", ".webm": "video/webm", ".ogg": "audio/ogg", ".wav": "audio/wav",
    ".mp3": "audio/mpeg", ".flac": "audio/flac", ".json": "application/json",
}  # fmt: skip


def add_routes(app: web.Application, api: FileRoutes) -> None:
    run = "/api/v1/runs/{entity}/{project}/{run_id}"
    app.add_routes(
        [
            web.head("/api/v1/blobs/{sha256}", api.head_blob),
            web.put("/api/v1/blobs/{sha256}", api.put_blob),
            web.get(run + "/files/{path:.+}", api.get_file),
        ]
    )
