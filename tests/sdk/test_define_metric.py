"""``define_metric`` and the summary rules: what a run's stored summary holds once metrics are
defined (read back with ``read_run`` and from ``files/summary.json``), glob names, step metrics,
``hidden``, ``"none"``, ``best`` with a goal, resume, bad arguments; and the summary rules that
do not depend on it (nested values read back nested, a value set by hand stays pinned)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import runstream
from runstream.format import record as rec
from runstream.format.journal_read import read_journal
from runstream.metric import Metric, MetricError

pytestmark = pytest.mark.usefixtures("finish_active_run")

LOSSES = [0.9, 0.4, 0.7, 0.2, 0.5]


def offline(tmp_path: Path, **kw: object) -> runstream.Run:
    return runstream.init(mode="offline", dir=tmp_path, project="metrics", **kw)  # type: ignore[arg-type, return-value]


def test_min_max_mean_first_last_summaries_in_read_run_and_summary_json(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.define_metric("loss", summary="min,max")
    run.define_metric("acc", summary="mean,first,last")
    for i, loss in enumerate(LOSSES):
        run.log({"loss": loss, "acc": float(i)})
    run.finish()
    data = runstream.read_run(run.dir)
    assert data.summary["loss"] == {"min": 0.2, "max": 0.9}  # no "last": only what was asked for
    assert data.summary["acc"] == {"mean": 2.0, "first": 0.0, "last": 4.0}
    assert data.metrics["loss"] == {"name": "loss", "summary": ["min", "max"]}
    # the sidecar's summary.json (the file uploaded with the run) follows the same rules
    on_disk = json.loads((Path(run.dir) / "files" / "summary.json").read_text())
    assert on_disk["loss"] == {"min": 0.2, "max": 0.9} and on_disk["acc"]["mean"] == 2.0
    # the history itself is untouched
    assert [r["loss"] for r in data.history] == LOSSES


def test_module_level_define_metric_forwards_to_the_run_and_needs_init(tmp_path: Path) -> None:
    with pytest.raises(runstream.UsageError, match=r"before runstream\.init"):
        runstream.define_metric("loss", summary="min")
    run = offline(tmp_path)
    m = runstream.define_metric("loss", summary="max", goal="minimize")
    assert isinstance(m, Metric) and m.name == "loss" and m.summary == ("max",) and m.goal == "minimize"
    for loss in LOSSES:
        runstream.log({"loss": loss})
    run.finish()
    assert runstream.read_run(run.dir).summary["loss"] == {"max": 0.9}


def test_a_glob_covers_every_key_under_its_prefix_and_the_longest_glob_wins(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.define_metric("train/*", summary="min")
    run.define_metric("train/acc*", summary="max")
    run.define_metric("train/lr", summary="last")  # a key's own definition beats any glob
    for i, loss in enumerate(LOSSES):
        run.log({"train": {"loss": loss, "acc": i / 10, "lr": 1.0 / (i + 1)}, "other": loss})
    run.finish()
    s = runstream.read_run(run.dir).summary
    assert s["train/loss"] == {"min": 0.2}
    assert s["train/acc"] == {"max": 0.4}
    assert s["train/lr"] == {"last": 0.2}
    assert s["other"] == 0.5  # not covered: its last value, as without define_metric
    assert s["_step"] == 4  # keys starting with "_" are never covered


def test_summary_none_removes_the_key_and_best_follows_the_goal(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.define_metric("noise", summary="none")
    run.define_metric("val/acc", summary="best", goal="maximize")
    run.define_metric("val/loss", summary="best,last", goal="min")
    for i, loss in enumerate(LOSSES):
        run.log({"noise": i, "val": {"acc": 1 - loss, "loss": loss}})
    assert "noise" not in run.summary  # hidden in the training process too
    run.finish()
    s = runstream.read_run(run.dir).summary
    assert "noise" not in s
    assert s["val/acc"] == {"best": pytest.approx(0.8)}
    assert s["val/loss"] == {"best": 0.2, "last": 0.5}


def test_step_metric_is_filled_into_rows_that_lack_it_and_hidden_is_kept(tmp_path: Path) -> None:
    run = offline(tmp_path)
    epoch = run.define_metric("epoch", hidden=True)
    m = run.define_metric("val/*", step_metric=epoch)  # a Metric stands for its name, as in W&B
    assert m.step_metric == "epoch" and m.step_sync is True  # W&B's default with a step metric
    run.define_metric("raw", step_metric="epoch", step_sync=False)
    run.log({"val": {"acc": 0.1}})  # before any epoch: W&B fills 0
    run.log({"epoch": 1})
    run.log({"val": {"acc": 0.5}, "raw": 1})
    run.log({"epoch": 2, "val": {"acc": 0.6}})  # given: kept as logged
    run.log({"raw": 2})
    run.finish()
    data = runstream.read_run(run.dir)
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in data.history]
    assert rows == [
        {"val/acc": 0.1, "epoch": 0},
        {"epoch": 1},
        {"val/acc": 0.5, "raw": 1, "epoch": 1},
        {"epoch": 2, "val/acc": 0.6},
        {"raw": 2},  # step_sync=False: not filled
    ]
    assert data.metrics["epoch"] == {"name": "epoch", "hidden": True}
    assert data.metrics["val/*"] == {"name": "val/*", "step_metric": "epoch", "step_sync": True}


def test_calls_merge_unless_overwrite(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.define_metric("loss", summary="min", hidden=True)
    run.define_metric("loss", summary="max", step_metric="epoch", step_sync=False)
    run.define_metric("acc", summary="min", hidden=True)
    run.define_metric("acc", summary="max", overwrite=True)
    for loss in LOSSES:
        run.log({"loss": loss, "acc": loss})
    run.finish()
    data = runstream.read_run(run.dir)
    assert data.metrics["loss"] == {
        "name": "loss",
        "summary": ["min", "max"],
        "hidden": True,
        "step_metric": "epoch",
    }
    assert data.metrics["acc"] == {"name": "acc", "summary": ["max"]}
    assert data.summary["loss"] == {"min": 0.2, "max": 0.9} and data.summary["acc"] == {"max": 0.9}


def test_strings_and_nan_do_not_count_for_min_max_mean(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.define_metric("x", summary="min,max,mean,first,last")
    for v in ("warmup", 3, float("nan"), 1.0, True):
        run.log({"x": v})
    run.finish()
    assert runstream.read_run(run.dir).summary["x"] == {
        "first": "warmup",
        "last": True,
        "min": 1.0,
        "max": 3.0,
        "mean": 2.0,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "non-empty"),
        ({"name": 3}, "name must be a str"),
        ({"name": "a*b"}, "only end with"),
        ({"name": "loss", "summary": "min,median"}, "'median' is not one of"),
        ({"name": "loss", "summary": ["min"]}, "summary must be a str"),
        ({"name": "loss", "goal": "up"}, "goal must be 'minimize' or 'maximize'"),
        ({"name": "loss", "summary": "best"}, "needs goal"),
        ({"name": "loss", "hidden": "yes"}, "hidden must be a bool"),
    ],
)
def test_bad_arguments_raise_naming_what_is_wrong_and_record_nothing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    run = offline(tmp_path)
    with pytest.raises(MetricError, match=message) as err:
        run.define_metric(**kwargs)  # type: ignore[arg-type]
    assert isinstance(err.value, runstream.Error) and isinstance(err.value, ValueError)
    run.log({"loss": 1.0})
    run.finish()
    data = runstream.read_run(run.dir)
    assert data.metrics == {} and data.summary["loss"] == 1.0


def test_definitions_made_before_a_resume_still_apply_after_it(tmp_path: Path) -> None:
    run = offline(tmp_path, id="metres01")
    run.define_metric("loss", summary="min,last")
    run.define_metric("noise", summary="none")
    for loss in LOSSES[:3]:
        run.log({"loss": loss, "noise": 1})
    run.finish()
    again = offline(tmp_path, id="metres01", resume="allow")
    for loss in LOSSES[3:]:
        again.log({"loss": loss, "noise": 2})
    assert "noise" not in again.summary and again.summary["loss"] == 0.5  # in force in-process too
    again.finish()
    data = runstream.read_run(run.dir)
    assert data.summary["loss"] == {"min": 0.2, "last": 0.5} and "noise" not in data.summary
    assert [r["loss"] for r in data.history] == LOSSES
    assert list(data.metrics) == ["loss", "noise"]  # the resume wrote no second copy of them
    kinds = [r.kind for r in read_journal(Path(run.dir) / "journal").iter_records()]
    assert kinds.count(rec.KIND_METRIC) == 2


def test_a_nested_summary_update_reads_back_nested(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.summary.update({"nested": {"a": 1, "b": {"c": 2}}})
    assert run.summary["nested"] == {"a": 1, "b": {"c": 2}}
    assert run.summary["nested/b/c"] == 2 and "nested" in run.summary
    assert run.summary.get("missing") is None
    with pytest.raises(KeyError):
        run.summary["nest"]  # a prefix of a key, not a key
    run.finish()
    s = runstream.read_run(run.dir).summary
    assert s["nested"] == {"a": 1, "b": {"c": 2}}
    assert "nested/a" in list(s) and "nested" not in list(s)  # flat for display


def test_a_nested_summary_value_can_be_deleted_whole(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.summary.update({"nested": {"a": 1, "b": 2}, "keep": 3})
    del run.summary["nested"]
    assert "nested" not in run.summary and run.summary["keep"] == 3
    run.finish()
    s = runstream.read_run(run.dir).summary
    assert "nested" not in s and "nested/a" not in s and s["keep"] == 3


def test_a_summary_value_set_by_hand_is_no_longer_changed_by_log_nor_by_define_metric(tmp_path: Path) -> None:
    """The seeds' rule, kept on purpose (docs/metrics.md): wandb 0.31 lets a later ``log``
    overwrite a hand-set value; runstream keeps it until it is deleted."""
    run = offline(tmp_path)
    run.define_metric("loss", summary="min")
    run.log({"loss": 0.5, "acc": 0.1})
    run.summary["loss"] = 123.0
    run.summary["acc"] = 0.99
    run.log({"loss": 0.1, "acc": 0.2})
    assert run.summary["loss"] == 123.0 and run.summary["acc"] == 0.99
    run.log({"loss": 0.3, "acc": 0.3})
    run.finish()
    s = runstream.read_run(run.dir).summary
    assert s["loss"] == 123.0 and s["acc"] == 0.99


def test_deleting_a_pinned_key_does_not_bring_log_back(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log({"acc": 0.1})
    run.summary["acc"] = 0.99
    del run.summary["acc"]
    run.log({"acc": 0.2})
    run.finish()
    assert "acc" not in runstream.read_run(run.dir).summary
