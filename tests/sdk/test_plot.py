"""``runstream.plot``: W&B's chart helpers -- their tables, chart specs and argument checks, the
curves against ``sklearn.metrics``, and one chart logged to a real run."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import metrics  # type: ignore[import-untyped, unused-ignore]

import runstream
from runstream import plot
from runstream.media.chart import CustomChart


def table() -> runstream.Table:
    return runstream.Table(
        columns=["epoch", "loss", "run"], data=[[0, 1.0, "a"], [1, 0.5, "a"], [0, 0.9, "b"]]
    )


def scores(n: int = 400, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0..k-1 and noisy scores that favour the right class, with ties (rounded)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = rng.random((n, k))
    p[np.arange(n), y] += 0.6
    p = np.round(p / p.sum(axis=1, keepdims=True), 2)
    return y, p


def column(chart: CustomChart, name: str, cls: Any = None) -> list[Any]:
    t = chart.table
    i, c = t.columns.index(name), t.columns.index("class") if "class" in t.columns else None
    return [row[i] for row in t.data if cls is None or row[c] == cls]  # type: ignore[index]


# --- charts of a user's table -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "panel", "fields", "strings"),
    [
        (
            lambda t: plot.line(t, "epoch", "loss", stroke="run", title="Loss"),
            "wandb/line/v0",
            {"x": "epoch", "y": "loss", "stroke": "run"},
            {"title": "Loss"},
        ),
        (
            lambda t: plot.line(t, "epoch", "loss"),
            "wandb/line/v0",
            {"x": "epoch", "y": "loss", "stroke": None},
            {"title": ""},
        ),
        (
            lambda t: plot.scatter(t, "epoch", "loss", title="S"),
            "wandb/scatter/v0",
            {"x": "epoch", "y": "loss"},
            {"title": "S"},
        ),
        (
            lambda t: plot.bar(t, "run", "loss", title="B"),
            "wandb/bar/v0",
            {"label": "run", "value": "loss"},
            {"title": "B"},
        ),
        (
            lambda t: plot.histogram(t, "loss", title="H"),
            "wandb/histogram/v0",
            {"value": "loss"},
            {"title": "H"},
        ),
    ],
)
def test_table_charts_name_their_columns_in_the_w_and_b_spec(
    make: Any, panel: str, fields: dict[str, Any], strings: dict[str, Any]
) -> None:
    t = table()
    chart = make(t)
    assert isinstance(chart, CustomChart) and chart.table is t
    assert (chart.panel_def_id, chart.fields, chart.strings) == (panel, fields, strings)
    cfg = chart.spec("k_table")
    assert cfg["panel_type"] == "Vega2"
    pc = cfg["panel_config"]
    assert (pc["panelDefId"], pc["fieldSettings"], pc["stringSettings"]) == (panel, fields, strings)
    assert pc["transform"] == {"name": "tableWithLeafColNames"}
    assert '"tableKey", "value": "k_table"' in json.dumps(pc["userQuery"])
    assert chart.table_key("k") == "k_table"


def test_runstream_plot_is_this_module() -> None:
    assert runstream.plot is plot


def test_split_table_moves_the_table_under_custom_chart_tables() -> None:
    chart = plot.scatter(table(), "epoch", "loss", split_table=True)
    assert chart.table_key("k") == "Custom Chart Tables/k_table"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: plot.line(t, "step", "loss"), "x='step' is not a column of the table"),
        (lambda t: plot.line(t, "epoch", "acc"), "y='acc' is not a column"),
        (lambda t: plot.line(t, "epoch", "loss", stroke="model"), "stroke='model' is not a column"),
        (lambda t: plot.scatter(t, "epoch", "nope"), "scatter: y='nope'"),
        (lambda t: plot.bar(t, "name", "loss"), "bar: label='name'"),
        (lambda t: plot.histogram(t, "x"), "histogram: value='x' is not a column"),
    ],
)
def test_a_column_not_in_the_table_is_named(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match="columns are \\['epoch', 'loss', 'run'\\]") as e:
        call(table())
    assert message in str(e.value)


def test_a_table_that_is_not_a_table_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"table must be a runstream\.Table, not list"):
        plot.line([[1, 2]], "x", "y")  # type: ignore[arg-type]


# --- line_series --------------------------------------------------------------------------------
def test_line_series_makes_one_row_per_point_shared_xs() -> None:
    chart = plot.line_series(
        [0, 1, 2], [[10, 11, 12], np.array([20.0, 21.0, 22.0])], title="T", xname="epoch"
    )
    assert chart.table.columns == ["step", "lineKey", "lineVal"]
    assert chart.table.data == [
        [0, "line_0", 10],
        [1, "line_0", 11],
        [2, "line_0", 12],
        [0, "line_1", 20.0],
        [1, "line_1", 21.0],
        [2, "line_1", 22.0],
    ]
    assert chart.panel_def_id == "wandb/lineseries/v0"
    assert chart.fields == {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"}
    assert chart.strings == {"title": "T", "xname": "epoch"}


def test_line_series_takes_xs_per_line_and_keys() -> None:
    chart = plot.line_series([[0, 1], [5]], [[1, 2], [3]], keys=["a", "b"])
    assert chart.table.data == [[0, "a", 1], [1, "a", 2], [5, "b", 3]]
    chart = plot.line_series(np.arange(3), np.ones((2, 3)), keys=("u", "v"))
    assert [r[1] for r in chart.table.data] == ["u"] * 3 + ["v"] * 3


@pytest.mark.parametrize(
    ("args", "kw", "message"),
    [
        (([[0, 1], [0, 1], [0]], [[1, 2], [3, 4]]), {}, "xs has 3 series and ys 2"),
        (([0, 1], [[1, 2], [3, 4]]), {"keys": ["a"]}, "1 keys for 2 lines"),
        (([0, 1, 2], [[1, 2]]), {}, "line 'line_0' has 3 x values (xs) and 2 y values (ys)"),
        (([0], []), {}, "ys is empty"),
        (([0], 5), {}, "ys must be a sequence"),
    ],
)
def test_line_series_rejects_mismatched_series(args: Any, kw: Any, message: str) -> None:
    with pytest.raises(ValueError) as e:
        plot.line_series(*args, **kw)
    assert message in str(e.value)


# --- confusion_matrix ---------------------------------------------------------------------------
def test_confusion_matrix_counts_match_sklearn() -> None:
    y, p = scores(k=4)
    preds = p.argmax(axis=1)
    chart = plot.confusion_matrix(y_true=y, preds=preds, title="CM")
    assert chart.panel_def_id == "wandb/confusion_matrix/v1"
    assert chart.fields == {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
    assert chart.strings == {"title": "CM"}
    assert chart.table.columns == ["Actual", "Predicted", "nPredictions"]
    expected = metrics.confusion_matrix(y, preds)
    names = [f"Class_{i + 1}" for i in range(4)]
    assert chart.table.data == [[names[i], names[j], int(expected[i, j])] for i in range(4) for j in range(4)]
    # probs: the prediction is the argmax
    assert plot.confusion_matrix(p, y).table.data == chart.table.data


def test_confusion_matrix_names_index_classes_and_counts_unseen_ones() -> None:
    chart = plot.confusion_matrix(y_true=[0, 0, 1], preds=[0, 1, 1], class_names=["cat", "dog", "fox"])
    rows = {(a, p): n for a, p, n in chart.table.data}
    assert (
        len(rows) == 9
        and rows[("cat", "cat")] == 1
        and rows[("cat", "dog")] == 1
        and rows[("dog", "dog")] == 1
    )
    assert rows[("fox", "fox")] == 0


def test_confusion_matrix_of_string_classes_sorts_them() -> None:
    chart = plot.confusion_matrix(y_true=["b", "a", "b"], preds=["b", "b", "a"])
    assert chart.table.data == [
        ["Class_1", "Class_1", 0],
        ["Class_1", "Class_2", 1],
        ["Class_2", "Class_1", 1],
        ["Class_2", "Class_2", 1],
    ]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"probs": np.eye(2), "y_true": [0, 1], "preds": [0, 1]}, "give probs or preds, not both"),
        ({"y_true": [0, 1]}, "give probs (class probabilities) or preds"),
        ({"preds": [0, 1]}, "y_true is missing"),
        ({"preds": [0, 1, 1], "y_true": [0, 1]}, "preds has 3 predictions and y_true 2 labels"),
        ({"probs": np.eye(3), "y_true": [0, 1]}, "probs has 3 predictions and y_true 2 labels"),
        ({"probs": np.array([0.1, 0.9]), "y_true": [0, 1]}, "probs must be 2-D"),
        (
            {"preds": [0, 2], "y_true": [0, 1], "class_names": ["a", "b"]},
            "preds holds [2], not class indices 0..1",
        ),
        ({"preds": [0, 1], "y_true": ["x", 1], "class_names": ["a", "b"]}, "y_true holds ['x']"),
    ],
)
def test_confusion_matrix_rejects_bad_arguments(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as e:
        plot.confusion_matrix(**kw)
    assert message in str(e.value)


# --- roc_curve ----------------------------------------------------------------------------------
def test_roc_curve_matches_sklearn_per_class() -> None:
    y, p = scores()
    chart = plot.roc_curve(y, p, title="R")
    assert chart.panel_def_id == "wandb/area-under-curve/v0"
    assert chart.fields == {"x": "fpr", "y": "tpr", "class": "class"}
    assert chart.strings == {
        "title": "R",
        "x-axis-title": "False positive rate",
        "y-axis-title": "True positive rate",
    }
    assert chart.table.columns == ["class", "fpr", "tpr"]
    for k in range(3):
        fpr, tpr, _ = metrics.roc_curve(y, p[:, k], pos_label=k)
        assert len(column(chart, "fpr", k)) == len(fpr)
        np.testing.assert_allclose(column(chart, "fpr", k), fpr, atol=5e-4)
        np.testing.assert_allclose(column(chart, "tpr", k), tpr, atol=5e-4)
    assert all(v == round(v, 3) for v in column(chart, "fpr") + column(chart, "tpr"))


def test_roc_curve_names_classes_and_plots_the_chosen_ones() -> None:
    y, p = scores()
    chart = plot.roc_curve(y, p, labels=["cat", "dog", "fox"], classes_to_plot=[2, 0])
    assert list(dict.fromkeys(column(chart, "class"))) == ["cat", "fox"]
    fpr, _, _ = metrics.roc_curve(y, p[:, 2], pos_label=2)
    np.testing.assert_allclose(column(chart, "fpr", "fox"), fpr, atol=5e-4)


def test_roc_curve_of_string_classes_and_binary_scores() -> None:
    y = np.array(["no", "yes", "yes", "no", "yes"])
    s = np.array([0.1, 0.8, 0.4, 0.35, 0.9])
    chart = plot.roc_curve(y, s)  # 1-D: the second class' ("yes") scores
    fpr, tpr, _ = metrics.roc_curve(y, s, pos_label="yes")
    np.testing.assert_allclose(column(chart, "fpr", "yes"), fpr, atol=5e-4)
    np.testing.assert_allclose(column(chart, "tpr", "yes"), tpr, atol=5e-4)
    assert set(column(chart, "class")) == {"no", "yes"}


@pytest.mark.parametrize("fn", [plot.roc_curve, plot.pr_curve])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None, np.eye(2)), "y_true is missing"),
        (([0, 1], None), "y_probas is missing"),
        (([0, 1, 1], np.eye(2)), "y_probas has 2 rows and y_true 3 labels"),
        (([0, 1, 2], np.ones((3, 2))), "y_probas has 2 columns but y_true has 3 classes"),
        (([], np.ones((0, 2))), "y_true must be a non-empty 1-D"),
        (([0, 1, 2], np.ones((3, 3, 1))), "y_probas must be 2-D"),
    ],
)
def test_curves_reject_bad_arguments(fn: Any, args: Any, message: str) -> None:
    with pytest.raises(ValueError) as e:
        fn(*args)
    assert message in str(e.value)


def test_curves_reject_labels_naming_too_few_classes() -> None:
    y, p = scores()
    with pytest.raises(ValueError, match="labels names 2 classes, but y_true holds class 2"):
        plot.roc_curve(y, p, labels=["a", "b"])


def test_roc_curve_caps_rows_at_10000_keeping_each_class_ends() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 30_000)
    s = rng.random(30_000)
    p = np.stack([1 - s, s], axis=1)
    chart = plot.roc_curve(y, p)
    again = plot.roc_curve(y, p)
    assert 9_000 < len(chart.table.data) <= 10_000
    assert chart.table.data == again.table.data  # deterministic
    for k in (0, 1):
        f, t = column(chart, "fpr", k), column(chart, "tpr", k)
        assert (f[0], t[0], f[-1], t[-1]) == (0.0, 0.0, 1.0, 1.0)
        assert f == sorted(f)  # the curve's order is kept
    n0, n1 = len(column(chart, "fpr", 0)), len(column(chart, "fpr", 1))
    assert abs(n0 - n1) < 200  # each class keeps its share


# --- pr_curve -----------------------------------------------------------------------------------
def interpolated(y: np.ndarray, s: np.ndarray, pos: Any, n: int) -> np.ndarray:
    """sklearn's curve, precision interpolated (best at this recall or more), at n recalls 1..0."""
    precision, recall, _ = metrics.precision_recall_curve(y, s, pos_label=pos)
    precision = np.maximum.accumulate(precision)[::-1]
    recall = recall[::-1]
    return np.array([precision[np.searchsorted(recall, r, side="left")] for r in np.linspace(0, 1, n)[::-1]])


def test_pr_curve_interpolates_sklearns_curve_at_evenly_spaced_recalls() -> None:
    y, p = scores()
    chart = plot.pr_curve(y, p, title="PR")
    assert chart.panel_def_id == "wandb/area-under-curve/v0"
    assert chart.fields == {"x": "recall", "y": "precision", "class": "class"}
    assert chart.strings == {"title": "PR", "x-axis-title": "Recall", "y-axis-title": "Precision"}
    assert chart.table.columns == ["class", "precision", "recall"]
    assert len(chart.table.data) == 3 * 21
    for k in range(3):
        assert column(chart, "recall", k) == [round(r, 3) for r in np.linspace(0, 1, 21)[::-1]]
        np.testing.assert_allclose(column(chart, "precision", k), interpolated(y, p[:, k], k, 21), atol=5e-4)
        # the interpolated precision never falls as recall falls
        prec = column(chart, "precision", k)
        assert all(a <= b for a, b in itertools.pairwise(prec))
    assert all(v == round(v, 3) for v in column(chart, "precision"))


def test_pr_curve_interp_size_labels_and_classes_to_plot() -> None:
    y, p = scores(k=4)
    chart = plot.pr_curve(y, p, labels=["a", "b", "c", "d"], classes_to_plot=[1], interp_size=5)
    assert set(column(chart, "class")) == {"b"}
    assert column(chart, "recall") == [1.0, 0.75, 0.5, 0.25, 0.0]
    np.testing.assert_allclose(column(chart, "precision"), interpolated(y, p[:, 1], 1, 5), atol=5e-4)
    with pytest.raises(ValueError, match="interp_size must be an int of 2 or more"):
        plot.pr_curve(y, p, interp_size=1)


def test_pr_curve_caps_rows_at_10000() -> None:
    k = 600  # 600 classes x 21 points
    rng = np.random.default_rng(5)
    y = np.r_[np.arange(k), rng.integers(0, k, 2000)]
    p = rng.random((len(y), k))
    chart = plot.pr_curve(y, p)
    assert len(chart.table.data) <= 10_000
    assert len(set(column(chart, "class"))) == k  # every class keeps some points
    assert chart.table.data == plot.pr_curve(y, p).table.data


# --- logged to a run ----------------------------------------------------------------------------
@pytest.mark.usefixtures("finish_active_run")
def test_a_logged_chart_puts_its_spec_in_the_config_and_its_table_in_history(tmp_path: Path) -> None:
    y, p = scores()
    run = runstream.init(project="plots", mode="offline", dir=tmp_path)
    run.log({"roc": plot.roc_curve(y, p, labels=["a", "b", "c"])})
    run.finish()
    data = runstream.read_run(run.dir)
    spec = data.config["_wandb"]["visualize"]["roc"]
    assert spec["panel_type"] == "Vega2"
    assert spec["panel_config"]["panelDefId"] == "wandb/area-under-curve/v0"
    assert spec["panel_config"]["fieldSettings"] == {"x": "fpr", "y": "tpr", "class": "class"}
    assert '"value": "roc_table"' in json.dumps(spec["panel_config"]["userQuery"])
    (row,) = data.history
    pointer = row["roc_table"]
    assert pointer["_type"] == "table-file"
    stored = json.loads((Path(run.dir) / "files" / pointer["path"]).read_text())
    assert stored["columns"] == ["class", "fpr", "tpr"]
    assert pointer["nrows"] == len(stored["data"]) > 3
