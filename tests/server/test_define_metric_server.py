"""``define_metric`` on the server: the definitions are stored with the run and its stored summary
follows them, across batches and across a restart of the storage, as the offline reader's fold
computes it; an online run shows both through the HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.format import record as rec
from runstream_ingest.server.storage.interface import RunInfo
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from tests.storage.test_storage import E, Feed, P, numpy_everywhere
from tests.support.server import ServerProc


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "runstream.db"


def metric_feed() -> Feed:
    f = Feed()
    f.run(name="m")
    f.add(rec.KIND_METRIC, {"name": "loss", "summary": ["min", "max", "mean", "first", "last"]})
    f.add(rec.KIND_METRIC, {"name": "val/*", "summary": ["best"], "goal": "maximize", "step_metric": "epoch"})
    f.add(rec.KIND_METRIC, {"name": "noise", "summary": ["none"]})
    f.add(rec.KIND_METRIC, {"name": "epoch", "hidden": True})
    for i in range(40):
        loss = float((i * 7) % 11) / 10  # not monotonic: min and max are not the ends
        row = {"loss": loss, "val": {"acc": 1 - loss}, "noise": i, "epoch": i // 10, "tag": "x" if i else 1}
        f.row(i, row)
    return f


def stored(db: Path, f: Feed, cuts: list[int]) -> RunInfo:
    """Store ``f``'s records in batches ending at ``cuts``, reopening the storage between batches
    (so what the fold keeps must come back from the database)."""
    first = 1
    for last in [*cuts, len(f.records)]:
        s = SqliteStorage(db)
        try:
            s.open_run(E, P, "r", "w", "allow")
            s.store_batch(E, P, "r", "w", *f.batch(first, last))
        finally:
            s.close()
        first = last + 1
    s = SqliteStorage(db)
    try:
        info = s.get_run(E, P, "r")
    finally:
        s.close()
    assert info is not None
    return info


@pytest.mark.parametrize("fast", [False, True], ids=["lists", "numpy"])
@pytest.mark.parametrize("cuts", [[], [6, 20, 30]], ids=["one-batch", "four-batches"])
def test_the_stored_summary_follows_the_definitions_as_the_offline_fold_does(
    db: Path, fast: bool, cuts: list[int]
) -> None:
    f = metric_feed()
    if fast:
        with numpy_everywhere():
            info = stored(db, f, cuts)
    else:
        info = stored(db, f, cuts)
    model = f.state().summary
    losses = [float((i * 7) % 11) / 10 for i in range(40)]
    assert info.summary["loss"] == model["loss"] == {
        "last": losses[-1], "first": losses[0], "max": max(losses), "min": min(losses),
        "mean": pytest.approx(sum(losses) / len(losses)),
    }  # fmt: skip
    assert info.summary["val/acc"] == model["val/acc"] == {"best": 1.0}
    assert "noise" not in info.summary and "noise" not in model
    assert info.summary["tag"] == model["tag"] == "x"
    assert info.meta["_runstream/metrics"]["val/*"] == {
        "name": "val/*", "summary": ["best"], "goal": "maximize", "step_metric": "epoch"
    }  # fmt: skip
    assert info.meta["_runstream/metrics"]["epoch"] == {"name": "epoch", "hidden": True}


def test_a_malformed_metric_record_is_kept_raw_and_changes_nothing(db: Path) -> None:
    f = Feed()
    f.run(name="m")
    f.add(rec.KIND_METRIC, {"name": "loss", "summary": ["median"]})
    f.add(rec.KIND_METRIC, ["not", "a", "map"])
    f.row(0, {"loss": 1.0})
    info = stored(db, f, [])
    assert info.summary["loss"] == 1.0 and "_runstream/metrics" not in info.meta
    s = SqliteStorage(db)
    try:
        with s._read("raw records") as c:
            kinds = [k for (k,) in c.execute("SELECT kind FROM raw_records")]
    finally:
        s.close()
    assert kinds == [rec.KIND_METRIC, rec.KIND_METRIC]


@pytest.mark.slow
def test_an_online_run_shows_its_definitions_and_summary_through_the_http_api(
    tmp_path: Path, server: ServerProc
) -> None:
    body = textwrap.dedent(
        """
        import runstream
        run = runstream.init(project="dm", id="dmonline")
        run.define_metric("epoch", hidden=True)
        run.define_metric("val/*", step_metric="epoch", summary="max")
        run.define_metric("loss", summary="min,last")
        for i, loss in enumerate([0.9, 0.4, 0.7, 0.2, 0.5]):
            run.log({"loss": loss, "epoch": i // 2, "val": {"acc": 1 - loss}})
        run.finish()
        """
    )
    (tmp_path / "train.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env["RUNSTREAM_HOST"] = server.url
    cmd = [sys.executable, "train.py"]
    done = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    path = runstream.Api(server.url).run("dm/dmonline").path
    with urllib.request.urlopen(f"{server.url}/api/v1/runs/{path}", timeout=30) as resp:
        run: dict[str, Any] = json.loads(resp.read())
    assert run["state"] == "finished"
    assert run["summary"]["loss"] == {"min": 0.2, "last": 0.5}
    assert run["summary"]["val/acc"] == {"max": pytest.approx(0.8)}
    assert run["metrics"] == {
        "epoch": {"name": "epoch", "hidden": True},
        "val/*": {"name": "val/*", "step_metric": "epoch", "step_sync": True, "summary": ["max"]},
        "loss": {"name": "loss", "summary": ["min", "last"]},
    }
    # a summary statistic filters runs as W&B's summary_metrics.loss.min does
    project = path.rsplit("/", 1)[0]
    api = runstream.Api(server.url)
    assert [r.id for r in api.runs(project, filters={"summary_metrics.loss.min": {"$lt": 0.3}})] == [
        "dmonline"
    ]
    assert [r.id for r in api.runs(project, filters={"summary.loss.min": {"$gt": 0.3}})] == []


@pytest.mark.slow
def test_a_run_resumed_from_the_servers_copy_keeps_its_definitions(
    tmp_path: Path, server: ServerProc
) -> None:
    """On a machine without the run directory, ``resume="must"`` continues the server's copy:
    the definitions made before hold for the new rows, on the server and in the new local copy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env["RUNSTREAM_HOST"] = server.url
    first = """
        import runstream
        run = runstream.init(project="dm", id="dmresume")
        run.define_metric("loss", summary="min,max")
        for loss in [0.9, 0.4, 0.7]:
            run.log({"loss": loss})
        run.finish()
        """
    second = """
        import runstream
        run = runstream.init(project="dm", id="dmresume", resume="must")
        for loss in [0.2, 0.5, 1.5]:
            run.log({"loss": loss})
        run.finish()
        """
    for name, body in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.py").write_text(textwrap.dedent(body))
        cmd = [sys.executable, "train.py"]
        done = subprocess.run(
            cmd, check=False, cwd=tmp_path / name, env=env, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode()
    api_run = runstream.Api(server.url).run("dm/dmresume")
    assert api_run.summary["loss"] == {"min": 0.2, "max": 1.5}
    local = runstream.read_run(tmp_path / "b")
    assert [r["loss"] for r in local.history] == [0.2, 0.5, 1.5]
    assert local.summary["loss"] == {"min": 0.2, "max": 1.5}  # this copy's rows, the same rules
