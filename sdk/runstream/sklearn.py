"""``runstream.sklearn``: W&B's ``wandb.sklearn`` plot helpers (docs/media.md, "Charts").

Each ``plot_*`` function computes a chart and logs it to the active run under W&B's key::

    runstream.init(project="iris")
    model.fit(X_train, y_train)
    runstream.sklearn.plot_confusion_matrix(y_test, model.predict(X_test), labels=names)

The chart is logged as a :class:`~runstream.media.chart.CustomChart`: under the key
(``"confusion_matrix"``...) its table lands at ``key + "_table"`` and the chart's spec (its W&B
``panelDefId``, ``"wandb/confusion_matrix/v1"``...) in the run's config at
``_wandb.visualize.<key>``.  W&B logs these charts under the key itself with the table; the
dashboard draws both the same.  Tables are cut to 1000 rows, as W&B's.

scikit-learn is imported only by the functions that need it (``plot_learning_curve``,
``plot_summary_metrics`` and the composites), never when this module is imported.  Not ported
from W&B: the calibration curve, outlier candidates, residuals, elbow and silhouette plots;
``plot_classifier`` and ``plot_regressor`` log the charts this module has.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from runstream import plot
from runstream.errors import UsageError
from runstream.media.chart import CustomChart
from runstream.media.table import Table

__all__ = [
    "plot_class_proportions",
    "plot_classifier",
    "plot_confusion_matrix",
    "plot_feature_importances",
    "plot_learning_curve",
    "plot_precision_recall",
    "plot_regressor",
    "plot_roc",
    "plot_summary_metrics",
]

CHART_LIMIT = 1000  # rows of a chart's table (W&B's ``chart_limit``)


def plot_confusion_matrix(
    y_true: Any = None,
    y_pred: Any = None,
    labels: Sequence[Any] | None = None,
    true_labels: Sequence[Any] | None = None,
    pred_labels: Sequence[Any] | None = None,
    normalize: bool = False,
) -> None:
    """Log a confusion matrix under ``"confusion_matrix"`` (``wandb/confusion_matrix/v1``).

    The table has the columns ``["Predicted", "Actual", "Count"]``, one row per pair of classes
    (actual class major).

    Args:
        y_true: The true classes.
        y_pred: The predicted classes, as many.
        labels: Names for the classes, in the order of the sorted distinct values of ``y_true``
            and ``y_pred`` (or, for integer classes, ``labels[c]`` names class ``c``).
        true_labels: Show only these actual classes (names, as in ``labels``).
        pred_labels: Show only these predicted classes (names, as in ``labels``).
        normalize: Divide each actual class' row by its total (rounded to 3 decimals).

    Raises:
        UsageError: No run is active.
        ValueError: ``y_true`` or ``y_pred`` missing, or of different lengths; ``labels`` not
            naming every class.
    """
    run = _active_run("plot_confusion_matrix")
    chart = _confusion_matrix(y_true, y_pred, labels, true_labels, pred_labels, normalize)
    run.log({"confusion_matrix": chart})


def plot_roc(
    y_true: Any = None,
    y_probas: Any = None,
    labels: Sequence[str] | None = None,
    plot_micro: bool = True,
    plot_macro: bool = True,
    classes_to_plot: Any = None,
) -> None:
    """Log ROC curves, one per class, under ``"roc"``: :func:`runstream.plot.roc_curve`'s chart.

    Args:
        y_true: The true classes.
        y_probas: Scores, shape ``(n, n_classes)``, columns in the order of the sorted classes.
        labels: Names of integer classes: class ``c`` is named ``labels[c]``.
        plot_micro: Accepted for W&B compatibility; ignored (W&B ignores it too).
        plot_macro: Accepted for W&B compatibility; ignored (W&B ignores it too).
        classes_to_plot: The classes to draw; all by default.

    Raises:
        UsageError: No run is active.
        ValueError: As :func:`runstream.plot.roc_curve`.
    """
    run = _active_run("plot_roc")
    run.log({"roc": plot.roc_curve(y_true, y_probas, labels, classes_to_plot)})


def plot_precision_recall(
    y_true: Any = None,
    y_probas: Any = None,
    labels: Sequence[str] | None = None,
    plot_micro: bool = True,
    classes_to_plot: Any = None,
) -> None:
    """Log precision-recall curves under ``"precision_recall"``: :func:`runstream.plot.pr_curve`'s
    chart.

    Args:
        y_true: The true classes.
        y_probas: Scores, shape ``(n, n_classes)``, columns in the order of the sorted classes.
        labels: Names of integer classes: class ``c`` is named ``labels[c]``.
        plot_micro: Accepted for W&B compatibility; ignored (W&B ignores it too).
        classes_to_plot: The classes to draw; all by default.

    Raises:
        UsageError: No run is active.
        ValueError: As :func:`runstream.plot.pr_curve`.
    """
    run = _active_run("plot_precision_recall")
    run.log({"precision_recall": plot.pr_curve(y_true, y_probas, labels, classes_to_plot)})


def plot_feature_importances(
    model: Any = None,
    feature_names: Sequence[str] | None = None,
    title: str = "Feature Importance",
    max_num_features: int | None = 50,
) -> None:
    """Log a fitted model's feature importances under ``"feature_importances"``
    (``wandb/feature_importances/v1``).

    The importances are the model's ``feature_importances_``, else ``coef_``, else
    ``feature_log_prob_`` (one value per feature), sorted largest first.  The table has the
    columns ``["feature_names", "importances"]``.

    Args:
        model: A fitted estimator.
        feature_names: The features' names, in the model's order (their indices by default).
        title: The chart's title.
        max_num_features: Keep only this many most important features (``None``: all).

    Raises:
        UsageError: No run is active.
        ValueError: No ``model``; a model with none of those attributes (not fitted, or a kind
            without importances); importances not one per feature; ``feature_names`` of
            another length.
    """
    run = _active_run("plot_feature_importances")
    chart, why = _feature_importances(model, feature_names, title, max_num_features)
    if chart is None:
        raise ValueError(f"runstream.sklearn.plot_feature_importances: {why}")
    run.log({"feature_importances": chart})


def plot_class_proportions(
    y_train: Any = None, y_test: Any = None, labels: Sequence[str] | None = None
) -> None:
    """Log how many samples of each class the train and test sets hold, under
    ``"class_proportions"`` (``wandb/class_proportions/v1``).

    The table has the columns ``["class", "dataset", "count"]``: each class' train row, then
    each class' test row.

    Args:
        y_train: The training set's classes.
        y_test: The test set's classes.
        labels: Names of integer classes: class ``c`` is named ``labels[c]``.

    Raises:
        UsageError: No run is active.
        ValueError: ``y_train`` or ``y_test`` missing; ``labels`` naming too few classes.
    """
    run = _active_run("plot_class_proportions")
    run.log({"class_proportions": _class_proportions(y_train, y_test, labels)})


def plot_learning_curve(
    model: Any = None,
    X: Any = None,
    y: Any = None,
    cv: Any = None,
    shuffle: bool = False,
    random_state: Any = None,
    train_sizes: Any = None,
    n_jobs: int | None = 1,
    scoring: Any = None,
) -> None:
    """Log the model's train and cross-validation scores against the training set's size, under
    ``"learning_curve"`` (``wandb/learning_curve/v1``); needs scikit-learn.

    The model is refit by ``sklearn.model_selection.learning_curve``.  The table has the
    columns ``["dataset", "score", "train_size"]``: a ``"train"`` and a ``"test"`` row per size,
    scores the mean over the folds rounded to 2 decimals.

    Args:
        model: An estimator (fitted or not).
        X: The features.
        y: The targets.
        cv: The cross-validation (``sklearn``'s ``cv``: 5 folds by default).
        shuffle: Shuffle the training data before taking prefixes of it.
        random_state: The seed of ``shuffle``.
        train_sizes: Relative or absolute training set sizes (``linspace(0.1, 1, 5)`` default).
        n_jobs: Parallel jobs.
        scoring: The score (the model's ``score`` by default).

    Raises:
        UsageError: No run is active.
        ValueError: ``model``, ``X`` or ``y`` missing; what scikit-learn raises.
        ImportError: scikit-learn is not installed.
    """
    run = _active_run("plot_learning_curve")
    chart = _learning_curve(model, X, y, cv, shuffle, random_state, train_sizes, n_jobs, scoring)
    run.log({"learning_curve": chart})


def plot_summary_metrics(
    model: Any = None, X: Any = None, y: Any = None, X_test: Any = None, y_test: Any = None
) -> None:
    """Log the fitted model's scores on the test set under ``"summary_metrics"``
    (``wandb/metrics/v1``); needs scikit-learn.

    A classifier's: ``accuracy_score`` and weighted ``precision``, ``recall``, ``f1_score``; a
    regressor's: ``mae``, ``mse``, ``r2_score``; rounded to 2 decimals.  The table has the
    columns ``["metric_name", "metric_value", "model_name"]``.

    Args:
        model: A fitted classifier or regressor.
        X: The training features (accepted as W&B's; unused).
        y: The training targets (accepted as W&B's; unused).
        X_test: The test features.
        y_test: The test targets.

    Raises:
        UsageError: No run is active.
        ValueError: ``model``, ``X_test`` or ``y_test`` missing; a model neither classifier nor
            regressor.
        ImportError: scikit-learn is not installed.
    """
    run = _active_run("plot_summary_metrics")
    run.log({"summary_metrics": _summary_metrics(model, X_test, y_test)})


def plot_classifier(
    model: Any,
    X_train: Any,
    X_test: Any,
    y_train: Any,
    y_test: Any,
    y_pred: Any,
    y_probas: Any,
    labels: Sequence[str] | None = None,
    is_binary: bool = False,
    model_name: str = "Classifier",
    feature_names: Sequence[str] | None = None,
    log_learning_curve: bool = False,
) -> None:
    """Log a fitted classifier's charts, each under its own key and step: feature importances
    (skipped, with a warning, for a model without them), the learning curve (with
    ``log_learning_curve``), confusion matrix, summary metrics, class proportions, ROC and
    precision-recall curves.  W&B also logs a calibration curve; runstream does not (yet).

    Args:
        model: The fitted classifier.
        X_train: The training features.
        X_test: The test features.
        y_train: The training classes.
        y_test: The test classes.
        y_pred: The model's predictions on ``X_test``.
        y_probas: The model's class probabilities on ``X_test`` (``predict_proba``).
        labels: Names of the classes.
        is_binary: Accepted for W&B compatibility; unused.
        model_name: Accepted for W&B compatibility; unused.
        feature_names: The features' names.
        log_learning_curve: Also fit and log the learning curve (slow: refits the model).

    Raises:
        UsageError: No run is active.
        ValueError: As the single ``plot_*`` functions.
        ImportError: scikit-learn is not installed.
    """
    run = _active_run("plot_classifier")
    chart, why = _feature_importances(model, feature_names, "Feature Importance", 50)
    if chart is None:
        warnings.warn(
            f"runstream.sklearn.plot_classifier: feature importances not logged: {why}", stacklevel=2
        )
    else:
        run.log({"feature_importances": chart})
    if log_learning_curve:
        run.log({"learning_curve": _learning_curve(model, X_train, y_train)})
    run.log({"confusion_matrix": _confusion_matrix(y_test, y_pred, labels)})
    run.log({"summary_metrics": _summary_metrics(model, X_test, y_test)})
    run.log({"class_proportions": _class_proportions(y_train, y_test, labels)})
    run.log({"roc": plot.roc_curve(y_test, y_probas, labels)})
    run.log({"precision_recall": plot.pr_curve(y_test, y_probas, labels)})


def plot_regressor(
    model: Any, X_train: Any, X_test: Any, y_train: Any, y_test: Any, model_name: str = "Regressor"
) -> None:
    """Log a fitted regressor's charts, each under its own key and step: summary metrics and the
    learning curve.  W&B also logs outlier candidates and residuals; runstream does not (yet).

    Args:
        model: The fitted regressor.
        X_train: The training features.
        X_test: The test features.
        y_train: The training targets.
        y_test: The test targets.
        model_name: Accepted for W&B compatibility; unused.

    Raises:
        UsageError: No run is active.
        ValueError: As the single ``plot_*`` functions.
        ImportError: scikit-learn is not installed.
    """
    run = _active_run("plot_regressor")
    run.log({"summary_metrics": _summary_metrics(model, X_test, y_test)})
    run.log({"learning_curve": _learning_curve(model, X_train, y_train)})


# --- the charts ---------------------------------------------------------------------------------
def _active_run(fn: str) -> Any:
    import runstream

    if runstream.run is None:
        raise UsageError(f"runstream.sklearn.{fn}: no active run; call runstream.init() first")
    return runstream.run


def _missing(fn: str, **args: Any) -> None:
    for name, value in args.items():
        if value is None:
            raise ValueError(f"runstream.sklearn.{fn}: {name} is missing")


def _labels_1d(fn: str, name: str, values: Any) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"runstream.sklearn.{fn}: {name} must be 1-D, not of shape {a.shape}")
    return a


def _sorted_classes(fn: str, *arrays: np.ndarray) -> list[Any]:
    values = [v.item() if isinstance(v, np.generic) else v for a in arrays for v in a]
    try:
        return sorted(set(values))
    except TypeError:
        raise ValueError(f"runstream.sklearn.{fn}: the classes mix types that cannot be sorted") from None


def _names(fn: str, classes: list[Any], labels: Sequence[Any] | None) -> list[Any]:
    """Integer classes named ``labels[c]``; others as they are."""
    if labels is None:
        return classes
    out = []
    for c in classes:
        if isinstance(c, int) and not isinstance(c, bool):
            if not 0 <= c < len(labels):
                raise ValueError(
                    f"runstream.sklearn.{fn}: labels names {len(labels)} classes, but there is class {c}"
                )
            out.append(labels[c])
        else:
            out.append(c)
    return out


def _cap(fn: str, rows: list[list[Any]], limit: int = CHART_LIMIT) -> list[list[Any]]:
    if len(rows) > limit:
        warnings.warn(
            f"runstream.sklearn.{fn}: the chart's {len(rows)} rows are cut to {limit}", stacklevel=3
        )
        return rows[:limit]
    return rows


def _confusion_matrix(
    y_true: Any,
    y_pred: Any,
    labels: Sequence[Any] | None = None,
    true_labels: Sequence[Any] | None = None,
    pred_labels: Sequence[Any] | None = None,
    normalize: bool = False,
) -> CustomChart:
    fn = "plot_confusion_matrix"
    _missing(fn, y_true=y_true, y_pred=y_pred)
    t = _labels_1d(fn, "y_true", y_true)
    p = _labels_1d(fn, "y_pred", y_pred)
    if len(t) != len(p):
        raise ValueError(f"runstream.sklearn.{fn}: y_true has {len(t)} labels and y_pred {len(p)}")
    classes = _sorted_classes(fn, t, p)
    if labels is not None:
        labels = list(labels)
        if all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(labels) for c in classes):
            classes = list(range(len(labels)))  # every named class, seen or not
        elif len(labels) != len(classes):
            raise ValueError(
                f"runstream.sklearn.{fn}: labels names {len(labels)} classes but y_true and y_pred hold "
                f"{len(classes)}: {classes[:10]!r}"
            )
        names: list[Any] = labels
    else:
        names = classes
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for a, b in zip(t.tolist(), p.tolist(), strict=True):
        cm[index[a], index[b]] += 1
    values: np.ndarray = cm
    if normalize:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True)).round(3)
    rows_kept = [i for i, n in enumerate(names) if true_labels is None or n in list(true_labels)]
    cols_kept = [j for j, n in enumerate(names) if pred_labels is None or n in list(pred_labels)]
    rows = [[names[j], names[i], values[i, j].item()] for i in rows_kept for j in cols_kept]
    return CustomChart(
        Table(columns=["Predicted", "Actual", "Count"], data=_cap(fn, rows)),
        "wandb/confusion_matrix/v1",
        {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "Count"},
        {"title": "Confusion Matrix"},
    )


def _feature_importances(
    model: Any, feature_names: Sequence[str] | None, title: str, max_num_features: int | None
) -> tuple[CustomChart | None, str]:
    """The chart, or ``None`` and why not."""
    if model is None:
        return None, "model is missing"
    importances = None
    for attr in ("feature_importances_", "coef_", "feature_log_prob_"):
        try:
            importances = getattr(model, attr)
        except Exception:  # sklearn raises AttributeError (or others) before fit
            continue
        break
    if importances is None:
        return None, (
            f"{type(model).__name__} has none of feature_importances_, coef_, feature_log_prob_ "
            "(is it fitted? does it rank features?)"
        )
    imp = np.asarray(importances, dtype=float)
    if sum(d > 1 for d in imp.shape) > 1:
        return None, f"its importances have shape {imp.shape}; only one value per feature can be plotted"
    imp = imp.reshape(-1)
    order = np.argsort(imp, kind="stable")[::-1]
    if feature_names is None:
        names: list[Any] = order.tolist()
    else:
        if len(feature_names) != len(imp):
            return None, f"feature_names names {len(feature_names)} features, the model has {len(imp)}"
        names = [feature_names[i] for i in order]
    rows = [[n, imp[i].item()] for n, i in zip(names, order, strict=True)]
    if max_num_features is not None:
        rows = rows[: max(0, int(max_num_features))]
    chart = CustomChart(
        Table(columns=["feature_names", "importances"], data=_cap("plot_feature_importances", rows)),
        "wandb/feature_importances/v1",
        {"feature_names": "feature_names", "importances": "importances"},
        {"title": title},
    )
    return chart, ""


def _class_proportions(y_train: Any, y_test: Any, labels: Sequence[str] | None) -> CustomChart:
    fn = "plot_class_proportions"
    _missing(fn, y_train=y_train, y_test=y_test)
    train = _labels_1d(fn, "y_train", y_train)
    test = _labels_1d(fn, "y_test", y_test)
    classes = _sorted_classes(fn, train, test)
    names = _names(fn, classes, labels)
    rows = [
        [name, dataset, int((arr == c).sum())]
        for dataset, arr in (("train", train), ("test", test))
        for c, name in zip(classes, names, strict=True)
    ]
    return CustomChart(
        Table(columns=["class", "dataset", "count"], data=_cap(fn, rows)),
        "wandb/class_proportions/v1",
        {"class": "class", "dataset": "dataset", "count": "count"},
        {"title": "Class Proportions"},
    )


def _learning_curve(
    model: Any,
    X: Any,
    y: Any,
    cv: Any = None,
    shuffle: bool = False,
    random_state: Any = None,
    train_sizes: Any = None,
    n_jobs: int | None = 1,
    scoring: Any = None,
) -> CustomChart:
    fn = "plot_learning_curve"
    _missing(fn, model=model, X=X, y=y)
    from sklearn import model_selection  # type: ignore[import-untyped, unused-ignore]

    if train_sizes is None:
        train_sizes = np.linspace(0.1, 1.0, 5)
    sizes, train_scores, test_scores = model_selection.learning_curve(
        model,
        X,
        y,
        cv=cv,
        n_jobs=n_jobs,
        train_sizes=train_sizes,
        scoring=scoring,
        shuffle=shuffle,
        random_state=random_state,
    )[:3]
    rows: list[list[Any]] = []
    for size, tr, te in zip(sizes, np.mean(train_scores, axis=1), np.mean(test_scores, axis=1), strict=True):
        rows.append(["train", round(float(tr), 2), int(size)])
        rows.append(["test", round(float(te), 2), int(size)])
    return CustomChart(
        Table(columns=["dataset", "score", "train_size"], data=_cap(fn, rows)),
        "wandb/learning_curve/v1",
        {"dataset": "dataset", "score": "score", "train_size": "train_size"},
        {"title": "Learning Curve"},
    )


def _summary_metrics(model: Any, X_test: Any, y_test: Any) -> CustomChart:
    fn = "plot_summary_metrics"
    _missing(fn, model=model, X_test=X_test, y_test=y_test)
    import sklearn.base  # type: ignore[import-untyped, unused-ignore]
    import sklearn.metrics as m  # type: ignore[import-untyped, unused-ignore]

    y_true = np.asarray(y_test)
    y_pred = model.predict(X_test)
    metrics: dict[str, float]
    if sklearn.base.is_classifier(model):
        metrics = {
            "accuracy_score": m.accuracy_score(y_true, y_pred),
            "precision": m.precision_score(y_true, y_pred, average="weighted", zero_division=0),
            "recall": m.recall_score(y_true, y_pred, average="weighted", zero_division=0),
            "f1_score": m.f1_score(y_true, y_pred, average="weighted", zero_division=0),
        }
    elif sklearn.base.is_regressor(model):
        metrics = {
            "mae": m.mean_absolute_error(y_true, y_pred),
            "mse": m.mean_squared_error(y_true, y_pred),
            "r2_score": m.r2_score(y_true, y_pred),
        }
    else:
        raise ValueError(
            f"runstream.sklearn.{fn}: {type(model).__name__} is neither a classifier nor a regressor"
        )
    name = type(model).__name__
    rows = [[k, round(float(v), 2), name] for k, v in metrics.items()]
    return CustomChart(
        Table(columns=["metric_name", "metric_value", "model_name"], data=rows),
        "wandb/metrics/v1",
        {"metric_name": "metric_name", "metric_value": "metric_value", "model_name": "model_name"},
        {"title": "Summary Metrics"},
    )
