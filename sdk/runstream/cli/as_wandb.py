"""``runstream as-wandb COMMAND...``: run a command whose Python code does ``import wandb`` itself
(Lightning's ``WandbLogger``, ``Trainer(report_to="wandb")``...) against runstream.

It puts runstream's ``wandb`` stand-in first on ``PYTHONPATH`` (runstream.wandb_shim,
docs/wandb-shim.md) and replaces itself with the command, so the command's Python processes and
their Python children import runstream when they ``import wandb``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from runstream.errors import UsageError


def shim_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: ``os.environ``) with the shim's folder first on ``PYTHONPATH``.

    Args:
        base: The environment to start from.

    Returns:
        The new environment; ``base`` is not changed.
    """
    from runstream.wandb_shim import pythonpath_dir

    env = dict(os.environ if base is None else base)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(pythonpath_dir())]
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath_dir()), *rest])
    return env


def cmd_as_wandb(args: argparse.Namespace) -> int:
    """Print the shim's folder (``--path``) or exec the command with the shim switched on.

    Raises:
        UsageError: No command was given, or it cannot be run.
    """
    from runstream.wandb_shim import pythonpath_dir

    if args.path:
        print(pythonpath_dir())
        return 0
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("as-wandb: give the command to run, e.g. `runstream as-wandb python train.py`")
    env = shim_environ()
    sys.stdout.flush()
    try:
        # exec, not a child: signals, the exit status and the terminal are the command's own.
        os.execvpe(command[0], command, env)
    except OSError as e:
        raise UsageError(f"as-wandb: cannot run {command[0]!r}: {e.strerror or e}") from None
    return 0  # not reached


def add_as_wandb_parser(sub: Any) -> None:
    """Register ``runstream as-wandb`` on the ``runstream`` command's subparsers."""
    p = sub.add_parser(
        "as-wandb",
        help="run a command whose code imports wandb itself (Lightning, HF Trainer) against runstream",
        description="Run COMMAND with `import wandb` resolving to runstream (docs/wandb-shim.md).",
    )
    p.add_argument(
        "--path",
        action="store_true",
        help="print the folder to put first on PYTHONPATH instead (export PYTHONPATH=...)",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="e.g. python train.py")
    p.set_defaults(func=cmd_as_wandb)
