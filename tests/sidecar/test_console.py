"""Console capture (docs/console.md): what a training process prints reaches the terminal unchanged
and is stored as lines with their stream, through kill -9 of either process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

import runstream
from runstream import console
from runstream.format import record as rec
from runstream.format.console_lines import LineAssembler, clean
from runstream.format.journal_read import read_journal
from runstream_ingest.sidecar.sources import console as console_capture
from runstream_ingest.sidecar.sources.companion import companion_dir
from runstream_ingest.sidecar.sources.console import _Tee, parse_console_arg
from tests.support.procs import poll, sidecar_pid_in_ring, sidecar_processes, start_script
from tests.support.server import running_server


# --- line assembly -------------------------------------------------------------------------------
def assemble(chunks: list[bytes], max_line: int = 64 << 10) -> list[str]:
    a = LineAssembler(max_line)
    out: list[str] = []
    for c in chunks:
        out += a.feed(c)
    return out + a.close()


def reference(data: bytes, max_line: int) -> list[str]:
    """The rules of docs/console.md, one byte at a time."""
    out: list[str] = []
    cur = b""
    cr = False
    for b in data:
        ch = bytes([b])
        if ch == b"\n":
            out.append(clean(cur))
            cur, cr = b"", False
        elif ch == b"\r":
            cr = True
        else:
            if cr:
                cur, cr = b"", False
            cur += ch
            if len(cur) >= max_line:
                out.append(clean(cur))
                cur = b""
    return out + ([clean(cur)] if cur else [])


def test_lines_end_at_newline_and_crlf_and_a_partial_line_is_kept_until_close() -> None:
    a = LineAssembler()
    assert a.feed(b"one\ntwo\r\nthr") == ["one", "two"]
    assert a.pending
    assert a.feed(b"ee") == []
    assert a.close() == ["three"]
    assert a.close() == []


def test_carriage_return_keeps_only_a_progress_bars_final_state() -> None:
    bar = b"".join(b"\r%3d%%|%s" % (i // 10, b"#" * (i // 100)) for i in range(1001)) + b"\n"
    assert assemble([bar]) == ["100%|##########"]
    assert assemble([b"abc\r"]) == ["abc"]  # nothing came after the \r: the line stands
    assert assemble([b"abc\r", b"\n"]) == ["abc"]  # \r\n split across reads is still a line end
    assert assemble([b"abc\r\rde\n"]) == ["de"]


def test_escape_sequences_are_removed_and_bad_utf8_is_replaced() -> None:
    assert assemble([b"\x1b[1;31mred\x1b[0m \x1b]0;title\x07plain\x1b[K\n"]) == ["red plain"]
    assert assemble([b"caf\xc3\xa9 \xff\n"]) == ["caf\u00e9 \ufffd"]


def test_a_line_longer_than_the_limit_is_cut() -> None:
    assert assemble([b"abcdefghij\n"], max_line=4) == ["abcd", "efgh", "ij"]


@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\r", b"\n", b"\r\n", b"\x1b[3", b"m", b"\xc3", b"\xa9"])),
    cuts=st.lists(st.integers(min_value=0, max_value=200)),
    max_line=st.integers(min_value=1, max_value=12),
)
def test_any_split_of_the_stream_gives_the_same_lines(
    data: list[bytes], cuts: list[int], max_line: int
) -> None:
    stream = b"".join(data)
    points = sorted({c for c in cuts if c <= len(stream)})
    chunks = [stream[i:j] for i, j in zip([0, *points], [*points, len(stream)], strict=True)]
    assert assemble(chunks, max_line) == assemble([stream], max_line) == reference(stream, max_line)


def test_a_bad_console_argument_names_what_is_wrong() -> None:
    assert parse_console_arg("stderr:5:6") == ("stderr", 5, 6)
    with pytest.raises(ValueError, match=r"STREAM:READFD:TEEFD.*'stdin:5:6'"):
        parse_console_arg("stdin:5:6")


def test_a_terminal_that_does_not_read_never_blocks_the_reader_and_losses_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(console_capture, "TEE_LIMIT", 1 << 20)
    r, w = os.pipe()
    tee = _Tee(w, "stdout")
    tee.start()
    try:
        for _ in range(64):  # 4 MiB into a pipe nobody reads: put() returns every time
            tee.put(b"x" * (64 << 10))
        assert tee.dropped >= 2 << 20
        tee.flush(0.05)
        assert tee.dropped >= 3 << 20  # what the terminal never took counts as well
    finally:
        os.close(r)  # the blocked write fails (EPIPE) and the thread ends
        tee.join(5)
        os.close(w)
    assert not tee.is_alive()


# --- whole runs ----------------------------------------------------------------------------------
PRINTS = r"""
import os, subprocess, sys, runstream
mode, root, online = sys.argv[1], sys.argv[2], sys.argv[3] == "online"
run = runstream.init(project="p", entity="e", id="consolerun", dir=root,
                     mode="online" if online else "offline", settings={"console": mode, "silent": True})
print("python out")
print("python err", file=sys.stderr)
sys.stdout.flush(); sys.stderr.flush()
os.write(1, b"fd out\n")
os.write(2, b"fd err\n")
subprocess.run(["sh", "-c", "echo sh out; echo sh err >&2"], check=True)
print("uni \u2713 \x1b[1mbold\x1b[0m")
for i in range(1001):
    sys.stderr.write(f"\r{i / 10:5.1f}%|" + "#" * (i // 100))
sys.stderr.write("\n")
sys.stdout.write("no newline at the end")
run.finish()
"""
STDOUT_LINES = ["python out", "fd out", "sh out", "uni \u2713 bold", "no newline at the end"]
STDERR_LINES = ["python err", "fd err", "sh err", "100.0%|##########"]


def run_prints(tmp_path: Path, mode: str, url: str | None = None) -> tuple[bytes, bytes, Path]:
    script = tmp_path / "prints.py"
    script.write_text(PRINTS)
    root = tmp_path / mode
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    if url:
        env["RUNSTREAM_HOST"] = url
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(root), "online" if url else "offline"],
        check=False, capture_output=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    (run_dir,) = (root / "runstream").glob("run-*")
    return proc.stdout, proc.stderr, run_dir


def companion_console(run_dir: Path) -> list[tuple[str, str]]:
    return journal_console(companion_dir(run_dir) / "journal")


def journal_console(journal: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not journal.exists():
        return out
    for frame in read_journal(journal).iter_frames():
        for r in rec.iter_records(frame.batch):
            if r.kind == rec.KIND_CONSOLE:
                v = r.value()
                out += [(v["stream"], line) for line in v["lines"]]
    return out


def stream_lines(pairs: list[tuple[str, str]], stream: str) -> list[str]:
    return [line for s, line in pairs if s == stream]


def test_redirect_tees_the_exact_bytes_and_stores_every_line_with_its_stream(tmp_path: Path) -> None:
    plain_out, plain_err, plain_dir = run_prints(tmp_path, "off")
    out, err, run_dir = run_prints(tmp_path, "redirect")
    assert (out, err) == (plain_out, plain_err)  # the terminal sees what it sees without capture
    got = companion_console(run_dir)
    assert stream_lines(got, "stdout") == STDOUT_LINES  # Python, os.write, a child process
    assert stream_lines(got, "stderr") == STDERR_LINES  # 1001 progress redraws: one line
    assert (run_dir / "files" / "output.log").read_text().splitlines() == [line for _, line in got]
    # off: nothing captured anywhere
    assert companion_console(plain_dir) == [] and journal_console(plain_dir / "journal") == []
    assert not (plain_dir / "files" / "output.log").exists()


def test_online_the_servers_console_has_every_line(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as srv:
        run_prints(tmp_path, "redirect", url=srv.url)
        url = f"{srv.url}/api/v1/runs/e/p/consolerun/console?limit=1000"

        def lines() -> list[dict[str, Any]] | None:
            with urllib.request.urlopen(url, timeout=5) as r:
                got: list[dict[str, Any]] = json.loads(r.read())["lines"]
            return got if len(got) >= len(STDOUT_LINES) + len(STDERR_LINES) else None

        got = poll("the console lines on the server", lines, 30)
    assert [x["line"] for x in got if x["stream"] == "stdout"] == STDOUT_LINES
    assert [x["line"] for x in got if x["stream"] == "stderr"] == STDERR_LINES
    assert all(isinstance(x["time"], float) for x in got)


def test_wrap_captures_python_writes_from_every_thread_through_the_ring(tmp_path: Path) -> None:
    script = tmp_path / "wrap.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, threading, runstream
            run = runstream.init(project="p", dir=sys.argv[1], mode="offline", settings={"console": "wrap"})
            print("python out")
            print("python err", file=sys.stderr)
            t = threading.Thread(target=lambda: print("from a thread"))
            t.start(); t.join()
            sys.stdout.flush()
            os.write(1, b"fd only\\n")
            print("last")
            run.finish()
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], check=False, capture_output=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout == b"python out\nfrom a thread\nfd only\nlast\n"
    (run_dir,) = (tmp_path / "runstream").glob("run-*")
    got = journal_console(run_dir / "journal")  # the training process's own records
    assert stream_lines(got, "stdout") == ["python out", "from a thread", "last"]  # not fd writes
    assert "python err" in stream_lines(got, "stderr")
    assert companion_console(run_dir) == []


@pytest.mark.parametrize("fixture", ["capsys", "capfd"])
def test_under_pytest_capture_auto_wraps_and_leaves_pytests_capture_working(
    tmp_path: Path, fixture: str, request: pytest.FixtureRequest
) -> None:
    cap = request.getfixturevalue(fixture)
    assert console.resolve_mode("auto") == "wrap"  # sys.stdout does not write to fd 1 here
    run = runstream.init(project="p", dir=tmp_path, mode="offline", settings={"silent": True})
    print("seen by both")
    run.finish()
    assert cap.readouterr().out == "seen by both\n"
    print("after finish")
    assert cap.readouterr().out == "after finish\n"
    (run_dir,) = (tmp_path / "runstream").glob("run-*")
    assert journal_console(run_dir / "journal") == [("stdout", "seen by both")]


def test_disabled_mode_captures_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write = sys.stdout.write
    run = runstream.init(mode="disabled", dir=tmp_path, settings={"console": "redirect"})
    assert sys.stdout.write == write
    print("x")
    run.finish()
    assert capsys.readouterr().out == "x\n"
    assert not (tmp_path / "runstream").exists()


# --- kill -9 ------------------------------------------------------------------------------------
KILLED = """
import os, sys, runstream
settings = {"console": "redirect", "silent": True}
run = runstream.init(project="p", dir=ARGS["root"], mode="offline", settings=settings)
emit("run", dir=str(run.dir))
for i in range(200):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
os.write(2, b"partial without newline")  # the protocol owns stdout
emit("printed")
wait_for("never")
"""


def test_what_was_printed_before_the_training_process_is_killed_is_stored(tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = "import json, sys\nARGS = json.loads(sys.argv[1])\n" + KILLED
    with start_script(source, tmp_path, root, {"root": str(root)}) as s:
        run_dir = s.watch_run(s.expect("run")["dir"])
        s.expect("printed")
        os.killpg(s.proc.pid, signal.SIGKILL)
        s.proc.wait(10)
        poll("the sidecar to drain the pipes and exit", lambda: not sidecar_processes(root), 30, diag=s.diag)
        got = [(st_, line) for st_, line in companion_console(run_dir) if not line.startswith("{")]
    assert stream_lines(got, "stdout") == [f"out {i}" for i in range(200)]
    assert stream_lines(got, "stderr") == [f"err {i}" for i in range(200)] + ["partial without newline"]


SIDECAR_KILLED = """
import sys, runstream
run = runstream.init(project="p", dir=ARGS["root"], mode="offline", settings={"console": "redirect"})
emit("run", dir=str(run.dir))
for i in range(100):
    print(f"before {i}", file=sys.stderr if i % 2 else sys.stdout)
emit("printed")
wait_for("go")
for i in range(100):  # the sidecar may be dead right now: these wait in the pipe for the next one
    print(f"after {i}", file=sys.stderr if i % 2 else sys.stdout)
emit("printed")
wait_for("finish")
run.finish()
emit("done")
"""


def test_lines_survive_a_killed_sidecar_once_each(tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = "import json, sys\nARGS = json.loads(sys.argv[1])\n" + SIDECAR_KILLED
    expected = {f"{w} {i}": "stderr" if i % 2 else "stdout" for w in ("before", "after") for i in range(100)}

    def ours(run_dir: Path) -> list[tuple[str, str]]:
        return [
            (st_, line)
            for st_, line in companion_console(run_dir)
            if line.split(" ")[0] in ("before", "after")
        ]

    with start_script(source, tmp_path, root, {"root": str(root)}) as s:
        run_dir = s.watch_run(s.expect("run")["dir"])
        s.expect("printed")
        poll("the first lines in the journal", lambda: len(ours(run_dir)) == 100, 30, diag=s.diag)
        first = sidecar_pid_in_ring(run_dir)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(first)], timeout=10)
        s.send("go")
        s.expect("printed")  # it reached our pipe through the next sidecar's tee
        assert sidecar_pid_in_ring(run_dir) != first
        s.send("finish")
        s.expect("done")
        assert s.wait() == 0
        got = ours(run_dir)
    assert sorted(got) == sorted((stream, line) for line, stream in expected.items())  # each once
    for stream in ("stdout", "stderr"):  # in order within a stream (two pipes: not across them)
        assert stream_lines(got, stream) == [line for line, s_ in expected.items() if s_ == stream]


def test_a_fork_of_the_training_process_is_captured_and_does_not_undo_the_capture(tmp_path: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, runstream
            run = runstream.init(project="p", dir=sys.argv[1], mode="offline",
                                 settings={"console": "redirect", "silent": True})
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                print("from the fork", flush=True)
                runstream.finish()  # inert in a fork
                sys.exit(0)
            os.waitpid(pid, 0)
            print("parent still captured")
            run.finish()
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], check=False, capture_output=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout == b"from the fork\nparent still captured\n"
    (run_dir,) = (tmp_path / "runstream").glob("run-*")
    assert stream_lines(companion_console(run_dir), "stdout") == ["from the fork", "parent still captured"]


def test_prints_never_block_when_no_sidecar_can_run(tmp_path: Path) -> None:
    """Nothing reads the pipes once the supervisor gives up on the sidecar: the terminal gets fds
    1/2 back and what the pipes hold, so 3 MiB of prints (three pipes' worth) go through."""
    script = tmp_path / "nosidecar.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, runstream
            run = runstream.init(project="p", dir=sys.argv[1], mode="offline",
                                 settings={"console": "redirect", "silent": True})
            for i in range(30_000):
                print(f"{i:08d} " + "x" * 95)
            run.finish()
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env["RUNSTREAM_SIDECAR_WRAPPER"] = "false"  # every sidecar exits at once, with code 1
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], check=False, capture_output=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout == b"".join(b"%08d " % i + b"x" * 95 + b"\n" for i in range(30_000))
    assert b"console capture stopped" in proc.stderr
