"""The node sidecar: one process per node of a distributed run drains every rank's ring.

Started by a rank (``sdk/runstream/distributed``) as::

    python -m runstream_ingest.sidecar.node --node-dir D --loop uvloop|asyncio --stats-interval S
        [--url U --entity E --project P --run-id ID]          (RUNSTREAM_API_KEY in the environment)

It holds ``D/sidecar.lock`` for its whole life (a second one exits 0 at once), scans
``D/rank-*/sidecar.json`` every ``SCAN_EVERY`` and runs one ``RankPipeline`` (node_pipeline.py:
today's single-process pipeline) per rank, all on one event loop, driven by one timer: each pass
steps the pipelines whose poll is due and sleeps until the next one is.  Each rank keeps its own
journal, writer id, seqs and stream, so exactly-once holds per rank as it does for one process.

Beside them, the node writer (journal ``D/companion/``, writer id in ``D/companion/writer.json``)
records the node-wide system metrics, sampled once per node (node_stats.py).  Every gRPC stream of
the node shares one channel (shipper.ChannelPool).

When a rank's pipeline is done (its ring drained after the producer closed it or died, the
crashed EXIT written for a dead one, and shipped or past the upload deadline) the node sidecar
sets the ring's ``W_PIPELINE_EXIT`` word to ``exit_word(code)``: the rank's ``finish`` waits for
it.  It exits 0 once every rank it attached is done and no new ``sidecar.json`` appeared for
``QUIET_EXIT`` seconds.  Killed (``kill -9``), it loses nothing: the ranks' records wait in their
rings, and the next node sidecar (any surviving rank starts one) re-attaches every ring whose
word is still 0, skipping what the journals already hold.

Concurrency contract: everything runs on one event loop; the threads are the executor (fsyncs,
discovery) and the sampler (node_stats.py), as in the single sidecar.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.format.ring_layout import W_CLOSED, W_PIPELINE_EXIT, RingMap, exit_word
from runstream_ingest.sidecar.node_pipeline import REGISTRATION, RankPipeline, Registration, member_of
from runstream_ingest.sidecar.node_stats import NodeStats
from runstream_ingest.sidecar.shipper import ChannelPool, Identity, Member, Shipper
from runstream_ingest.sidecar.sources.companion import COMPANION_RESUME, CompanionWriter

log = logging.getLogger("runstream.node")

SCAN_EVERY = 0.1  # seconds between looks for new ranks
QUIET_EXIT = 2.0  # exit once every rank is done and no new one registered for this long
NODE_UPLOAD_TIMEOUT = 30.0  # at exit, how long the node writer's records may wait for acks
MAX_FAILURES = 5  # a pipeline that fails this often in a row gives its rank an exit code
FAILED_CODE = 70  # W_PIPELINE_EXIT's code then (EX_SOFTWARE): its records stay in the ring
WRITER_FILE = "writer.json"


def node_writer_id(node_dir: Path, node: int) -> str:
    """The node writer's id, made once per node directory (``D/companion/writer.json``): a later
    sidecar of the node continues its seqs; another machine taking the node index (no journal
    there) gets a new id, so its seqs never collide with the first one's."""
    path = node_dir / "companion" / WRITER_FILE
    try:
        wid = json.loads(path.read_text())["writer_id"]
        if isinstance(wid, str) and wid:
            return wid
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from runstream.format.atomic import write_json_atomic

    wid = f"node{node}.{secrets.token_hex(4)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"writer_id": wid})
    return wid


def read_node_json(node_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((node_dir / "node.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


@dataclass
class Attached:
    """One rank's pipeline and where it stands."""

    reg: Registration
    ring: RingMap
    pipe: RankPipeline
    lock: int
    next_at: float = 0.0
    finishing: asyncio.Task[None] | None = None


@dataclass
class Failures:
    count: int = 0
    not_before: float = 0.0


@dataclass
class NodeSidecar:
    node_dir: Path
    opts: argparse.Namespace
    attached: dict[tuple[str, str, int], Attached] = field(default_factory=dict)
    finished: set[tuple[str, str, int]] = field(default_factory=set)  # done, or never to attach
    failures: dict[tuple[str, str, int], Failures] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)  # rank dirs whose lock is busy or that failed

    def __post_init__(self) -> None:
        self.meta = read_node_json(self.node_dir)
        self.node = int(self.meta.get("node") or 0)
        self.host = str(self.meta.get("host") or socket.gethostname())
        self.companion = CompanionWriter(self.node_dir, batch_age=0.1)
        self.writer_id = node_writer_id(self.node_dir, self.node)
        self.stats = NodeStats(self.node_dir, self.companion, self.opts.stats_interval)
        self.channels: dict[str, ChannelPool] = {}
        self.key = os.environ.get("RUNSTREAM_API_KEY")
        self.shipper: Shipper | None = None
        url = self.opts.url
        run_id = self.opts.run_id or str(self.meta.get("id") or "")
        entity = self.opts.entity or str(self.meta.get("entity") or "")
        project = self.opts.project or str(self.meta.get("project") or "")
        if url and run_id:
            member = Member(
                rank=0,
                node=self.node,
                world_size=max(int(self.meta.get("world_size") or 2), 2),
                node_count=max(int(self.meta.get("node_count") or 1), 1),
                local_rank=0,
                node_writer=True,
                host=self.host,
            )
            ident = Identity(entity, project, run_id, self.writer_id, COMPANION_RESUME, member)
            self.shipper = Shipper(self.companion.dir, ident, url, self.key, channels=self.channel_pool(url))
            self.companion.on_cut.append(self.shipper.wake)
        self._last_news = time.monotonic()
        self._seen: dict[Path, tuple[int, int]] = {}  # sidecar.json -> (mtime_ns, size) last read
        self._sync: asyncio.Future[Any] | None = None
        self._last_sync = time.monotonic()
        self.pipelines_started = 0

    def channel_pool(self, url: str) -> ChannelPool:
        """The one channel of this node to ``url`` (ranks all name the same server)."""
        pool = self.channels.get(url)
        if pool is None:
            pool = self.channels[url] = ChannelPool(url, self.key)
        return pool

    # --- finding ranks ---------------------------------------------------------------------------
    def scan(self, now: float) -> None:
        try:
            entries = [e for e in os.scandir(self.node_dir) if e.name.startswith("rank-") and e.is_dir()]
        except OSError as e:
            log.error("cannot list %s: %s", self.node_dir, e)
            return
        for entry in entries:
            rank_dir = Path(entry.path)
            path = rank_dir / REGISTRATION
            try:
                st = path.stat()
            except OSError:
                continue  # a rank still setting up
            stamp = (st.st_mtime_ns, st.st_size)
            if self._seen.get(path) == stamp and str(rank_dir) not in self.waiting:
                continue  # read before; looked at again only while it waits for a lock or a retry
            self._seen[path] = stamp
            try:
                reg = Registration.read(rank_dir)
            except (OSError, ValueError) as e:
                log.error("rank %s: unreadable registration: %s", entry.name, e)
                continue
            self.waiting.discard(str(rank_dir))  # attach() puts it back if it must wait again
            if reg.key in self.attached or reg.key in self.finished:
                continue
            self.attach(reg, now)

    def attach(self, reg: Registration, now: float) -> None:
        fail = self.failures.get(reg.key)
        if fail is not None and now < fail.not_before:
            self.waiting.add(str(reg.rank_dir))
            return
        try:
            ring = RingMap.attach(reg.ring)
        except FileNotFoundError:
            self.finished.add(reg.key)  # a drained ring is unlinked: that rank is done
            return
        except (OSError, ValueError) as e:
            log.error("%s: cannot open ring %s: %s", reg.rank_dir.name, reg.ring, e)
            self.finished.add(reg.key)
            return
        if ring.words[W_PIPELINE_EXIT]:
            self.finished.add(reg.key)  # an earlier node sidecar finished it
            _close_ring(ring)
            return
        lock = _take_lock(reg.rank_dir / "sidecar.lock")
        if lock is None:  # another sidecar drains it: look again later
            self.waiting.add(str(reg.rank_dir))
            _close_ring(ring)
            return
        try:
            opts = reg.options()
            url = opts.url
            member = member_of(reg.rank_dir)
            pipe = RankPipeline(
                ring,
                reg,
                opts,
                member=member,
                channels=self.channel_pool(url) if url else None,
                stats=self.stats,
                environment=member is None or member.rank == 0,
            )
        except (Exception, SystemExit):  # SystemExit: argparse refusing a value
            log.exception("%s: could not start its pipeline", reg.rank_dir.name)
            os.close(lock)
            self._failed(reg, ring, now)
            return
        a = Attached(reg, ring, pipe, lock, next_at=now)
        self.attached[reg.key] = a
        self._last_news = now
        self.pipelines_started += 1
        pipe.start()
        log.info(
            "attached %s: ring %s (%d bytes), producer %d, journal after seq %d",
            reg.rank_dir.name,
            reg.ring,
            ring.capacity,
            reg.producer_pid,
            pipe.journal.last_seq,
        )

    def _failed(self, reg: Registration, ring: RingMap, now: float) -> None:
        """A pipeline that failed is started again after a pause, like a single sidecar restarted by
        its supervisor; after MAX_FAILURES in a row its rank gets FAILED_CODE instead of a hang."""
        f = self.failures.setdefault(reg.key, Failures())
        f.count += 1
        f.not_before = now + min(0.25 * 2 ** (f.count - 1), 4.0)
        self.waiting.add(str(reg.rank_dir))
        if f.count >= MAX_FAILURES:
            log.error("%s: its pipeline failed %d times in a row; giving up", reg.rank_dir.name, f.count)
            ring.words[W_PIPELINE_EXIT] = exit_word(FAILED_CODE)
            self.finished.add(reg.key)
            self.waiting.discard(str(reg.rank_dir))
        _close_ring(ring)

    # --- driving the pipelines -------------------------------------------------------------------
    def step_due(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        for a in list(self.attached.values()):
            if a.finishing is not None or a.next_at > now:
                continue
            try:
                delay = a.pipe.step(loop)
            except Exception:
                log.exception("%s: its pipeline failed; starting it again", a.reg.rank_dir.name)
                a.finishing = asyncio.create_task(self._abort(a))
                continue
            if delay is None:
                a.finishing = asyncio.create_task(self._finish(a))
            else:
                a.next_at = now + delay

    async def _finish(self, a: Attached) -> None:
        loop = asyncio.get_running_loop()
        try:
            code = await a.pipe.shutdown(loop, crashed=not bool(a.ring.words[W_CLOSED]))
        except Exception:
            log.exception("%s: shutting its pipeline down failed", a.reg.rank_dir.name)
            await self._abort(a)
            return
        producer_gone = bool(a.ring.words[W_CLOSED]) or not a.pipe.producer_alive()
        # The word first: a node sidecar killed between the two finds the ring finished.
        a.ring.words[W_PIPELINE_EXIT] = exit_word(code)
        if producer_gone:
            with contextlib.suppress(OSError):
                os.unlink(a.reg.ring)
        log.info(
            "%s done (exit %d): %d records journaled (seq %d)",
            a.reg.rank_dir.name,
            code,
            a.pipe.journaled,
            a.pipe.journal.written_seq,
        )
        self._release(a)
        self.finished.add(a.reg.key)
        self.failures.pop(a.reg.key, None)
        self._last_news = time.monotonic()  # the quiet period before exiting starts now

    async def _abort(self, a: Attached) -> None:
        """Stop a failed pipeline without its exit: what the journal took is kept, the rest stays
        in the ring for its next pipeline (which skips what the journal has, by seq)."""
        for t in [a.pipe._shipping, a.pipe._companion_shipping, *a.pipe._source_tasks]:
            if t is not None:
                t.cancel()
        with contextlib.suppress(Exception):
            await a.pipe.close_sources()
        with contextlib.suppress(Exception):
            a.pipe.journal.close()
        with contextlib.suppress(Exception):
            a.pipe.companion.close()
        self._release(a)
        self._failed(a.reg, a.ring, time.monotonic())

    def _release(self, a: Attached) -> None:
        self.attached.pop(a.reg.key, None)
        os.close(a.lock)
        _close_ring(a.ring)

    # --- the node writer -------------------------------------------------------------------------
    def node_writer_step(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.companion.due():
            self.companion.cut()
        if self._sync is not None and self._sync.done():
            self._sync = None
        now = time.monotonic()
        j = self.companion.journal
        if self._sync is None and now - self._last_sync >= 1.0 and j.written_seq > j.synced_seq:
            self._last_sync = now
            self._sync = loop.run_in_executor(None, j.sync)

    # --- the loop --------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        shipping = asyncio.create_task(self.shipper.run()) if self.shipper else None
        await self.stats.run()
        next_scan = 0.0
        done_at: float | None = None
        while True:
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + SCAN_EVERY
                self.scan(now)
            self.step_due(loop, now)
            self.node_writer_step(loop)
            if self.attached or self.waiting:
                done_at = None
            elif now - self._last_news >= QUIET_EXIT:
                done_at = done_at or now
                j = self.companion.journal
                acked = self.shipper is None or self.shipper.acked >= j.written_seq or self.shipper.fatal
                if acked or now - done_at >= NODE_UPLOAD_TIMEOUT:
                    break
            due = [a.next_at for a in self.attached.values() if a.finishing is None]
            wake = min([next_scan, *due])
            await asyncio.sleep(max(wake - time.monotonic(), 0.0))
        await self.stats.close()
        self.companion.cut()
        if self._sync is not None:
            await self._sync
        self.companion.close()
        if self.shipper is not None and shipping is not None:
            await self.shipper.wait_acked(self.companion.journal.written_seq, 5.0)
            shipping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shipping
        for pool in self.channels.values():
            await pool.close()
        return 0


def _take_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _close_ring(ring: RingMap) -> None:
    # Views of the mapping may still be held by a pipeline's reader: the GC unmaps it then.
    with contextlib.suppress(BufferError, ValueError):
        ring.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="runstream-node-sidecar")
    p.add_argument("--node-dir", type=Path, required=True)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--stats-interval", type=float, default=2.0, help="seconds between node samples; 0: none")
    # online runs: where the node writer ships (ranks name their own in sidecar.json)
    p.add_argument("--url", default=None)
    p.add_argument("--entity", default="")
    p.add_argument("--project", default="")
    p.add_argument("--run-id", default="")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the node sidecar until every rank is done; 0 also when another one holds the lock."""
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    node_dir: Path = opts.node_dir
    if not node_dir.is_dir():
        print(f"runstream node sidecar: no node directory {node_dir}", file=sys.stderr)
        return 2
    (node_dir / "logs").mkdir(exist_ok=True)
    logging.basicConfig(
        filename=str(node_dir / "logs" / "sidecar.log"),
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: drain regardless
    lock = _take_lock(node_dir / "sidecar.lock")
    if lock is None:  # two ranks spawned one each: the loser leaves at once
        log.info("another node sidecar holds %s; exiting", node_dir / "sidecar.lock")
        return 0
    log.info("node sidecar up: %s", node_dir)
    node = NodeSidecar(node_dir, opts)
    if opts.loop == "uvloop":
        import uvloop

        code = uvloop.run(node.run())
    else:
        code = asyncio.run(node.run())
    log.info(
        "node sidecar done: %d pipelines, %d node samples, %d rank samples",
        node.pipelines_started,
        node.stats.samples,
        node.stats.rank_samples,
    )
    os.close(lock)
    return code


if __name__ == "__main__":
    sys.exit(main())
