"""The rest of W&B's ``Run`` surface, mixed into :class:`runstream.run.Run` (docs/compatibility.md).

``run.py`` keeps ``log`` and the run's core; this mixin holds the W&B attributes a script may
touch that are not on the hot path: ``url``/``project_url``, ``resumed``, ``offline``,
``starting_step``, ``settings``, ``log_code``, ``restore``, ``mark_preempting``, ``status``,
``write_logs``... and the artifact calls, which raise ``NotSupportedError`` (a disabled run's
do nothing: :class:`runstream.disabled.DisabledRun`).

It reads the ``Run`` attributes listed in ``_RunFields`` and writes records only through
``Run._emit``; nothing here blocks or touches the ring's hot path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from runstream.compat import ARTIFACTS, MODELS, PIN, not_supported
from runstream.errors import UsageError
from runstream.format import record as rec

if TYPE_CHECKING:
    from runstream.settings import Settings


@dataclasses.dataclass
class RunStatus:
    """What :meth:`RunCompat.status` returns (W&B's ``RunStatus``).

    Attributes:
        sync_items_total: Records this process has written into the run so far.
        sync_items_pending: Of those, the ones not yet made durable: not yet acknowledged by
            the server for an online run, not yet journaled for an offline one.
        sync_time: When the count was taken.
    """

    sync_items_total: int = 0
    sync_items_pending: int = 0
    sync_time: dt.datetime | None = None


class ConfigStatic(dict[str, Any]):
    """``run.config_static``: a snapshot of the config, read as ``c["lr"]`` or ``c.lr``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


# Directories log_code never walks: runstream's and W&B's run directories (as W&B skips its
# own), version control, virtual environments and caches, where .py files are not the user's.
_SKIP_DIRS = frozenset(
    {"runstream", "wandb", ".wandb", ".git", ".hg", ".venv", "venv", "node_modules", "__pycache__"}
)
_CODE_NAMES = frozenset({"requirements.txt", "Dockerfile"})


def _default_include(path: str, root: str) -> bool:
    """W&B's default: Python files, ``requirements.txt`` and ``Dockerfile``."""
    return path.endswith(".py") or os.path.basename(path) in _CODE_NAMES


def _call_filter(fn: Callable[..., bool], path: str, root: str) -> bool:
    """W&B's filters take ``(path, root)`` or just ``(path)``."""
    try:
        params = inspect.signature(fn).parameters.values()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes_two = len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):  # a builtin without a signature
        takes_two = True
    return bool(fn(path, root) if takes_two else fn(path))


class RunCompat:
    """W&B's ``Run`` attributes beyond the core (see the module docstring)."""

    # Set by Run.__init__ / session (declared for the type checker).
    _id: str
    _dir: Path
    _settings: Settings
    _finished: bool
    _starting_step: int
    _resumed: bool
    project: str
    entity: str
    config: Any

    if TYPE_CHECKING:

        @property
        def path(self) -> str: ...
        @property
        def mode(self) -> str: ...
        @property
        def dir(self) -> str: ...
        def _emit(self, kind: int, value: Any) -> None: ...
        def save(self, glob_str: Any = None, base_path: Any = None, policy: str = "live") -> Any: ...

    def _check_live(self, what: str, action: str = "changed") -> None:
        """Raise, as W&B does, when a finished run is changed (instead of dropping the change)."""
        if self._finished:
            raise UsageError(
                f"run {self._id} is finished: {what} can no longer be {action}; "
                "call runstream.init() to start another run"
            )

    # --- identity and state ----------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """A copy of the run's resolved settings (changing it changes nothing)."""
        return dataclasses.replace(self._settings)

    @property
    def sync_dir(self) -> str:
        """The run directory, which ``runstream sync`` takes (the same as ``dir``)."""
        return str(self._dir)

    @property
    def config_static(self) -> ConfigStatic:
        """A snapshot of the config as a dict with attribute access."""
        return ConfigStatic(self.config.as_dict())

    @property
    def sweep_id(self) -> str | None:
        """Always ``None``: sweeps are not supported (docs/compatibility.md)."""
        return None

    @property
    def starting_step(self) -> int:
        """The step the run started at: 0, or for a resumed run the step after its last row."""
        return self._starting_step

    @property
    def resumed(self) -> bool:
        """Whether ``init`` continued an existing run (from its directory or the server)."""
        return self._resumed

    @property
    def offline(self) -> bool:
        """Whether the run has no server to stream to (``mode == "offline"``)."""
        return self.mode == "offline"

    @property
    def disabled(self) -> bool:
        """Always ``False`` for a tracked run (a disabled one is a ``DisabledRun``)."""
        return False

    def project_name(self) -> str:
        """The project (deprecated in W&B: use ``run.project``)."""
        return self.project

    # --- URLs ------------------------------------------------------------------------------
    def _host(self) -> str | None:
        online = getattr(self, "_online", None)
        return None if online is None else str(online.url).rstrip("/")

    @property
    def url(self) -> str | None:
        """The run's page on the server's dashboard (``<host>/#/r/entity/project/id``), or
        ``None`` for an offline run."""
        host = self._host()
        return None if host is None else f"{host}/#/r/{self.entity}/{self.project}/{self._id}"

    @property
    def project_url(self) -> str | None:
        """The project's runs table on the dashboard, or ``None`` for an offline run."""
        host = self._host()
        return None if host is None else f"{host}/#/p/{self.entity}/{self.project}"

    @property
    def sweep_url(self) -> str | None:
        """Always ``None``: sweeps are not supported."""
        return None

    def get_url(self) -> str | None:
        """``run.url`` (deprecated in W&B)."""
        return self.url

    def get_project_url(self) -> str | None:
        """``run.project_url`` (deprecated in W&B)."""
        return self.project_url

    def get_sweep_url(self) -> str | None:
        """``run.sweep_url`` (deprecated in W&B): ``None``."""
        return None

    def to_html(self, height: int = 420, hidden: bool = False) -> str:
        """An iframe of the run's dashboard page for a notebook; for an offline run, a line of
        text that says where the run is."""
        url = self.url
        if url is None:
            return f"<p>runstream run {self._id} (offline): {self._dir}</p>"
        style = f"border:none;width:100%;height:{int(height)}px;" + ("display:none;" if hidden else "")
        return f"<iframe src={url!r} style={style!r}></iframe>"

    def display(self, height: int = 420, hidden: bool = False) -> bool:
        """Show :meth:`to_html` in a Jupyter notebook; returns whether it was shown (``False``
        outside a notebook or when the ``silent`` setting is on)."""
        if self._settings.silent:
            return False
        try:
            from IPython import get_ipython  # type: ignore[import-not-found,unused-ignore]
            from IPython.display import HTML, display  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return False
        shell = get_ipython()
        if shell is None or "ZMQ" not in type(shell).__name__:  # a kernel, not a terminal IPython
            return False
        display(HTML(self.to_html(height, hidden)))
        return True

    # --- W&B calls that record something -----------------------------------------------------
    def mark_preempting(self) -> None:
        """Record that the run is about to be preempted (W&B's ``mark_preempting``).

        Sets ``preempting: true`` in the run's metadata (a RUN record, docs/ring-format.md), so
        readers (``read_run(...).run["preempting"]``, the server's run) can tell a run stopped
        by its scheduler from one that crashed.  Call it from the preemption signal's handler,
        then resume the run later with ``init(id=..., resume="allow")``.  Non-blocking.

        Raises:
            UsageError: The run is finished.
        """
        self._check_live("run.mark_preempting()", "called")
        self._emit(rec.KIND_RUN, {"preempting": True})

    def write_logs(self, text: str) -> None:
        """Add ``text`` to the run's console log (its Console tab) as stdout lines, without
        printing it; ignored after ``finish``, as in W&B.  Non-blocking."""
        if self._finished:
            return
        lines = str(text).splitlines() or [""]
        self._emit(rec.KIND_CONSOLE, {"stream": "stdout", "lines": lines})

    def status(self) -> RunStatus:
        """How many records this process has written and how many are not yet durable (see
        :class:`RunStatus`).  Reads counters in shared memory; never blocks."""
        from runstream.format.ring_layout import W_ACKED_SEQ, W_FIRST_SEQ, W_JOURNALED_SEQ

        ring = getattr(self, "_ring", None)
        writer = getattr(self, "_writer", None)
        if ring is None or writer is None or self._finished:
            return RunStatus(sync_time=dt.datetime.now())
        w = ring.words
        last = int(writer.last_seq)
        total = max(0, last - int(w[W_FIRST_SEQ]) + 1)
        done = int(w[W_JOURNALED_SEQ] if self.mode == "offline" else w[W_ACKED_SEQ])
        return RunStatus(total, max(0, last - done), dt.datetime.now())

    def log_code(
        self,
        root: str | os.PathLike[str] | None = ".",
        name: str | None = None,
        include_fn: Callable[..., bool] = _default_include,
        exclude_fn: Callable[..., bool] | None = None,
    ) -> list[str] | None:
        """Keep the run's source code with it (W&B's ``log_code``).

        Walks ``root`` and keeps each file ``include_fn`` accepts (by default ``*.py``,
        ``requirements.txt`` and ``Dockerfile``) and ``exclude_fn`` does not, as run files
        under ``code/<path relative to root>``, copied now (policy ``"now"``, docs/files.md)
        and uploaded when the run is online.  Directories of run data, version control,
        virtual environments and caches (``runstream``, ``wandb``, ``.git``, ``.venv``,
        ``venv``, ``node_modules``, ``__pycache__``) are not walked.  W&B keeps the files in a
        code artifact; runstream has no artifacts, so they are run files.

        Args:
            root: The directory to walk, relative to the current one or absolute.
            name: W&B's artifact name; accepted and unused.
            include_fn: ``fn(path, root)`` or ``fn(path)``: keep this file?
            exclude_fn: ``fn(path, root)`` or ``fn(path)``: skip this file?

        Returns:
            The run-file paths kept (``code/...``), or ``None`` when no file matched.

        Raises:
            UsageError: The run is finished.
            NotADirectoryError: ``root`` is not a directory.

        Lists the directory tree on the calling thread (the copying is the sidecar's).
        """
        self._check_live("run.log_code()", "called")
        base = os.path.abspath(os.fspath(root if root is not None else "."))
        if not os.path.isdir(base):
            raise NotADirectoryError(f"runstream.log_code: root {base!r} is not a directory")
        kept: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for fname in sorted(filenames):
                path = os.path.join(dirpath, fname)
                if not os.path.isfile(path) or not _call_filter(include_fn, path, base):
                    continue
                if exclude_fn is not None and _call_filter(exclude_fn, path, base):
                    continue
                rel = "code/" + Path(os.path.relpath(path, base)).as_posix()
                self._emit(rec.KIND_FILE, {"path": rel, "policy": "now", "source": path})
                kept.append(rel)
        return kept or None

    def restore(
        self,
        name: str,
        run_path: str | None = None,
        replace: bool = False,
        root: str | os.PathLike[str] | None = None,
    ) -> IO[str] | None:
        """``runstream.restore`` with this run's path and directory as defaults (see it)."""
        from runstream.compat import restore

        return restore(name, run_path or self.path, replace, root if root is not None else self.dir)

    # --- not supported yet ---------------------------------------------------------------------
    def pin_config_keys(self, keys: Any = ()) -> None:
        """Not supported yet: raises ``NotSupportedError`` (docs/compatibility.md)."""
        raise not_supported("Run.pin_config_keys", *PIN)

    def log_artifact(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported yet: raises ``NotSupportedError`` (artifacts)."""
        raise not_supported("Run.log_artifact", *ARTIFACTS)

    def use_artifact(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported yet: raises ``NotSupportedError`` (artifacts)."""
        raise not_supported("Run.use_artifact", *ARTIFACTS)

    def link_artifact(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported yet: raises ``NotSupportedError`` (artifacts)."""
        raise not_supported("Run.link_artifact", *ARTIFACTS)

    def upsert_artifact(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported yet: raises ``NotSupportedError`` (artifacts)."""
        raise not_supported("Run.upsert_artifact", *ARTIFACTS)

    def finish_artifact(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported yet: raises ``NotSupportedError`` (artifacts)."""
        raise not_supported("Run.finish_artifact", *ARTIFACTS)

    def log_model(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported yet: raises ``NotSupportedError`` (the model registry)."""
        raise not_supported("Run.log_model", *MODELS)

    def use_model(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported yet: raises ``NotSupportedError`` (the model registry)."""
        raise not_supported("Run.use_model", *MODELS)

    def link_model(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported yet: raises ``NotSupportedError`` (the model registry)."""
        raise not_supported("Run.link_model", *MODELS)
