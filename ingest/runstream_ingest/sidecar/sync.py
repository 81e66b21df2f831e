"""``runstream sync``: upload offline or half-uploaded runs with the sidecar's own shipper.

It resumes where the server's acks stopped (the server says where in ``Opened``), so running it
twice, or after a partial upload, sends nothing twice.  The content of the run's files goes first
(``blob_upload.sync_files``: what the server lacks of each file the run recorded), then the
records that name it.

A damaged journal does not stop it: every record a valid frame holds is uploaded, the seqs no
valid frame holds are declared lost to the server (which counts them, docs/protocol.md "Lost"),
and so are records the server can never store; each such range is printed, as is the damage
skipped.  Exit codes (the worst over the runs: 2, then 1, then 3, then 0):
0 everything acknowledged; 3 everything readable acknowledged, but records were lost (damage,
unstorable records; each range printed and counted on the server as
``_runstream/server_lost_records``); 1 the server refused a run (its message is printed);
2 the server could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from runstream.errors import UsageError
from runstream.format.frame import parse_segment_name
from runstream.format.fs import OsFileSystem
from runstream.format.journal_read import ScannedFrame, scan_segment
from runstream.rundir import find_run_dirs, resolve_run_dir
from runstream_ingest.sidecar.shipper import Identity, Member, Shipper, read_marker
from runstream_ingest.sidecar.sources.blob_upload import sync_files
from runstream_ingest.sidecar.sources.companion import COMPANION_RESUME, COMPANION_SUFFIX, companion_dir

UNREACHABLE_AFTER = 30.0  # give up when no connection could be made for this long
EXIT_LOST = 3  # everything readable was acknowledged, but records were lost
SEVERITY = {0: 0, EXIT_LOST: 1, 1: 2, 2: 3}  # how exit codes of several runs combine: the worst


def journal_extent(writer_dir: Path) -> tuple[int, int]:
    """(highest seq, payload bytes) over the journal's valid frames, without decompressing."""
    last, total, _ = journal_scan(writer_dir)
    return last, total


def journal_scan(writer_dir: Path) -> tuple[int, int, list[str]]:
    """(highest seq, payload bytes, the damage skipped, one line each) over the journal's valid
    frames, without decompressing."""
    fs = OsFileSystem()
    jdir = writer_dir / "journal"
    last = total = 0
    damage: list[str] = []
    try:
        listed = [p.name for p in jdir.iterdir()]
    except FileNotFoundError:
        listed = []  # no journal: nothing was logged
    names = sorted((i, n) for n in listed if (i := parse_segment_name(n)) is not None)
    for _, name in names:
        try:
            for item in scan_segment(fs, str(jdir / name)):
                if isinstance(item, ScannedFrame):
                    last = max(last, item.header.last_seq)
                    total += item.header.payload_len
                else:  # damage running to the end of the last segment: a write a crash cut short
                    what = "torn tail" if item.tail and name == names[-1][1] else "damage"
                    damage.append(f"{what}: {item.length} bytes at {name} offset {item.offset} skipped")
        except OSError as e:
            damage.append(f"{name} could not be read to the end: {e}")
    return last, total, damage


def _bar(done: float, total: float, width: int = 28) -> str:
    frac = 1.0 if total <= 0 else min(done / total, 1.0)
    return "[" + "#" * int(frac * width) + "." * (width - int(frac * width)) + f"] {frac * 100:5.1f}%"


async def sync_one(
    run_dir: Path, url: str, api_key: str | None, timeout: float | None, companion: bool = False
) -> tuple[int, str]:
    """Upload one writer of a run: the producer's journal, or (``companion``) the sidecar's own.
    A rank of a distributed run (``run.json`` with its rank) is uploaded as that rank's member."""
    meta = json.loads((run_dir / "run.json").read_text())
    writer_id = meta.get("writer_id") or meta["id"]
    writer_dir, resume = run_dir, "allow"
    if companion:
        writer_dir, writer_id, resume = companion_dir(run_dir), writer_id + COMPANION_SUFFIX, COMPANION_RESUME
    member = Member.from_run_json(meta)
    ident = Identity(meta["entity"], meta["project"], meta["id"], writer_id, resume, member)
    label = f"{ident.entity}/{ident.project}/{ident.run_id}"
    if member is not None:
        label += f" rank {member.rank}"
    return await ship_writer(
        writer_dir, ident, url, api_key, timeout, label + (" (sidecar records)" if companion else "")
    )


async def sync_node_writer(
    node_dir: Path, url: str, api_key: str | None, timeout: float | None
) -> tuple[int, str]:
    """Upload a node directory's own writer (``companion/``: the node-wide system metrics)."""
    meta = json.loads((node_dir / "node.json").read_text())
    writer_id = json.loads((node_dir / "companion" / "writer.json").read_text())["writer_id"]
    node = int(meta.get("node") or 0)
    member = Member(
        rank=0,
        node=node,
        world_size=max(int(meta.get("world_size") or 2), 2),
        node_count=max(int(meta.get("node_count") or 1), 1),
        node_writer=True,
        host=str(meta.get("host") or ""),
    )
    ident = Identity(meta["entity"], meta["project"], meta["id"], writer_id, COMPANION_RESUME, member)
    label = f"{ident.entity}/{ident.project}/{ident.run_id} node {node} (system metrics)"
    return await ship_writer(node_dir / "companion", ident, url, api_key, timeout, label)


async def ship_writer(
    writer_dir: Path, ident: Identity, url: str, api_key: str | None, timeout: float | None, path: str
) -> tuple[int, str]:
    """Ship one writer's journal (``writer_dir/journal``) until the server acked all of it."""
    last_seq, total, damage = journal_scan(writer_dir)
    shipper = Shipper(writer_dir, ident, url, api_key)
    task = asyncio.create_task(shipper.run())
    t0 = time.monotonic()
    last_contact = t0
    tty = sys.stderr.isatty()
    try:
        while shipper.acked < last_seq and shipper.fatal is None and not task.done():
            await asyncio.sleep(0.2)
            now = time.monotonic()
            if shipper.connected:
                last_contact = now
            if now - last_contact > UNREACHABLE_AFTER:
                return 2, f"{path}: the server at {url} could not be reached for {UNREACHABLE_AFTER:.0f}s"
            if timeout is not None and now - t0 > timeout:
                return (
                    2,
                    f"{path}: gave up after {timeout:.0f}s with seq {shipper.acked} "
                    f"of {last_seq} acknowledged",
                )
            sent = shipper.sent_bytes
            rate = sent / max(now - t0, 1e-6)
            left = max(total - sent, 0)
            eta = f"{left / rate:5.1f}s" if rate > 0 else "  ?  "
            done_records = shipper.acked - (shipper.opened_acked or 0) if shipper.connected else 0
            line = (
                f"{path} {_bar(shipper.acked, last_seq)} {sent / 1e6:7.2f}/{total / 1e6:.2f} MB "
                f"{done_records} records {rate / 1e6:6.2f} MB/s ETA {eta}"
            )
            print(("\r" if tty else "") + line, end="" if tty else "\n", file=sys.stderr, flush=True)
        if shipper.fatal is not None:
            return 1, f"{path}: the server refused the upload: {shipper.fatal}"
        if shipper.acked < last_seq:  # the shipper's task ended on its own: a bug, said in one line
            died = task.exception() if task.done() and not task.cancelled() else None
            return 1, f"{path}: the upload stopped at seq {shipper.acked} of {last_seq}: {died!r}"
        shipper.save_marker()
        lost = shipper.lost_acked()
        n_lost = sum(r.last_seq - r.first_seq + 1 for r in lost)
        uploaded = last_seq - (shipper.opened_acked or 0) - n_lost
        done = f"{path}: {uploaded} records uploaded ({last_seq} acknowledged in all)"
        if damage:
            done += "; journal " + "; ".join(damage)
        if not lost:
            return 0, done
        skipped = "; ".join(f"records {r.first_seq}..{r.last_seq} skipped ({r.reason})" for r in lost)
        return EXIT_LOST, f"{done}; {n_lost} records lost, counted on the server: {skipped}"
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        if tty:
            print(file=sys.stderr)


def worse(a: int, b: int) -> int:
    """The worse of two exit codes (SEVERITY)."""
    return max(a, b, key=lambda c: SEVERITY.get(c, 4))


def node_dir_of(path: Path) -> Path | None:
    """The node directory of a distributed run that ``path`` names (the directory itself, a
    ``latest-run`` link to it, or a ``runstream/`` directory or root whose latest run it is), else
    None.  A node directory holds ``node.json`` and one ``rank-<r>/`` run directory per rank."""
    for p in (path, path / "latest-run", path / "runstream" / "latest-run"):
        with contextlib.suppress(OSError):
            if (p / "node.json").is_file():
                return p.resolve()
    return None


def rank_dirs(node_dir: Path) -> list[Path]:
    """A node directory's rank directories, by rank."""
    found = []
    for p in node_dir.glob("rank-*"):
        rank = p.name[len("rank-") :]
        if rank.isdigit() and p.is_dir():
            found.append((int(rank), p))
    return [p for _, p in sorted(found)]


def sync_run_dir(d: Path, url: str, api_key: str | None, timeout: float | None) -> int:
    """Sync one run directory (a single run, or one rank of a node); prints a line per writer."""
    if not (d / "run.json").exists():
        print(f"runstream: skipping {d}: no run.json", file=sys.stderr)
        return 0
    code, msg = sync_files(d, url, api_key)  # before the records that name them
    print(("runstream: " if code == 0 else "runstream: error: ") + msg, file=sys.stderr)
    worst = code
    for companion in (False, True):
        if companion and not (companion_dir(d) / "journal").is_dir():
            continue
        try:
            code, msg = asyncio.run(sync_one(d, url, api_key, timeout, companion))
        except (OSError, ValueError, KeyError) as e:  # an unreadable run.json or journal
            code, msg = 1, f"{d}: cannot be read: {type(e).__name__}: {e}"
        prefix = {0: "runstream: ", EXIT_LOST: "runstream: warning: "}.get(code, "runstream: error: ")
        print(prefix + msg, file=sys.stderr)
        worst = worse(worst, code)
    return worst


def sync_main(args: argparse.Namespace) -> int:
    from runstream.login import credentials

    creds = credentials(args.host)
    if not creds.host:
        raise UsageError("no server to sync to: pass --host, set RUNSTREAM_HOST, or run `runstream login`")
    dirs: list[Path] = []
    for d in args.run_dirs:
        node = node_dir_of(Path(d))
        dirs.append(node if node is not None else resolve_run_dir(d))
    if args.all is not None:
        dirs += find_run_dirs(Path(args.all))
    if not dirs:
        raise UsageError("name run directories to sync, or pass --all [DIR]")
    worst = 0
    for top in dirs:
        node = node_dir_of(top)
        for d in rank_dirs(node) if node is not None else [top]:
            worst = worse(worst, sync_run_dir(d, creds.host, creds.api_key, args.timeout))
        if node is not None and (node / "companion" / "writer.json").exists():
            try:
                code, msg = asyncio.run(sync_node_writer(node, creds.host, creds.api_key, args.timeout))
            except (OSError, ValueError, KeyError) as e:
                code, msg = 1, f"{node}: its node writer cannot be read: {type(e).__name__}: {e}"
            prefix = {0: "runstream: ", EXIT_LOST: "runstream: warning: "}.get(code, "runstream: error: ")
            print(prefix + msg, file=sys.stderr)
            worst = worse(worst, code)
    return worst


__all__ = [
    "EXIT_LOST",
    "journal_extent",
    "journal_scan",
    "node_dir_of",
    "rank_dirs",
    "read_marker",
    "sync_main",
    "sync_node_writer",
    "sync_one",
]
