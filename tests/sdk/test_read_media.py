"""Rich media read back offline (issue 11, docs/media.md): ``read_run`` and ``runstream inspect`` on
a run whose rows hold W&B pointer dicts and whose journal holds the sidecar's MEDIA records.

The journal is the one ``tests/server/test_media_history.py`` ships to a server, written as the
sidecar writes it after its media stage; the last test logs through ``runstream.init`` offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.format.fold import json_safe
from tests.server.test_media_history import (
    FAILED,
    IMG_EVERY,
    STEPS,
    flat,
    histogram,
    image,
    images,
    table,
    write_journal,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media-run")
    write_journal(d)
    return d


def values(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def test_read_run_gives_every_row_with_its_pointers_unchanged(run_dir: Path) -> None:
    data = runstream.read_run(run_dir)
    assert [r["_step"] for r in data.history] == list(range(STEPS))
    assert all(values(r) == flat(r["_step"]) for r in data.history)
    assert data.history[5]["pair"] == [image(5), histogram(5)] and data.history[7]["broken"] == FAILED
    assert data.history_rows == STEPS and data.dropped == 0
    assert {"img", "imgs", "hist", "val/hist", "val/acc", "preds", "pair", "broken", "label"} <= set(
        data.history_keys
    )
    assert data.run["state"] == "finished" and data.config == {"lr": 0.1}


def test_read_run_summary_holds_each_key_s_last_pointer(run_dir: Path) -> None:
    s = runstream.read_run(run_dir).summary
    last = STEPS - 1
    assert s["hist"] == histogram(last) and s["val/hist"] == histogram(last + 1)
    assert s["img"] == image(last - last % IMG_EVERY) and s["imgs"] == images(350)
    assert s["preds"] == table(last) and s["broken"] == FAILED and s["_step"] == last


def test_read_run_as_pandas_keeps_pointers_in_object_columns(run_dir: Path) -> None:
    df = runstream.read_run(run_dir, pandas=True).history
    assert df["hist"].tolist() == [histogram(s) for s in range(STEPS)]
    assert df.set_index("_step").loc[40, "img"] == image(40)


def inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_inspect_skips_media_records_and_prints_the_pointers(run_dir: Path) -> None:
    out = inspect(str(run_dir), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["summary"]["preds"] == table(STEPS - 1) and doc["history"]["rows"] == STEPS
    assert doc["dropped"] == 0 and doc["journal"]["skipped_bytes"] == 0
    hist = inspect(str(run_dir), "--history")
    assert hist.returncode == 0, hist.stderr
    rows = [json.loads(line) for line in hist.stdout.splitlines()]
    assert [values(r) for r in rows] == [json_safe(flat(s)) for s in range(STEPS)]
    plain = inspect(str(run_dir))
    assert plain.returncode == 0 and "finished" in plain.stdout, plain.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("finish_active_run")
def test_an_offline_run_logging_pointer_dicts_reads_back_unchanged(tmp_path: Path) -> None:
    run = runstream.init(
        project="media", mode="offline", dir=tmp_path,
        settings={"console": "off", "disable_stats": True, "disable_code": True},
    )  # fmt: skip
    for step in range(5):
        run.log({"loss": 1.0 / (step + 1), "h": histogram(step), "val": {"img": image(step), "acc": 0.5}})
    run.log({"pair": [image(9), histogram(9)]})
    run.finish()
    data = runstream.read_run(run.dir)
    assert [r.get("h") for r in data.history] == [histogram(s) for s in range(5)] + [None]
    assert [r.get("val/img") for r in data.history[:5]] == [image(s) for s in range(5)]
    assert data.history[5]["pair"] == [image(9), histogram(9)]
    assert data.summary["h"] == histogram(4) and data.summary["val/img"] == image(4)
    assert data.dropped == 0
