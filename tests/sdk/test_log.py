"""``log`` semantics as W&B users rely on them, checked against what lands in the journal."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runstream
from runstream.format.ring_layout import W_DROPPED, W_OVERFLOW_PEAK

pytestmark = pytest.mark.usefixtures("finish_active_run")


def offline(tmp_path: Path, **kw: Any) -> Any:
    return runstream.init(project="t", mode="offline", dir=tmp_path, **kw)


def history(run: Any) -> list[dict[str, Any]]:
    run.finish()
    return list(runstream.read_run(run.dir).history)


def test_each_log_commits_a_row_at_the_next_step(tmp_path: Path) -> None:
    run = offline(tmp_path)
    for i in range(5):
        run.log({"loss": 1.0 / (i + 1)})
    rows = history(run)
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [1.0, 0.5, 1 / 3, 0.25, 0.2]


def test_rows_carry_step_timestamp_and_runtime(tmp_path: Path) -> None:
    before = time.time()
    run = offline(tmp_path)
    run.log({"a": 1})
    run.log({"a": 2})
    rows = history(run)
    for r in rows:
        assert before <= r["_timestamp"] <= time.time()
        assert 0 <= r["_runtime"] < 60
    assert rows[0]["_runtime"] <= rows[1]["_runtime"]


def test_nested_dicts_flatten_to_slash_keys(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log({"train": {"loss": 0.5, "opt": {"lr": 0.1}}, "epoch": 1})
    (row,) = history(run)
    assert row["train/loss"] == 0.5 and row["train/opt/lr"] == 0.1 and row["epoch"] == 1


def test_commit_false_merges_into_the_pending_row(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log({"loss": 0.5}, commit=False)
    run.log({"acc": 0.9})
    run.log({"loss": 0.4})
    rows = history(run)
    assert rows[0]["loss"] == 0.5 and rows[0]["acc"] == 0.9 and rows[0]["_step"] == 0
    assert rows[1]["loss"] == 0.4 and "acc" not in rows[1] and rows[1]["_step"] == 1


def test_explicit_step_commits_pending_row_merges_equal_and_moves_on(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log({"a": 1}, step=10)
    run.log({"b": 2}, step=10)  # same step: merged
    run.log({"a": 3}, step=12)  # higher: step 10 committed, 12 pending
    run.log({"c": 4})  # no step: merges into 12 and commits
    run.log({"a": 5})
    rows = history(run)
    assert [(r["_step"], {k: v for k, v in r.items() if not k.startswith("_")}) for r in rows] == [
        (10, {"a": 1, "b": 2}),
        (12, {"a": 3, "c": 4}),
        (13, {"a": 5}),
    ]


def test_step_regression_is_dropped_with_one_warning_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = offline(tmp_path)
    run.log({"a": 1}, step=5, commit=True)
    run.log({"a": 2}, step=3)
    run.log({"a": 2}, step=4)
    run.log({"a": 6})
    err = capsys.readouterr().err
    assert err.count("runstream: warning") == 1 and "step=3" in err
    rows = history(run)
    assert [r["_step"] for r in rows] == [5, 6]
    data = runstream.read_run(run.dir)
    assert data.dropped == 2
    assert data.summary["_runstream/step_regressions"] == 2


def test_step_regression_raise_setting_makes_it_a_value_error(tmp_path: Path) -> None:
    run = offline(tmp_path, settings={"step_regression": "raise"})
    run.log({"a": 1}, step=5)
    with pytest.raises(ValueError, match="step 2 is behind"):
        run.log({"a": 2}, step=2)


class FakeScalarTensor:
    """Quacks like a torch scalar tensor: runstream must not import torch to log it."""

    def __init__(self, v: float) -> None:
        self.v = v

    def item(self) -> float:
        return self.v


def test_every_documented_value_type_round_trips(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log(
        {
            "int": 7,
            "big": 2**62,
            "float": 0.25,
            "nan": float("nan"),
            "inf": float("inf"),
            "ninf": float("-inf"),
            "bool": True,
            "str": "hello",
            "none": None,
            "np_f32": np.float32(1.5),
            "np_i64": np.int64(-3),
            "np_bool": np.bool_(False),
            "np_0d": np.array(2.5),
            "tensor": FakeScalarTensor(4.0),
            "list": [1, 2.5, 3],
            "np_vec": np.array([1.0, 2.0]),
        }
    )
    (row,) = history(run)
    assert row["int"] == 7 and row["big"] == 2**62 and row["float"] == 0.25
    assert math.isnan(row["nan"]) and row["inf"] == math.inf and row["ninf"] == -math.inf
    assert row["bool"] is True and row["str"] == "hello" and row["none"] is None
    assert row["np_f32"] == 1.5 and row["np_i64"] == -3 and row["np_bool"] is False
    assert row["np_0d"] == 2.5 and row["tensor"] == 4.0
    assert row["list"] == [1, 2.5, 3] and row["np_vec"] == [1.0, 2.0]


def test_unloggable_value_raises_type_error_naming_key_and_type_and_loses_nothing(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log({"ok": 1})
    with pytest.raises(TypeError, match=r"'model/weights'.*type object"):
        run.log({"fine": 2, "model": {"weights": object()}})
    with pytest.raises(TypeError, match=r"'x'.*type set"):
        run.log({"x": {1, 2}}, commit=False)
    with pytest.raises(TypeError, match="dict of metrics"):
        run.log([1, 2])  # type: ignore[arg-type]
    run.log({"ok": 3})
    rows = history(run)
    assert [r["ok"] for r in rows] == [1, 3]
    assert [r["_step"] for r in rows] == [0, 1]


def test_log_before_init_raises_runstream_error() -> None:
    with pytest.raises(runstream.Error, match=r"before runstream\.init"):
        runstream.log({"a": 1})


def test_module_level_log_config_summary_follow_the_active_run(tmp_path: Path) -> None:
    run = runstream.init(mode="offline", dir=tmp_path, config={"lr": 0.1})
    assert runstream.run is run and runstream.config.lr == 0.1
    runstream.log({"a": 1})
    runstream.summary["best"] = 3
    runstream.finish()
    assert runstream.run is None
    data = runstream.read_run(run.dir)
    assert data.history_rows == 1 and data.summary["best"] == 3 and data.config == {"lr": 0.1}
    with pytest.raises(runstream.Error):
        runstream.log({"a": 2})


def test_summary_is_last_logged_value_unless_pinned(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log({"acc": 0.5, "loss": 2.0})
    run.log({"acc": 0.7})
    run.summary["acc"] = 0.9  # pinned: later logs do not move it
    run.log({"acc": 0.6, "loss": 1.0})
    assert run.summary["acc"] == 0.9 and run.summary["loss"] == 1.0
    run.finish()
    data = runstream.read_run(run.dir)
    assert data.summary["acc"] == 0.9 and data.summary["loss"] == 1.0
    import json

    assert json.loads((Path(run.dir) / "files" / "summary.json").read_text())["acc"] == 0.9


def test_config_change_without_allow_val_change_names_key_and_values(tmp_path: Path) -> None:
    run = offline(tmp_path, config={"lr": 0.1})
    with pytest.raises(runstream.ConfigError, match=r"lr.*0\.1.*0\.2"):
        run.config.lr = 0.2
    run.config.update({"lr": 0.2}, allow_val_change=True)
    run.config.batch = 32
    run.finish()
    data = runstream.read_run(run.dir)
    assert data.config == {"lr": 0.2, "batch": 32}
    assert "batch: 32" in (Path(run.dir) / "files" / "config.yaml").read_text()


def test_second_init_returns_the_active_run_with_a_warning(tmp_path: Path) -> None:
    run = offline(tmp_path)
    with pytest.warns(RuntimeWarning, match="still active"):
        again = offline(tmp_path)
    assert again is run


def test_reinit_finishes_the_active_run_first(tmp_path: Path) -> None:
    first = offline(tmp_path)
    first.log({"a": 1})
    second = offline(tmp_path, reinit=True)
    assert second is not first and second.id != first.id
    assert runstream.read_run(first.dir).run["state"] == "finished"


def test_exception_inside_context_manager_marks_run_failed(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), offline(tmp_path) as run:
        run.log({"a": 1})
        1 / 0  # noqa: B018
    data = runstream.read_run(run.dir)
    assert data.run["state"] == "failed" and data.run["exit_code"] == 1
    assert data.history_rows == 1


def test_run_identity_and_directory_layout(tmp_path: Path) -> None:
    run = runstream.init(
        project="p", entity="e", name="my-run", tags=["a", "b"], notes="n", mode="offline", dir=tmp_path
    )
    assert len(run.id) == 8 and run.id.isalnum() and run.id == run.id.lower()
    assert run.path == f"e/p/{run.id}" and run.name == "my-run" and run.tags == ("a", "b")
    d = Path(run.dir)
    assert d.parent == tmp_path / "runstream" and d.name.startswith("run-") and d.name.endswith(run.id)
    assert (tmp_path / "runstream" / "latest-run").resolve() == d.resolve()
    run.name = "renamed"
    run.finish()
    assert runstream.read_run(d).run["name"] == "renamed"
    assert {p.name for p in d.iterdir()} >= {"journal", "files", "logs"}


def test_init_and_finish_say_one_line_each_and_silent_says_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = offline(tmp_path)
    run.log({"a": 1})
    run.finish()
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 2 and run.name in lines[0] and run.dir in lines[1]
    monkeypatch.setenv("RUNSTREAM_SILENT", "true")
    offline(tmp_path).finish()
    out = capsys.readouterr()
    assert out.out + out.err == ""


def test_online_without_a_server_falls_back_to_offline_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runstream.init(project="t", dir=tmp_path)  # online is the default
    run.log({"a": 1})
    run.finish()
    err = capsys.readouterr().err
    assert err.count("offline") >= 1 and "server" in err
    assert runstream.read_run(run.dir).history_rows == 1


def test_disabled_mode_writes_nothing_and_starts_nothing(tmp_path: Path) -> None:
    import psutil

    run = runstream.init(project="t", mode="disabled", dir=tmp_path, config={"a": 1})
    run.log({"x": 1})
    run.summary["y"] = 2
    assert run.config.a == 1
    assert psutil.Process().children() == []
    run.finish()
    assert list(tmp_path.iterdir()) == []


def test_record_larger_than_the_ring_is_refused_clearly(tmp_path: Path) -> None:
    run = offline(tmp_path, settings={"ring_size": 64 * 1024})
    with pytest.raises(runstream.RecordTooLargeError, match="ring_size"):
        run.log({"blob": "x" * 100_000})
    run.log({"a": 1})
    assert [r["a"] for r in history(run)] == [1]


def sidecar_pid(run: Any) -> int:
    pid = run._sidecar.pid
    assert pid
    return int(pid)


def test_full_ring_spills_to_overflow_and_finish_drains_it(tmp_path: Path) -> None:
    run = offline(tmp_path, settings={"ring_size": 64 * 1024, "overflow_size": 8 * 1024 * 1024})
    pid = sidecar_pid(run)
    os.kill(pid, signal.SIGSTOP)  # a stalled sidecar: the ring fills
    try:
        for i in range(5000):
            run.log({"i": i, "pad": "p" * 100})
    finally:
        os.kill(pid, signal.SIGCONT)
    assert run._ring.words[W_OVERFLOW_PEAK] > 0
    rows = history(run)
    assert [r["i"] for r in rows] == list(range(5000))
    data = runstream.read_run(run.dir)
    assert data.dropped == 0 and data.summary["_runstream/overflow_peak_bytes"] > 0


def test_ring_and_overflow_full_drops_are_counted_and_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = offline(tmp_path, settings={"ring_size": 64 * 1024, "overflow_size": 16 * 1024})
    pid = sidecar_pid(run)
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(5000):
            run.log({"i": i, "pad": "p" * 100})
        dropped = int(run._ring.words[W_DROPPED])
    finally:
        os.kill(pid, signal.SIGCONT)
    assert dropped > 0
    rows = history(run)
    got = [r["i"] for r in rows]
    assert got == list(range(len(got)))  # the oldest survive, in order; the newest were dropped
    assert len(got) + dropped == 5000
    assert "dropped" in capsys.readouterr().err
    data = runstream.read_run(run.dir)
    assert data.dropped == dropped and data.summary["_runstream/dropped_records"] == dropped
