"""The file-system seam under the journal.

The journal's promises (nothing acknowledged as synced is lost, a full or failing disk never
raises into the sidecar) are about what happens when the disk misbehaves or the power goes out.
Those cases cannot be produced on demand against a real disk, so the journal does all of its
I/O through this small interface: production passes ``OsFileSystem``; the tests pass an
in-memory double that can fail any call and can simulate a power cut, dropping whatever was not
fsynced (``tests/support/crashfs.py``).

The interface is deliberately the raw POSIX vocabulary (file descriptors, explicit fsync of
files and of directories) rather than file objects: durability lives exactly in those calls, and
a double must see every one of them.  Errors are ``OSError`` with ``errno`` set, as from ``os``.
Paths are ``str``.
"""

from __future__ import annotations

import os
from typing import Protocol

__all__ = ["FileSystem", "OsFileSystem"]


class FileSystem(Protocol):
    """What the journal needs from a file system.  Implementations must be safe to call from two
    threads at once on different file descriptors (the journal fsyncs from a worker thread)."""

    def create_excl(self, path: str) -> int:
        """Create a new file for appending (O_CREAT|O_EXCL|O_WRONLY|O_APPEND) and return its fd.

        O_EXCL: a segment or temp file is never silently shared with a file left by a previous
        writer; O_APPEND: after a truncate the next write lands at the new end."""
        ...

    def open_append(self, path: str) -> int:
        """Open an existing file for appending (O_WRONLY|O_APPEND): reopening the last segment."""
        ...

    def open_read(self, path: str) -> int:
        """Open an existing file read-only: the reader and the writer's recovery scan."""
        ...

    def read_at(self, fd: int, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (pread); shorter only at end of file.  Segments are
        read in chunks so a journal of many GiB never has to fit in memory."""
        ...

    def read_all(self, path: str) -> bytes:
        """The whole content of a small file (markers written with ``fsutil.atomic_replace``)."""
        ...

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """Write, returning how many bytes were written, which may be fewer than asked (a disk
        filling up): the caller decides how to finish or undo a partial frame."""
        ...

    def fsync(self, fd: int) -> None:
        """Make a file's data durable.  The only call after which written frames count as synced."""
        ...

    def truncate(self, fd: int, size: int) -> None:
        """Cut a file to ``size`` bytes: undoing a partial write, dropping a torn tail at reopen."""
        ...

    def close(self, fd: int) -> None:
        """Release a descriptor."""
        ...

    def fsync_dir(self, path: str) -> None:
        """Make a directory's entries durable: a new file or directory (or a rename) survives a
        power cut only after its parent directory has been fsynced."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src`` (``fsutil.atomic_replace``)."""
        ...

    def remove(self, path: str) -> None:
        """Delete a file: a stale temp file of an interrupted ``atomic_replace``."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Entry names of a directory, in no particular order; FileNotFoundError when missing."""
        ...

    def mkdir(self, path: str) -> None:
        """Create one directory level (FileExistsError / FileNotFoundError as ``os.mkdir``); one
        level at a time so ``fsutil.make_dir_durable`` knows which parents gained an entry."""
        ...


class OsFileSystem:
    """The real thing: thin wrappers over ``os`` (whose descriptors are already close-on-exec)."""

    def create_excl(self, path: str) -> int:
        return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND, 0o644)

    def open_append(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND)

    def open_read(self, path: str) -> int:
        return os.open(path, os.O_RDONLY)

    def read_at(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def read_all(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)
