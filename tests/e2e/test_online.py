"""Online runs against a real ``runstream server`` on 127.0.0.1: live delivery, a server that goes
away and comes back, no server at all then ``runstream sync``, a killed sidecar, two runs at once."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import runstream
from tests.conftest import sidecars_under
from tests.support.procs import poll
from tests.support.server import ServerProc, start_server
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(tmp_path: Path, body: str, url: str, name: str = "train") -> subprocess.Popen[bytes]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env["RUNSTREAM_HOST"] = url
    with open(tmp_path / f"{name}.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, str(path)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err
        )


def err_of(tmp_path: Path, name: str = "train") -> str:
    return (tmp_path / f"{name}.err").read_text()


def rows_on_server(url: str, path: str) -> int:
    try:
        return int(runstream.Api(url).run(path).rows)
    except runstream.NotFoundError:
        return 0  # not registered yet: the sidecar opens the run when it first connects


def steps_on_server(url: str, path: str) -> list[int]:
    return [r["_step"] for r in runstream.Api(url).run(path).scan_history(keys=["i"], page_size=5000)]


def run_path(tmp_path: Path) -> str:
    meta = json.loads(((tmp_path / "runstream" / "latest-run").resolve() / "run.json").read_text())
    return f"{meta['entity']}/{meta['project']}/{meta['id']}"


def test_rows_are_on_the_server_while_the_run_is_still_running(tmp_path: Path, server: ServerProc) -> None:
    proc = script(
        tmp_path,
        """
        import os, time, runstream
        run = runstream.init(project="live", config={"lr": 0.1})
        for i in range(5000):
            run.log({"i": i})
        open("logged", "w").close()
        while not os.path.exists("go"):
            time.sleep(0.01)
        run.finish()
        """,
        server.url,
    )
    try:
        wait_for((tmp_path / "logged").exists, 60, "the script to log")
        path = run_path(tmp_path)
        wait_for(lambda: rows_on_server(server.url, path) == 5000, 10, "rows to reach the server")
        live = runstream.Api(server.url).run(path)
        assert live.state == "running" and live.config == {"lr": 0.1}
        (tmp_path / "go").touch()
        assert proc.wait(60) == 0, err_of(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    done = runstream.Api(server.url).run(path)
    assert done.state == "finished" and done.summary["i"] == 4999
    assert steps_on_server(server.url, path) == list(range(5000))


def sidecar_log(tmp_path: Path, since: int = 0) -> str:
    """The run's logs/sidecar.log from byte ``since`` on."""
    with open((tmp_path / "runstream" / "latest-run").resolve() / "logs" / "sidecar.log", "rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace")


# What a shipper logs each time it fails to reach a server that is down (it retries with backoff).
NOT_REACHABLE = re.compile(r"server \S+ not reachable: ")
# An online run has two shippers (the run's journal and the companion's), so this is about five
# failures each: their backoff (100 ms, doubling) has grown to seconds by then.
FAILED_RECONNECTS = 10


def test_server_stopped_mid_run_and_restarted_later_stores_every_record_once(tmp_path: Path) -> None:
    http, grpc_port = free_port(), free_port()
    srv = start_server(tmp_path / "server", http_port=http, grpc_port=grpc_port)
    proc = script(
        tmp_path,
        """
        import os, time, runstream
        run = runstream.init(project="restart")
        i = 0
        def log_until(flag):
            global i
            while not os.path.exists(flag):
                run.log({"i": i})
                i += 1
                if i % 500 == 0:
                    time.sleep(0.005)
        log_until("stop-1")
        open("phase-1", "w").close()
        log_until("stop-2")
        run.finish()
        print(i, file=open("count", "w"))
        """,
        srv.url,
    )
    try:
        # It streams a while with the server up: until rows are on the server.
        wait_for((tmp_path / "runstream" / "latest-run" / "run.json").exists, 60, "the run to start")
        path = run_path(tmp_path)
        wait_for(lambda: rows_on_server(srv.url, path) > 0, 30, "rows to reach the server")
        mark = len(sidecar_log(tmp_path).encode())
        srv.stop()
        (tmp_path / "stop-1").touch()
        wait_for((tmp_path / "phase-1").exists, 30, "the script to keep logging")
        # The server stays away while training goes on, until the shippers have failed to reconnect
        # several times (rather than for a fixed 30 s): it then comes back while they back off.
        poll(
            "the shippers failing to reconnect",
            lambda: len(NOT_REACHABLE.findall(sidecar_log(tmp_path, mark))) >= FAILED_RECONNECTS,
            60,
            diag=lambda: sidecar_log(tmp_path)[-3000:],
        )
        srv = start_server(tmp_path / "server", http_port=http, grpc_port=grpc_port)
        (tmp_path / "stop-2").touch()
        assert proc.wait(120) == 0, err_of(tmp_path)
        total = int((tmp_path / "count").read_text())
        assert steps_on_server(srv.url, run_path(tmp_path)) == list(range(total))
        assert runstream.Api(srv.url).run(run_path(tmp_path)).state == "finished"
    finally:
        proc.kill()
        proc.wait()
        srv.stop()


def test_no_server_for_the_whole_run_then_sync_delivers_everything(tmp_path: Path) -> None:
    http, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    proc = script(
        tmp_path,
        """
        import time, runstream
        t = time.monotonic()
        run = runstream.init(project="later", settings={"finish_timeout": 2})
        print(f"init took {time.monotonic() - t:.3f}s", flush=True, file=open("init", "w"))
        for i in range(3000):
            run.log({"i": i})
        run.finish()
        """,
        url,
    )
    assert proc.wait(60) == 0, err_of(tmp_path)
    assert float((tmp_path / "init").read_text().split()[2][:-1]) < 2.0  # init never waits for it
    run_dir = (tmp_path / "runstream" / "latest-run").resolve()
    assert f"runstream sync {run_dir}" in err_of(tmp_path)
    srv = start_server(tmp_path / "server", http_port=http, grpc_port=grpc_port)
    try:
        env = {**os.environ, "RUNSTREAM_HOST": url}
        cmd = [sys.executable, "-m", "runstream.cli.main", "sync", str(run_dir)]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert first.returncode == 0, first.stderr
        assert steps_on_server(url, run_path(tmp_path)) == list(range(3000))
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert again.returncode == 0 and "0 records uploaded" in again.stderr  # idempotent
        assert steps_on_server(url, run_path(tmp_path)) == list(range(3000))
    finally:
        srv.stop()


def test_sync_against_a_server_that_refuses_exits_nonzero_saying_why(tmp_path: Path) -> None:
    run = runstream.init(project="refused", mode="offline", dir=tmp_path)
    run.log({"i": 1})
    run.finish()
    srv = start_server(tmp_path / "server", "--auth")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "runstream.cli.main", "sync", run.dir, "--host", srv.url],
            env={k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        srv.stop()
    assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr


def test_sidecar_killed_mid_upload_leaves_no_duplicates_and_no_gaps(
    tmp_path: Path, server: ServerProc
) -> None:
    n = 100_000
    proc = script(
        tmp_path,
        f"""
        import os, time, runstream
        run = runstream.init(project="kill")
        for i in range({n}):
            run.log({{"i": i}})
            if i == 30_000:
                open("halfway", "w").close()
                while not os.path.exists("go-on"):
                    time.sleep(0.001)
        run.finish()
        """,
        server.url,
    )
    try:
        wait_for((tmp_path / "halfway").exists, 60, "the script to get going")
        path = run_path(tmp_path)
        wait_for(lambda: rows_on_server(server.url, path) > 0, 20, "the upload to start")
        (victim,) = sidecars_under(tmp_path)
        victim.kill()
        victim.wait(5)
        (tmp_path / "go-on").touch()
        assert proc.wait(120) == 0, err_of(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    assert steps_on_server(server.url, path) == list(range(n))


def test_two_runs_stream_into_one_server_at_once(tmp_path: Path, server: ServerProc) -> None:
    body = """
        import runstream
        run = runstream.init(project="pair", name="{name}")
        for i in range(20_000):
            run.log({{"i": i}})
        run.finish()
        print(run.path, file=open("{name}.path", "w"))
        """
    procs = [script(tmp_path, body.format(name=n), server.url, name=n) for n in ("a", "b")]
    for p, n in zip(procs, ("a", "b"), strict=True):
        assert p.wait(120) == 0, err_of(tmp_path, n)
    for n in ("a", "b"):
        path = (tmp_path / f"{n}.path").read_text().strip()
        assert steps_on_server(server.url, path) == list(range(20_000))
        assert runstream.Api(server.url).run(path).name == n


def test_resume_must_asks_the_server_and_fails_clearly_for_an_unknown_run(
    tmp_path: Path, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNSTREAM_HOST", server.url)
    with pytest.raises(runstream.UsageError, match=r'resume="must".*nosuch01'):
        runstream.init(id="nosuch01", resume="must", project="r", dir=tmp_path)


def test_resume_allow_on_another_machine_continues_after_the_servers_last_step(
    tmp_path: Path, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNSTREAM_HOST", server.url)
    first = runstream.init(id="moved001", project="r", dir=tmp_path / "machine-a", config={"lr": 0.1})
    for i in range(5):
        first.log({"i": i})
    first.finish()
    # a fresh directory: no local copy of the run, only the server's
    again = runstream.init(
        id="moved001", project="r", resume="allow", dir=tmp_path / "machine-b", config={"bs": 8}
    )
    assert again.step == 5 and again.config.lr == 0.1 and again.name == first.name
    again.log({"i": 5})
    again.finish()
    assert steps_on_server(server.url, again.path) == list(range(6))
    remote = runstream.Api(server.url).run(again.path)
    assert remote.config == {"lr": 0.1, "bs": 8} and remote.state == "finished"
