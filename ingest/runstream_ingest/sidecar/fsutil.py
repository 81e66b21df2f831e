"""Crash-safe file-system idioms on top of ``fileio.FileSystem``.

Both exist because POSIX durability has two halves: fsync of a file makes its bytes durable,
but the file's *name* lives in its directory, which needs its own fsync.  Skip that and a power
cut can leave a perfectly synced file without a name (see docs/journal-format.md, "Durability").
"""

from __future__ import annotations

import errno
import os

from runstream.format.fs import FileSystem

__all__ = ["atomic_replace", "make_dir_durable", "make_dirs", "write_all"]


def write_all(fs: FileSystem, fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data``, continuing after short writes; OSError if the disk stops taking it."""
    view = memoryview(data)
    while view:
        n = fs.write(fd, view)
        if n <= 0:  # a write that takes nothing would loop forever; a full disk is what it means
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def atomic_replace(fs: FileSystem, path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that after a crash it holds either the old content or the
    new, never a mix: write a temp file, fsync it, rename it over ``path``, fsync the directory.

    One writer per ``path``: the temp file is ``path + ".tmp"``, and one left behind by an
    interrupted earlier call is removed first.  Raises OSError; on error ``path`` is untouched.
    """
    tmp = path + ".tmp"
    try:
        fd = fs.create_excl(tmp)
    except FileExistsError:
        fs.remove(tmp)
        fd = fs.create_excl(tmp)
    try:
        try:
            write_all(fs, fd, data)
            fs.fsync(fd)  # before the rename: the new name must never point at unsynced bytes
        finally:
            fs.close(fd)
        fs.rename(tmp, path)
    except BaseException:
        try:
            fs.remove(tmp)
        except OSError:
            pass
        raise
    fs.fsync_dir(_parent(path))  # the rename itself is durable only now


def make_dir_durable(fs: FileSystem, path: str) -> bool:
    """``mkdir -p path``, fsyncing the parent of every directory it creates so that the new
    entries survive a power cut.  Returns whether anything was created.

    It also fsyncs the parent of the deepest directory that was already there: a process killed
    between a mkdir and the fsync that follows leaves exactly that entry not durable, and the
    journal is about to rely on it.
    """
    path = os.path.normpath(path)
    missing: list[str] = []  # deepest first
    existing = path
    while True:
        try:
            fs.mkdir(existing)
        except FileExistsError:
            break
        except FileNotFoundError:
            parent = _parent(existing)
            if parent == existing:  # the root (or a relative path's ".") cannot be missing
                raise
            missing.append(existing)
            existing = parent
            continue
        fs.fsync_dir(_parent(existing))  # made it: its parent is the deepest that was there
        existing = _parent(existing)
        break
    fs.fsync_dir(_parent(existing))
    for d in reversed(missing):
        try:
            fs.mkdir(d)
        except FileExistsError:  # made by someone else in between; durable all the same below
            pass
        fs.fsync_dir(_parent(d))
    return existing != path


def make_dirs(fs: FileSystem, path: str) -> None:
    """``mkdir -p path`` with no fsync: the fallback when the fsyncs of ``make_dir_durable`` fail
    and the caller would rather work without durability than not at all."""
    path = os.path.normpath(path)
    try:
        fs.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        if _parent(path) == path:
            raise
        make_dirs(fs, _parent(path))
        try:
            fs.mkdir(path)
        except FileExistsError:
            pass


def _parent(path: str) -> str:
    return os.path.dirname(os.path.normpath(path)) or "."
