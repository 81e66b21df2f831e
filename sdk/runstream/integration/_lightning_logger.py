"""The body of the Lightning logger, shared by ``lightning.pytorch`` and ``pytorch_lightning``.

The two distributions ship separate ``Logger`` base classes (a ``pytorch_lightning.Trainer``
accepts only ``pytorch_lightning`` loggers), so ``runstream.integration.lightning`` and
``runstream.integration.pytorch_lightning`` each join :class:`LoggerBody` with their own base
class and hand it their package's helpers through :class:`LightningParts`.  This module imports
neither package.

It follows Lightning's ``WandbLogger``: the same arguments, the same keys (``trainer/global_step``
in every row that has a step), the same checkpoint policy (``log_model``).
"""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runstream.integration._common import default_project, parent_base, save_checkpoint, warn

STEP_KEY = "trainer/global_step"


@dataclass(frozen=True)
class LightningParts:
    """The helpers of one Lightning package that the logger uses."""

    rank_zero_only: Any  # its ``rank_zero_only``: ``.rank`` is this process's global rank
    scan_checkpoints: Callable[[Any, dict[str, float]], list[tuple[float, str, Any, str]]]
    convert_params: Callable[[Any], dict[str, Any]]
    sanitize_callable_params: Callable[[dict[str, Any]], dict[str, Any]]
    convert_json_serializable: Callable[[dict[str, Any]], dict[str, Any]]
    add_prefix: Callable[[Mapping[str, Any], str, str], Mapping[str, Any]]


class LoggerBody:
    """Everything of ``RunstreamLogger`` but its base class; see ``runstream.integration.lightning``."""

    LOGGER_JOIN_CHAR = "-"
    _parts: LightningParts  # set by each package's subclass

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike[str] | None = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: bool | str = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if log_model not in (True, False, "all"):
            raise ValueError(f"RunstreamLogger: log_model must be True, False or 'all', not {log_model!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"RunstreamLogger: prefix must be a str, not {prefix!r}")
        super().__init__()
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callbacks: dict[int, Any] = {}
        self._checkpoint_name = checkpoint_name  # accepted for WandbLogger's signature; unused
        root = save_dir if save_dir is not None else dir
        self._save_dir = os.fspath(root) if root is not None else None
        self._project = project or default_project("lightning_logs")
        self._name = name
        self._id = version or id
        # W&B's ``anonymous`` has no runstream meaning; accepted so that calls run unchanged.
        self._init_kwargs: dict[str, Any] = {
            "name": name,
            "project": self._project,
            "dir": self._save_dir,
            "id": self._id,
            "resume": "allow",
            **({"mode": "offline"} if offline else {}),
            **kwargs,
        }

    def __getstate__(self) -> dict[str, Any]:
        # A logger pickled into spawned workers takes the run's id, not the run (a ring and a
        # sidecar belong to one process); workers other than rank 0 never use the run.
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_id"] = self._experiment.id
            state["_init_kwargs"] = {**self._init_kwargs, "id": self._experiment.id}
        state["_experiment"] = None
        return state

    def _get_experiment(self) -> Any:
        """The run, started at first use (``runstream.init`` with the logger's arguments); an
        active run is reused instead, with a warning, as ``WandbLogger`` does."""
        import runstream

        if self._experiment is None:
            if runstream.run is not None:
                warn(
                    "a runstream run is already active and RunstreamLogger logs to it; call "
                    "runstream.finish() first for a new run"
                )
                self._experiment = runstream.run
            else:
                self._experiment = runstream.init(**self._init_kwargs)
                # The x-axis of every metric is Lightning's step, as WandbLogger defines it.
                self._experiment.define_metric(STEP_KEY)
                self._experiment.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        return self._experiment

    def _rank_zero(self) -> bool:
        return getattr(self._parts.rank_zero_only, "rank", 0) == 0

    def watch(
        self, model: Any, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True
    ) -> None:
        """``WandbLogger.watch``: histograms of ``model``'s gradients and/or parameters every
        ``log_freq`` batches, through :meth:`runstream.Run.watch` (docs/watch.md)."""
        self._get_experiment().watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Add ``params`` (a dict or ``argparse.Namespace``; nested dicts stay nested) to the run's
        config, changing existing keys; callables become their names, other values that are
        not JSON become their ``str``.  Called by the trainer with ``save_hyperparameters``'s
        values.  Non-blocking (one record into the ring)."""
        if not self._rank_zero():
            return
        p = self._parts
        values = p.convert_json_serializable(p.sanitize_callable_params(p.convert_params(params)))
        self._get_experiment().config.update(values, allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log one row: ``metrics`` (names prefixed with ``prefix-`` when a prefix is set) and,
        when ``step`` is given, ``trainer/global_step = step``.  Each call is its own row (the
        run's ``_step`` counts calls; the trainer's step is ``trainer/global_step``), as in
        ``WandbLogger``.

        Raises:
            TypeError, ValueError: A value the run cannot log (see ``Run.log``).
        """
        if not self._rank_zero():
            return
        row = dict(self._parts.add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR))
        if step is not None:
            row[STEP_KEY] = step
        self._get_experiment().log(row)

    def log_table(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log a :class:`runstream.Table` under ``key`` (with ``trainer/global_step`` when
        ``step`` is given)."""
        import runstream

        self.log_metrics({key: runstream.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log text rows as a table (``log_table``), as ``WandbLogger`` does."""
        self.log_table(key, columns, data, dataframe, step)

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Log a list of images under ``key``; each keyword (``caption=[...]``...) is a list with
        one value per image.

        Raises:
            TypeError: ``images`` is not a list.  ValueError: a keyword's list has another length.
        """
        self._log_media("Image", key, images, step, kwargs)

    def log_audio(self, key: str, audios: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Log a list of audio clips under ``key``, as :meth:`log_image`."""
        self._log_media("Audio", key, audios, step, kwargs)

    def log_video(self, key: str, videos: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Log a list of videos under ``key``, as :meth:`log_image`."""
        self._log_media("Video", key, videos, step, kwargs)

    def _log_media(self, kind: str, key: str, items: Any, step: int | None, kwargs: dict[str, Any]) -> None:
        import runstream

        if not isinstance(items, list):
            raise TypeError(
                f"RunstreamLogger.log_{kind.lower()}: expected a list, found {type(items).__name__}"
            )
        for k, v in kwargs.items():
            if len(v) != len(items):
                raise ValueError(
                    f"RunstreamLogger.log_{kind.lower()}: {k} has {len(v)} items for {len(items)}"
                )
        make = getattr(runstream, kind)
        values = [make(item, **{k: v[i] for k, v in kwargs.items()}) for i, item in enumerate(items)]
        self.log_metrics({key: values}, step)

    @property
    def save_dir(self) -> str | None:
        """The directory the run directory goes under (``<save_dir>/runstream/run-...``)."""
        return self._save_dir

    @property
    def name(self) -> str | None:
        """The project: Lightning puts checkpoints under ``<save_dir>/<name>/<version>/``."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run's id (the one asked for before the run starts)."""
        return self._experiment.id if self._experiment is not None else self._id

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Keep the checkpoint files with the run: at once with ``log_model="all"`` (or ``True``
        and ``save_top_k=-1``), at the end of a successful fit with ``log_model=True``."""
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._save_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    def finalize(self, status: str) -> None:
        """At the end of fitting: with ``log_model=True`` keep the best and last checkpoints.  The
        run is not finished (later ``test``/``validate`` calls log to it): ``runstream.finish()``
        or the interpreter's exit does it, as with ``WandbLogger``."""
        if status != "success" or self._experiment is None:
            return
        for callback in self._checkpoint_callbacks.values():
            self._save_checkpoints(callback)

    def _save_checkpoints(self, callback: Any) -> None:
        if not self._rank_zero():
            return
        run = self._get_experiment()
        for mtime, path, _score, _tag in self._parts.scan_checkpoints(callback, self._logged_model_time):
            save_checkpoint(run, [path], parent_base(path))
            self._logged_model_time[path] = mtime
