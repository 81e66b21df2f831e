"""Durable small-file writes on paths: the training process's and the sidecar's ``run.json``,
``files/summary.json``, ``config.yaml`` and the like (docs/run-dir.md).

POSIX durability has two halves: fsync of a file makes its bytes durable, but its *name* lives in
its directory, which needs its own fsync.  Every write here does both, so after a crash a reader
sees the old content or the new one, never a mix and never a missing file.  (The journal's own
writes go through the file-system seam in ``fs.py`` instead, so its tests can fail them.)
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """fsync a directory, so the names it gained or lost survive a crash (a no-op where impossible)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (PermissionError, IsADirectoryError):  # Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError as e:
        # Some filesystems cannot fsync directories; that is not a failure to persist.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Replace ``path`` with ``text`` so that readers and crashes see the old or the new content,
    never a mix: write a temp file in the same directory, fsync it, rename it, fsync the dir.

    ``mode`` (e.g. ``0o600`` for a file holding a secret) is the file's permissions from its first
    byte on, whatever the umask; None leaves them to the umask, as ``open`` does."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        if mode is not None:
            os.fchmod(fd, mode)  # the umask may have taken bits away from os.open's mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    """:func:`write_text_atomic` of ``obj`` as indented JSON.  Objects JSON cannot hold are written
    as ``str(obj)`` and NaN/Infinity as Python's json writes them, so a summary never fails to save."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
