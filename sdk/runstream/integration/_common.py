"""What the integrations share: the default project, and keeping checkpoint files with a run.

Checkpoints are kept with :meth:`runstream.Run.save` (``policy="now"``: the sidecar copies the
file, so the training thread only lists it).  W&B's integrations log them as model artifacts;
runstream has no artifacts, so a checkpoint is a run file (docs/integrations.md).
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable
from typing import Any


def default_project(fallback: str) -> str:
    """The project an integration's own ``init`` uses: ``RUNSTREAM_PROJECT``, else
    ``WANDB_PROJECT``, else ``fallback`` (W&B's integrations default to ``WANDB_PROJECT`` or a
    framework name: ``lightning_logs``, ``huggingface``)."""
    return os.environ.get("RUNSTREAM_PROJECT") or os.environ.get("WANDB_PROJECT") or fallback


def warn(message: str) -> None:
    """One line on stderr, as the SDK's other warnings; never raises."""
    try:
        print(f"runstream: warning: {message}", file=sys.stderr)
    except (OSError, ValueError):  # a closed or broken stderr must not stop training either
        pass


def save_checkpoint(run: Any, paths: Iterable[str], base_path: str, policy: str = "now") -> list[str]:
    """Keep each file of ``paths`` (a directory: every file below it) with ``run`` (``policy``
    as :meth:`runstream.Run.save`'s), at its path below ``base_path``; returns the paths under
    the run's ``files/``.  Paths are literal: ``[`` or ``*`` in a name is not a wildcard.

    A checkpoint that cannot be kept (the run is finished, the file vanished) is a warning, not
    an error: losing a checkpoint's upload must not stop the training that wrote it.
    """
    saved: list[str] = []
    for path in paths:
        pattern = glob.escape(path)
        if os.path.isdir(path):
            pattern = os.path.join(pattern, "**", "*")
        try:
            saved += run.save(pattern, base_path=base_path, policy=policy) or []
        except Exception as e:  # see the docstring: a failed save never breaks training
            warn(f"checkpoint {path} was not saved with the run: {e}")
    return saved


def parent_base(path: str) -> str:
    """The directory a checkpoint is kept relative to: the parent of the directory it is in, so
    that ``.../checkpoints/epoch=1.ckpt`` is kept as ``files/checkpoints/epoch=1.ckpt``."""
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.dirname(directory) or directory
