"""A real full disk: a small tmpfs mounted for a test or a benchmark, and a file that fills it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


class CannotMount(Exception):
    """No tmpfs here (not root, or mount refused); the message says why."""


@contextlib.contextmanager
def small_tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax: "4m") at ``mnt``, created if missing, unmounted
    (lazily if still busy) afterwards.  Raises CannotMount where that cannot be done."""
    if os.geteuid() != 0:
        raise CannotMount("mounting a small tmpfs needs root")
    mnt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        check=False,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise CannotMount(f"cannot mount a tmpfs: mount exited {r.returncode}: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
