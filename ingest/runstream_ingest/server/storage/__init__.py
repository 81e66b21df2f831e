"""Where the ingest server keeps runs: the ``Storage`` interface and its backends.

``open_storage("sqlite:///path/to/runstream.db")`` (or a plain path) opens SQLite; a PostgreSQL
backend is meant to be another module behind the same interface (``base.Storage``).
"""

from __future__ import annotations

from runstream_ingest.server.storage.interface import (
    BadBatch,
    Bucket,
    ConsoleLine,
    FileInfo,
    OpenedRun,
    RunExists,
    RunInfo,
    RunNotFound,
    SequenceGap,
    Storage,
    StorageError,
    StoreResult,
)

__all__ = [
    "BadBatch",
    "Bucket",
    "ConsoleLine",
    "FileInfo",
    "OpenedRun",
    "RunExists",
    "RunInfo",
    "RunNotFound",
    "SequenceGap",
    "Storage",
    "StorageError",
    "StoreResult",
    "open_storage",
]


def open_storage(url: str) -> Storage:
    """A storage for ``url``: ``sqlite:///abs/path.db``, ``sqlite://rel/path.db`` or a path."""
    if url.startswith(("postgres://", "postgresql://")):
        raise StorageError("the PostgreSQL backend is not written yet")
    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    from runstream_ingest.server.storage.sqlite.backend import SqliteStorage

    return SqliteStorage(path)
