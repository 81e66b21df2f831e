"""Shared fixtures: a clean environment per test, and no process left behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.server import ServerProc, start_server
from tests.support.shipping import LoopThread

ENV_PREFIXES = ("RUNSTREAM_", "WANDB_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs must not pick up the developer's own RUNSTREAM_*/WANDB_* settings."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)


def sidecars_under(path: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "runstream_ingest.sidecar.main" in cmd and any(str(path) in c for c in cmd):
            found.append(p)
    return found


@pytest.fixture(autouse=True)
def no_leftover_sidecars(tmp_path: Path) -> Iterator[None]:
    """Every sidecar a test starts (they run in their own sessions) is gone when it ends."""
    yield
    leftovers = sidecars_under(tmp_path)
    for p in leftovers:
        try:
            p.kill()
            p.wait(5)
        except psutil.Error:
            pass
    assert not leftovers, f"test left sidecars running: {[p.pid for p in leftovers]}"


@pytest.fixture
def finish_active_run() -> Iterator[None]:
    """In-process runs are finished even when a test fails half-way."""
    yield
    import runstream

    runstream.finish()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    """A real server on 127.0.0.1 for one test, stopped after it."""
    srv = start_server(tmp_path / "server")
    yield srv
    srv.stop()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """An event loop in a thread for shippers (tests.support.shipping), closed after the test."""
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()
