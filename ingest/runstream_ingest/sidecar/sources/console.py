"""The training process's stdout and stderr, read by the sidecar from the pipes ``init`` put on fds 1
and 2 ("redirect" mode, docs/console.md).

For each stream the sidecar gets two inherited fds: the pipe's read end, and a dup of what fd 1 or
2 was before (the terminal), the tee target.  What it reads goes to the tee target byte for byte,
so the terminal looks as without capture, and through ``LineAssembler`` into KIND_CONSOLE records
of the companion writer (one record per stream and read, time = when its lines completed) and
into ``<run dir>/files/output.log``.

The training process keeps both fds open for the whole run and the supervisor hands them to every
sidecar it starts, so a sidecar restarted after ``kill -9`` reads on where the dead one stopped:
what was still in the pipe is not lost.  What the dead one had read but not yet journaled (at
most the companion's batch age of output, and the line being assembled) is.

The tee target may block (a terminal paused with Ctrl-S, a pipe nobody reads).  A thread per
stream writes to it, so the loop never waits; it holds at most ``TEE_LIMIT`` bytes and drops (and
counts) beyond that: the terminal may miss output, the stored console does not.

Concurrency contract: ``ConsoleCapture`` lives on the sidecar's loop (``add_reader`` callbacks,
``run``, ``close``); each ``_Tee`` thread only takes byte strings from its queue under its
condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from runstream.format import record as rec
from runstream.format.console_lines import LineAssembler
from runstream_ingest.sidecar.sources.companion import CompanionWriter

log = logging.getLogger("runstream.console")

READ_CHUNK = 1 << 16
READ_PER_WAKE = 1 << 20  # bytes read from one pipe per callback before yielding to the loop
CLOSE_READ_LIMIT = 64 << 20  # at close, bytes read from a pipe a child process still writes to
TEE_LIMIT = 8 << 20  # bytes queued for a slow terminal before dropping
TEE_FLUSH_TIMEOUT = 2.0  # at close, how long the terminal gets to take what is queued
RECORD_LINES = 1000  # lines per KIND_CONSOLE record
RECORD_BYTES = 256 << 10  # about this many bytes of text per record
STREAMS = ("stdout", "stderr")


def parse_console_arg(arg: str) -> tuple[str, int, int]:
    """``STREAM:READFD:TEEFD`` (the supervisor's ``--console`` argument)."""
    parts = arg.split(":")
    if len(parts) != 3 or parts[0] not in STREAMS or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"--console wants STREAM:READFD:TEEFD with STREAM stdout or stderr, not {arg!r}")
    return parts[0], int(parts[1]), int(parts[2])


class _Tee(threading.Thread):
    """Writes bytes to the tee fd in order; blocking writes happen here, never on the loop."""

    def __init__(self, fd: int, name: str) -> None:
        super().__init__(name=f"runstream-tee-{name}", daemon=True)
        self.fd = fd
        self.dropped = 0  # bytes the terminal did not get
        self._q: deque[bytes] = deque()
        self._size = 0
        self._cv = threading.Condition()
        self._closing = False
        self._broken = False

    def put(self, data: bytes) -> None:
        with self._cv:
            if self._broken or self._size + len(data) > TEE_LIMIT:
                self.dropped += len(data)
                return
            self._q.append(data)
            self._size += len(data)
            self._cv.notify()

    def run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closing:
                    self._cv.wait()
                if not self._q:
                    return
                data = self._q[0]
            try:
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(self.fd, view) :]
                    except BlockingIOError:  # someone made the terminal non-blocking: wait for room
                        select.select([], [self.fd], [], 1.0)
            except OSError as e:  # the terminal is gone (EPIPE, EIO): later output has nowhere to go
                with self._cv:
                    self._broken = True
                    self.dropped += self._size
                    self._q.clear()
                    self._size = 0
                if e.errno not in (errno.EPIPE, errno.EIO, errno.EBADF):
                    log.warning("console tee: %s", e)
                continue
            with self._cv:
                self._q.popleft()
                self._size -= len(data)
                self._cv.notify_all()

    def flush(self, timeout: float) -> None:
        """Let the thread write what is queued (bounded), then stop it; the rest counts as dropped."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            while self._q and time.monotonic() < deadline:
                self._cv.wait(max(deadline - time.monotonic(), 0.001))
            if self._q:
                self.dropped += self._size


@dataclass
class _Stream:
    name: str
    read_fd: int
    tee: _Tee
    lines: LineAssembler = field(default_factory=LineAssembler)
    eof: bool = False
    bytes_read: int = 0


class ConsoleCapture:
    def __init__(self, companion: CompanionWriter, run_dir: Path, specs: list[str]) -> None:
        self.companion = companion
        self.streams: list[_Stream] = []
        for arg in specs:
            name, rfd, tfd = parse_console_arg(arg)
            try:
                os.set_blocking(rfd, False)  # only sidecars read it; the training process never does
            except OSError as e:  # not inherited (a wrapper closed it?): that stream goes uncaptured
                log.error("console %s: fd %d is not usable (%s); not captured", name, rfd, e)
                continue
            tee = _Tee(tfd, name)
            tee.start()
            self.streams.append(_Stream(name, rfd, tee))
        self.lines_stored = 0
        (run_dir / "files").mkdir(parents=True, exist_ok=True)
        self._out = open(run_dir / "files" / "output.log", "ab")  # noqa: SIM115 - closed in close()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        for s in self.streams:
            self._loop.add_reader(s.read_fd, self._readable, s)
        await asyncio.Event().wait()  # the callbacks do the work; cancelled at exit

    def _readable(self, s: _Stream) -> None:
        self._read(s, READ_PER_WAKE)

    def _read(self, s: _Stream, budget: int) -> None:
        got: list[bytes] = []
        n = 0
        while n < budget:
            try:
                chunk = os.read(s.read_fd, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as e:
                log.warning("console %s: read failed: %s", s.name, e)
                self._eof(s)
                break
            if not chunk:  # every write end is closed: the process and its children are done
                self._eof(s)
                break
            got.append(chunk)
            n += len(chunk)
        if not got:
            return
        data = b"".join(got)
        s.bytes_read += len(data)
        s.tee.put(data)
        self._store(s, s.lines.feed(data))

    def _eof(self, s: _Stream) -> None:
        s.eof = True
        if self._loop is not None:
            self._loop.remove_reader(s.read_fd)

    def _store(self, s: _Stream, lines: list[str]) -> None:
        if not lines:
            return
        now = time.time()
        start = 0
        while start < len(lines):
            end, size = start, 0
            while end < len(lines) and end - start < RECORD_LINES and size < RECORD_BYTES:
                size += len(lines[end]) + 1
                end += 1
            self.companion.emit(rec.KIND_CONSOLE, {"stream": s.name, "lines": lines[start:end]}, t=now)
            start = end
        self.lines_stored += len(lines)
        try:
            self._out.write(("\n".join(lines) + "\n").encode("utf-8", errors="replace"))
            self._out.flush()
        except OSError as e:  # output.log is a convenience copy; the journal has the lines
            log.warning("could not append to output.log: %s", e)

    async def close(self) -> None:
        """The producer is done: read what is left in the pipes (without waiting for an EOF that
        a child process still holding the pipe may delay forever), store partial lines, flush."""
        for s in self.streams:
            if self._loop is not None and not s.eof:
                self._loop.remove_reader(s.read_fd)
            if not s.eof:
                self._read(s, CLOSE_READ_LIMIT)
            self._store(s, s.lines.close())
        loop = asyncio.get_running_loop()
        for s in self.streams:
            if s.tee.is_alive():
                await loop.run_in_executor(None, s.tee.flush, TEE_FLUSH_TIMEOUT)
            if s.tee.dropped:
                log.warning("console %s: %d bytes did not reach the terminal (it did not keep up)",
                            s.name, s.tee.dropped)  # fmt: skip
            log.info("console %s: %d bytes read", s.name, s.bytes_read)
        with contextlib.suppress(OSError):
            self._out.close()
