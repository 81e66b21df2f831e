"""``runstream.sklearn``: W&B's ``wandb.sklearn`` plot helpers log their charts under W&B's keys;
the tables checked against scikit-learn, and one chart logged to a real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import metrics  # type: ignore[import-untyped, unused-ignore]
from sklearn.cluster import KMeans  # type: ignore[import-untyped, unused-ignore]
from sklearn.datasets import load_iris, make_regression  # type: ignore[import-untyped, unused-ignore]
from sklearn.linear_model import LinearRegression, LogisticRegression  # type: ignore[import-untyped, unused-ignore]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped, unused-ignore]
from sklearn.neighbors import KNeighborsClassifier  # type: ignore[import-untyped, unused-ignore]
from sklearn.tree import DecisionTreeClassifier  # type: ignore[import-untyped, unused-ignore]

import runstream
from runstream import sklearn as sk
from runstream.errors import UsageError
from runstream.media.chart import CustomChart


class Recorder:
    """Stands in for the active run: keeps what is logged."""

    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    def log(self, data: dict[str, Any], **kw: Any) -> None:
        self.logged.append(data)

    def chart(self, key: str) -> CustomChart:
        (chart,) = [row[key] for row in self.logged if key in row]
        assert isinstance(chart, CustomChart)
        return chart


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(runstream, "run", rec)
    return rec


@pytest.fixture(scope="module")
def iris() -> dict[str, Any]:
    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    model = DecisionTreeClassifier(random_state=0, max_depth=2).fit(X_train, y_train)
    return {
        "model": model,
        "X_train": X_train,
        "X_test": X_test,
        "y_train": y_train,
        "y_test": y_test,
        "y_pred": model.predict(X_test),
        "y_probas": model.predict_proba(X_test),
        "labels": ["setosa", "versicolor", "virginica"],
        "features": ["sepal length", "sepal width", "petal length", "petal width"],
    }


def rows(chart: CustomChart) -> list[dict[str, Any]]:
    return [dict(zip(chart.table.columns, r, strict=True)) for r in chart.table.data]


# --- each helper --------------------------------------------------------------------------------
def test_confusion_matrix_is_logged_with_w_and_b_columns(run: Recorder, iris: dict[str, Any]) -> None:
    sk.plot_confusion_matrix(iris["y_test"], iris["y_pred"], labels=iris["labels"])
    chart = run.chart("confusion_matrix")
    assert chart.panel_def_id == "wandb/confusion_matrix/v1"
    assert chart.fields == {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "Count"}
    assert chart.table.columns == ["Predicted", "Actual", "Count"]
    cm = metrics.confusion_matrix(iris["y_test"], iris["y_pred"])
    names = iris["labels"]
    assert chart.table.data == [[names[j], names[i], int(cm[i, j])] for i in range(3) for j in range(3)]


def test_confusion_matrix_normalizes_and_selects_classes(run: Recorder) -> None:
    y_true = ["a", "a", "a", "b", "c", "c"]
    y_pred = ["a", "b", "b", "b", "c", "a"]
    sk.plot_confusion_matrix(y_true, y_pred, normalize=True, true_labels=["a", "c"], pred_labels=["a", "b"])
    chart = run.chart("confusion_matrix")
    cm = metrics.confusion_matrix(y_true, y_pred, normalize="true").round(3)
    assert chart.table.data == [
        ["a", "a", cm[0, 0]],
        ["b", "a", cm[0, 1]],
        ["a", "c", cm[2, 0]],
        ["b", "c", cm[2, 1]],
    ]
    assert chart.table.data[0][2] == 0.333


def test_confusion_matrix_labels_name_integer_classes_seen_or_not(run: Recorder) -> None:
    sk.plot_confusion_matrix([0, 1, 1], [0, 1, 0], labels=["x", "y", "z"])
    data = rows(run.chart("confusion_matrix"))
    assert len(data) == 9 and {"Predicted": "z", "Actual": "z", "Count": 0} in data
    with pytest.raises(ValueError, match="labels names 2 classes but y_true and y_pred hold 3"):
        sk.plot_confusion_matrix(["a", "b", "c"], ["a", "b", "c"], labels=["x", "y"])
    with pytest.raises(ValueError, match="y_true has 3 labels and y_pred 2"):
        sk.plot_confusion_matrix([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="y_pred is missing"):
        sk.plot_confusion_matrix([0, 1])


def test_confusion_matrix_is_cut_to_1000_rows(run: Recorder) -> None:
    y = np.arange(40)
    with pytest.warns(UserWarning, match="1600 rows are cut to 1000"):
        sk.plot_confusion_matrix(y, y)
    assert len(run.chart("confusion_matrix").table.data) == 1000


def test_roc_and_precision_recall_are_the_plot_curves(run: Recorder, iris: dict[str, Any]) -> None:
    y, p = iris["y_test"], iris["y_probas"]
    sk.plot_roc(y, p, labels=iris["labels"], plot_micro=False)
    sk.plot_precision_recall(y, p, labels=iris["labels"], classes_to_plot=[1, 2])
    roc = run.chart("roc")
    assert roc.panel_def_id == "wandb/area-under-curve/v0" and roc.table.columns == ["class", "fpr", "tpr"]
    for k, name in enumerate(iris["labels"]):
        fpr, tpr, _ = metrics.roc_curve(y, p[:, k], pos_label=k)
        got = [(r["fpr"], r["tpr"]) for r in rows(roc) if r["class"] == name]
        np.testing.assert_allclose(got, np.stack([fpr, tpr], axis=1), atol=5e-4)
    pr = run.chart("precision_recall")
    assert pr.table.columns == ["class", "precision", "recall"]
    assert {r["class"] for r in rows(pr)} == {"versicolor", "virginica"}
    assert len(pr.table.data) == 2 * 21
    assert [list(d) for d in run.logged] == [["roc"], ["precision_recall"]]


def test_feature_importances_sorted_largest_first(run: Recorder, iris: dict[str, Any]) -> None:
    model = iris["model"]
    sk.plot_feature_importances(model, iris["features"], title="Why")
    chart = run.chart("feature_importances")
    assert chart.panel_def_id == "wandb/feature_importances/v1"
    assert chart.table.columns == ["feature_names", "importances"]
    assert chart.strings == {"title": "Why"}
    order = np.argsort(model.feature_importances_)[::-1]
    assert [r["feature_names"] for r in rows(chart)][:2] == [iris["features"][i] for i in order[:2]]
    imps = [r["importances"] for r in rows(chart)]
    assert imps == sorted(imps, reverse=True)
    np.testing.assert_allclose(sorted(imps), sorted(model.feature_importances_))


def test_feature_importances_from_coef_indices_and_max_features(run: Recorder) -> None:
    X, y = make_regression(n_samples=50, n_features=8, random_state=0)
    model = LinearRegression().fit(X, y)
    sk.plot_feature_importances(model, max_num_features=3)
    data = rows(run.chart("feature_importances"))
    order = np.argsort(model.coef_)[::-1][:3]
    assert [r["feature_names"] for r in data] == order.tolist()
    np.testing.assert_allclose([r["importances"] for r in data], model.coef_[order])


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (None, "model is missing"),
        (
            LogisticRegression(),
            "LogisticRegression has none of feature_importances_, coef_, feature_log_prob_",
        ),
        (KNeighborsClassifier(), "KNeighborsClassifier has none of"),
    ],
)
def test_feature_importances_of_a_model_without_them(run: Recorder, model: Any, message: str) -> None:
    with pytest.raises(ValueError) as e:
        sk.plot_feature_importances(model)
    assert message in str(e.value) and not run.logged


def test_feature_importances_of_a_multiclass_coef_is_refused(run: Recorder, iris: dict[str, Any]) -> None:
    model = LogisticRegression(max_iter=500).fit(iris["X_train"], iris["y_train"])
    with pytest.raises(ValueError, match=r"shape \(3, 4\); only one value per feature"):
        sk.plot_feature_importances(model)
    with pytest.raises(ValueError, match="feature_names names 2 features, the model has 4"):
        sk.plot_feature_importances(iris["model"], ["a", "b"])


def test_class_proportions_counts_each_set(run: Recorder) -> None:
    sk.plot_class_proportions([0, 0, 1, 2], [1, 1, 2], labels=["cat", "dog", "fox"])
    chart = run.chart("class_proportions")
    assert chart.panel_def_id == "wandb/class_proportions/v1"
    assert chart.table.columns == ["class", "dataset", "count"]
    assert chart.table.data == [
        ["cat", "train", 2],
        ["dog", "train", 1],
        ["fox", "train", 1],
        ["cat", "test", 0],
        ["dog", "test", 2],
        ["fox", "test", 1],
    ]
    sk.plot_class_proportions(np.array(["b", "a"]), np.array(["a"]))
    assert run.logged[-1]["class_proportions"].table.data[0] == ["a", "train", 1]
    with pytest.raises(ValueError, match="y_test is missing"):
        sk.plot_class_proportions([0, 1])


def test_learning_curve_scores_train_and_test_per_size(run: Recorder, iris: dict[str, Any]) -> None:
    from sklearn.model_selection import learning_curve  # type: ignore[import-untyped, unused-ignore]

    model = DecisionTreeClassifier(random_state=0, max_depth=2)
    X, y = iris["X_train"], iris["y_train"]
    sk.plot_learning_curve(model, X, y, cv=3, train_sizes=[0.5, 1.0])
    chart = run.chart("learning_curve")
    assert chart.panel_def_id == "wandb/learning_curve/v1"
    assert chart.table.columns == ["dataset", "score", "train_size"]
    sizes, tr, te = learning_curve(model, X, y, cv=3, train_sizes=[0.5, 1.0])[:3]
    expected = []
    for s, a, b in zip(sizes, tr.mean(axis=1), te.mean(axis=1), strict=True):
        expected += [["train", round(a, 2), int(s)], ["test", round(b, 2), int(s)]]
    assert chart.table.data == expected
    with pytest.raises(ValueError, match="plot_learning_curve: X is missing"):
        sk.plot_learning_curve(model, None, y)


def test_summary_metrics_of_a_classifier_and_a_regressor(run: Recorder, iris: dict[str, Any]) -> None:
    m, X_test, y_test = iris["model"], iris["X_test"], iris["y_test"]
    sk.plot_summary_metrics(m, iris["X_train"], iris["y_train"], X_test, y_test)
    chart = run.chart("summary_metrics")
    assert chart.panel_def_id == "wandb/metrics/v1"
    assert chart.table.columns == ["metric_name", "metric_value", "model_name"]
    pred = m.predict(X_test)
    assert chart.table.data == [
        ["accuracy_score", round(metrics.accuracy_score(y_test, pred), 2), "DecisionTreeClassifier"],
        [
            "precision",
            round(metrics.precision_score(y_test, pred, average="weighted"), 2),
            "DecisionTreeClassifier",
        ],
        [
            "recall",
            round(metrics.recall_score(y_test, pred, average="weighted"), 2),
            "DecisionTreeClassifier",
        ],
        ["f1_score", round(metrics.f1_score(y_test, pred, average="weighted"), 2), "DecisionTreeClassifier"],
    ]
    X, y = make_regression(n_samples=40, n_features=3, noise=5, random_state=1)
    reg = LinearRegression().fit(X[:30], y[:30])
    sk.plot_summary_metrics(reg, X[:30], y[:30], X[30:], y[30:])
    data = rows(run.logged[-1]["summary_metrics"])
    assert [r["metric_name"] for r in data] == ["mae", "mse", "r2_score"]
    assert data[2]["metric_value"] == round(metrics.r2_score(y[30:], reg.predict(X[30:])), 2)
    km = KMeans(n_clusters=2, n_init=1, random_state=0).fit(X)
    with pytest.raises(ValueError, match="KMeans is neither a classifier nor a regressor"):
        sk.plot_summary_metrics(km, X, y, X, y)
    with pytest.raises(ValueError, match="X_test is missing"):
        sk.plot_summary_metrics(reg, X, y)


# --- the composites -----------------------------------------------------------------------------
def test_plot_classifier_logs_each_chart_under_its_key(run: Recorder, iris: dict[str, Any]) -> None:
    d = iris
    sk.plot_classifier(
        d["model"],
        d["X_train"],
        d["X_test"],
        d["y_train"],
        d["y_test"],
        d["y_pred"],
        d["y_probas"],
        d["labels"],
        feature_names=d["features"],
        log_learning_curve=True,
    )
    assert [next(iter(r)) for r in run.logged] == [
        "feature_importances",
        "learning_curve",
        "confusion_matrix",
        "summary_metrics",
        "class_proportions",
        "roc",
        "precision_recall",
    ]
    assert {r["class"] for r in rows(run.chart("class_proportions"))} == set(d["labels"])


def test_plot_classifier_skips_importances_a_model_lacks(run: Recorder, iris: dict[str, Any]) -> None:
    d = iris
    model = KNeighborsClassifier().fit(d["X_train"], d["y_train"])
    with pytest.warns(UserWarning, match="feature importances not logged: KNeighborsClassifier has none"):
        sk.plot_classifier(
            model,
            d["X_train"],
            d["X_test"],
            d["y_train"],
            d["y_test"],
            model.predict(d["X_test"]),
            model.predict_proba(d["X_test"]),
            d["labels"],
        )
    keys = [next(iter(r)) for r in run.logged]
    assert keys == ["confusion_matrix", "summary_metrics", "class_proportions", "roc", "precision_recall"]


def test_plot_regressor_logs_summary_metrics_and_learning_curve(run: Recorder) -> None:
    X, y = make_regression(n_samples=60, n_features=3, noise=5, random_state=1)
    reg = LinearRegression().fit(X[:45], y[:45])
    sk.plot_regressor(reg, X[:45], X[45:], y[:45], y[45:])
    assert [next(iter(r)) for r in run.logged] == ["summary_metrics", "learning_curve"]
    sizes = [r["train_size"] for r in rows(run.chart("learning_curve"))]
    assert len(sizes) == 10 and sizes == sorted(sizes)


# --- no run, disabled run, lazy import ----------------------------------------------------------
def test_runstream_sklearn_is_this_module() -> None:
    assert runstream.sklearn is sk


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        ("plot_confusion_matrix", ([0, 1], [0, 1])),
        ("plot_roc", ([0, 1], np.eye(2))),
        ("plot_precision_recall", ([0, 1], np.eye(2))),
        ("plot_feature_importances", (None,)),
        ("plot_class_proportions", ([0], [1])),
        ("plot_learning_curve", (None, None, None)),
        ("plot_summary_metrics", (None,)),
        ("plot_classifier", (None,) * 7),
        ("plot_regressor", (None,) * 5),
    ],
)
def test_without_a_run_each_helper_says_to_call_init(
    monkeypatch: pytest.MonkeyPatch, fn: str, args: tuple[Any, ...]
) -> None:
    monkeypatch.setattr(runstream, "run", None)
    with pytest.raises(UsageError, match=f"runstream.sklearn.{fn}: no active run; call runstream.init"):
        getattr(sk, fn)(*args)


@pytest.mark.usefixtures("finish_active_run")
def test_in_disabled_mode_the_helpers_log_nothing(iris: dict[str, Any]) -> None:
    runstream.init(mode="disabled")
    sk.plot_confusion_matrix(iris["y_test"], iris["y_pred"])
    sk.plot_roc(iris["y_test"], iris["y_probas"])


def test_importing_runstream_sklearn_does_not_import_scikit_learn() -> None:
    code = "import sys, runstream; runstream.sklearn; runstream.plot; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


# --- logged to a real run -----------------------------------------------------------------------
@pytest.mark.usefixtures("finish_active_run")
def test_a_logged_sklearn_chart_lands_in_the_run(tmp_path: Path, iris: dict[str, Any]) -> None:
    run = runstream.init(project="sk", mode="offline", dir=tmp_path)
    sk.plot_confusion_matrix(iris["y_test"], iris["y_pred"], labels=iris["labels"])
    sk.plot_class_proportions(iris["y_train"], iris["y_test"], labels=iris["labels"])
    run.finish()
    data = runstream.read_run(run.dir)
    vis = data.config["_wandb"]["visualize"]
    assert vis["confusion_matrix"]["panel_config"]["panelDefId"] == "wandb/confusion_matrix/v1"
    assert vis["confusion_matrix"]["panel_config"]["fieldSettings"]["nPredictions"] == "Count"
    assert vis["class_proportions"]["panel_config"]["panelDefId"] == "wandb/class_proportions/v1"
    first, second = data.history
    pointer = first["confusion_matrix_table"]
    assert pointer["_type"] == "table-file" and pointer["nrows"] == 9
    stored = json.loads((Path(run.dir) / "files" / pointer["path"]).read_text())
    assert stored["columns"] == ["Predicted", "Actual", "Count"]
    assert second["class_proportions_table"]["nrows"] == 6
