"""Sending one file's content to the server's blob store (docs/files.md), and ``runstream sync``'s
file step.

A blob is named by the sha256 of its content.  ``BlobClient.upload`` asks the server how much of
it it holds (``HEAD /api/v1/blobs/{sha256}``): all of it (dedup: nothing is sent), or the bytes of
an earlier, interrupted upload (resume: only the rest is sent).  The rest goes in parts of
``PART`` bytes, each ``PUT`` naming its offset; the server checks the whole content against the
name before it keeps it.  Files are read ``CHUNK`` bytes at a time, so a 1 GB file never is in
memory: at most one part is.

Concurrency contract: ``hash_file`` is a pure function; a ``BlobClient`` is used by one thread at
a time (the sidecar's file thread, or sync) and holds no connection between calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runstream.format import record as rec
from runstream.read.api import authorized

log = logging.getLogger("runstream.files")

CHUNK = 1 << 20  # bytes read (and hashed) at a time
PART = 8 << 20  # bytes per PUT: the most the client holds in memory, and what a cut costs to resend
OFFSET_HEADER = "Upload-Offset"


class BlobError(Exception):
    """The server refused the upload (bad key, bad request); retrying will not help."""


class ContentChanged(BlobError):
    """The file's content no longer matches the sha256 it was hashed to (it changed meanwhile)."""


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of the file, read ``CHUNK`` bytes at a time into one buffer."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


@dataclass
class BlobClient:
    url: str  # the server's HTTP address
    api_key: str | None
    timeout: float = 60.0
    sent_bytes: int = 0  # content bytes sent over this client's life

    def _request(
        self, method: str, sha: str, data: bytes | None = None, **query: int
    ) -> tuple[int, dict[str, str], Any]:
        url = f"{self.url.rstrip('/')}/api/v1/blobs/{sha}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        req = authorized(url, self.api_key, method, data, "application/octet-stream")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
                return resp.status, dict(resp.headers), json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            with e:
                body = e.read()
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            return e.code, dict(e.headers), parsed

    def held(self, sha: str) -> int | None:
        """None when the server has the whole blob; else how many bytes of it it holds."""
        status, headers, _ = self._request("HEAD", sha)
        if status == 200:
            return None
        if status == 404:
            return int(headers.get(OFFSET_HEADER) or 0)
        raise BlobError(f"HEAD blob {sha[:12]}: the server answered HTTP {status}")

    def upload(self, path: Path, sha: str, size: int) -> int:
        """Make the server hold ``path``'s content as blob ``sha``; returns the bytes sent (0 when
        it had it already).  Raises ``ContentChanged``, ``BlobError``, or ``OSError`` (network)."""
        offset = self.held(sha)
        sent = 0
        if offset is None:
            return 0
        with open(path, "rb", buffering=0) as f:
            while True:
                f.seek(offset)
                part = f.read(min(PART, size - offset))
                if len(part) != min(PART, size - offset):
                    raise ContentChanged(f"{path} is shorter than the {size} bytes it was hashed at")
                status, headers, body = self._request("PUT", sha, part, offset=offset, size=size)
                if status in (200, 201):
                    sent += len(part)
                    self.sent_bytes += len(part)
                    if body is None or body.get("complete"):
                        return sent
                    offset = int(body["offset"])
                elif status == 409 and OFFSET_HEADER in headers:  # another upload moved it on
                    offset = int(headers[OFFSET_HEADER])
                elif status == 422:
                    raise ContentChanged(_message(body, status))
                else:
                    raise BlobError(_message(body, status))
                if offset > size:
                    raise BlobError(f"the server holds {offset} bytes of a {size}-byte blob {sha[:12]}")


def _message(body: Any, status: int) -> str:
    msg = body.get("message") if isinstance(body, dict) else None
    return f"{msg or 'upload refused'} (HTTP {status})"


# --- runstream sync ---------------------------------------------------------------------------
def recorded_files(run_dir: Path) -> dict[str, tuple[str, int]]:
    """path -> (sha256, size) of the last version of each file the run's sidecar recorded."""
    from runstream.format.journal_read import read_journal
    from runstream_ingest.sidecar.sources.companion import companion_dir

    jdir = companion_dir(run_dir) / "journal"
    out: dict[str, tuple[str, int]] = {}
    if not jdir.is_dir():
        return out
    for r in read_journal(jdir).iter_records():
        if r.kind != rec.KIND_FILE:
            continue
        try:
            v = r.value()
        except ValueError:
            continue
        if isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("path"), str):
            out[v["path"]] = (v["sha256"], int(v.get("size") or 0))
    return out


def sync_files(run_dir: Path, url: str, api_key: str | None) -> tuple[int, str]:
    """Upload the content of every file the run recorded that the server does not hold yet
    (an offline run, or one whose uploads did not finish).  Returns (exit code, message)."""
    client = BlobClient(url, api_key)
    files = recorded_files(run_dir)
    sent = uploaded = changed = 0
    for rel, (sha, size) in sorted(files.items()):
        path = run_dir / "files" / rel
        try:
            if client.held(sha) is None:
                continue
            if not path.is_file() or hash_file(path) != (sha, size):
                changed += 1
                print(
                    f"runstream: warning: {path} changed or vanished since the run recorded it; "
                    "that version of it cannot be uploaded",
                    file=sys.stderr,
                )
                continue
            sent += client.upload(path, sha, size)
            uploaded += 1
        except ContentChanged:
            changed += 1
        except BlobError as e:
            return 1, f"{run_dir}: the server refused file {rel}: {e}"
        except OSError as e:
            return 2, f"{run_dir}: the server at {url} could not be reached while uploading {rel}: {e}"
    msg = f"{run_dir}: {uploaded} of {len(files)} files uploaded ({sent / 1e6:.2f} MB sent)"
    if changed:
        msg += f"; {changed} could not be (changed since recorded)"
    return 0, msg
