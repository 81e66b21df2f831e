"""The storage's one writer thread, with group commit for batches.

Every write to the storage runs on one thread (the storage's concurrency contract).  Batches
from all streams meet in one queue: when the thread gets to it, it takes every batch waiting
and stores them with ``Storage.store_batches`` — one transaction, one durable commit (one WAL
fsync) for all of them — and then answers each caller with its own result.  While a group is
being stored the next one gathers, so the more streams are busy, the fewer commits per batch:
a fixed cost per commit no longer caps the batches per second.

Other writes (``call``: open a run, heartbeats, compaction) run on the same thread in the order
they were asked for, between groups: a group is one job of the thread, and the next group is
queued behind whatever was asked for meanwhile, so a busy ingest never starves them.

Concurrency contract: ``store`` and ``call`` are coroutines for the server's one event loop;
the queue is shared with the writer thread under ``_lock``; the storage is only touched on the
writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from runstream_ingest.server.storage.interface import BatchWrite, Storage, StoreResult

T = TypeVar("T")
Waiter = tuple[BatchWrite, "asyncio.Future[StoreResult | Exception]"]


class StorageWriter:
    """See the module docstring."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="storage-writer")
        self._lock = threading.Lock()
        self._queue: list[Waiter] = []
        self._scheduled = False  # a group job is queued or running on the thread
        self.groups = 0  # commits of batches, and batches in them: batches / groups = group size
        self.batches = 0

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def submit(self, batch: BatchWrite) -> asyncio.Future[StoreResult | Exception]:
        """Queue one batch for the next group commit (call on the event loop); the future holds
        its StoreResult or its error (SequenceGap, ...).  Batches are stored in submit order."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[StoreResult | Exception] = loop.create_future()
        with self._lock:
            self._queue.append((batch, fut))
            start, self._scheduled = not self._scheduled, True
        if start:
            self.executor.submit(self._group, loop)
        return fut

    async def store(self, batch: BatchWrite) -> StoreResult:
        """Store one batch in the next group commit; raises its error."""
        result = await self.submit(batch)
        if isinstance(result, Exception):
            raise result
        return result

    def _group(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                group, self._queue = self._queue, []
            results: Sequence[StoreResult | Exception]
            try:
                results = self.storage.store_batches([b for b, _ in group])
            except Exception as e:  # the commit itself failed: no batch of the group is stored
                results = [e] * len(group)
            self.groups += 1
            self.batches += len(group)
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_answer, group, results)
            with self._lock:
                if not self._queue:
                    self._scheduled = False
                    return
                try:  # the next group goes behind the calls that came meanwhile
                    self.executor.submit(self._group, loop)
                    return
                except RuntimeError:  # shutting down: store it here and now
                    pass

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


def _answer(group: list[Waiter], results: Sequence[StoreResult | Exception]) -> None:
    for (_, fut), result in zip(group, results, strict=True):
        if not fut.done():  # a stream cancelled meanwhile no longer waits
            fut.set_result(result)
