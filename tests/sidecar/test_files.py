"""Files kept with runs (docs/files.md): ``runstream.save`` with its three policies, globs and
base_path, uploads that are deduplicated, resumed after a cut and done in bounded memory, offline
runs then ``runstream sync``, ignore globs, downloads, and the errors a user sees."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.files import ApiFile
from runstream_ingest.sidecar.sources.blob_upload import PART, BlobClient, ContentChanged, hash_file
from tests.conftest import sidecars_under
from tests.support.server import ServerProc, start_server
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

# Console capture would take over the test process's own stdout; the other sources are not tested here.
QUIET = {"console": "off", "disable_stats": True, "disable_code": True}


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish_active_run: None) -> Path:
    """The training script's working directory (relative globs resolve here)."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def online(monkeypatch: pytest.MonkeyPatch, srv: ServerProc, tmp_path: Path, **settings: Any) -> Any:
    monkeypatch.setenv("RUNSTREAM_HOST", srv.url)
    return runstream.init(project="files", dir=tmp_path, settings={**QUIET, **settings})


def files_on(srv: ServerProc, path: str) -> dict[str, ApiFile]:
    try:
        return {f.name: f for f in runstream.Api(srv.url).run(path).files()}
    except runstream.NotFoundError:
        return {}  # the sidecar has not opened the run yet


def uploaded(srv: ServerProc, path: str, name: str, content: bytes) -> bool:
    f = files_on(srv, path).get(name)
    return f is not None and f.sha256 == hashlib.sha256(content).hexdigest()


def stored(srv: ServerProc) -> list[str]:
    """The blobs the server received and kept, in order (one log line each)."""
    return re.findall(r"blob ([0-9a-f]{64}) stored", srv.log())


def test_now_live_and_end_files_reach_the_server_and_download_unchanged(
    tmp_path: Path, work: Path, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    (work / "now.txt").write_bytes(b"saved now")
    (work / "live.txt").write_bytes(b"live v1")
    (work / "end.txt").write_bytes(b"end v1")
    run = online(monkeypatch, server, tmp_path)
    run.config.update({"lr": 0.5})
    assert run.save("now.txt", policy="now") == ["now.txt"]
    assert runstream.save("live.txt") == ["live.txt"]  # module level, policy live by default
    assert run.save("end.txt", policy="end") == ["end.txt"]
    wait_for(lambda: uploaded(server, run.path, "now.txt", b"saved now"), 30, "the now file")
    wait_for(lambda: uploaded(server, run.path, "live.txt", b"live v1"), 30, "the live file")
    (work / "now.txt").write_bytes(b"changed after save")  # a snapshot: not uploaded again
    (work / "live.txt").write_bytes(b"live v2")
    wait_for(lambda: uploaded(server, run.path, "live.txt", b"live v2"), 30, "the live file's change")
    assert files_on(server, run.path)["end.txt"].sha256 is None  # recorded, uploaded at the end
    (work / "end.txt").write_bytes(b"end v2")
    run.log({"loss": 1.0})
    run.finish()
    files = files_on(server, run.path)
    assert {"now.txt", "live.txt", "end.txt", "config.yaml", "summary.json"} <= set(files)
    names = ("now.txt", "live.txt", "end.txt")
    got = {n: files[n].download(root=tmp_path / "dl").read_bytes() for n in names}
    assert got == {"now.txt": b"saved now", "live.txt": b"live v2", "end.txt": b"end v2"}
    assert b"lr: 0.5" in files["config.yaml"].download(root=tmp_path / "dl").read_bytes()
    assert [files[n].policy for n in names] == ["now", "live", "end"]
    with pytest.raises(FileExistsError, match="replace=True"):
        files["end.txt"].download(root=tmp_path / "dl")
    assert files["end.txt"].download(root=tmp_path / "dl", exist_ok=True).read_bytes() == b"end v2"
    with pytest.raises(runstream.NotFoundError, match=r"no file 'nope\.txt'"):
        runstream.Api(server.url).run(run.path).file("nope.txt")


def test_a_live_file_rewritten_many_times_in_a_burst_is_uploaded_once_it_settles(
    tmp_path: Path, work: Path, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = work / "metrics.csv"
    log.write_text("0\n")
    run = online(monkeypatch, server, tmp_path)
    run.save("metrics.csv")
    for i in range(1, 20):  # 19 changes, 20 ms apart: well inside the quiet period
        with open(log, "a") as f:
            f.write(f"{i}\n")
        time.sleep(0.02)
    final = log.read_bytes()
    wait_for(lambda: uploaded(server, run.path, "metrics.csv", final), 30, "the settled file")
    assert len(stored(server)) <= 2  # the burst's last state (and at most one early one), not 20
    run.finish()


def test_glob_and_base_path_decide_the_paths_kept(tmp_path: Path, work: Path) -> None:
    for rel in ("data/a.csv", "data/b.csv", "data/sub/c.csv", "data/notes.txt"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(rel)
    run = runstream.init(project="files", mode="offline", dir=tmp_path, settings=QUIET)
    assert run.save("data/*.csv", policy="end") == ["data/a.csv", "data/b.csv"]
    assert run.save("data/**/*.csv", base_path="data", policy="end") == ["a.csv", "b.csv", "sub/c.csv"]
    assert run.save(str(work / "data" / "notes.txt"), policy="end") == ["notes.txt"]  # absolute: the name
    files = Path(run.dir) / "files"
    assert (files / "data" / "a.csv").read_text() == "data/a.csv"
    assert (files / "sub" / "c.csv").read_text() == "data/sub/c.csv"
    with pytest.raises(ValueError, match="not under base_path"):
        run.save("data/a.csv", base_path="data/sub")
    with pytest.raises(ValueError, match="policy must be 'live', 'now' or 'end', not 'later'"):
        run.save("data/a.csv", policy="later")
    with pytest.raises(TypeError, match="path or glob"):
        run.save(42)
    run.finish()


def test_saving_a_missing_file_warns_and_saves_nothing(
    tmp_path: Path, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runstream.init(project="files", mode="offline", dir=tmp_path, settings=QUIET)
    assert run.save("missing.pt") == []
    assert "save('missing.pt') matches no file" in capsys.readouterr().err
    run.finish()
    with pytest.raises(runstream.UsageError, match="is finished"):
        run.save("missing.pt")


def test_save_before_init_says_so_and_disabled_runs_save_nothing(tmp_path: Path, work: Path) -> None:
    with pytest.raises(runstream.UsageError, match=r"save\(\) was called before runstream.init"):
        runstream.save("x.txt")
    (work / "x.txt").write_text("x")
    run = runstream.init(project="files", mode="disabled", dir=tmp_path)
    assert runstream.save("x.txt") is None
    run.finish()
    assert not (tmp_path / "runstream").exists()


def test_the_same_content_is_sent_once(
    tmp_path: Path, work: Path, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = os.urandom(300_000)
    (work / "a.bin").write_bytes(content)
    (work / "copy of a #1.bin").write_bytes(content)
    first = online(monkeypatch, server, tmp_path)
    first.save("*.bin", policy="now")
    first.finish()
    second = online(monkeypatch, server, tmp_path)
    second.save("a.bin", policy="now")
    second.finish()
    sha = hashlib.sha256(content).hexdigest()
    assert stored(server).count(sha) == 1  # three files in two runs, one upload
    for path, name in ((first.path, "a.bin"), (first.path, "copy of a #1.bin"), (second.path, "a.bin")):
        f = files_on(server, path)[name]
        assert f.sha256 == sha and f.size == len(content)
        assert f.download(root=tmp_path / "dl" / path, replace=True).read_bytes() == content


def _put(srv: ServerProc, sha: str, data: bytes, offset: int, size: int) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(
        f"{srv.url}/api/v1/blobs/{sha}?offset={offset}&size={size}", data=data, method="PUT"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers)


def test_an_upload_cut_mid_part_resumes_from_what_the_server_kept(tmp_path: Path, server: ServerProc) -> None:
    data = os.urandom(2 * PART + 12345)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    cut_at = 3 << 20
    with socket.create_connection(("127.0.0.1", server.http_port)) as s:
        head = f"PUT /api/v1/blobs/{sha}?offset=0&size={len(data)} HTTP/1.1\r\nHost: x\r\n"
        s.sendall(f"{head}Content-Length: {PART}\r\n\r\n".encode() + data[:cut_at])
    client = BlobClient(server.url, None)
    wait_for(lambda: f"blob {sha} cut" in server.log(), 30, "the server to see the cut")
    held = client.held(sha)
    assert held is not None and 0 < held <= cut_at  # what reached the server before the cut
    status, headers = _put(server, sha, data[:PART], 0, len(data))  # a stale offset is refused
    assert status == 409 and headers["Upload-Offset"] == str(held)
    assert client.upload(path, sha, len(data)) == len(data) - held  # only the rest is sent
    assert client.held(sha) is None
    assert hash_file(server.data_dir / "blobs" / sha[:2] / sha) == (sha, len(data))
    assert client.upload(path, sha, len(data)) == 0  # held: nothing sent


def test_content_that_does_not_match_its_sha256_is_discarded(tmp_path: Path, server: ServerProc) -> None:
    sha = hashlib.sha256(b"what it claims").hexdigest()
    path = tmp_path / "f"
    path.write_bytes(b"something else")
    client = BlobClient(server.url, None)
    with pytest.raises(ContentChanged, match="hashes to"):
        client.upload(path, sha, path.stat().st_size)
    assert client.held(sha) == 0
    assert _put(server, "not-a-sha", b"x", 0, 1)[0] == 400
    assert _put(server, sha, b"xx", 0, 1)[0] == 400  # past the declared size


def test_uploads_need_a_key_when_the_server_requires_one(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "server", "--auth")
    try:
        sha = hashlib.sha256(b"x").hexdigest()
        assert _put(srv, sha, b"x", 0, 1)[0] == 401
        req = urllib.request.Request(f"{srv.url}/api/v1/blobs/{sha}", method="HEAD")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        e.value.close()
        assert e.value.code == 401
    finally:
        srv.stop()


def test_an_offline_run_s_files_are_uploaded_by_sync(tmp_path: Path, work: Path) -> None:
    (work / "model.pt").write_bytes(b"weights" * 1000)
    (work / "log.txt").write_text("first\n")
    run = runstream.init(project="files", mode="offline", dir=tmp_path, settings=QUIET)
    run.save("model.pt", policy="now")
    run.save("log.txt")
    (work / "log.txt").write_text("first\nlast\n")
    run.finish()
    srv = start_server(tmp_path / "server")
    try:
        cmd = [sys.executable, "-m", "runstream.cli.main", "sync", run.dir, "--host", srv.url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        assert "files uploaded" in out.stderr
        files = files_on(srv, run.path)
        assert files["model.pt"].download(root=tmp_path / "dl").read_bytes() == b"weights" * 1000
        assert files["log.txt"].download(root=tmp_path / "dl").read_bytes() == b"first\nlast\n"
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert again.returncode == 0 and "0 of" in again.stderr  # nothing sent twice
        # A file whose record arrived but whose content did not: a clear 409, not a 404.
        sha = files["model.pt"].sha256
        assert sha is not None
        (srv.data_dir / "blobs" / sha[:2] / sha).unlink()
        with pytest.raises(runstream.ConflictError, match="not uploaded yet"):
            files["model.pt"].download(root=tmp_path / "dl2")
    finally:
        srv.stop()


def test_ignore_globs_keep_files_from_upload(
    tmp_path: Path, work: Path, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    (work / "keep.txt").write_text("keep")
    (work / "token.secret").write_text("hunter2")
    run = online(monkeypatch, server, tmp_path, ignore_globs=["*.secret", "scratch/*"])
    assert run.save("*", policy="now") == ["keep.txt"]
    scratch = Path(run.dir) / "files" / "scratch"
    scratch.mkdir()
    (scratch / "tmp.bin").write_bytes(b"scratch")  # written into files/ directly: uploaded at the end...
    (Path(run.dir) / "files" / "extra.txt").write_text("extra")
    run.finish()
    names = set(files_on(server, run.path))
    assert "keep.txt" in names and "extra.txt" in names  # ...unless ignored
    assert not any(n.endswith(".secret") or n.startswith("scratch/") for n in names)
    assert hashlib.sha256(b"hunter2").hexdigest() not in stored(server)


def test_a_1gb_file_is_uploaded_with_the_sidecar_s_memory_far_below_its_size(
    tmp_path: Path, work: Path, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = work / "big.bin"
    size = 1 << 30
    with open(big, "wb") as f:  # sparse, with random blocks: cheap to make, not all zeros
        f.truncate(size)
        for off in range(0, size, 64 << 20):
            f.seek(off)
            f.write(os.urandom(4096))
    try:
        run = online(monkeypatch, server, tmp_path, finish_timeout=120)
        run.save("big.bin", policy="end")
        run.finish()
        sha, _ = hash_file(big)
        f = files_on(server, run.path)["big.bin"]
        assert (f.sha256, f.size) == (sha, size)
        assert hash_file(server.data_dir / "blobs" / sha[:2] / sha) == (sha, size)
        log = (Path(run.dir) / "logs" / "sidecar.log").read_text()
        peak = int(re.findall(r"sidecar peak RSS (\d+) MiB", log)[-1])
        assert peak < 300, f"the sidecar peaked at {peak} MiB uploading a 1024 MiB file"
    finally:
        shutil.rmtree(server.data_dir / "blobs", ignore_errors=True)
        big.unlink(missing_ok=True)


@pytest.mark.browser
def test_the_files_tab_lists_a_run_s_files_and_downloads_them(
    tmp_path: Path,
    work: Path,
    server: ServerProc,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    from playwright.sync_api import expect

    from tests.support.browser import chromium, open_page

    (work / "model.ckpt").write_bytes(b"weights " * 100)
    run = online(monkeypatch, server, tmp_path)
    run.save("model.ckpt", policy="now")
    run.finish()
    entity, project, run_id = run.path.split("/")
    with chromium() as browser, open_page(browser, request) as page:
        page.goto(f"{server.url}/#/r/{entity}/{project}/{run_id}?tab=files")
        row = page.get_by_test_id("files").locator("tr", has_text="model.ckpt")
        expect(row).to_contain_text("now")
        with page.expect_download() as download:
            row.get_by_test_id("file-link").click()
        assert download.value.suggested_filename == "model.ckpt"
        assert Path(download.value.path()).read_bytes() == b"weights " * 100


def test_end_files_of_a_training_process_killed_mid_run_are_still_uploaded(
    tmp_path: Path, server: ServerProc
) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import os, signal, runstream\n"
        "open('ckpt.pt', 'wb').write(b'last checkpoint')\n"
        f"run = runstream.init(project='files', settings={QUIET!r})\n"
        "run.save('ckpt.pt', policy='end')\n"
        "print(run.path, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env["RUNSTREAM_HOST"] = server.url
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    path = proc.stdout.strip()
    wait_for(lambda: uploaded(server, path, "ckpt.pt", b"last checkpoint"), 60, "the sidecar to upload it")
    wait_for(lambda: not sidecars_under(tmp_path), 60, "the sidecar to finish")
    assert runstream.Api(server.url).run(path).state == "crashed"
    f = files_on(server, path)["ckpt.pt"]
    assert f.download(root=tmp_path / "dl").read_bytes() == b"last checkpoint"
