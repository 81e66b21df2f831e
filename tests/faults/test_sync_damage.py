"""``runstream sync`` of a journal damaged on disk, against a real server (issue 10, A).

``runstream inspect`` skips journal damage and reads everything else; sync used to stop at the
first damaged frame: the next frame left a seq gap, the server answered FAILED_PRECONDITION, and
nothing after the damage ever arrived (with the first frame zeroed, nothing at all).  Now the
shipper declares the seqs no valid frame holds lost (``Lost``, docs/protocol.md), the server
counts them and accepts what follows.

Each test damages a real journal (written by the real ``JournalWriter``) one way, syncs it with
the real CLI, and checks: every record the journal reader can still read arrived exactly once,
the seqs nothing holds are counted on the server (``_runstream/server_lost_records``), sync's
output names what it skipped, its exit code is the documented one, and it printed no traceback.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

import runstream
from runstream.format import record as rec
from runstream.format.frame import CODEC_ZSTD, TYPE_BATCH, encode_frame
from runstream.format.fs import OsFileSystem
from runstream.format.journal_read import JournalReader, ScannedFrame, scan_segment
from runstream_ingest.sidecar.journal import JournalWriter
from tests.support.server import ServerProc, start_server

ENTITY, PROJECT, WRITER = "tests", "journals", "writer1"
FRAMES, PER_FRAME = 12, 50  # 600 records in 12 frames
EXIT_LOSS = 3  # sync's exit code when records were lost to damage (everything else uploaded)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield srv
    finally:
        srv.stop()


def write_run(run_dir: Path, run_id: str) -> list[tuple[str, int, int, int, int]]:
    """A run dir whose journal holds FRAMES frames of rows (step = seq - 1) over 3 segments;
    returns each frame's (segment, offset, end, first_seq, last_seq)."""
    (run_dir / "journal").mkdir(parents=True)
    meta = {"id": run_id, "entity": ENTITY, "project": PROJECT, "writer_id": WRITER}
    (run_dir / "run.json").write_text(json.dumps(meta))
    z = zstandard.ZstdCompressor(level=1)
    w = JournalWriter(run_dir / "journal", fsync="never", segment_bytes=4 << 10)
    w.open()
    for f in range(FRAMES):
        first = f * PER_FRAME + 1
        data = b"".join(
            rec.encode(s, rec.KIND_ROW, s - 1, 1000.0 + s, rec.pack_body({"i": s - 1, "x": os.urandom(16)}))
            for s in range(first, first + PER_FRAME)
        )
        w.append(encode_frame(TYPE_BATCH, CODEC_ZSTD, first, first + PER_FRAME - 1, z.compress(data)), first,
                 first + PER_FRAME - 1)  # fmt: skip
    assert w.close()
    layout = []
    for name in sorted(os.listdir(run_dir / "journal")):
        for item in scan_segment(OsFileSystem(), str(run_dir / "journal" / name)):
            assert isinstance(item, ScannedFrame)
            h = item.header
            layout.append((name, item.offset, item.offset + 32 + h.payload_len, h.first_seq, h.last_seq))
    assert len({seg for seg, *_ in layout}) >= 3
    return layout


def edit(path: Path, fn: Callable[[bytearray], None]) -> None:
    data = bytearray(path.read_bytes())
    fn(data)
    path.write_bytes(bytes(data))


def flip(path: Path, at: int) -> None:
    edit(path, lambda d: d.__setitem__(at, d[at] ^ 1))


def readable_seqs(run_dir: Path) -> list[int]:
    return [r.seq for r in JournalReader(run_dir / "journal").iter_records()]


def sync(run_dir: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", "sync", str(run_dir), "--host", url, "--timeout", "60"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def on_server(srv: ServerProc, run_id: str) -> tuple[list[int], dict[str, object], int]:
    """(history steps, summary, the writer's acked seq) as the server holds them."""
    run = runstream.Api(srv.url).run(f"{ENTITY}/{PROJECT}/{run_id}")
    steps = [r["_step"] for r in run.scan_history(keys=["i"], page_size=5000)]
    c = sqlite3.connect(f"file:{srv.data_dir / 'runstream.db'}?mode=ro", uri=True, timeout=10)
    try:
        (acked,) = c.execute(
            "SELECT w.acked_seq FROM writers w JOIN runs r ON r.id = w.run"
            " WHERE r.run_id = ? AND w.writer_id = ?",
            (run_id, WRITER),
        ).fetchone()
    finally:
        c.close()
    return steps, dict(run.summary), int(acked)


def check(
    srv: ServerProc, run_dir: Path, run_id: str, lost: list[tuple[int, int]], last_seq: int
) -> subprocess.CompletedProcess[str]:
    readable = readable_seqs(run_dir)
    out = sync(run_dir, srv.url)
    assert "Traceback" not in out.stderr, out.stderr
    n_lost = sum(b - a + 1 for a, b in lost)
    assert out.returncode == (EXIT_LOSS if lost else 0), out.stderr
    steps, summary, acked = on_server(srv, run_id)
    # Every readable record arrived, once (a duplicate row would be refused as a step regression).
    assert steps == [s - 1 for s in readable], out.stderr
    assert acked == last_seq
    assert summary.get("_runstream/server_lost_records", 0) == n_lost, summary
    assert summary.get("_runstream/server_step_regressions", 0) == 0
    for a, b in lost:  # the output names the seqs it skipped
        assert f"{a}..{b}" in out.stderr, out.stderr
    # Idempotent: again, nothing more is sent and nothing more counted.
    again = sync(run_dir, srv.url)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert "0 records uploaded" in again.stderr, again.stderr
    assert on_server(srv, run_id) == (steps, summary, acked)
    return out


def test_sync_past_a_flipped_byte_in_a_middle_frame_uploads_everything_else(
    server: ServerProc, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    layout = write_run(run_dir, "flip")
    seg, start, end, first, last = layout[5]
    edit(run_dir / "journal" / seg, lambda d: d.__setitem__((start + end) // 2, d[(start + end) // 2] ^ 0x40))
    out = check(server, run_dir, "flip", [(first, last)], FRAMES * PER_FRAME)
    assert re.search(rf"damage: \d+ bytes at {seg} offset \d+ skipped", out.stderr), out.stderr


def test_sync_with_the_first_frame_zeroed_uploads_everything_after_it(
    server: ServerProc, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    layout = write_run(run_dir, "zeroed")
    seg, start, end, first, last = layout[0]
    assert first == 1
    edit(run_dir / "journal" / seg, lambda d: d.__setitem__(slice(start, end), bytes(end - start)))
    check(server, run_dir, "zeroed", [(first, last)], FRAMES * PER_FRAME)


def test_sync_of_a_journal_with_a_torn_tail_uploads_every_whole_frame(
    server: ServerProc, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    layout = write_run(run_dir, "cut")
    seg, start, end, _first, _last = layout[-1]
    edit(run_dir / "journal" / seg, lambda d: d.__delitem__(slice((start + end) // 2, None)))
    # The torn frame's seqs are unknown to anyone (its header may be gone): nothing to declare.
    out = check(server, run_dir, "cut", [], layout[-2][4])
    assert re.search(rf"torn tail: \d+ bytes at {seg} offset {start} skipped", out.stderr), out.stderr


def test_sync_of_a_journal_with_garbage_between_frames_uploads_every_frame(
    server: ServerProc, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    layout = write_run(run_dir, "inserted")
    seg, _start, end, _first, _last = layout[3]
    edit(run_dir / "journal" / seg, lambda d: d.__setitem__(slice(end, end), b"\x89RSJ" + os.urandom(300)))
    out = check(server, run_dir, "inserted", [], FRAMES * PER_FRAME)
    assert re.search(rf"damage: 304 bytes at {seg} offset {end} skipped", out.stderr), out.stderr


def test_sync_past_damage_in_several_places_declares_each_lost_range_once(
    server: ServerProc, tmp_path: Path
) -> None:
    """Several damaged places in one journal, in different segments: each range declared once."""
    run_dir = tmp_path / "run"
    layout = write_run(run_dir, "several")
    lost = []
    for i in (2, 3, 9):
        seg, start, _end, first, last = layout[i]
        flip(run_dir / "journal" / seg, start + 40)
        lost.append((first, last))
    merged = [(lost[0][0], lost[1][1]), lost[2]]  # adjacent damaged frames are one lost range
    check(server, run_dir, "several", merged, FRAMES * PER_FRAME)


def test_sync_past_a_damaged_frame_whose_copy_lies_later_in_the_journal_loses_nothing(
    server: ServerProc, tmp_path: Path
) -> None:
    """A frame rewritten after a failed fsync has a second copy in a later segment, behind newer
    frames: the shipper must find and send it, never declare its seqs lost."""
    run_dir = tmp_path / "run"
    layout = write_run(run_dir, "rewritten")
    seg, start, end, _first, _last = layout[4]
    frame = (run_dir / "journal" / seg).read_bytes()[start:end]
    (run_dir / "journal" / "seg-000099.rsj").write_bytes(frame)
    flip(run_dir / "journal" / seg, start + 40)
    check(server, run_dir, "rewritten", [], FRAMES * PER_FRAME)
