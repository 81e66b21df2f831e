"""Run a training script as a real subprocess, talk to it, and clean up every process it started.

A fault test starts ``python train.py`` (``start_script``), which calls ``runstream.init``; that
starts the sidecar, possibly under a wrapper (``RUNSTREAM_SIDECAR_WRAPPER``: fiu-run, strace), in
a session of its own.  So killing the script's process group is not enough: the sidecar (and a
wrapper such as strace, with its own child) outlive it.  ``Script.cleanup`` therefore kills, by
pid:

* the script (its process group) and its descendants;
* every live process whose command line is a sidecar of a run under the test's root directory
  (a sidecar, or its wrapper, gets ``--run-dir <root>/runstream/run-...``);
* the pid the sidecar stores in its ring (``W_SIDECAR_PID``), if that process is a sidecar;

and removes ring files the runs left in ``/dev/shm``.

Protocol with the script: it writes one JSON object per line to stdout (``emit(event, **data)``
in ``SCRIPT_PRELUDE``) and reads commands, one per line, from stdin (``wait_for(command)``).
The test side is ``Script.expect(event)`` and ``Script.send(command)``, each with a deadline, so
tests coordinate with the script through the pipe instead of sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil

from runstream import ring
from runstream.format.ring_layout import W_SIDECAR_PID, RingMap

SIDECAR_MODULE = "runstream_ingest.sidecar.main"

# Put at the top of every training script: the two halves of the line protocol.
SCRIPT_PRELUDE = """\
import json as _json
import sys as _sys


def emit(event, **data):
    _sys.stdout.write(_json.dumps({"event": event, **data}) + "\\n")
    _sys.stdout.flush()


def wait_for(command):
    line = _sys.stdin.readline()
    if line.strip() != command:
        raise SystemExit(f"expected command {command!r} on stdin, got {line!r}")

"""

T = TypeVar("T")


def poll(
    what: str,
    fn: Callable[[], T | None],
    timeout: float,
    interval: float = 0.02,
    diag: Callable[[], str] | None = None,
) -> T:
    """Call ``fn`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError
    naming ``what``, with ``diag()`` appended)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{diag()}" if diag else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


# --- finding a run's processes and ring ---------------------------------------------------------
def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; only its parent's wait is due)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def _status(p: psutil.Process) -> str:
    try:
        return str(p.status())
    except psutil.Error:
        return "gone"


def is_sidecar_of(cmdline: list[str], root: Path) -> bool:
    """A sidecar (or a wrapper around one) of a run whose directory is under ``root``."""
    if SIDECAR_MODULE not in cmdline:
        return False
    prefix = str(root.resolve())
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "--run-dir" and str(Path(cmdline[i + 1]).resolve()).startswith(prefix):
            return True
    return False


def sidecar_processes(root: Path) -> list[psutil.Process]:
    """Live sidecars, and wrappers around them, of runs under ``root``."""
    found = []
    for p in psutil.process_iter():
        if p.pid != os.getpid() and is_sidecar_of(_cmdline(p), root) and alive(p.pid):
            found.append(p)
    return found


def ring_path(run_dir: Path) -> Path | None:
    """The ring of a run (see docs/run-dir.md, "The ring"), if it still exists."""
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    for p in (Path("/dev/shm") / f"runstream-{meta['id']}-{meta['pid']}.ring", run_dir / "ring"):
        if p.exists():
            return p
    return None


def ring_words(run_dir: Path) -> list[int] | None:
    """A snapshot of the ring's control words (``runstream.ring.W_*`` indexes), or None once the
    ring is gone (removed at the end of the run)."""
    path = ring_path(run_dir)
    if path is None:
        return None
    try:
        ring = RingMap.attach(path)
    except (OSError, ValueError):
        return None
    try:
        return list(ring.words)
    finally:
        ring.close()


def sidecar_pid_in_ring(run_dir: Path) -> int | None:
    """The pid of the sidecar process (not of a wrapper around it) serving the run's ring."""
    words = ring_words(run_dir)
    if words is None or not words[W_SIDECAR_PID]:
        return None
    return int(words[W_SIDECAR_PID])


def is_live_sidecar(pid: int, root: Path) -> bool:
    """``pid`` is alive and (not reused since) a sidecar of a run under ``root``."""
    try:
        return alive(pid) and is_sidecar_of(_cmdline(psutil.Process(pid)), root)
    except psutil.NoSuchProcess:
        return False


def runstream_inspect(run_dir: Path, *args: str) -> str:
    """``runstream inspect RUN_DIR ARGS`` as a user runs it; its stdout (stderr shown on failure)."""
    r = subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", "inspect", str(run_dir), *args],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"runstream inspect exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout


# --- the script --------------------------------------------------------------------------------
class Script:
    """A running training script; see the module docstring.  Use as a context manager: leaving it
    (normally or by an exception) runs ``cleanup``."""

    def __init__(self, proc: subprocess.Popen[bytes], root: Path, stderr_path: Path) -> None:
        self.proc = proc
        self.root = root
        self.stderr_path = stderr_path
        self.sidecar_pids: set[int] = set()  # sidecars (python processes) seen in rings
        self.run_dirs: set[Path] = set()
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self._sel.register(proc.stdout, selectors.EVENT_READ)
        self._eof = False

    def __enter__(self) -> Script:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # diagnostics
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def diag(self) -> str:
        parts = [f"script exit code: {self.proc.poll()}", f"script stderr (tail):\n{self.stderr()[-4000:]}"]
        for d in sorted(self.run_dirs):
            words = ring_words(d)
            if words is not None:
                named = {n: words[getattr(ring, n)] for n in dir(ring) if n.startswith("W_")}
                parts.append(f"ring words: {named}")
            with contextlib.suppress(OSError):
                segs = [(p.name, p.stat().st_size) for p in sorted((d / "journal").iterdir())]
                st = os.statvfs(d)
                parts.append(f"journal: {segs}; free: {st.f_bavail * st.f_frsize} bytes")
            for name in ("logs/sidecar.log", "logs/sidecar.stderr"):
                with contextlib.suppress(OSError):
                    parts.append(f"{name} (tail):\n{(d / name).read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def track(self) -> None:
        """Note the sidecar pids the runs' rings name (the ring is gone once a run ends)."""
        for d in self.run_dirs:
            pid = sidecar_pid_in_ring(d)
            if pid:
                self.sidecar_pids.add(pid)

    def watch_run(self, run_dir: str | Path) -> Path:
        d = Path(run_dir)
        self.run_dirs.add(d)
        self.track()
        return d

    # the line protocol
    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.track()
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"the script is gone; could not send {command!r}\n{self.diag()}") from None

    def expect(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        """Read lines until the script emits ``event``; returns its data."""
        deadline = time.monotonic() + timeout
        while True:
            self.track()
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # something else the script printed
                self.events.append(msg)
                if msg.get("event") == event:
                    return dict(msg)
            left = deadline - time.monotonic()
            if self._eof or left <= 0:
                why = "the script closed stdout" if self._eof else f"timed out after {timeout:.0f}s"
                raise AssertionError(f"waiting for event {event!r}: {why}\n{self.diag()}")
            for key, _ in self._sel.select(min(left, 0.2)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    self._eof = True
                self._buf += chunk

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the script did not exit within {timeout:.0f}s\n{self.diag()}") from None
        return code

    # cleanup
    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _victims(self) -> dict[int, psutil.Process]:
        """What is left to kill: the script's descendants, sidecars (and wrappers) of runs under
        ``root``, and sidecar pids seen in rings that still are sidecars of ours (not reused)."""
        victims = {p.pid: p for p in self._descendants()}
        victims.update((p.pid, p) for p in sidecar_processes(self.root))
        for pid in self.sidecar_pids:
            if is_live_sidecar(pid, self.root):
                with contextlib.suppress(psutil.NoSuchProcess):
                    victims[pid] = psutil.Process(pid)
        return victims

    def cleanup(self) -> None:
        """Kill everything this script started that is still alive, and close the pipes."""
        self.track()
        victims = self._victims()  # before the script dies and its children are reparented
        if self.proc.poll() is None:
            # Its own group (start_new_session); first, so that its supervisor starts no new sidecar.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for _ in range(5):  # a wrapper's child may show up only once the wrapper is gone
            procs = [p for p in victims.values() if alive(p.pid)]
            if not procs:
                break
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(procs, timeout=5)
            victims = self._victims()
        self.proc.wait(10)
        self._sel.close()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        for d in self.run_dirs:
            ring = ring_path(d)
            if ring is not None and ring.parent == Path("/dev/shm"):
                ring.unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        """Processes of this script still alive: sidecars of its runs, and any sidecar pid seen in
        a ring.  Empty after a clean finish."""
        self.track()
        out = [f"{p.pid} ({_status(p)}): {' '.join(_cmdline(p))}" for p in sidecar_processes(self.root)]
        out += [
            f"{pid}: sidecar named in the ring"
            for pid in self.sidecar_pids
            if is_live_sidecar(pid, self.root)
        ]
        return out


def start_script(
    source: str,
    tmp_path: Path,
    root: Path,
    args: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Script:
    """Write ``SCRIPT_PRELUDE + source`` to ``tmp_path/train.py`` and run it with the JSON of
    ``args`` as its one argument, in its own session, stdin/stdout piped, stderr to a file.
    ``root`` is the directory its runs go under (cleanup looks there for sidecars)."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT_PRELUDE + source)
    stderr_path = tmp_path / "train.stderr"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    # stdout is the protocol: it must not depend on a sidecar that fault tests stall or break
    # (tests/sidecar/test_console.py turns capture on with settings=)
    full_env["RUNSTREAM_CONSOLE"] = "off"
    full_env.update(env or {})
    full_env["PYTHONUNBUFFERED"] = "1"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(args or {})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=tmp_path,
            env=full_env,
            start_new_session=True,
        )
    return Script(proc, root, stderr_path)


@contextlib.contextmanager
def running_script(
    source: str,
    tmp_path: Path,
    root: Path,
    args: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Script]:
    s = start_script(source, tmp_path, root, args, env)
    try:
        yield s
    finally:
        s.cleanup()
