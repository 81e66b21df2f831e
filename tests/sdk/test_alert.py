"""``runstream.alert`` in the training process: recorded with the run and read back, rate-limited
per title, arguments checked with clear errors, a no-op when disabled (docs/alerts.md)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.alerts import AlertLimiter

pytestmark = pytest.mark.usefixtures("finish_active_run")


def offline(tmp_path: Path) -> Any:
    return runstream.init(project="t", mode="offline", dir=tmp_path)


def test_alerts_are_recorded_with_the_run_and_read_back(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log({"loss": 1.0})
    run.log({"loss": 0.5})
    assert runstream.alert("Loss low", "loss is 0.5", level=runstream.AlertLevel.WARN) is True
    assert run.alert("Diverged", "loss is nan", level="error", wait_duration=timedelta(minutes=5)) is True
    assert run.alert("Note", "plain") is True
    run_dir = run.dir
    run.finish()
    got = runstream.read_run(run_dir).alerts
    assert [(a["title"], a["text"], a["level"]) for a in got] == [
        ("Loss low", "loss is 0.5", "WARN"),
        ("Diverged", "loss is nan", "ERROR"),
        ("Note", "plain", "INFO"),
    ]
    assert [a["wait_duration"] for a in got] == [60.0, 300.0, 60.0]
    assert all(a["step"] == 2 and a["suppressed"] == 0 for a in got)
    assert all(abs(a["time"] - time.time()) < 60 for a in got)


def test_same_title_within_wait_duration_is_dropped_and_counted(tmp_path: Path) -> None:
    run = offline(tmp_path)
    assert run.alert("hot", "1", wait_duration=0.5) is True
    assert run.alert("hot", "2", wait_duration=0.5) is False  # within the window: dropped
    assert run.alert("hot", "3", wait_duration=0.5) is False
    assert run.alert("cold", "other title", wait_duration=0.5) is True  # the limit is per title
    time.sleep(0.6)
    assert run.alert("hot", "4", wait_duration=0.5) is True
    run_dir = run.dir
    run.finish()
    got = runstream.read_run(run_dir).alerts
    assert [(a["title"], a["text"], a["suppressed"]) for a in got] == [
        ("hot", "1", 0),
        ("cold", "other title", 0),
        ("hot", "4", 2),
    ]


def test_zero_or_none_wait_duration_means_one_minute_as_in_wandb() -> None:
    now = [100.0]
    lim = AlertLimiter(clock=lambda: now[0])
    assert lim.admit("t", runstream.alerts.parse_wait(0)) == 0
    now[0] += 59.0
    assert lim.admit("t", runstream.alerts.parse_wait(None)) is None
    now[0] += 1.0
    assert lim.admit("t", runstream.alerts.parse_wait(0)) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"level": "CRITICAL"}, ValueError, "level must be one of 'INFO', 'WARN', 'ERROR', not 'CRITICAL'"),
        ({"level": 3}, TypeError, "level must be a runstream.AlertLevel"),
        ({"title": 5}, TypeError, "title must be a str, not a int"),
        ({"text": None}, TypeError, "text must be a str, not a NoneType"),
        ({"title": " "}, ValueError, "title must not be empty"),
        ({"title": "x" * 65}, ValueError, "title is 65 characters long; at most 64"),
        ({"wait_duration": -1}, ValueError, "wait_duration must be a finite number of seconds >= 0"),
        ({"wait_duration": float("nan")}, ValueError, "wait_duration must be a finite number"),
        ({"wait_duration": "60"}, TypeError, "wait_duration must be seconds"),
        ({"wait_duration": True}, TypeError, "wait_duration must be seconds"),
    ],
)
def test_bad_arguments_raise_naming_what_is_wrong(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    run = offline(tmp_path)
    args = {"title": "t", "text": "x", **kwargs}
    with pytest.raises(error) as e:
        run.alert(**args)
    assert words in str(e.value)
    # Nothing was recorded, and the refused call did not start a rate-limit window.
    assert run.alert("t", "fine") is True
    run_dir = run.dir
    run.finish()
    assert [a["text"] for a in runstream.read_run(run_dir).alerts] == ["fine"]


def test_very_long_text_is_cut_and_says_so(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.alert("long", "y" * 50_000)
    run_dir = run.dir
    run.finish()
    (got,) = runstream.read_run(run_dir).alerts
    assert len(got["text"]) <= runstream.alerts.MAX_TEXT + 10
    assert got["text"].endswith("characters cut]")


def test_alert_before_init_and_after_finish_raise_usage_error(tmp_path: Path) -> None:
    with pytest.raises(runstream.UsageError, match=r"before runstream\.init"):
        runstream.alert("t", "x")
    run = offline(tmp_path)
    run.finish()
    with pytest.raises(runstream.UsageError, match="the run is finished"):
        run.alert("t", "x")
    with pytest.raises(runstream.UsageError, match=r"before runstream\.init"):
        runstream.alert("t", "x")


def test_disabled_mode_alert_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = runstream.init(project="t", mode="disabled")
    assert runstream.alert("t", "x", level="ERROR") is False
    assert run.alert("t", "x") is None
    run.finish()
    assert os.listdir(tmp_path) == []


def test_alert_level_values_are_the_level_names() -> None:
    assert [lv.value for lv in runstream.AlertLevel] == ["INFO", "WARN", "ERROR"]
    assert runstream.AlertLevel("WARN") is runstream.AlertLevel.WARN
