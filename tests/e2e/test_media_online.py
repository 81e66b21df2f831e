"""Media end to end with real processes: logged online and read back through ``Api`` with its
file; logged with no server and delivered by ``runstream sync``; a sidecar killed with
``kill -9`` while images are in flight (docs/media.md)."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import runstream
from tests.conftest import sidecars_under
from tests.e2e.test_online import err_of, free_port, run_path, script
from tests.support.server import ServerProc, start_server
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

LOG_IMAGES = """
    import numpy as np, runstream
    run = runstream.init(project="media", settings={{"finish_timeout": {timeout}}})
    for step in range({steps}):
        img = np.full((16, 24, 3), step % 256, np.uint8)
        run.log({{"loss": 1 / (step + 1), "img": runstream.Image(img, caption=f"s{{step}}"),
                  "h": runstream.Histogram(np.arange(step + 2), num_bins=4)}})
    run.log({{"table": runstream.Table(columns=["i", "img"], data=[[1, runstream.Image(img)]])}})
    run.finish()
"""


def check_on_server(url: str, path: str, steps: int, tmp_path: Path) -> None:
    api_run = runstream.Api(url).run(path)
    rows = [r for r in api_run.scan_history(keys=["img"], page_size=5000)]
    assert [r["img"]["caption"] for r in rows] == [f"s{s}" for s in range(steps)]
    for r in (rows[0], rows[-1]):
        p = r["img"]
        got = api_run.file(p["path"]).download(root=str(tmp_path / "dl"), replace=True)
        data = Path(got).read_bytes()
        assert hashlib.sha256(data).hexdigest() == p["sha256"] and len(data) == p["size"]
    summary = api_run.summary
    assert summary["table"]["_type"] == "table-file"
    assert summary["h"]["_type"] == "histogram" and sum(summary["h"]["values"]) == steps + 1


def test_media_logged_online_is_read_back_through_the_api_with_its_files(
    tmp_path: Path, server: ServerProc
) -> None:
    steps = 40
    proc = script(tmp_path, LOG_IMAGES.format(steps=steps, timeout=30), server.url)
    assert proc.wait(120) == 0, err_of(tmp_path)
    check_on_server(server.url, run_path(tmp_path), steps, tmp_path)


def test_media_logged_with_no_server_arrives_with_sync(tmp_path: Path) -> None:
    http, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    steps = 20
    proc = script(tmp_path, LOG_IMAGES.format(steps=steps, timeout=2), url)
    assert proc.wait(120) == 0, err_of(tmp_path)
    run_dir = (tmp_path / "runstream" / "latest-run").resolve()
    srv = start_server(tmp_path / "server", http_port=http, grpc_port=grpc_port)
    try:
        import subprocess
        import sys

        env = {**os.environ, "RUNSTREAM_HOST": url}
        cmd = [sys.executable, "-m", "runstream.cli.main", "sync", str(run_dir)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        check_on_server(url, run_path(tmp_path), steps, tmp_path)
    finally:
        srv.stop()


def test_sidecar_killed_while_images_are_in_flight_loses_none(tmp_path: Path) -> None:
    steps = 400
    proc = script(
        tmp_path,
        f"""
        import os, time, numpy as np, runstream
        run = runstream.init(project="media", mode="offline")
        big = np.random.default_rng(0).integers(0, 255, (6, 3, 256, 256), dtype=np.uint8)  # staged
        for step in range({steps}):
            img = np.full((32, 32, 3), step % 256, np.uint8)
            row = {{"img": runstream.Image(img, caption=str(step))}}
            if step % 50 == 0:
                row["clip"] = runstream.Video(big)
            run.log(row)
            if step == 100:
                open("halfway", "w").close()
                while not os.path.exists("go-on"):
                    time.sleep(0.001)
        run.finish()
        """,
        "http://127.0.0.1:1",
    )
    try:
        wait_for((tmp_path / "halfway").exists, 60, "the script to get going")
        (victim,) = sidecars_under(tmp_path)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        (tmp_path / "go-on").touch()
        assert proc.wait(180) == 0, err_of(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    run_dir = (tmp_path / "runstream" / "latest-run").resolve()
    data = runstream.read_run(run_dir)
    rows = data.history
    assert [r["img"]["caption"] for r in rows] == [str(s) for s in range(steps)]
    for r in rows:
        assert (run_dir / "files" / r["img"]["path"]).is_file(), r["img"]
        if "clip" in r:
            assert (run_dir / "files" / r["clip"]["path"]).is_file(), r["clip"]
    assert sum("clip" in r for r in rows) == steps // 50
    summary: dict[str, Any] = data.summary
    assert not summary.get("_runstream/media_errors") and not summary.get("_runstream/dropped_media")
    assert not list((run_dir / "media-staging").glob("*")), "every staged payload freed once journaled"
