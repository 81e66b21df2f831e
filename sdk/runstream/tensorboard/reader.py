"""Event files into rows: finding them, naming their namespace, tailing them, and the step rule.

Concurrency contract: an :class:`EventFileTail` belongs to one thread at a time; :class:`StepLogger`
calls ``run.log`` and so belongs to the run's thread (the ring has one producer).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runstream.tensorboard.convert import Tally, event_values
from runstream.tensorboard.event import parse_event
from runstream.tensorboard.tfrecord import TFRecordReader


def is_event_file(name: str) -> bool:
    """TensorBoard's rule: an event file's name contains ``tfevents``."""
    return "tfevents" in name


def find_event_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every event file under ``root`` (or ``root`` itself when it is one), in directory then
    name order: a writer's files are named by creation time, so a restarted writer's come
    after its earlier ones."""
    root = Path(root)
    if root.is_file():
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_event_file(f))
    return found


def namespace_for(path: Path, root: Path) -> str:
    """The key prefix for an event file under ``root``: its directory relative to ``root`` (as
    TensorBoard names runs), "" for files directly in it."""
    try:
        rel = path.parent.resolve().relative_to(root.resolve())
    except ValueError:
        return ""
    return "" if str(rel) == "." else rel.as_posix()


class EventFileTail:
    """One event file being read, from where the last call stopped.

    Args:
        path: The event file.
        namespace: The prefix of its keys ("" for none).
    """

    def __init__(self, path: str | os.PathLike[str], namespace: str) -> None:
        self.reader = TFRecordReader(path)
        self.namespace = namespace

    def rows(
        self, tally: Tally, final: bool = False, limit: int | None = None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(step, values)`` for each event after the last one read that holds something to log.

        Args:
            tally: Counts converted and skipped values (an event that does not decode is counted
                as ``undecodable events``).
            final: The file is complete: a cut-short last record is counted and skipped.
            limit: Read at most this many records.
        """
        for data in self.reader.read(final=final, limit=limit):
            try:
                event = parse_event(data)
            except ValueError:
                tally.skipped["undecodable events"] += 1
                continue
            values = event_values(event, self.namespace, tally)
            if values:
                yield event.step, values


class StepLogger:
    """Logs TensorBoard rows into a run at TensorBoard's step where it can.

    A row's step is its event's ``global_step`` when that is not behind the run's step; rows of
    one step merge into one (across namespaces too), committed when a later step arrives or at
    finish.  A row that is behind (a second writer starting again at 0, or the script's own
    ``log`` calls having moved the run on) is logged at the run's own step instead, as W&B does:
    a new row each time its namespace's step changes, so no value overwrites another, and its
    ``global_step`` key still holds TensorBoard's step.  Nothing is dropped as a step regression.
    """

    def __init__(self, run: Any) -> None:
        self.run = run
        self.rows = 0
        self._last: dict[str, int] = {}  # namespace -> the TensorBoard step of its last row

    def log(self, step: int, values: dict[str, Any], namespace: str = "") -> None:
        """Log one event's values (see the class docstring).  Raises what ``run.log`` raises."""
        run = self.run
        last = self._last.get(namespace)
        self._last[namespace] = step
        if step >= run.step:
            target = step
        elif last == step:  # more of the row this namespace is filling: merge
            target = run.step
        else:  # a new row, after the pending one if there is one
            target = run.step + (getattr(run, "_pending", None) is not None)
        run.log(values, step=target)
        self.rows += 1
