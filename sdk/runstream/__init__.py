"""runstream: experiment tracking whose logging never slows down or breaks training.

    import runstream
    with runstream.init(project="demo", config={"lr": 1e-3}) as run:
        for step in range(1000):
            run.log({"loss": 1 / (step + 1)})

The API follows W&B's (``init``, ``log``, ``config``, ``summary``, ``finish``), so a W&B script
runs after changing its import line.

A record's path from ``log`` to the database, one module per stage (README, "How a record
travels"): in this process ``run`` (``Run.log``) -> ``ring`` (shared memory); in the sidecar
``runstream_ingest.sidecar``: ``ring_reader`` -> ``batcher`` -> ``journal`` (crash-safe, fsync'd)
-> ``shipper`` (gRPC); on the server ``runstream_ingest.server``: ``ingest_service`` -> ``decode``
-> ``commit`` -> ``storage``.  What all three share (record, ring layout, journal frame, the fold)
is in ``runstream.format``; importing this package loads no sidecar or server code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runstream.alerts import AlertLevel, alert
from runstream.errors import (
    ConfigError,
    Error,
    NotSupportedError,
    RecordTooLargeError,
    SettingsError,
    UsageError,
)
from runstream.files import save_active as save
from runstream.login import login
from runstream.metric import Metric
from runstream.metric import define_active as define_metric
from runstream.read.api import (
    Api,
    ApiError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnauthorizedError,
)
from runstream.read.local import RunData, read_run
from runstream.run import Run
from runstream.session import finish, init
from runstream.watch import unwatch_active as unwatch
from runstream.watch import watch_active as watch

if TYPE_CHECKING:
    from runstream.config import Config
    from runstream.disabled import DisabledRun, DisabledSummary
    from runstream.run import Summary

__version__ = "0.1.0"


def _log_before_init(
    data: Mapping[str, Any],
    step: int | None = None,
    commit: bool | None = None,
    sync: bool | None = None,
) -> None:
    """Log a row of metrics to the active run: ``runstream.run.log(data, step, commit)``.

    ``init`` rebinds ``runstream.log`` to the new run's ``log`` (one call layer fewer), and
    ``finish`` binds it back to this function; so ``runstream.log`` is the active run's
    :meth:`Run.log` -- the same arguments, step rules, errors and non-blocking behaviour (it
    never waits for the sidecar, the disk or the network; when the ring and the in-process
    overflow are full, records are dropped and counted in ``_runstream/dropped_records``) --
    or, in disabled mode, a no-op.  A name bound earlier with ``from runstream import log`` is
    this function, which forwards to the active run.

    Args:
        data: A dict of metric names to values (see :meth:`Run.log`).
        step: The step to log at, or ``None`` for the current one.
        commit: ``False`` keeps the row pending; see :meth:`Run.log`.
        sync: Accepted for compatibility with W&B; ignored.

    Raises:
        UsageError: No run is active (before ``init``, or after ``finish``).
        TypeError, RecordTooLargeError, ValueError: As :meth:`Run.log`.
    """
    if run is not None:  # reached through a name bound before init, e.g. ``from runstream import log``
        run.log(data, step=step, commit=commit)
        return
    raise UsageError("runstream.log() was called before runstream.init(): start a run first")


class _PreInitConfig:
    """``runstream.config`` before ``init``: reading or writing it says what to do."""

    def __getattr__(self, key: str) -> Any:
        raise UsageError(f"runstream.config.{key}: call runstream.init() before using runstream.config")

    def __getitem__(self, key: str) -> Any:
        raise UsageError(f"runstream.config[{key!r}]: call runstream.init() before using runstream.config")

    def __setitem__(self, key: str, value: Any) -> None:
        raise UsageError(f"runstream.config[{key!r}]: call runstream.init() before using runstream.config")

    def __setattr__(self, key: str, value: Any) -> None:
        raise UsageError(f"runstream.config.{key}: call runstream.init() before using runstream.config")

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise UsageError("runstream.config.update: call runstream.init() before using runstream.config")


# The module-level twins of the active run's attributes, rebound by ``init`` and ``finish``.
log = _log_before_init
run: Run | DisabledRun | None = None  # the active run, or None
config: Config | _PreInitConfig = _PreInitConfig()  # run.config; before init, says to call init
summary: Summary | DisabledSummary | None = None  # run.summary, or None

_MEDIA = ("Audio", "Histogram", "Html", "Image", "Molecule", "Object3D", "Plotly", "Table", "Video")
_SUBMODULES = ("plot", "sklearn", "tensorboard")
# The rest of W&B's module-level names (docs/compatibility.md): name -> "module:attribute",
# loaded on first use.  Most are in runstream.compat (stand-ins raising NotSupportedError).
_COMPAT_NAMES = (
    "Artifact", "ArtifactTTL", "EvalTable", "Graph", "InternalApi", "JoinedTable", "Settings",
    "agent", "attach", "controller", "ensure_configured", "link_model", "log_artifact",
    "log_model", "mark_preempting", "patched", "pin_config_keys", "plot_table", "require",
    "restore", "set_trace", "setup", "sweep", "teardown", "termerror", "termlog", "termsetup",
    "termwarn", "use_artifact", "use_model", "util", "visualize",
)  # fmt: skip
_COMPAT = {name: f"runstream.compat:{name}" for name in _COMPAT_NAMES} | {
    "Classes": "runstream.media.classes:Classes",
    "box3d": "runstream.media.classes:box3d",
    "CommError": "runstream.read.api:ApiError",
    "PublicApi": "runstream.read.api:Api",
    "Config": "runstream.config:Config",
    "join": "runstream.session:finish",
}

_COMPAT_NAMESPACES = (
    "api", "catboost", "gym", "helper", "jupyter", "keras", "lightgbm", "profiler", "sacred",
    "sagemaker_auth", "tensorflow", "wandb_lib", "wandb_sdk", "wandb_torch", "xgboost",
)  # fmt: skip


def __getattr__(name: str) -> Any:
    """``runstream.Image`` and the other media types, ``runstream.plot``/``sklearn``, and the rest
    of W&B's names (``_COMPAT``, ``_COMPAT_NAMESPACES``; docs/compatibility.md): loaded on first
    use, so ``import runstream`` does not import numpy."""
    if name in _MEDIA:
        import runstream.media

        value = getattr(runstream.media, name)
    elif name in _SUBMODULES:
        import importlib

        value = importlib.import_module(f"runstream.{name}")
    elif name in _COMPAT:
        import importlib

        module, attr = _COMPAT[name].split(":")
        value = getattr(importlib.import_module(module), attr)
    elif name in _COMPAT_NAMESPACES:  # wandb.keras, wandb.api...: stand-ins (runstream.compat)
        from runstream.compat import NAMESPACES

        value = NAMESPACES[name]
    else:
        raise AttributeError(f"module 'runstream' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads (``runstream.Image`` per step)
    return value


__all__ = [
    "AlertLevel",
    "Api",
    "ApiError",
    "Artifact",
    "ArtifactTTL",
    "Audio",
    "Classes",
    "CommError",
    "Config",
    "ConfigError",
    "ConflictError",
    "Error",
    "EvalTable",
    "Graph",
    "Histogram",
    "Html",
    "Image",
    "InternalApi",
    "InvalidRequestError",
    "JoinedTable",
    "Metric",
    "Molecule",
    "NotFoundError",
    "NotSupportedError",
    "Object3D",
    "PermissionDeniedError",
    "Plotly",
    "PublicApi",
    "RecordTooLargeError",
    "Run",
    "RunData",
    "Settings",
    "SettingsError",
    "Table",
    "UnauthorizedError",
    "UsageError",
    "Video",
    "agent",
    "alert",
    "attach",
    "box3d",
    "config",
    "controller",
    "define_metric",
    "ensure_configured",
    "finish",
    "init",
    "join",
    "link_model",
    "log",
    "log_artifact",
    "log_model",
    "login",
    "mark_preempting",
    "patched",
    "pin_config_keys",
    "plot",
    "plot_table",
    "read_run",
    "require",
    "restore",
    "run",
    "save",
    "set_trace",
    "setup",
    "summary",
    "sweep",
    "teardown",
    "termerror",
    "termlog",
    "termsetup",
    "termwarn",
    "unwatch",
    "use_artifact",
    "use_model",
    "util",
    "visualize",
    "watch",
]
