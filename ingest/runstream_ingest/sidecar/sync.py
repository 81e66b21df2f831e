"""``runstream sync``: upload offline or half-uploaded runs with the sidecar's own shipper.

It resumes where the server's acks stopped (the server says where in ``Opened``), so running it
twice, or after a partial upload, sends nothing twice.  The content of the run's files goes first
(``blob_upload.sync_files``: what the server lacks of each file the run recorded), then the
records that name it.  Exit codes: 0 everything acknowledged,
1 the server refused a run (its message is printed), 2 the server could not be reached.
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


def journal_extent(writer_dir: Path) -> tuple[int, int]:
    """(highest seq, payload bytes) over the journal's valid frames, without decompressing."""
    fs = OsFileSystem()
    jdir = writer_dir / "journal"
    last = total = 0
    names = sorted(
        (i, n) for n in (p.name for p in jdir.iterdir()) if (i := parse_segment_name(n)) is not None
    )
    for _, name in names:
        for item in scan_segment(fs, str(jdir / name)):
            if isinstance(item, ScannedFrame):
                last = max(last, item.header.last_seq)
                total += item.header.payload_len
    return last, total


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
    last_seq, total = journal_extent(writer_dir)
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
        shipper.save_marker()
        uploaded = last_seq - (shipper.opened_acked or 0)
        return 0, f"{path}: {uploaded} records uploaded ({last_seq} acknowledged in all)"
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
    for d in dirs:
        if not (d / "run.json").exists():
            print(f"runstream: skipping {d}: no run.json", file=sys.stderr)
            continue
        code, msg = sync_files(d, creds.host, creds.api_key)  # before the records that name them
        print(("runstream: " if code == 0 else "runstream: error: ") + msg, file=sys.stderr)
        worst = max(worst, code)
        for companion in (False, True):
            if companion and not (companion_dir(d) / "journal").is_dir():
                continue
            code, msg = asyncio.run(sync_one(d, creds.host, creds.api_key, args.timeout, companion))
            print(("runstream: " if code == 0 else "runstream: error: ") + msg, file=sys.stderr)
            worst = max(worst, code)
    return worst


__all__ = ["journal_extent", "read_marker", "sync_main", "sync_one"]
