"""runstream: experiment tracking whose logging never slows down or breaks training.

    import runstream
    with runstream.init(project="demo", config={"lr": 1e-3}) as run:
        for step in range(1000):
            run.log({"loss": 1 / (step + 1)})

The API follows W&B's (``init``, ``log``, ``config``, ``summary``, ``finish``), so a W&B script
runs after changing its import line.  A record's path from ``log`` to disk, one module per stage:
``run`` (log) -> ``ring`` (shared memory) -> ``runstream_ingest.sidecar.ring_reader`` -> ``.batcher`` ->
``.journal`` (crash-safe, fsync'd), all driven by ``runstream_ingest.sidecar.main``.
"""

from __future__ import annotations

from typing import Any

from runstream.errors import ConfigError, Error, RecordTooLargeError, SettingsError, UsageError
from runstream.files import save_active as save
from runstream.login import login
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
from runstream.session import finish, init

__version__ = "0.1.0"


def _log_before_init(data: Any = None, step: Any = None, commit: Any = None, **kwargs: Any) -> None:
    from runstream import session

    if session._active is not None:  # reached through ``from runstream import log``
        session._active.log(data, step=step, commit=commit)
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

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise UsageError("runstream.config.update: call runstream.init() before using runstream.config")


log = _log_before_init
run: Any = None
config: Any = _PreInitConfig()
summary: Any = None

__all__ = [
    "Api",
    "ApiError",
    "ConfigError",
    "ConflictError",
    "Error",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RecordTooLargeError",
    "RunData",
    "SettingsError",
    "UnauthorizedError",
    "UsageError",
    "config",
    "finish",
    "init",
    "log",
    "login",
    "read_run",
    "run",
    "save",
    "summary",
]
