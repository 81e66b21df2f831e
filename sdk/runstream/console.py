"""Console capture in the training process: setting it up at ``init``, undoing it at ``finish``.

Modes (``settings={"console": ...}``, ``RUNSTREAM_CONSOLE``; docs/console.md):

* ``redirect``: fds 1 and 2 become the write ends of two pipes, so output from Python, C
  extensions and child processes is all captured.  The sidecar reads the pipes, writes the bytes
  to the original fds (kept as dups: the "tee" fds) and stores the lines.  This process keeps the
  read ends and the tee fds open until the run is finished, and the supervisor passes all four to
  every sidecar it starts (``Capture.pass_fds``), so a restarted sidecar reads on.
* ``wrap``: ``sys.stdout.write``/``sys.stderr.write`` are wrapped; the text still goes to the
  original stream, and complete lines are sent through the ring as KIND_CONSOLE records.  Python
  writes only (no C or child output).  For notebooks and wherever fds 1/2 are not what
  ``sys.stdout``/``sys.stderr`` write to.
* ``auto``: redirect when ``sys.stdout``/``sys.stderr`` write straight to fds 1/2, else wrap.
  Under pytest's capture (``capsys``/``capfd``), ``sys.stdout`` writes to pytest's temporary file,
  so auto picks wrap, which leaves pytest's capture untouched.
* ``off``: nothing.

Concurrency contract: ``start``/``Capture.teardown``/``Capture.close`` run on the thread calling
``init``/``finish``.  Wrapped ``write`` may be called from any thread: a ``Wrap`` serialises them
under its lock, but only the thread that called ``init`` (the run's thread, the ring's single
producer) emits records; lines written by other threads wait, bounded, for that thread's next
write or for ``finish``.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import sys
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from runstream.format import record as rec
from runstream.format.console_lines import LineAssembler

PIPE_SIZE = 1 << 20  # a sidecar restarting after kill -9 takes ~0.5 s; prints must not block meanwhile
PUMP_DRAIN_TIMEOUT = 2.0  # without a sidecar: how long finish waits for the pipes to reach the terminal
FOREIGN_LINES_LIMIT = 10_000  # lines from other threads held for the run's thread before dropping
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_deferred = 0  # > 0 while runstream prints from inside a ring push: wrapped lines must wait


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Lines written inside are held for the next write or ``finish`` instead of being pushed into
    the ring right away: for messages printed by the ring's own push (the ring-full warning)."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1


def resolve_mode(mode: str) -> str:
    """``auto`` made concrete for this process: redirect, wrap or off."""
    if mode != "auto":
        return mode
    if "ipykernel" in sys.modules:
        return "wrap"
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            os.fstat(fd)
            if stream is None or stream.fileno() != fd:
                return "wrap"
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
            return "wrap"
    return "redirect"


def rank_mode(mode: str) -> str:
    """The mode for a rank of a distributed run: ``auto`` and ``redirect`` become ``wrap``.

    One node sidecar serves every rank of a node, so console pipes (one pair per process, read by
    that process's own sidecar) would have no single reader that knows whose lines they are; a
    wrapped line goes through the rank's own ring and is stored as that rank's.  Output written
    by C code or by the rank's child processes is therefore not captured (docs/distributed.md)."""
    return "wrap" if mode in ("auto", "redirect") else mode


def _pipe_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return min(PIPE_SIZE, int(f.read()))
    except (OSError, ValueError):
        return PIPE_SIZE


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or odd stream must not stop init/finish
            if stream is not None:
                stream.flush()


class Redirect:
    """fds 1 and 2 are pipes read by the sidecar (module docstring).  ``_lock`` guards ``_fds``
    and ``_restored`` between the run's thread and the supervisor's (``no_sidecar``)."""

    mode = "redirect"

    def __init__(self) -> None:
        self._fds: list[tuple[str, int, int]] = []  # (stream, read end, tee fd)
        self._restored = False
        self._lock = threading.Lock()
        self._pumps: list[_Pump] = []
        size = _pipe_size()
        _flush_std()
        try:
            for name, fd in (("stdout", 1), ("stderr", 2)):
                r, w = os.pipe()  # both close-on-exec: the user's child processes get neither
                with contextlib.suppress(OSError):  # EPERM past the user's pipe quota: default size
                    fcntl.fcntl(w, _F_SETPIPE_SZ, size)
                tee = os.dup(fd)
                self._fds.append((name, r, tee))
                os.dup2(w, fd)  # inheritable: child processes write into the pipe too
                os.close(w)
        except OSError:
            self.teardown()
            self.close()
            raise

    def pass_fds(self) -> list[int]:
        return [fd for _, r, t in self._fds for fd in (r, t)]

    def sidecar_args(self) -> list[str]:
        return [a for name, r, t in self._fds for a in ("--console", f"{name}:{r}:{t}")]

    def _restore(self, fds: list[tuple[str, int, int]]) -> None:
        if not self._restored:
            self._restored = True
            for (_, _, tee), fd in zip(fds, (1, 2), strict=False):
                os.dup2(tee, fd)

    def teardown(self) -> None:
        """fds 1 and 2 back to what they were; our write ends close, so the sidecar sees EOF
        once child processes holding them are done too."""
        _flush_std()  # outside the lock: with a full pipe it waits for the reader
        with self._lock:
            self._restore(self._fds)
            pumps = list(self._pumps)
        deadline = time.monotonic() + PUMP_DRAIN_TIMEOUT
        while any(p.busy() for p in pumps) and time.monotonic() < deadline:
            time.sleep(0.001)  # the pipes' tail reaches the terminal before what is written next

    def no_sidecar(self) -> None:
        """The supervisor gave up on the sidecar: nothing reads the pipes, and prints would block
        once they are full.  A thread per pipe copies it to the terminal instead; nothing more is
        captured.  (Restoring fds 1/2 now would let later prints overtake what the pipes hold.)"""
        with self._lock:
            if self._pumps or self._restored:
                return
            self._pumps = [_Pump(r, t, name) for name, r, t in self._fds]
            for p in self._pumps:
                p.start()
        print("runstream: error: console capture stopped: no sidecar reads it", file=sys.stderr)

    def close(self) -> None:
        """After the last sidecar is done: the read ends and tee dups go."""
        with self._lock:
            fds, self._fds = self._fds, []
            pumps, self._pumps = self._pumps, []
        for p in pumps:
            p.join(PUMP_DRAIN_TIMEOUT)
        if any(p.is_alive() for p in pumps):
            return  # a child process still writes: the pumps keep their fds (closed at exit)
        for _, r, t in fds:
            for fd in (r, t):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def after_fork_in_child(self) -> None:
        """A forked child keeps writing into the pipes (its output is captured) and must not
        restore or close anything of the parent's."""
        self._lock = threading.Lock()  # another thread may have held the parent's at the fork
        self._restored = True
        self._fds = []
        self._pumps = []


class _Pump(threading.Thread):
    """Copies a console pipe to the terminal when no sidecar reads it (``Redirect.no_sidecar``)."""

    def __init__(self, read_fd: int, tee_fd: int, name: str) -> None:
        super().__init__(name=f"runstream-console-{name}", daemon=True)
        self.read_fd, self.tee_fd = read_fd, tee_fd
        self.copied = 0
        self.taken = 0

    def busy(self) -> bool:
        """Bytes are in the pipe, or read and not yet written."""
        if not self.is_alive():
            return False
        buf = array.array("i", [0])
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.read_fd, termios.FIONREAD, buf)
        return buf[0] > 0 or self.taken != self.copied

    def run(self) -> None:
        os.set_blocking(self.read_fd, True)
        try:
            while chunk := os.read(self.read_fd, 1 << 16):
                self.taken += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self.tee_fd, view) :]
                self.copied = self.taken
        except OSError:
            pass


class Wrap:
    """``sys.stdout.write``/``sys.stderr.write`` wrapped (module docstring)."""

    mode = "wrap"

    def __init__(self, emit: Callable[[int, Any], None]) -> None:
        self._emit = emit
        self._owner = threading.get_ident()
        self._lock = threading.RLock()
        self._emitting = False  # emit itself may print (a ring-full warning): queue, never recurse
        self._foreign: deque[tuple[str, list[str]]] = deque()
        self.dropped_lines = 0
        self._inert = False
        self._patched: list[tuple[Any, str, bool, Any]] = []  # (stream, name, had own attr, orig)
        self._asm = {"stdout": LineAssembler(), "stderr": LineAssembler()}
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None:
                continue
            orig = stream.write
            own = "write" in getattr(stream, "__dict__", {})
            try:
                stream.write = self._wrapper(name, orig)
            except (AttributeError, TypeError):  # a stream type that takes no attributes: not captured
                continue
            self._patched.append((stream, name, own, orig))

    def pass_fds(self) -> list[int]:
        return []

    def sidecar_args(self) -> list[str]:
        return []

    def _wrapper(self, name: str, orig: Callable[[str], int]) -> Callable[[str], int]:
        def write(s: str) -> int:
            n = orig(s)
            if not self._inert:
                try:
                    self._take(name, s)
                except Exception:  # capture must never break a print
                    pass
            return n

        return write

    def _take(self, name: str, s: Any) -> None:
        data = s.encode("utf-8", errors="replace") if isinstance(s, str) else bytes(s)
        with self._lock:
            lines = self._asm[name].feed(data)
            if threading.get_ident() != self._owner or self._emitting or _deferred:
                if lines:
                    self._hold(name, lines)
                return
            if lines or self._foreign:
                self._send(name, lines)

    def _hold(self, name: str, lines: list[str]) -> None:
        if len(self._foreign) >= FOREIGN_LINES_LIMIT:
            self.dropped_lines += len(lines)
            return
        self._foreign.append((name, lines))

    def _send(self, name: str, lines: list[str]) -> None:
        self._emitting = True
        try:
            while self._foreign:
                held_name, held = self._foreign.popleft()
                self._emit(rec.KIND_CONSOLE, {"stream": held_name, "lines": held})
            if lines:
                self._emit(rec.KIND_CONSOLE, {"stream": name, "lines": lines})
        finally:
            self._emitting = False

    def teardown(self) -> None:
        """Unwrap, and send what is held and the partial lines (call before the ring closes)."""
        with self._lock:
            for stream, _, own, orig in self._patched:
                with contextlib.suppress(AttributeError, TypeError):
                    if own:
                        stream.write = orig
                    else:
                        del stream.write
            self._patched = []
            if self._inert:
                return
            self._inert = True
            for name, asm in self._asm.items():
                lines = asm.close()
                if lines:
                    self._foreign.append((name, lines))
            if self.dropped_lines:
                note = f"runstream: {self.dropped_lines} lines written by other threads were not captured"
                self._foreign.append(("stderr", [note]))
            self._send("stdout", [])

    def no_sidecar(self) -> None:
        pass  # the lines are in the ring, which keeps them until it fills

    def close(self) -> None:
        pass

    def after_fork_in_child(self) -> None:
        self._inert = True  # the child's run is inert; its writes pass straight through
        self._lock = threading.RLock()  # the parent's may have been held by another thread at fork


Capture = Redirect | Wrap


def start(mode: str, emit: Callable[[int, Any], None], say: Callable[[str], None]) -> Capture | None:
    """Capture the console as ``mode`` asks; None for off.  A redirect that fails (no fds to
    spare, an odd platform) falls back to wrap, with a message."""
    mode = resolve_mode(mode)
    if mode == "off":
        return None
    if mode == "redirect":
        try:
            return Redirect()
        except OSError as e:
            say(f"console capture: could not redirect stdout/stderr ({e}); capturing Python writes only")
    return Wrap(emit)
