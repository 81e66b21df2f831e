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
import json
import sys
import time
from pathlib import Path

from runstream.errors import UsageError
from runstream.format.frame import parse_segment_name
from runstream.format.fs import OsFileSystem
from runstream.format.journal_read import ScannedFrame, scan_segment
from runstream.rundir import find_run_dirs, resolve_run_dir
from runstream_ingest.sidecar.shipper import Identity, Shipper, read_marker
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
    """Upload one writer of a run: the producer's journal, or (``companion``) the sidecar's own."""
    meta = json.loads((run_dir / "run.json").read_text())
    writer_id = meta.get("writer_id") or meta["id"]
    writer_dir, resume = run_dir, "allow"
    if companion:
        writer_dir, writer_id, resume = companion_dir(run_dir), writer_id + COMPANION_SUFFIX, COMPANION_RESUME
    ident = Identity(meta["entity"], meta["project"], meta["id"], writer_id, resume)
    last_seq, total, damage = journal_scan(writer_dir)
    shipper = Shipper(writer_dir, ident, url, api_key)
    task = asyncio.create_task(shipper.run())
    t0 = time.monotonic()
    last_contact = t0
    path = f"{ident.entity}/{ident.project}/{ident.run_id}" + (" (sidecar records)" if companion else "")
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


def sync_main(args: argparse.Namespace) -> int:
    from runstream.login import credentials

    creds = credentials(args.host)
    if not creds.host:
        raise UsageError("no server to sync to: pass --host, set RUNSTREAM_HOST, or run `runstream login`")
    dirs = [resolve_run_dir(d) for d in args.run_dirs]
    if args.all is not None:
        dirs += find_run_dirs(Path(args.all))
    if not dirs:
        raise UsageError("name run directories to sync, or pass --all [DIR]")
    worst = 0

    def worse(a: int, b: int) -> int:
        return max(a, b, key=lambda c: SEVERITY.get(c, 4))

    for d in dirs:
        if not (d / "run.json").exists():
            print(f"runstream: skipping {d}: no run.json", file=sys.stderr)
            continue
        code, msg = sync_files(d, creds.host, creds.api_key)  # before the records that name them
        print(("runstream: " if code == 0 else "runstream: error: ") + msg, file=sys.stderr)
        worst = worse(worst, code)
        for companion in (False, True):
            if companion and not (companion_dir(d) / "journal").is_dir():
                continue
            try:
                code, msg = asyncio.run(sync_one(d, creds.host, creds.api_key, args.timeout, companion))
            except (OSError, ValueError, KeyError) as e:  # an unreadable run.json or journal
                code, msg = 1, f"{d}: cannot be read: {type(e).__name__}: {e}"
            prefix = {0: "runstream: ", EXIT_LOST: "runstream: warning: "}.get(code, "runstream: error: ")
            print(prefix + msg, file=sys.stderr)
            worst = worse(worst, code)
    return worst


__all__ = ["EXIT_LOST", "journal_extent", "journal_scan", "read_marker", "sync_main", "sync_one"]
