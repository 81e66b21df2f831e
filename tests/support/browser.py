"""The web UI's browser tests: a project of runs written straight into a server's database, a
real ``runstream server`` over it, and Debian's chromium driven by Playwright.

Runs are written with the storage's own write path (``SqliteStorage.store_batch``, the records a
sidecar would ship) before the server starts, so a thousand runs take a second or two instead of a
thousand sidecars.  ``Facts`` says what was written, so tests compute what the UI must show.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from runstream.format import record as rec
from runstream_ingest.server.args import DB_NAME
from runstream_ingest.server.storage.interface import KIND_CONSOLE, KIND_FILE, KIND_SYSTEM
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ENTITY, PROJECT = "acme", "vision"  # the table's 1,000 runs
LONG_PROJECT, LONG_RUN = "spikes", "long0001"
LONG_STEPS = 100_000
SPIKE_STEP, SPIKE = 54_321, 50.0
OPTIMIZERS = ("adam", "sgd", "adamw")
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
T0 = 1_767_225_600.0  # 2026-01-01, so that times read the same on every machine


@dataclass
class TableRun:
    id: str
    name: str
    tags: list[str]
    state: str
    config: dict[str, Any]
    acc: float


@dataclass
class Facts:
    runs: list[TableRun] = field(default_factory=list)
    long_keys: list[str] = field(default_factory=list)


def table_run(i: int) -> TableRun:
    state = "running" if i % 100 == 3 else "failed" if i % 50 == 7 else "finished"
    return TableRun(
        id=f"r{i:05d}",
        name=f"run-{i:04d}",
        tags=["baseline"] if i % 4 == 0 else ["sweep"],
        state=state,
        config={"lr": LRS[i % 5], "optimizer": OPTIMIZERS[i % 3], "model": {"depth": 10 + i % 4}},
        acc=((i * 7919) % 1000) / 1000,  # distinct for every run: sorting has one answer
    )


class Writer:
    """Records of one writer of one run, numbered as a sidecar numbers them."""

    def __init__(self, store: SqliteStorage, run_id: str, start: float, project: str = PROJECT) -> None:
        self.store, self.project, self.run_id, self.seq, self.t = store, project, run_id, 0, start
        store.open_run(ENTITY, project, run_id, "w", "")
        self.pending: list[rec.Record] = []

    def add(self, kind: int, body: Any, step: int = 0, t: float | None = None) -> None:
        self.seq += 1
        t = self.t if t is None else t
        self.pending.append(rec.Record(self.seq, kind, 0, step, t, rec.pack_body(body)))

    def flush(self) -> None:
        if self.pending:
            first = self.pending[0].seq
            self.store.store_batch(ENTITY, self.project, self.run_id, "w", first, self.seq, self.pending)
            self.pending = []


def write_table_runs(store: SqliteStorage, n: int) -> list[TableRun]:
    runs = []
    for i in range(n):
        r = table_run(i)
        start = T0 + i * 60
        w = Writer(store, r.id, start)
        meta = {"name": r.name, "tags": r.tags, "start_time": start, "host": f"gpu-{i % 8}",
                "program": "train.py", "group": f"sweep-{i % 2}"}  # fmt: skip
        w.add(rec.KIND_RUN, meta)
        w.add(rec.KIND_CONFIG, r.config)
        for step in range(3):
            loss = (1 - r.acc) + 0.1 * (2 - step)
            w.add(rec.KIND_ROW, {"acc": r.acc if step == 2 else r.acc / 2, "loss": loss}, step, start + step)
        if r.state != "running":
            w.add(rec.KIND_EXIT, {"exit_code": 1 if r.state == "failed" else 0}, t=start + 30)
        w.flush()
        runs.append(r)
    return runs


def long_value(key: str, step: int) -> float:
    if key == "train/loss":
        return SPIKE if step == SPIKE_STEP else 1.0 / (1 + step / 5000) + 0.05 * math.sin(step / 50)
    if key == "train/acc":
        return 1 - 1.0 / (1 + step / 8000)
    if key == "val/loss":
        return 1.2 / (1 + step / 6000)
    return 0.1 * 0.5 ** (step // 25_000)  # lr


def write_long_run(store: SqliteStorage, steps: int) -> list[str]:
    """One run of ``steps`` rows of four metrics, a spike in train/loss, console, system and files."""
    keys = ["train/loss", "train/acc", "val/loss", "lr"]
    w = Writer(store, LONG_RUN, T0 - 86_400, LONG_PROJECT)
    w.add(rec.KIND_RUN, {"name": "long-spike", "tags": ["long"], "start_time": w.t, "host": "gpu-big",
                         "program": "train.py", "args": ["--epochs", "90"], "python": "3.11.2"})  # fmt: skip
    w.add(rec.KIND_CONFIG, {"lr": 0.1, "optimizer": "sgd", "model": {"depth": 50}})
    for a in range(0, steps, 20_000):
        for s in range(a, min(steps, a + 20_000)):
            row = {k: long_value(k, s) for k in keys if k != "val/loss" or s % 10 == 0}
            w.add(rec.KIND_ROW, row, s, w.t + s * 0.01)
        w.flush()
    end = w.t + steps * 0.01
    for i in range(60):
        w.add(KIND_SYSTEM, {"system/gpu.0.util": 50 + 40 * math.sin(i / 6), "system/cpu": 20 + i % 7},
              t=w.t + i * steps * 0.01 / 60)  # fmt: skip
    epochs = [f"epoch {e}: loss {1 / (e + 1):.4f}" for e in range(300)]
    w.add(KIND_CONSOLE, {"stream": "stdout", "lines": epochs}, t=end)
    w.add(KIND_CONSOLE, {"stream": "stderr", "lines": ["warning: learning rate decayed"]}, t=end)
    w.add(KIND_FILE, {"path": "model.ckpt", "size": 45_000_000, "sha256": "ab" * 32, "policy": "end"}, t=end)
    w.add(rec.KIND_EXIT, {"exit_code": 0}, t=end)
    w.flush()
    return keys


def fill(data_dir: Path, runs: int = 1000, long_steps: int = LONG_STEPS) -> Facts:
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStorage(data_dir / DB_NAME)
    try:
        return Facts(write_table_runs(store, runs), write_long_run(store, long_steps))
    finally:
        store.close()


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's chromium, headless (Playwright's own browser download is not available here)."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(browser: Browser, request: pytest.FixtureRequest, dark: bool = False) -> Iterator[Page]:
    """A page in a fresh context (its own storage).  When the test fails, a screenshot goes to
    test-artifacts/<test>.png.  Uncaught errors in the page's scripts fail the test."""
    failed_before = request.session.testsfailed
    scheme = "dark" if dark else "light"
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme=scheme)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"{e.message}\n{e.stack}"))
    try:
        yield page
    finally:
        if request.session.testsfailed > failed_before:
            ARTIFACTS.mkdir(exist_ok=True)
            with contextlib.suppress(Exception):
                page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        ctx.close()
    assert not errors, "the page's scripts raised:\n" + "\n".join(errors)


def ema(values: list[float | None], w: float) -> list[float | None]:
    """The issue's debiased EMA written again in Python, for checking the page's: non-finite
    values and gaps pass through without touching the state."""
    out: list[float | None] = []
    last, n = 0.0, 0
    for y in values:
        if y is None or not math.isfinite(y):
            out.append(y)
            continue
        last = w * last + (1 - w) * y
        n += 1
        out.append(last / (1 - w**n))
    return out
