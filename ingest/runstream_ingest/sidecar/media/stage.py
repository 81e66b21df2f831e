"""Stage 1b of the sidecar: media records encoded, and the rows that use them rewritten.

Between the ring reader and the batcher (docs/media.md, "How media travels").  A span that holds
MEDIA records is rewritten record by record before it is batched:

* a MEDIA record from the SDK (raw pixels, samples, text, or a staged file's name) is encoded by
  ``encode.encode`` into ``files/media/...``, the file is handed to the uploader, and the record
  becomes ``{"id", "key", "pointer"}`` (or ``"error"``) with ``FLAG_MEDIA_DONE``: the journal
  never holds raw pixels;
* the next ROW -- the SDK pushes a row's MEDIA records right before it -- gets each
  ``{"_rs_media": id}`` replaced by the pointer.

Records keep their seq, kind, step and time; a rewritten one gets a new length and CRC.  While
MEDIA records wait for their row, ``waiting`` is true and the sidecar does not cut a batch, so a
sidecar killed in between leaves both in the ring and its successor encodes them again (the file
names are content hashes: the same files).  Staged files are deleted, and their bytes given
back to the producer's spill bound (``W_MEDIA_FREED``), only once the journal has the record.

Not safe for use from several threads: the sidecar's loop owns it (encoding runs on that thread;
a PNG of 256x256 costs about a millisecond).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
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
_UNSAFE = re.compile(r"[^\w\-. /=+,@]")


def safe_key(key: str) -> str:
    """A history key as a path below ``files/media/<dir>/`` (W&B's rule: ``/`` makes folders,
    leading slashes go, ``.`` and ``..`` parts become ``_``), with no character a file system or
    URL trips on."""
    parts = [p for p in _UNSAFE.sub("_", key).split("/") if p]
    return "/".join("_" if p in (".", "..") else p for p in parts) or "_"


class MediaStage:
    """Rewrites spans holding MEDIA records (see the module docstring)."""

    def __init__(self, run_dir: Path, words: Any, request_upload: Callable[[str], None]) -> None:
        self.files_dir = run_dir / "files"
        self.staging = run_dir / "media-staging"
        self.words = words
        self.request_upload = request_upload
        self.pointers: dict[int, dict[str, Any]] = {}  # media id -> pointer, until its row
        self.waiting = False  # MEDIA records read whose row has not been read yet
        self._to_free: list[tuple[Path, int]] = []  # staged files to delete once journaled
        self.encoded = self.failed = 0

    # --- spans -------------------------------------------------------------------------------------
    def wants(self, span: Span) -> bool:
        return self.waiting or any(r.kind == rec.KIND_MEDIA for r in span.control)

    def rewrite(self, span: Span) -> Span:
        """The span with its MEDIA records encoded and the rows after them pointing at the files."""
        out: list[bytes] = []
        mv = memoryview(span.data)
        pos = 0
        for r in rec.iter_records(span.data):
            size = rec.padded(len(r.body))
            new: bytes | None = None
            if r.kind == rec.KIND_MEDIA and not r.flags & rec.FLAG_MEDIA_DONE:
                new = rec.encode(r.seq, r.kind, r.step, r.time, self._media(r), rec.FLAG_MEDIA_DONE)
                self.waiting = True
            elif r.kind == rec.KIND_ROW and self.waiting:
                new = self._row(r)
            out.append(new if new is not None else bytes(mv[pos : pos + size]))
            pos += size
        assert pos == len(span.data), "a span is a run of whole records"  # as the reader hands them out
        return Span(b"".join(out), span.count, span.first_seq, span.last_seq, span.control)

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

    def _media(self, r: rec.Record) -> bytes:
        """Encode one MEDIA record; its new body."""
        meta: dict[str, Any] = {}
        try:
            (n,) = memoryview(r.body)[:_META_LEN].cast("I")
            meta = rec.unpack_body(r.body[_META_LEN : _META_LEN + n])
            if not isinstance(meta, dict):
                raise MediaError("the record's meta is not a map")
            payload = memoryview(r.body)[_META_LEN + n :]
            pointer = encode(meta, payload, _Out(self, meta))
            self.encoded += 1
            result: dict[str, Any] = {"id": meta.get("id"), "key": meta.get("key"), "pointer": pointer}
        except Exception as e:  # bad data from a user: counted and shown, the run goes on
            why = str(e) if isinstance(e, MediaError) else f"{type(e).__name__}: {e}"
            self.failed += 1
            self.words[W_MEDIA_FAILED] = int(self.words[W_MEDIA_FAILED]) + 1
            log.warning("media %r (record seq %d) not written: %s", meta.get("key"), r.seq, why)
            kind = meta.get("type", "media") if isinstance(meta.get("type"), str) else "media"
            pointer = {"_type": f"{kind}-file", "error": why}
            result = {"id": meta.get("id"), "key": meta.get("key"), "error": why}
        if isinstance(meta.get("id"), int):
            if len(self.pointers) >= MAX_REMEMBERED:
                self.pointers.pop(next(iter(self.pointers)))
            self.pointers[meta["id"]] = pointer
        if isinstance(meta.get("staged"), str):
            self._to_free.append(
                (self.staging / os.path.basename(meta["staged"]), int(meta.get("staged_size", 0)))
            )
        return rec.pack_body(result)

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

    # --- files -----------------------------------------------------------------------------------
    def write(self, subdir: str, key: str, step: int, data: bytes, ext: str) -> dict[str, Any]:
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{subdir}/{safe_key(key)}_{step}_{sha[:20]}{ext}"
        path = self.files_dir / rel
        try:
            if not (path.is_file() and path.stat().st_size == len(data)):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
        except OSError as e:
            raise MediaError(f"could not write files/{rel}: {e}") from None
        self.request_upload(rel)
        return {"path": rel, "sha256": sha, "size": len(data)}


class _Out:
    """``encode.MediaOut`` for one record."""

    def __init__(self, stage: MediaStage, meta: dict[str, Any]) -> None:
        self._stage = stage
        self._meta = meta

    def write(self, subdir: str, key: str, step: int, data: bytes, ext: str) -> dict[str, Any]:
        return self._stage.write(subdir, key, step, data, ext)

    def resolve(self, media_id: int) -> dict[str, Any] | None:
        return self._stage.pointers.get(media_id)

    def staged(self, name: str) -> bytes:
        with open(self._stage.staging / os.path.basename(name), "rb") as f:
            return f.read()


def _replace(value: Any, pointers: dict[int, dict[str, Any]]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and PLACEHOLDER in value:
            return pointers.get(
                value[PLACEHOLDER], {"_type": "media-file", "error": "lost before the sidecar"}
            )
        return {k: _replace(v, pointers) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, pointers) for v in value]
    return value
