"""Reading a run back from its journal: ``read_run`` and ``runstream inspect``.

The journal holds records (docs/ring-format.md) in frames (docs/journal-format.md);
``runstream.format.fold.RunState`` folds them into what a person asks about a run: metadata,
config, summary, history, losses, and how it ended.

Concurrency contract: reading a journal while its sidecar appends is safe (the reader ignores a
frame that is still being written).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.format.fold import RunState


def sidecar_running(run_dir: Path) -> bool:
    """True while a sidecar holds the run's lock (it flocks ``sidecar.lock`` for its lifetime)."""
    path = run_dir / "sidecar.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


@dataclass
class RunData:
    """A run read back from disk; ``as_dict()`` is the shape ``runstream inspect --json`` prints."""

    run: dict[str, Any]
    config: dict[str, Any]
    summary: dict[str, Any]
    history: Any  # list of row dicts, or a pandas DataFrame
    history_rows: int
    history_keys: list[str]
    first_row: dict[str, Any] | None
    last_row: dict[str, Any] | None
    dropped: int
    stats: dict[str, int]
    journal: dict[str, Any]
    path: Path
    alerts: list[dict[str, Any]] = field(default_factory=list)  # runstream.alert calls recorded
    metrics: dict[str, Any] = field(default_factory=dict)  # define_metric's definitions, by name

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "config": self.config,
            "summary": self.summary,
            "history": {"rows": self.history_rows, "keys": self.history_keys},
            "dropped": self.dropped,
            "losses": self.stats,
            "journal": self.journal,
            "path": str(self.path),
        }


def replay(run_dir: Path, keep_rows: bool = True) -> tuple[RunState, dict[str, Any]]:
    """Fold a run's journal; returns the state and the journal's health figures."""
    from runstream.format.journal_read import read_journal

    journal = read_journal(run_dir / "journal")
    state = RunState(keep_rows=keep_rows)
    state.feed(journal.iter_records())
    health = {
        "frames": journal.frames,
        "skipped_bytes": journal.skipped_bytes,
        "segments": journal.segments,
        "records": state.records,
        "last_seq": state.last_seq,
    }
    return state, health


def read_run(path: str | os.PathLike[str], pandas: bool = False) -> RunData:
    """Read a run back from its local journal: no server, no sidecar needed.

    Args:
        path: A run directory (``run.dir``), a ``latest-run`` link, a ``runstream/`` directory
            or the directory holding one (both meaning its latest run).
        pandas: Return the history as a pandas DataFrame instead of a list of dicts (pandas
            must be installed).

    Returns:
        A :class:`RunData`: ``run`` (metadata, with ``state`` -- ``"running"``, ``"finished"``,
        ``"failed"`` or ``"crashed"`` -- and ``exit_code``), ``config``, ``summary`` (each
        key's last value unless pinned, plus the ``_runstream/...`` loss counters when
        non-zero), ``history`` (every row, with ``_step``, ``_timestamp`` and ``_runtime``, nested
        keys flattened to ``a/b``), ``dropped`` (records lost: dropped under back-pressure, step
        regressions, lost by the sidecar; and media values not stored, docs/media.md),
        ``stats``, ``journal`` (health figures) and ``path``.

    Raises:
        UsageError: ``path`` is not, and does not lead to, a run directory.
        ImportError: ``pandas=True`` and pandas is not installed.

    Reads (and decompresses) the whole journal into memory, so it takes time and memory in
    proportion to the run.  Reading a run whose sidecar is still appending is safe: a frame
    still being written is left out, and the state reads ``"running"``.
    """
    from runstream.rundir import resolve_run_dir

    run_dir = resolve_run_dir(path)
    state, health = replay(run_dir)
    running = sidecar_running(run_dir)
    exit_code = state.exit.get("exit_code") if state.exit else None
    run = {
        "id": state.run.get("id"),
        "name": state.run.get("name"),
        "project": state.run.get("project"),
        "entity": state.run.get("entity"),
        "state": state.state(running),
        "exit_code": exit_code,
        **{k: v for k, v in state.run.items() if k not in ("id", "name", "project", "entity")},
    }
    history: Any = state.rows
    if pandas:
        import pandas as pd  # type: ignore[import-untyped, import-not-found, unused-ignore]

        history = pd.DataFrame(state.rows)
    return RunData(
        run=run,
        config=state.config,
        summary=state.summary,
        history=history,
        history_rows=state.row_count,
        history_keys=list(state.keys),
        first_row=state.first_row,
        last_row=state.last_row,
        dropped=state.dropped,
        stats={k: int(v) for k, v in state.stats.items()},
        journal=health,
        path=run_dir,
        alerts=state.alerts,
        metrics=state.metrics.public() if state.metrics is not None else {},
    )


@dataclass
class NodeData:
    """A distributed run's node directory read back: ``node.json`` and one :class:`RunData` per
    rank directory in it (``runstream inspect NODE_DIR``)."""

    node: dict[str, Any]
    ranks: dict[int, RunData]
    path: Path
    node_sidecar_running: bool

    def rank_rows(self) -> list[dict[str, Any]]:
        """One summary per rank: state, rows, last step, records lost."""
        import json

        out = []
        for rank, data in sorted(self.ranks.items()):
            last = data.last_row.get("_step") if data.last_row else None
            try:  # what the rank wrote at init, for a rank whose RUN record never reached the journal
                started = json.loads((data.path / "run.json").read_text())
            except (OSError, ValueError):
                started = {}
            out.append(
                {
                    "rank": rank,
                    "local_rank": data.run.get("local_rank", started.get("local_rank")),
                    "state": data.run["state"],
                    "exit_code": data.run.get("exit_code"),
                    "rows": data.history_rows,
                    "last_step": last,
                    "lost": data.dropped,
                    "attempt": data.run.get("attempt", started.get("attempt")),
                    "path": str(data.path),
                }
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "path": str(self.path),
            "node_sidecar_running": self.node_sidecar_running,
            "ranks": self.rank_rows(),
        }


def resolve_node_dir(path: str | os.PathLike[str]) -> Path | None:
    """The node directory ``path`` means (a node directory, or a ``latest-run`` link, a
    ``runstream/`` directory or a root whose latest run is one), or None if it means none."""
    import json

    from runstream.rundir import LATEST_LINK, LATEST_TXT, RUNS_DIRNAME

    p = Path(path).expanduser()
    candidates = [p]
    for base in (p, p / RUNS_DIRNAME):
        candidates.append(base / LATEST_LINK)
        txt = base / LATEST_TXT
        if txt.is_file():
            try:
                candidates.append(base / txt.read_text(encoding="utf-8").strip())
            except OSError:
                pass
    for c in candidates:
        node_json = c / "node.json"
        if node_json.is_file():
            try:
                json.loads(node_json.read_text())
            except (OSError, ValueError):
                continue
            return c.resolve()
    return None


def read_node(node_dir: Path) -> NodeData:
    """Read every rank directory of a node directory (``rank-<r>/``) and its ``node.json``.

    A rank whose pipeline the live node sidecar still runs reads ``"running"``: the node sidecar
    holds each attached rank directory's ``sidecar.lock``.  Reads every rank's whole journal."""
    import json

    from runstream.distributed.nodedir import rank_dirs
    from runstream.distributed.supervisor import node_sidecar_alive

    node_dir = Path(node_dir)
    try:
        node = json.loads((node_dir / "node.json").read_text())
    except (OSError, ValueError):
        node = {}
    ranks = {int(d.name.split("-", 1)[1]): read_run(d) for d in rank_dirs(node_dir)}
    return NodeData(node=node, ranks=ranks, path=node_dir, node_sidecar_running=node_sidecar_alive(node_dir))
