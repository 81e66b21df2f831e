"""``CrashFileSystem``: an in-memory ``runstream.format.fs.FileSystem`` that can lose power.

It keeps apart what a process sees (the page cache) and what would survive a power cut:

* a file's bytes are durable only up to its last successful ``fsync``; later writes and
  truncates live in ``data`` alone;
* a directory's entries (create, mkdir, rename, remove) are durable only after ``fsync_dir`` of
  that directory; until then each such change is logged and may or may not survive.

``crash(rng, mode)`` then builds the state a reboot would find: for every file ``"drop"`` keeps
only its durable bytes, ``"prefix"`` keeps a random prefix of what was written after them (or
the old content, for a truncate), ``"garbage"`` also adds a random tail to a file with unsynced
changes (garbage or zeros, as a crash with delayed allocation leaves).  Each un-fsynced change
to a directory survives or vanishes at random (all vanish with ``"drop"``).

Faults, for the error paths of the code under test:

* ``fail(op, err, ...)``: the next matching calls raise ``OSError(err)``; a write fault may first
  do a short write (``partial``), as a filling disk does.
* A failed ``fsync`` behaves like Linux after EIO: the dirty bytes stay readable but are marked
  clean, so a later ``fsync`` "succeeds" and the crash finds zeros there.  Only a writer that
  never trusts a failed fsync survives this.
* ``cut_after(n)``: the n-th call from now, and every call after it, raises ``PowerCut`` (not an
  OSError: code under test must not swallow it) until ``crash``.
* ``after_fsync``: a one-shot hook run as an fsync returns (after it persisted): what another
  thread does while an fsync is in flight.
* ``lying_fsync`` / ``lying_fsync_dir``: fsync / fsync_dir report success and persist nothing.
  Used to show the crash tests would catch a writer that forgot one.

Thread-safe: one lock around every call.
"""

from __future__ import annotations

import errno
import os
import posixpath
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

MODES = ("drop", "prefix", "garbage")


class PowerCut(Exception):
    """The simulated power went out: nothing the caller does from here on reaches the disk."""


@dataclass(eq=False)
class _File:
    data: bytearray = field(default_factory=bytearray)  # what reads see
    durable: bytes = b""  # what a crash keeps for sure
    lost: list[tuple[int, int]] = field(default_factory=list)  # ranges a failed fsync dropped


@dataclass(eq=False)
class _Dir:
    entries: dict[str, _File | _Dir] = field(default_factory=dict)
    durable: dict[str, _File | _Dir] = field(default_factory=dict)
    # Changes since the last fsync_dir: (name, node) sets an entry, (name, None) removes it.
    # A rename is one atomic change: a tuple of two.
    log: list[tuple[tuple[str, _File | _Dir | None], ...]] = field(default_factory=list)


@dataclass
class Fault:
    op: str
    err: int
    times: int = 1
    skip: int = 0  # let this many matching calls through first
    path: str | None = None  # only calls whose path contains this
    partial: int | None = None  # write: first write only this many bytes and return the count


@dataclass
class _Fd:
    node: _File | _Dir
    path: str
    writable: bool


class CrashFileSystem:
    def __init__(self) -> None:
        self.root = _Dir()
        self._fds: dict[int, _Fd] = {}
        self._next_fd = 3
        self._lock = threading.RLock()
        self.faults: list[Fault] = []
        self.calls: dict[str, int] = {}  # per operation, for tests that count fsyncs
        self.ops = 0
        self._cut_at: int | None = None
        self.powered = True
        self.lying_fsync = False
        self.lying_fsync_dir = False
        self.after_fsync: Callable[[], None] | None = None  # runs once, as the next fsync returns

    # --- test controls --------------------------------------------------------------------------
    def fail(
        self,
        op: str,
        err: int = errno.EIO,
        times: int = 1,
        skip: int = 0,
        path: str | None = None,
        partial: int | None = None,
    ) -> Fault:
        fault = Fault(op, err, times, skip, path, partial)
        self.faults.append(fault)
        return fault

    def cut_after(self, n: int | None) -> None:
        """Cut the power at the n-th call from now (0: the very next one); None: never."""
        self._cut_at = None if n is None else self.ops + n

    def kill(self) -> None:
        """The process died (no power loss): its descriptors close, the page cache stays."""
        with self._lock:
            self._fds.clear()

    def crash(self, rng: random.Random, mode: str = "prefix") -> None:
        """Power loss and reboot: keep what was durable and, per ``mode``, some of the rest."""
        assert mode in MODES, mode
        with self._lock:
            done: set[int] = set()
            self._settle_dir(self.root, rng, mode, done)
            self._fds.clear()
            self.faults.clear()
            self._cut_at = None
            self.powered = True

    def _settle_dir(self, d: _Dir, rng: random.Random, mode: str, done: set[int]) -> None:
        entries = dict(d.durable)
        for change in d.log:
            if mode != "drop" and rng.random() < 0.5:
                for name, node in change:
                    if node is None:
                        entries.pop(name, None)
                    else:
                        entries[name] = node
        d.entries, d.durable, d.log = entries, dict(entries), []
        for node in entries.values():
            if id(node) in done:
                continue
            done.add(id(node))
            if isinstance(node, _Dir):
                self._settle_dir(node, rng, mode, done)
            else:
                self._settle_file(node, rng, mode)

    @staticmethod
    def _settle_file(f: _File, rng: random.Random, mode: str) -> None:
        content = f.durable
        data = _zero(bytes(f.data), f.lost)
        dirty = data != content
        if mode != "drop" and dirty:
            # Either the old tail survives or a prefix of the new one (truncates included).
            common = _common_prefix(content, data)
            content = content if rng.random() < 0.25 else data[: rng.randint(common, len(data))]
            if mode == "garbage":
                n = rng.randint(1, 64)
                content += bytes(n) if rng.random() < 0.5 else rng.randbytes(n)
        f.data, f.durable, f.lost = bytearray(content), content, []

    # --- inspection and damage, for tests (no power or fault checks) ---------------------------
    def exists(self, path: str) -> bool:
        with self._lock:
            return self._lookup(path) is not None

    def contents(self, path: str) -> bytes:
        with self._lock:
            node = self._lookup(path)
            assert isinstance(node, _File), path
            return bytes(node.data)

    def durable_contents(self, path: str) -> bytes:
        with self._lock:
            node = self._lookup(path)
            assert isinstance(node, _File), path
            return node.durable

    def open_fds(self) -> int:
        with self._lock:
            return len(self._fds)

    def has_lost_pages(self) -> bool:
        """Some file holds bytes a failed fsync dropped: they read back fine until a crash."""
        with self._lock:
            stack: list[_File | _Dir] = [self.root]
            while stack:
                node = stack.pop()
                if isinstance(node, _Dir):
                    stack.extend(node.entries.values())
                elif node.lost:
                    return True
            return False

    def overwrite(self, path: str, content: bytes) -> None:
        """Replace a file's bytes, durably: disk damage, as a test inflicts it."""
        with self._lock:
            node = self._lookup(path)
            assert isinstance(node, _File), path
            node.data, node.durable, node.lost = bytearray(content), bytes(content), []

    # --- FileSystem -----------------------------------------------------------------------------
    def create_excl(self, path: str) -> int:
        with self._lock:
            self._enter("create_excl", path)
            d, name = self._parent(path)
            if name in d.entries:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
            f = _File()
            self._set(d, ((name, f),))
            return self._open_fd(f, path, writable=True)

    def open_append(self, path: str) -> int:
        with self._lock:
            self._enter("open_append", path)
            return self._open_fd(self._file(path), path, writable=True)

    def open_read(self, path: str) -> int:
        with self._lock:
            self._enter("open_read", path)
            return self._open_fd(self._file(path), path, writable=False)

    def read_at(self, fd: int, size: int, offset: int) -> bytes:
        with self._lock:
            h = self._fd(fd)
            self._enter("read_at", h.path)
            assert isinstance(h.node, _File)
            return bytes(h.node.data[offset : offset + size])

    def read_all(self, path: str) -> bytes:
        with self._lock:
            self._enter("read_all", path)
            return bytes(self._file(path).data)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        with self._lock:
            h = self._fd(fd)
            partial = self._enter("write", h.path, allow_partial=True)
            if not h.writable:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF), h.path)
            assert isinstance(h.node, _File)
            chunk = bytes(data if partial is None else data[:partial])
            h.node.data += chunk
            return len(chunk)

    def fsync(self, fd: int) -> None:
        with self._lock:
            h = self._fd(fd)
            try:
                self._enter("fsync", h.path)
            except OSError:
                if isinstance(h.node, _File):
                    _drop_dirty(h.node)
                raise
            if isinstance(h.node, _File) and not self.lying_fsync:
                f = h.node
                f.durable = _zero(bytes(f.data), f.lost)
                f.lost = []
        hook, self.after_fsync = self.after_fsync, None
        if hook is not None:
            hook()  # outside the lock: it may use this file system from another thread

    def truncate(self, fd: int, size: int) -> None:
        with self._lock:
            h = self._fd(fd)
            self._enter("truncate", h.path)
            if not h.writable:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF), h.path)
            assert isinstance(h.node, _File)
            data = h.node.data
            del data[size:]
            data.extend(bytes(size - len(data)))

    def close(self, fd: int) -> None:
        with self._lock:
            h = self._fd(fd)
            del self._fds[fd]  # gone even if close reports an error, as with close(2)
            self._enter("close", h.path)

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._enter("fsync_dir", path)
            d = self._lookup(path)
            if not isinstance(d, _Dir):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            if not self.lying_fsync_dir:
                d.durable, d.log = dict(d.entries), []

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._enter("rename", src)
            sd, sname = self._parent(src)
            dd, dname = self._parent(dst)
            assert sd is dd, "only renames within a directory are modelled"
            node = sd.entries.get(sname)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
            self._set(sd, ((sname, None), (dname, node)))

    def remove(self, path: str) -> None:
        with self._lock:
            self._enter("remove", path)
            d, name = self._parent(path)
            if not isinstance(d.entries.get(name), _File):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            self._set(d, ((name, None),))

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            self._enter("listdir", path)
            d = self._lookup(path)
            if d is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            if not isinstance(d, _Dir):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            return list(d.entries)

    def mkdir(self, path: str) -> None:
        with self._lock:
            self._enter("mkdir", path)
            d, name = self._parent(path)
            if name in d.entries:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
            self._set(d, ((name, _Dir()),))

    # --- internals ------------------------------------------------------------------------------
    def _enter(self, op: str, path: str, allow_partial: bool = False) -> int | None:
        """Count the call, cut the power or inject a fault.  Returns a partial write's size."""
        if not self.powered:
            raise PowerCut(op)
        if self._cut_at is not None and self.ops >= self._cut_at:
            self.powered = False
            raise PowerCut(op)
        self.ops += 1
        self.calls[op] = self.calls.get(op, 0) + 1
        for fault in self.faults:
            if fault.op != op or fault.times <= 0 or (fault.path and fault.path not in path):
                continue
            if fault.skip > 0:
                fault.skip -= 1
                return None
            if allow_partial and fault.partial is not None:
                partial, fault.partial = fault.partial, None
                return partial
            fault.times -= 1
            raise OSError(fault.err, os.strerror(fault.err), path)
        return None

    def _lookup(self, path: str) -> _File | _Dir | None:
        node: _File | _Dir = self.root
        for part in _parts(path):
            if not isinstance(node, _Dir) or part not in node.entries:
                return None
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = _parts(path)
        parent = self._lookup("/" + "/".join(parts[:-1]))
        if not isinstance(parent, _Dir) or not parts:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return parent, parts[-1]

    def _file(self, path: str) -> _File:
        node = self._lookup(path)
        if not isinstance(node, _File):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return node

    def _set(self, d: _Dir, change: tuple[tuple[str, _File | _Dir | None], ...]) -> None:
        for name, node in change:
            if node is None:
                d.entries.pop(name, None)
            else:
                d.entries[name] = node
        d.log.append(change)

    def _open_fd(self, node: _File, path: str, writable: bool) -> int:
        fd, self._next_fd = self._next_fd, self._next_fd + 1
        self._fds[fd] = _Fd(node, path, writable)
        return fd

    def _fd(self, fd: int) -> _Fd:
        if not self.powered:
            raise PowerCut("fd")
        try:
            return self._fds[fd]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None


def _parts(path: str) -> list[str]:
    assert path.startswith("/"), f"CrashFileSystem paths are absolute: {path!r}"
    return [p for p in posixpath.normpath(path).split("/") if p]


def _drop_dirty(f: _File) -> None:
    """After a failed fsync the kernel marks the dirty pages clean without writing them."""
    common = _common_prefix(f.durable, bytes(f.data))
    if common < len(f.data):
        f.lost.append((common, len(f.data)))


def _zero(data: bytes, lost: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for start, end in lost:
        end = min(end, len(out))
        out[start:end] = bytes(max(end - start, 0))
    return bytes(out)


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case: one is an append-only extension of the other
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
