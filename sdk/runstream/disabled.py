"""``mode="disabled"``: a run object that accepts every call and does nothing.

Like W&B's disabled mode, this lets a training script (or its tests) run with tracking switched
off without changing any code: no files, no directories, no processes, no network.  The config
is a real :class:`~runstream.config.Config` so that ``run.config.lr`` and the
``allow_val_change`` check behave exactly as in a tracked run -- a script that works disabled must
not break once tracking is switched on.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, MutableMapping
from types import TracebackType
from typing import Any

from runstream.config import Config
from runstream.names import new_run_id, new_run_name
from runstream.settings import Settings


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class DisabledSummary(MutableMapping[str, Any]):
    """A plain in-memory dict with attribute access; nothing is recorded."""

    __slots__ = ("_items",)
    _items: dict[str, Any]

    def __init__(self) -> None:
        object.__setattr__(self, "_items", {})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._items[key] = value

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, key: str) -> Any:
        # "_items" here means it is not set yet (an object made by copy or pickle).
        if key.startswith("__") or key == "_items":
            raise AttributeError(key)
        try:
            return self._items[key]
        except KeyError:
            raise AttributeError(f"summary has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "_items":
            object.__setattr__(self, key, value)
        else:
            self._items[key] = value

    def __repr__(self) -> str:
        return f"Summary({self._items!r})"


class DisabledRun:
    """What ``runstream.init`` returns when the mode is ``"disabled"``: a stand-in for
    :class:`~runstream.run.Run` that records nothing.

    It has ``Run``'s attributes (``id``, ``name``, ``path``, ``project``, ``entity``, ``tags``,
    ``notes``, ``group``, ``job_type``, ``step`` (always 0), ``start_time``) plus W&B's
    ``url`` (None), ``resumed``, ``disabled`` and ``offline``, and ``mode`` (``"disabled"``).
    ``dir`` is the system's temporary directory, so a script that writes files into
    ``run.dir`` still works, but nothing is created there.  ``config`` is a real ``Config``
    (same ``allow_val_change`` rule as a tracked run); ``summary`` is an in-memory dict with
    attribute access.

    ``log``, ``save`` (which returns ``None``), ``finish`` and every other W&B call (any other
    method name too) accept their arguments and do nothing; the artifact calls return an inert
    ``runstream.Artifact`` and ``use_model`` a path, where W&B returns them
    (docs/compatibility.md).  Nothing blocks, nothing raises for back-pressure, and no
    file, directory, process or connection is made.  Like ``Run``, it belongs to one thread at
    a time.
    """

    def __init__(self, settings: Settings, config: dict[str, Any], *, allow_val_change: bool = False) -> None:
        self.settings = settings
        self.id = settings.run_id or new_run_id()
        self.name = settings.name or new_run_name()
        self.project = settings.project
        self.entity = settings.entity
        self.path = f"{self.entity}/{self.project}/{self.id}"
        # An existing, writable directory that this run does not create, so that scripts saving
        # files into run.dir keep working.
        self.dir = tempfile.gettempdir()
        self.tags = settings.tags
        self.notes = settings.notes
        self.group = settings.group
        self.job_type = settings.job_type
        self.config = Config(allow_val_change=allow_val_change)
        self.config.update(config)
        self.summary = DisabledSummary()
        self.step = 0
        self.start_time = time.time()
        self.url: str | None = None
        self.resumed = False
        self.disabled = True
        self.offline = False
        self.mode = "disabled"
        # The rest of W&B's Run attributes that are values, not calls (docs/compatibility.md).
        self.sync_dir = self.dir
        self.sweep_id: str | None = None
        self.starting_step = 0
        self.project_url: str | None = None
        self.sweep_url: str | None = None

    @property
    def config_static(self) -> dict[str, Any]:
        from runstream.run_compat import ConfigStatic

        return ConfigStatic(self.config.as_dict())

    # W&B's calls that return an object: a harmless one here (runstream.compat.Inert and an
    # inert Artifact), so that code using the result goes on.
    def use_artifact(self, *args: Any, **kwargs: Any) -> Any:
        from runstream.compat import disabled_artifact

        return disabled_artifact(*args, **kwargs)

    log_artifact = link_artifact = upsert_artifact = finish_artifact = use_artifact
    log_model = link_model = use_artifact

    def use_model(self, *args: Any, **kwargs: Any) -> str:
        return self.dir  # W&B returns the downloaded model's path

    def status(self) -> Any:
        from runstream.run_compat import RunStatus

        return RunStatus()

    def display(self, *args: Any, **kwargs: Any) -> bool:
        return False

    def to_html(self, *args: Any, **kwargs: Any) -> str:
        return ""

    def project_name(self) -> str:
        return self.project

    def log(
        self, data: Any, step: int | None = None, commit: bool | None = None, sync: bool | None = None
    ) -> None:
        pass

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        pass

    def save(self, *args: Any, **kwargs: Any) -> None:
        pass

    def watch(self, *args: Any, **kwargs: Any) -> None:
        pass

    def alert(self, *args: Any, **kwargs: Any) -> None:
        pass

    def define_metric(self, name: Any = "", *args: Any, **kwargs: Any) -> Any:
        from runstream.metric import Metric

        return Metric(str(name))  # W&B returns a Metric in disabled mode too; nothing is recorded

    def mark_preempting(self) -> None:
        pass

    def __enter__(self) -> DisabledRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # None: the user's exception, if any, propagates
        self.finish(exit_code=0 if exc_type is None else 1)

    def __getattr__(self, name: str) -> Callable[..., None]:
        # Only reached for names the class does not define (log_artifact, use_artifact, unwatch,
        # log_code, ...).  Dunder names stay missing so copy/pickle/inspection behave normally.
        if name.startswith("__"):
            raise AttributeError(name)
        return _noop

    def __repr__(self) -> str:
        return f"<DisabledRun {self.path} name={self.name!r}>"
