"""The sidecar's file uploader: keeps the run's ``files/`` on the server (docs/files.md).

What it uploads:

* what ``runstream.save`` asked for (KIND_FILE records from the ring, handed over by
  ``Sidecar.handle_control``): a ``now`` file is copied into ``files/`` here -- never in the
  training process, which must not stall on a 1 GB copy -- and uploaded at once; ``live`` files
  (the SDK links them into ``files/``) again after each change, once the file has been quiet for
  ``quiet`` seconds or at the latest ``max_wait`` seconds after the change; ``end`` files at exit;
* at exit (``finish``), everything under ``files/`` not yet uploaded in its current content,
  minus the ignore globs: config.yaml, summary.json, requirements.txt, code...

Each upload hashes the file a chunk at a time, sends what the server lacks (``blob_upload``), then
writes a KIND_FILE record ``{"path", "sha256", "size", "policy"}`` through the companion writer.
Offline, the record alone: ``runstream sync`` sends the content later, and so it does for uploads
that failed.  What was recorded survives a sidecar restart in ``companion/files.json``.

Concurrency contract: the uploader's state belongs to the sidecar's loop; disk and network work
runs on one thread of its own, one file at a time, and touches only the file it is given.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from runstream.files import ignored
from runstream.format import record as rec
from runstream_ingest.sidecar.sources.blob_upload import BlobClient, BlobError, ContentChanged, hash_file
from runstream_ingest.sidecar.sources.companion import CompanionWriter, companion_dir

log = logging.getLogger("runstream.files")

POLICIES = ("live", "now", "end")
POLL = 0.25  # seconds between looks at the live files
LIVE_QUIET = 1.0  # a changed live file is uploaded once it has not changed for this long...
LIVE_MAX_WAIT = 10.0  # ...or this long after its first unsent change, if it never goes quiet
RETRY_MAX = 30.0  # the longest wait between tries of an upload the network failed

Stamp = tuple[int, int, int]  # size, mtime_ns, inode: a file whose stamp is unchanged is not re-read


def stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def peak_rss_mib() -> int:
    """This process's peak RSS.  VmHWM, not ru_maxrss: that one starts from the parent's at fork,
    and the sidecar is forked by the training process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def safe_rel(path: Any) -> str | None:
    """``path`` as a relative path that stays inside ``files/``, else None."""
    if not isinstance(path, str) or not path or "\0" in path:
        return None
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or str(p) in ("", "."):
        return None
    return str(p)


class FileUploader:
    def __init__(
        self,
        run_dir: Path,
        companion: CompanionWriter,
        url: str | None,
        api_key: str | None,
        ignore_globs: list[str],
        quiet: float = LIVE_QUIET,
        max_wait: float = LIVE_MAX_WAIT,
    ) -> None:
        self.files_dir = run_dir / "files"
        self.state_path = companion_dir(run_dir) / "files.json"
        self.companion = companion
        self.client = BlobClient(url, api_key, timeout=30.0) if url else None
        self.ignore = list(ignore_globs)
        self.quiet, self.max_wait = quiet, max_wait
        self.policies: dict[str, str] = {}  # what runstream.save asked, by path under files/
        self.done: dict[str, tuple[str, int, Stamp]] = {}  # path -> (sha256, size, stamp) recorded
        self.requests: list[dict[str, Any]] = []  # save requests not acted on yet
        self._changes: dict[str, tuple[Stamp, float, float]] = {}  # live: stamp, first, last seen
        self._retry: dict[str, tuple[float, int]] = {}  # path -> (not before, failures)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="files")
        self._busy = asyncio.Lock()  # one pass at a time: the watch loop's, then finish's
        self._stopping = False
        self._dirty = False
        self.recorded = self.uploaded = self.unsent = 0
        self._load_state()

    # --- requests from the ring ------------------------------------------------------------------
    def request(self, value: Any) -> None:
        """A KIND_FILE record of the training process: ``{"path", "policy"[, "source"]}``."""
        rel = safe_rel(value.get("path")) if isinstance(value, dict) else None
        policy = value.get("policy") if isinstance(value, dict) else None
        if rel is None or policy not in POLICIES:
            log.warning("ignoring a malformed save request: %r", value)
            return
        self.policies[rel] = policy
        self._dirty = True
        self.requests.append({**value, "path": rel})

    def ignored(self, rel: str) -> bool:
        return ignored(rel, self.ignore)

    # --- the Source protocol -------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping:
            async with self._busy:
                if self._stopping:
                    break
                try:
                    await self._pass(final=False, deadline=None)
                except Exception:  # a bug here must not end the watching for the whole run
                    log.exception("uploading files")
            await asyncio.sleep(POLL)

    async def close(self) -> None:
        """Stop watching (an upload under way completes); ``finish`` does the last uploads."""
        self._stopping = True
        async with self._busy:
            pass

    async def finish(self, deadline: float) -> None:
        """Upload every file not uploaded in its current content (the network is given until
        ``deadline``; what it could not take is recorded all the same, for ``runstream sync``)."""
        self._stopping = True
        async with self._busy:
            try:
                await self._pass(final=True, deadline=deadline)
            except Exception:  # the sidecar still has to close and ship its records
                log.exception("uploading files at exit")
        await self._save_state()
        self._pool.shutdown(wait=False)
        log.info(
            "files: %d recorded, %d uploaded (%d bytes sent), %d not sent (runstream sync sends them); "
            "sidecar peak RSS %d MiB",
            self.recorded,
            self.uploaded,
            self.client.sent_bytes if self.client else 0,
            self.unsent,
            peak_rss_mib(),
        )

    # --- one pass --------------------------------------------------------------------------------
    async def _pass(self, final: bool, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        requests, self.requests = self.requests, []
        for req in requests:
            rel, policy = req["path"], req["policy"]
            if policy == "now" and isinstance(req.get("source"), str):
                ok = await loop.run_in_executor(self._pool, self._copy_in, Path(req["source"]), rel)
                if ok:
                    self.done.pop(rel, None)
                    await self._upload(rel, policy, deadline)
            elif policy == "now":  # a file the sidecar wrote itself (a media file): upload it now
                await self._upload(rel, policy, deadline)
        now = time.monotonic()
        for rel, policy in list(self.policies.items()):
            if policy == "live" and not final and self._live_due(rel, now):
                await self._upload(rel, policy, deadline)
        if final:
            for rel in await loop.run_in_executor(self._pool, self._walk):
                if self.done.get(rel, (None, None, None))[2] != stamp(self.files_dir / rel):
                    await self._upload(rel, self.policies.get(rel, "end"), deadline)
        if self._dirty:
            await self._save_state()

    def _live_due(self, rel: str, now: float) -> bool:
        st = stamp(self.files_dir / rel)
        if st is None or (rel in self.done and self.done[rel][2] == st):
            self._changes.pop(rel, None)
            return False
        seen = self._changes.get(rel)
        if seen is None or seen[0] != st:
            seen = (st, seen[1] if seen else now, now)
            self._changes[rel] = seen
        not_before = self._retry.get(rel, (0.0, 0))[0]
        return now >= not_before and (now - seen[2] >= self.quiet or now - seen[1] >= self.max_wait)

    def _walk(self) -> list[str]:
        out = []
        for root, _dirs, names in os.walk(self.files_dir):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # another writer's file being replaced atomically
                rel = Path(root, name).relative_to(self.files_dir).as_posix()
                if not self.ignored(rel) and (self.files_dir / rel).is_file():
                    out.append(rel)
        return sorted(out)

    def _copy_in(self, source: Path, rel: str) -> bool:
        """Copy a ``now`` file into files/ (sendfile: no copy of it in memory)."""
        dest = self.files_dir / rel
        try:
            if dest.exists() and os.path.samefile(source, dest):
                return True
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
            return True
        except OSError as e:
            log.warning("could not copy %s into files/%s: %s", source, rel, e)
            return False

    def _hash_and_send(self, rel: str) -> tuple[str, int, Stamp, bool] | None:
        """On the file thread: (sha256, size, stamp, sent) or None when the file changed while
        it was read.  Raises what ``BlobClient.upload`` raises."""
        path = self.files_dir / rel
        before = stamp(path)
        if before is None:
            return None
        sha, size = hash_file(path)
        if stamp(path) != before:
            return None
        prev = self.done.get(rel)
        if prev is not None and prev[0] == sha:
            return sha, size, before, False  # touched, not changed
        if self.client is not None:
            self.client.upload(path, sha, size)
        return sha, size, before, self.client is not None

    async def _upload(self, rel: str, policy: str, deadline: float | None) -> None:
        if self.ignored(rel):
            return
        loop = asyncio.get_running_loop()
        tries = 0
        while True:
            tries += 1
            fail: str | None = None
            try:
                got = await loop.run_in_executor(self._pool, self._hash_and_send, rel)
            except ContentChanged:
                got = None
            except BlobError as e:  # refused (a bad key...): sync can try again with a good one
                log.error("upload of files/%s refused: %s", rel, e)
                got = await loop.run_in_executor(self._pool, self._hash_only, rel)
                fail = str(e)
            except OSError as e:
                fail = str(e)
                if deadline is None:  # the watch loop tries again later
                    n = self._retry.get(rel, (0.0, 0))[1]
                    self._retry[rel] = (time.monotonic() + min(RETRY_MAX, 2.0**n), n + 1)
                    log.warning("upload of files/%s failed (%s); retrying", rel, e)
                    return
                if time.monotonic() < deadline:
                    await asyncio.sleep(min(1.0, max(deadline - time.monotonic(), 0)))
                    continue
                got = await loop.run_in_executor(self._pool, self._hash_only, rel)
            if got is None:
                if deadline is not None and tries < 3 and stamp(self.files_dir / rel) is not None:
                    continue  # the last pass: read it again
                return  # changed while read (or gone): the next pass takes it
            sha, size, st, sent = got
            self._retry.pop(rel, None)
            self._changes.pop(rel, None)
            prev = self.done.get(rel)
            self.done[rel] = (sha, size, st)
            self._dirty = True
            if prev is not None and prev[0] == sha:
                return
            if fail is not None:
                self.unsent += 1
                log.warning("files/%s recorded without its content (%s): runstream sync sends it", rel, fail)
            self.uploaded += int(sent and fail is None)
            self.recorded += 1
            self.companion.emit(rec.KIND_FILE, {"path": rel, "sha256": sha, "size": size, "policy": policy})
            return

    def _hash_only(self, rel: str) -> tuple[str, int, Stamp, bool] | None:
        st = stamp(self.files_dir / rel)
        if st is None:
            return None
        sha, size = hash_file(self.files_dir / rel)
        return sha, size, st, False

    # --- what survives a restart ---------------------------------------------------------------
    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
            self.policies = {k: v for k, v in state["policies"].items() if v in POLICIES}
            self.done = {
                k: (v[0], int(v[1]), (int(v[2]), int(v[3]), int(v[4]))) for k, v in state["done"].items()
            }
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            log.warning("ignoring unreadable %s: %s", self.state_path, e)

    async def _save_state(self) -> None:
        """Snapshot on the loop, write (and fsync) on the file thread: the loop drains the ring."""
        state = {
            "policies": dict(self.policies),
            "done": {k: [sha, size, *st] for k, (sha, size, st) in self.done.items()},
        }
        self._dirty = False
        await asyncio.get_running_loop().run_in_executor(self._pool, self._write_state, state)

    def _write_state(self, state: dict[str, Any]) -> None:
        from runstream.format.atomic import write_json_atomic

        try:
            write_json_atomic(self.state_path, state)
        except OSError as e:
            log.warning("could not write %s: %s", self.state_path, e)
