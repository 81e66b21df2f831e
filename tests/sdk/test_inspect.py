"""``runstream inspect`` and ``read_run``: what a person sees of a run after the fact."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import runstream

pytestmark = pytest.mark.usefixtures("finish_active_run")


@pytest.fixture
def finished_run(tmp_path: Path) -> Any:
    run = runstream.init(project="insp", mode="offline", dir=tmp_path, config={"lr": 0.01, "arch": "mlp"})
    for i in range(50):
        run.log({"loss": 1.0 / (i + 1), "val": {"acc": i / 50}})
    run.log({"weird": float("nan")})
    run.summary["best"] = 0.98
    run.finish()
    return run


def inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_inspect_json_has_the_documented_shape(finished_run: Any) -> None:
    out = inspect(finished_run.dir, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {"id", "name", "project", "state", "exit_code"} <= doc["run"].keys()
    assert doc["run"]["id"] == finished_run.id and doc["run"]["state"] == "finished"
    assert doc["run"]["exit_code"] == 0 and doc["run"]["project"] == "insp"
    assert doc["config"] == {"lr": 0.01, "arch": "mlp"}
    assert doc["summary"]["best"] == 0.98 and doc["summary"]["weird"] == "NaN"
    assert doc["history"]["rows"] == 51
    assert {"loss", "val/acc", "_step", "_timestamp", "_runtime", "weird"} <= set(doc["history"]["keys"])
    assert doc["dropped"] == 0
    assert doc["journal"]["frames"] >= 1 and doc["journal"]["skipped_bytes"] == 0


def test_inspect_history_prints_every_row_as_json_lines(finished_run: Any) -> None:
    out = inspect(finished_run.dir, "--history")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["_step"] for r in rows] == list(range(51))
    assert rows[0]["loss"] == 1.0 and rows[-1]["weird"] == "NaN"


def test_inspect_text_names_run_state_rows_drops_and_journal_health(finished_run: Any) -> None:
    out = inspect(str(Path(finished_run.dir).parent / "latest-run"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert finished_run.name in text and "finished" in text and "51 rows" in text
    assert "dropped    0" in text and "0 bytes skipped" in text and "lr=0.01" in text


def test_inspect_of_a_path_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    out = inspect(str(tmp_path / "nope"))
    assert out.returncode == 2 and "run directory" in out.stderr and "Traceback" not in out.stderr


def test_inspect_reports_damage_and_keeps_every_intact_row(tmp_path: Path) -> None:
    run = runstream.init(project="d", mode="offline", dir=tmp_path, settings={"batch_bytes": 4096})
    for i in range(2000):
        run.log({"i": i, "pad": "x" * 40})
    run.finish()
    (seg,) = sorted((Path(run.dir) / "journal").iterdir())
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x55  # a flipped byte inside some frame in the middle
    seg.write_bytes(bytes(data))
    got = runstream.read_run(run.dir)
    assert got.journal["skipped_bytes"] > 0
    steps = [r["i"] for r in got.history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert 0 < len(steps) < 2000 and steps[0] == 0 and steps[-1] == 1999  # only that frame is lost
    assert "damaged" in inspect(run.dir).stdout


def test_read_run_returns_rows_and_a_dataframe_on_request(finished_run: Any) -> None:
    data = runstream.read_run(finished_run.dir)
    assert len(data.history) == 51 and data.history[3]["loss"] == 0.25
    df = runstream.read_run(finished_run.dir, pandas=True).history
    assert list(df["_step"]) == list(range(51)) and math.isnan(df["weird"].iloc[-1])
