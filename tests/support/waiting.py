"""Polling for a condition instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Return once ``cond()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_for_async(
    cond: Callable[[], object], timeout: float, what: str, interval: float = 0.01
) -> None:
    """``wait_for`` inside a coroutine: it yields to the event loop between tries (a blocking sleep
    would stop the very loop whose work it waits for)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
