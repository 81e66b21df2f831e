"""Stage 1b of the sidecar: media records encoded, and the rows that use them rewritten.

Between the ring reader and the batcher (docs/media.md, "How media travels").  A span that holds
MEDIA records is held back while its media are encoded, then rewritten record by record and
handed on, in ring order:

* a MEDIA record from the SDK (raw pixels, samples, text, or a staged file's name) is encoded by
  ``encode.encode`` into ``files/media/...``, the file is handed to the uploader, and the record
  becomes ``{"id", "key", "pointer"}`` (or ``"error"``) with ``FLAG_MEDIA_DONE``: the journal
  never holds raw pixels;
* the next ROW (or SUMMARY, for ``run.summary[k] = Image(...)``) -- the SDK pushes a row's
  MEDIA records right before it -- gets each ``{"_rs_media": id}`` replaced by the pointer.

Encoding runs on a small thread pool (PNG and zlib release the GIL, so images encode on several
cores while the loop goes on draining); tables and lists, which point at the media before them,
are put together on the loop once those are done.  Records keep their seq, kind, step and time;
a rewritten one gets a new length and CRC.

Crash safety: a held span's records stay in the ring (the sidecar releases the ring only up to
the last span it batched), and while MEDIA records wait for their row (``waiting``) no batch is
cut, so a sidecar killed at any point leaves them to its successor, which encodes them again
(file names are content hashes: the same files).  Staged files are deleted, and their bytes given
back to the producer's spill bound (``W_MEDIA_FREED``), only once the journal has the record.

Not safe for use from several threads: the sidecar's loop owns it; the pool's tasks touch only
their own record and files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from runstream.format import record as rec
from runstream.format.ring_layout import W_MEDIA_FAILED, W_MEDIA_FREED
from runstream_ingest.sidecar.media.encode import MediaError, encode
from runstream_ingest.sidecar.ring_reader import Span

log = logging.getLogger("runstream.media")

PLACEHOLDER = "_rs_media"
_META_LEN = 4
MAX_REMEMBERED = 4096  # pointers kept for rows still to come; a row consumes them all
COMPOSITE = ("table", "list")  # types that point at earlier media: put together in ring order
_UNSAFE = re.compile(r"[^\w\-. /=+,@]")


def safe_key(key: str) -> str:
    """A history key as a path below ``files/media/<dir>/`` (W&B's rule: ``/`` makes folders,
    leading slashes go, ``.`` and ``..`` parts become ``_``), with no character a file system or
    URL trips on."""
    parts = [p for p in _UNSAFE.sub("_", key).split("/") if p]
    return "/".join("_" if p in (".", "..") else p for p in parts) or "_"


@dataclass
class _Result:
    """One MEDIA record's outcome, from a pool thread or the loop."""

    meta: dict[str, Any]
    pointer: dict[str, Any] | None = None
    error: str | None = None
    uploads: list[str] = field(default_factory=list)


@dataclass
class _Held:
    span: Span
    jobs: dict[int, Future[_Result]]


class MediaStage:
    """Encodes media and rewrites the spans that hold them (see the module docstring)."""

    def __init__(
        self, run_dir: Path, words: Any, request_upload: Callable[[str], None], workers: int | None = None
    ) -> None:
        self.files_dir = run_dir / "files"
        self.staging = run_dir / "media-staging"
        self.words = words
        self.request_upload = request_upload
        self.pointers: dict[int, dict[str, Any]] = {}  # media id -> pointer, until its row
        self.waiting = False  # MEDIA records handed on whose row has not been handed on yet
        self._held: deque[_Held] = deque()
        self.held_bytes = 0
        self._pool: ThreadPoolExecutor | None = None
        self._workers = workers or max(1, min(4, (os.cpu_count() or 2) - 1))
        self._to_free: list[tuple[Path, int]] = []  # staged files to delete once journaled
        self.encoded = self.failed = 0

    # --- spans in, spans out -----------------------------------------------------------------------
    def wants(self, span: Span) -> bool:
        """Whether ``span`` must go through the stage: it holds media, or spans before it wait."""
        return bool(self._held) or any(r.kind == rec.KIND_MEDIA for r in span.control)

    def hold(self, span: Span) -> None:
        """Start encoding the span's media; ``ready`` hands it on once they are done."""
        jobs: dict[int, Future[_Result]] = {}
        for r in span.control:
            if r.kind != rec.KIND_MEDIA or r.flags & rec.FLAG_MEDIA_DONE:
                continue
            meta, payload = _parse(r)
            if meta is not None and meta.get("type") not in COMPOSITE:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="media")
                jobs[r.seq] = self._pool.submit(self._encode, meta, payload)
        self._held.append(_Held(span, jobs))
        self.held_bytes += len(span.data)

    def ready(self, block: bool = False) -> Iterator[Span]:
        """The held spans whose media are encoded, rewritten, in ring order (``block``: all of
        them, waiting for the encoders)."""
        while self._held:
            head = self._held[0]
            if block:
                wait(head.jobs.values())
            elif not all(f.done() for f in head.jobs.values()):
                return
            self._held.popleft()
            self.held_bytes -= len(head.span.data)
            yield self._rewrite(head)

    def rewrite(self, span: Span) -> Span:
        """``span`` encoded and rewritten now (waits for spans held before it too)."""
        self.hold(span)
        return list(self.ready(block=True))[-1]

    def wait(self) -> None:
        """Block until every held span's media are encoded (any thread; ``ready`` then takes
        them all without waiting)."""
        for held in list(self._held):
            wait(held.jobs.values())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # --- rewriting, on the loop --------------------------------------------------------------------
    def _rewrite(self, held: _Held) -> Span:
        span = held.span
        out: list[bytes] = []
        mv = memoryview(span.data)
        pos = 0
        for r in rec.iter_records(span.data):
            size = rec.padded(len(r.body))
            new: bytes | None = None
            if r.kind == rec.KIND_MEDIA and not r.flags & rec.FLAG_MEDIA_DONE:
                job = held.jobs.get(r.seq)
                result = job.result() if job is not None else self._composite(r)
                new = rec.encode(r.seq, r.kind, r.step, r.time, self._finish(r, result), rec.FLAG_MEDIA_DONE)
                self.waiting = True
            elif r.kind in (rec.KIND_ROW, rec.KIND_SUMMARY) and self.waiting:
                new = self._row(r)
            out.append(new if new is not None else bytes(mv[pos : pos + size]))
            pos += size
        assert pos == len(span.data), "a span is a run of whole records"  # as the reader hands them out
        return Span(b"".join(out), span.count, span.first_seq, span.last_seq, span.control, span.end)

    def _composite(self, r: rec.Record) -> _Result:
        meta, payload = _parse(r)
        if meta is None:
            return _Result({}, error="the record's meta is unreadable")
        return self._encode(meta, payload)

    def _finish(self, r: rec.Record, result: _Result) -> bytes:
        """Account for one encoded record; its new body."""
        meta = result.meta
        for rel in result.uploads:
            self.request_upload(rel)
        if result.error is None:
            self.encoded += 1
            pointer = result.pointer or {}
            body = {"id": meta.get("id"), "key": meta.get("key"), "pointer": pointer}
        else:
            self.failed += 1
            self.words[W_MEDIA_FAILED] = int(self.words[W_MEDIA_FAILED]) + 1
            log.warning("media %r (record seq %d) not written: %s", meta.get("key"), r.seq, result.error)
            kind = meta.get("type") if isinstance(meta.get("type"), str) else "media"
            pointer = {"_type": f"{kind}-file", "error": result.error}
            body = {"id": meta.get("id"), "key": meta.get("key"), "error": result.error}
        if isinstance(meta.get("id"), int):
            if len(self.pointers) >= MAX_REMEMBERED:
                self.pointers.pop(next(iter(self.pointers)))
            self.pointers[meta["id"]] = pointer
        if isinstance(meta.get("staged"), str):
            staged = self.staging / os.path.basename(meta["staged"])
            self._to_free.append((staged, int(meta.get("staged_size", 0))))
        return rec.pack_body(body)

    def _row(self, r: rec.Record) -> bytes | None:
        pointers, self.pointers, self.waiting = self.pointers, {}, False
        if PLACEHOLDER.encode() not in r.body:
            return None
        try:
            row = rec.unpack_body(r.body)
            body = msgpack.packb(_replace(row, pointers), use_bin_type=True)
        except Exception:  # a row the SDK packed is always readable; if not, it stays as it was
            log.exception("row seq %d: media pointers not filled in", r.seq)
            return None
        return rec.encode(r.seq, r.kind, r.step, r.time, body, r.flags)

    # --- encoding, on a pool thread (or the loop, for tables and lists) ------------------------------
    def _encode(self, meta: dict[str, Any], payload: memoryview) -> _Result:
        result = _Result(meta)
        try:
            result.pointer = encode(meta, payload, _Out(self, result))
        except Exception as e:  # bad data from a user: counted and shown, the run goes on
            result.error = str(e) if isinstance(e, MediaError) else f"{type(e).__name__}: {e}"
        return result

    def write(self, subdir: str, key: str, step: int, data: bytes, ext: str) -> dict[str, Any]:
        """Write one media file, named by content (``encode.MediaOut.write``)."""
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{subdir}/{safe_key(key)}_{step}_{sha[:20]}{ext}"
        path = self.files_dir / rel
        try:
            if not (path.is_file() and path.stat().st_size == len(data)):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
        except OSError as e:
            raise MediaError(f"could not write files/{rel}: {e}") from None
        return {"path": rel, "sha256": sha, "size": len(data)}

    # --- after the journal has the records ---------------------------------------------------------
    def journaled(self) -> None:
        """Call after a cut: the staged files of the records now journaled are not needed again."""
        if not self._to_free:
            return
        freed = 0
        for path, size in self._to_free:
            try:
                path.unlink()
            except OSError:
                pass
            freed += size
        self._to_free = []
        self.words[W_MEDIA_FREED] = int(self.words[W_MEDIA_FREED]) + freed


class _Out:
    """``encode.MediaOut`` for one record: files written now, uploads asked for on the loop."""

    def __init__(self, stage: MediaStage, result: _Result) -> None:
        self._stage = stage
        self._result = result

    def write(self, subdir: str, key: str, step: int, data: bytes, ext: str) -> dict[str, Any]:
        got = self._stage.write(subdir, key, step, data, ext)
        self._result.uploads.append(got["path"])
        return got

    def resolve(self, media_id: int) -> dict[str, Any] | None:
        return self._stage.pointers.get(media_id)  # composites only: they run on the loop

    def staged(self, name: str) -> bytes:
        with open(self._stage.staging / os.path.basename(name), "rb") as f:
            return f.read()


def _parse(r: rec.Record) -> tuple[dict[str, Any] | None, memoryview]:
    """A raw MEDIA record's meta and payload (docs/media.md, "The MEDIA record"); None for a
    meta that does not read (the record then becomes an error)."""
    body = memoryview(r.body)
    try:
        (n,) = body[:_META_LEN].cast("I")
        meta = rec.unpack_body(bytes(body[_META_LEN : _META_LEN + n]))
    except Exception:
        return None, body
    if not isinstance(meta, dict):
        return None, body
    return meta, body[_META_LEN + n :]


def _replace(value: Any, pointers: dict[int, dict[str, Any]]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and PLACEHOLDER in value:
            lost = {"_type": "media-file", "error": "lost before the sidecar"}
            return pointers.get(value[PLACEHOLDER], lost)
        return {k: _replace(v, pointers) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, pointers) for v in value]
    return value
