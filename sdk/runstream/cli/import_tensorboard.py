"""``runstream import-tensorboard DIR``: a new run holding what TensorBoard event files hold.

W&B's ``wandb sync --sync-tensorboard``.  Every event file under DIR (names containing
``tfevents``, as TensorBoard finds them) is read with runstream's own reader
(docs/tensorboard.md): scalars, histograms, images and text become history rows at their step,
keyed as ``init(sync_tensorboard=True)`` keys them (a file in a subdirectory ``train/`` gives
``train/loss``).  Files are merged by step, so ``train/`` and ``val/`` rows of one step share a
row.  A progress bar goes to stderr; damaged records are skipped and counted, and a file cut
short (a writer killed mid-record) gives everything before the cut.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from runstream.errors import UsageError

BAR_WIDTH = 30


def add_import_tensorboard_parser(sub: Any) -> None:
    """Register the ``import-tensorboard`` subcommand on ``sub`` (an argparse subparsers)."""
    p = sub.add_parser(
        "import-tensorboard",
        help="create a run from TensorBoard event files (scalars, histograms, images, text)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("logdir", help="a directory of event files (searched recursively), or one event file")
    p.add_argument("--project", default=None, help="the run's project (default: the usual settings)")
    p.add_argument("--entity", default=None, help="the run's entity")
    p.add_argument("--name", default=None, help="the run's display name")
    p.add_argument("--id", default=None, help="the run's id (default: a new random one)")
    p.add_argument("--tags", default=None, help="comma-separated tags")
    p.add_argument("--notes", default=None, help="the run's notes")
    p.add_argument(
        "--mode",
        choices=("online", "offline"),
        default=None,
        help="default: online when a server is configured",
    )
    p.add_argument("--dir", default=None, help="where the run directory goes (default: here)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, only the closing summary")
    p.set_defaults(func=main)


class Progress:
    """A plain-text bar on ``out``: redrawn in place on a terminal (at most 10 times a second),
    one line per tenth otherwise (a log file gets ten lines, not thousands)."""

    def __init__(self, total: int, files: int, out: TextIO, enabled: bool = True) -> None:
        self.total, self.files, self.out, self.enabled = max(total, 1), files, out, enabled
        self.tty = enabled and out.isatty()
        self._last_draw = 0.0
        self._last_tenth = -1

    def update(self, done: int, files_done: int, final: bool = False) -> None:
        if not self.enabled:
            return
        frac = min(done / self.total, 1.0)
        if final:
            frac = 1.0
        tenth = int(frac * 10)
        now = time.monotonic()
        if self.tty:
            if not final and now - self._last_draw < 0.1:
                return
        elif tenth == self._last_tenth and not final:
            return
        if final and not self.tty and self._last_tenth == 10:
            return
        self._last_draw, self._last_tenth = now, tenth
        filled = int(frac * BAR_WIDTH)
        line = (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {frac * 100:5.1f}%  "
            f"{_mib(min(done, self.total))}/{_mib(self.total)} MiB  {files_done}/{self.files} files"
        )
        self.out.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        self.out.flush()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def main(args: argparse.Namespace) -> int:
    """Import ``args.logdir`` into a new run; 0 on success.

    Raises:
        UsageError: The path does not exist or holds no event file.
    """
    from runstream.tensorboard.convert import Tally
    from runstream.tensorboard.reader import EventFileTail, StepLogger, find_event_files, namespace_for

    root = Path(args.logdir)
    if not root.exists():
        raise UsageError(f"import-tensorboard: {args.logdir} does not exist")
    files = find_event_files(root)
    if not files:
        raise UsageError(
            f"import-tensorboard: no event files (names containing 'tfevents') under {args.logdir}"
        )
    base = root.parent if root.is_file() else root
    tails = [EventFileTail(f, namespace_for(f, base)) for f in files]
    total = sum(t.reader.size() for t in tails)
    err = sys.stderr
    print(f"runstream: importing {len(files)} event file(s), {_mib(total)} MiB, from {root}", file=err)

    import runstream

    run = runstream.init(
        project=args.project, entity=args.entity, name=args.name, id=args.id, notes=args.notes,
        tags=[t for t in (args.tags or "").split(",") if t] or None, mode=args.mode, dir=args.dir,
        config={"tensorboard_logdir": str(root.resolve())},
    )  # fmt: skip
    tally = Tally()
    logger = StepLogger(run)
    progress = Progress(total, len(files), err, enabled=not args.no_progress)
    refused = seen = 0
    code = 1
    total_of = [t.reader.size() for t in tails]

    def rows(i: int, tail: EventFileTail) -> Iterator[tuple[int, int, dict[str, Any]]]:
        for step, values in tail.rows(tally, final=True):
            yield step, i, values

    try:
        for step, i, values in heapq.merge(
            *(rows(i, t) for i, t in enumerate(tails)), key=lambda r: (r[0], r[1])
        ):
            try:
                logger.log(step, values, tails[i].namespace)
            except Exception as e:  # one row the run refuses (too large, say) is not the import's end
                refused += 1
                if refused == 1:
                    print(f"runstream: a row at step {step} was not logged: {e}", file=err)
            seen += 1
            if seen % 32 == 0:  # the sums walk every file; the bar redraws at most 10 times a second anyway
                done = sum(t.reader.offset for t in tails)
                progress.update(done, sum(t.reader.offset >= total_of[i] for i, t in enumerate(tails)))
        progress.update(total, len(files), final=True)
        code = 0
    finally:
        run.finish(exit_code=code)  # an import cut short (Ctrl-C, a read error) marks the run failed
    damaged = [(t, t.reader.stats) for t in tails if t.reader.stats.damaged]
    for t, stats in damaged:
        what = "cut short" if stats.truncated else "damaged"
        print(
            f"runstream: {t.reader.path}: {what}: {stats.damaged} damaged stretch(es), "
            f"{stats.skipped_bytes} bytes skipped; the {stats.records} intact records were imported",
            file=err,
        )
    if refused:
        tally.skipped["rows the run refused"] += refused
    if damaged:
        tally.skipped["damaged records"] += sum(s.damaged for _, s in damaged)
    print(
        f"runstream: imported {logger.rows} events into run {run.name} ({run.id}) in {run.dir}: "
        f"{tally.describe()}",
        file=err,
    )
    return 0
