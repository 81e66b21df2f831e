"""``runstream.plot``: W&B's ``wandb.plot.*`` chart helpers (docs/media.md, "Charts").

Each helper returns a :class:`~runstream.media.chart.CustomChart`: a table and the W&B chart
(``panelDefId``) that draws it.  Log it like any value::

    run.log({"pr": runstream.plot.pr_curve(y_true, y_probas, labels=["cat", "dog"])})

The table is stored at ``"pr_table"`` and the chart's spec in the run's config at
``_wandb.visualize.pr``, as W&B stores them.

The curves (``pr_curve``, ``roc_curve``) are computed here with numpy; scikit-learn is not
needed (W&B requires it).  Their points match ``sklearn.metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from runstream.media.chart import CustomChart
from runstream.media.table import MAX_ROWS, Table

__all__ = [
    "bar",
    "confusion_matrix",
    "histogram",
    "line",
    "line_series",
    "pr_curve",
    "roc_curve",
    "scatter",
]


# --- charts of a table the user made ------------------------------------------------------------
def line(
    table: Table, x: str, y: str, stroke: str | None = None, title: str = "", split_table: bool = False
) -> CustomChart:
    """A line chart of two columns of ``table`` (W&B's ``wandb/line/v0``).

    Args:
        table: The data.
        x: The column on the x axis.
        y: The column on the y axis.
        stroke: A column whose values name the lines (one line per value), or ``None``.
        title: The chart's title.
        split_table: Store the table under ``"Custom Chart Tables/<key>_table"``.

    Returns:
        The chart, to log.

    Raises:
        TypeError: ``table`` is not a ``runstream.Table``.
        ValueError: ``x``, ``y`` or ``stroke`` is not a column of ``table``.
    """
    _check_columns("line", table, x=x, y=y, stroke=stroke)
    return CustomChart(
        table, "wandb/line/v0", {"x": x, "y": y, "stroke": stroke}, {"title": title}, split_table
    )


def scatter(table: Table, x: str, y: str, title: str = "", split_table: bool = False) -> CustomChart:
    """A scatter plot of two columns of ``table`` (W&B's ``wandb/scatter/v0``).

    Args:
        table: The data.
        x: The column on the x axis.
        y: The column on the y axis.
        title: The chart's title.
        split_table: Store the table under ``"Custom Chart Tables/<key>_table"``.

    Returns:
        The chart, to log.

    Raises:
        TypeError: ``table`` is not a ``runstream.Table``.
        ValueError: ``x`` or ``y`` is not a column of ``table``.
    """
    _check_columns("scatter", table, x=x, y=y)
    return CustomChart(table, "wandb/scatter/v0", {"x": x, "y": y}, {"title": title}, split_table)


def bar(table: Table, label: str, value: str, title: str = "", split_table: bool = False) -> CustomChart:
    """A bar chart: one bar per row, named by ``label``, as long as ``value`` (``wandb/bar/v0``).

    Args:
        table: The data.
        label: The column naming the bars.
        value: The column of the bars' lengths.
        title: The chart's title.
        split_table: Store the table under ``"Custom Chart Tables/<key>_table"``.

    Returns:
        The chart, to log.

    Raises:
        TypeError: ``table`` is not a ``runstream.Table``.
        ValueError: ``label`` or ``value`` is not a column of ``table``.
    """
    _check_columns("bar", table, label=label, value=value)
    return CustomChart(table, "wandb/bar/v0", {"label": label, "value": value}, {"title": title}, split_table)


def histogram(table: Table, value: str, title: str = "", split_table: bool = False) -> CustomChart:
    """A histogram of one column of ``table``, binned by the dashboard (``wandb/histogram/v0``).

    Args:
        table: The data.
        value: The column to bin.
        title: The chart's title.
        split_table: Store the table under ``"Custom Chart Tables/<key>_table"``.

    Returns:
        The chart, to log.

    Raises:
        TypeError: ``table`` is not a ``runstream.Table``.
        ValueError: ``value`` is not a column of ``table``.
    """
    _check_columns("histogram", table, value=value)
    return CustomChart(table, "wandb/histogram/v0", {"value": value}, {"title": title}, split_table)


def line_series(
    xs: Any,
    ys: Any,
    keys: Sequence[str] | None = None,
    title: str = "",
    xname: str = "x",
    split_table: bool = False,
) -> CustomChart:
    """Several lines on one chart (W&B's ``wandb/lineseries/v0``).

    The table has the columns ``["step", "lineKey", "lineVal"]``: one row per point.

    Args:
        xs: The x values: one sequence shared by every line, or one sequence per line.
        ys: One sequence of y values per line.
        keys: The lines' names (``line_0``, ``line_1``... by default).
        title: The chart's title.
        xname: The x axis' name.
        split_table: Store the table under ``"Custom Chart Tables/<key>_table"``.

    Returns:
        The chart, to log.

    Raises:
        ValueError: ``ys`` is empty; ``xs`` gives a number of series other than ``ys``'s; a
            series' x and y values differ in length (W&B silently drops the extra points); or
            ``keys`` does not name each line once.
    """
    ys_list = [_as_list(y, "ys") for y in _as_list(ys, "ys")]
    if not ys_list:
        raise ValueError("runstream.plot.line_series: ys is empty; give one sequence of y values per line")
    xs_list = _as_list(xs, "xs")
    if xs_list and not _is_sequence(xs_list[0]):
        xs_list = [xs_list] * len(ys_list)
    else:
        xs_list = [_as_list(x, "xs") for x in xs_list]
    if len(xs_list) != len(ys_list):
        raise ValueError(
            f"runstream.plot.line_series: xs has {len(xs_list)} series and ys {len(ys_list)}; give one x "
            "sequence shared by all lines or one per line"
        )
    if keys is None:
        keys = [f"line_{i}" for i in range(len(ys_list))]
    keys = list(keys)
    if len(keys) != len(ys_list):
        raise ValueError(f"runstream.plot.line_series: {len(keys)} keys for {len(ys_list)} lines in ys")
    data: list[list[Any]] = []
    for i, (xx, yy) in enumerate(zip(xs_list, ys_list, strict=True)):
        if len(xx) != len(yy):
            raise ValueError(
                f"runstream.plot.line_series: line {keys[i]!r} has {len(xx)} x values (xs) "
                f"and {len(yy)} y values (ys)"
            )
        data.extend([x, keys[i], y] for x, y in zip(xx, yy, strict=True))
    table = Table(columns=["step", "lineKey", "lineVal"], data=data)
    return CustomChart(
        table,
        "wandb/lineseries/v0",
        {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
        {"title": title, "xname": xname},
        split_table,
    )


# --- charts computed from predictions ----------------------------------------------------------
def confusion_matrix(
    probs: Any = None,
    y_true: Any = None,
    preds: Any = None,
    class_names: Sequence[str] | None = None,
    title: str = "Confusion Matrix Curve",
    split_table: bool = False,
) -> CustomChart:
    """A confusion matrix (W&B's ``wandb/confusion_matrix/v1``).

    The table has the columns ``["Actual", "Predicted", "nPredictions"]``: one row per pair of
    classes, actual class major.

    Args:
        probs: Class probabilities, shape ``(n, n_classes)``; the prediction is their argmax.
            Give this or ``preds``.
        y_true: The true classes, ``n`` of them.
        preds: The predicted classes, ``n`` of them.  Give this or ``probs``.
        class_names: The classes' names.  With it, classes are the indices ``0 ..
            len(class_names) - 1``; without it, the classes are the values in ``y_true`` and
            ``preds``, sorted, named ``Class_1``, ``Class_2``...
        title: The chart's title.
        split_table: Store the table under ``"Custom Chart Tables/<key>_table"``.

    Returns:
        The chart, to log.

    Raises:
        ValueError: Both or neither of ``probs`` and ``preds``; no ``y_true``; ``probs`` not 2-D;
            ``preds`` and ``y_true`` of different lengths; a class that ``class_names`` does not
            name.
    """
    fn = "runstream.plot.confusion_matrix"
    if probs is not None and preds is not None:
        raise ValueError(f"{fn}: give probs or preds, not both")
    if y_true is None:
        raise ValueError(f"{fn}: y_true is missing")
    if probs is not None:
        p = np.asarray(probs)
        if p.ndim != 2:
            raise ValueError(
                f"{fn}: probs must be 2-D (samples x classes), not of shape {p.shape}; "
                "pass class predictions as preds="
            )
        preds = np.argmax(p, axis=1).tolist()
    elif preds is None:
        raise ValueError(f"{fn}: give probs (class probabilities) or preds (predicted classes)")
    preds_l = [_scalar(v) for v in _as_list(preds, "preds")]
    true_l = [_scalar(v) for v in _as_list(y_true, "y_true")]
    if len(preds_l) != len(true_l):
        what = "probs" if probs is not None else "preds"
        raise ValueError(f"{fn}: {what} has {len(preds_l)} predictions and y_true {len(true_l)} labels")
    if class_names is not None:
        names = [str(c) for c in class_names]
        classes: list[Any] = list(range(len(names)))
        for arg, values in (("y_true", true_l), ("preds", preds_l)):
            bad = [v for v in dict.fromkeys(values) if not (isinstance(v, int) and 0 <= v < len(names))]
            if bad:
                raise ValueError(
                    f"{fn}: {arg} holds {bad[:5]!r}, not class indices 0..{len(names) - 1} of class_names"
                )
    else:
        try:
            classes = sorted(set(preds_l) | set(true_l))
        except TypeError as e:
            raise ValueError(f"{fn}: the classes in y_true and preds cannot be sorted: {e}") from None
        names = [f"Class_{i + 1}" for i in range(len(classes))]
    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    counts = np.zeros((n, n), dtype=np.int64)
    for t, p_ in zip(true_l, preds_l, strict=True):
        counts[index[t], index[p_]] += 1
    data = [[names[i], names[j], int(counts[i, j])] for i in range(n) for j in range(n)]
    return CustomChart(
        Table(columns=["Actual", "Predicted", "nPredictions"], data=data),
        "wandb/confusion_matrix/v1",
        {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
        {"title": title},
        split_table,
    )


def pr_curve(
    y_true: Any = None,
    y_probas: Any = None,
    labels: Sequence[str] | None = None,
    classes_to_plot: Any = None,
    interp_size: int = 21,
    title: str = "Precision-Recall Curve",
    split_table: bool = False,
) -> CustomChart:
    """Precision-recall curves, one per class, one-vs-rest (W&B's ``wandb/area-under-curve/v0``).

    Each class' curve is sampled at ``interp_size`` recalls evenly spaced from 1 down to 0; the
    precision at recall ``r`` is the interpolated precision, the highest precision at any
    threshold whose recall is ``r`` or more.  The table has the columns ``["class", "precision",
    "recall"]``, values rounded to 3 decimals; more than 10000 rows are cut to 10000, the same
    share of each class' points kept, evenly spaced (deterministic).

    Args:
        y_true: The true classes, ``n`` of them.
        y_probas: Scores, shape ``(n, n_classes)``: column ``i`` scores the ``i``-th class of the
            sorted distinct values of ``y_true``.  For two classes a 1-D array of the second
            class' scores is accepted too.
        labels: Names of the classes when they are integers: class ``c`` is named ``labels[c]``.
        classes_to_plot: The classes (values of ``y_true``) to draw; all by default.
        interp_size: How many recall points per class.
        title: The chart's title.
        split_table: Store the table under ``"Custom Chart Tables/<key>_table"``.

    Returns:
        The chart, to log.

    Raises:
        ValueError: ``y_true`` or ``y_probas`` missing or empty, of different lengths, fewer
            columns in ``y_probas`` than classes in ``y_true``, ``interp_size`` under 2, or
            ``labels`` naming too few classes.
    """
    fn = "runstream.plot.pr_curve"
    if not isinstance(interp_size, (int, np.integer)) or interp_size < 2:
        raise ValueError(f"{fn}: interp_size must be an int of 2 or more, not {interp_size!r}")
    y, probas, classes, indices = _curve_inputs(fn, y_true, y_probas, classes_to_plot)
    interp_recall = np.linspace(0, 1, int(interp_size))[::-1]
    names, precisions = [], []
    for i in indices:
        names.append(_class_label(fn, classes, i, labels))
        precision, recall = _precision_recall(y == classes[i], probas[:, i])
        # interpolated precision: the best precision at this recall or more (index 0: recall 1)
        precision = np.maximum.accumulate(precision)
        precision, recall = precision[::-1], recall[::-1]  # recall ascending
        at = np.searchsorted(recall, interp_recall, side="left")
        precisions.append(precision[np.minimum(at, len(precision) - 1)])
    rows = [
        [name, round(float(p), 3), round(float(r), 3)]
        for name, ps in zip(names, precisions, strict=True)
        for p, r in zip(ps, interp_recall, strict=True)
    ]
    return CustomChart(
        Table(columns=["class", "precision", "recall"], data=_cap_rows(rows)),
        "wandb/area-under-curve/v0",
        {"x": "recall", "y": "precision", "class": "class"},
        {"title": title, "x-axis-title": "Recall", "y-axis-title": "Precision"},
        split_table,
    )


def roc_curve(
    y_true: Any = None,
    y_probas: Any = None,
    labels: Sequence[str] | None = None,
    classes_to_plot: Any = None,
    title: str = "ROC Curve",
    split_table: bool = False,
) -> CustomChart:
    """ROC curves, one per class, one-vs-rest (W&B's ``wandb/area-under-curve/v0``).

    Each class' points are those of ``sklearn.metrics.roc_curve`` (``drop_intermediate=True``):
    from (0, 0) to (1, 1).  The table has the columns ``["class", "fpr", "tpr"]``, values
    rounded to 3 decimals; more than 10000 rows are cut to 10000, the same share of each class'
    points kept, evenly spaced, its first and last kept (deterministic).

    Args:
        y_true: The true classes, ``n`` of them.
        y_probas: Scores, shape ``(n, n_classes)``: column ``i`` scores the ``i``-th class of the
            sorted distinct values of ``y_true``.  For two classes a 1-D array of the second
            class' scores is accepted too.
        labels: Names of the classes when they are integers: class ``c`` is named ``labels[c]``.
        classes_to_plot: The classes (values of ``y_true``) to draw; all by default.
        title: The chart's title.
        split_table: Store the table under ``"Custom Chart Tables/<key>_table"``.

    Returns:
        The chart, to log.

    Raises:
        ValueError: ``y_true`` or ``y_probas`` missing or empty, of different lengths, fewer
            columns in ``y_probas`` than classes in ``y_true``, or ``labels`` naming too few
            classes.
    """
    fn = "runstream.plot.roc_curve"
    y, probas, classes, indices = _curve_inputs(fn, y_true, y_probas, classes_to_plot)
    rows: list[list[Any]] = []
    for i in indices:
        name = _class_label(fn, classes, i, labels)
        fpr, tpr = _roc(y == classes[i], probas[:, i])
        rows.extend([name, round(float(f), 3), round(float(t), 3)] for f, t in zip(fpr, tpr, strict=True))
    return CustomChart(
        Table(columns=["class", "fpr", "tpr"], data=_cap_rows(rows)),
        "wandb/area-under-curve/v0",
        {"x": "fpr", "y": "tpr", "class": "class"},
        {"title": title, "x-axis-title": "False positive rate", "y-axis-title": "True positive rate"},
        split_table,
    )


# --- helpers ------------------------------------------------------------------------------------
def _check_columns(name: str, table: Any, **columns: str | None) -> None:
    if not isinstance(table, Table):
        raise TypeError(f"runstream.plot.{name}: table must be a runstream.Table, not {type(table).__name__}")
    for arg, col in columns.items():
        if col is not None and col not in table.columns:
            raise ValueError(
                f"runstream.plot.{name}: {arg}={col!r} is not a column of the table; "
                f"its columns are {table.columns}"
            )


def _is_sequence(v: Any) -> bool:
    return isinstance(v, (Iterable, np.ndarray)) and not isinstance(v, (str, bytes, dict))


def _as_list(v: Any, arg: str) -> list[Any]:
    if isinstance(v, np.ndarray):
        return list(v) if v.ndim > 1 else v.tolist()
    if type(v).__module__.startswith("torch") and hasattr(v, "tolist"):
        return list(v.detach().cpu().numpy()) if v.dim() > 1 else v.tolist()
    if not _is_sequence(v):
        raise ValueError(f"runstream.plot: {arg} must be a sequence, not {type(v).__name__}")
    return list(v)


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _curve_inputs(
    fn: str, y_true: Any, y_probas: Any, classes_to_plot: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """``y_true`` and ``y_probas`` checked, as arrays; the classes; the indices to draw."""
    if y_true is None:
        raise ValueError(f"{fn}: y_true is missing")
    if y_probas is None:
        raise ValueError(f"{fn}: y_probas is missing")
    y = np.asarray(y_true)
    probas = np.asarray(y_probas, dtype=float)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"{fn}: y_true must be a non-empty 1-D sequence of classes, not of shape {y.shape}")
    classes = np.unique(y)
    if probas.ndim == 1 and len(classes) <= 2:  # the positive class' scores of a binary problem
        probas = np.stack([1 - probas, probas], axis=1)
    if probas.ndim != 2:
        raise ValueError(f"{fn}: y_probas must be 2-D (samples x classes), not of shape {probas.shape}")
    if probas.shape[0] != y.shape[0]:
        raise ValueError(f"{fn}: y_probas has {probas.shape[0]} rows and y_true {y.shape[0]} labels")
    if probas.shape[1] < len(classes):
        raise ValueError(
            f"{fn}: y_probas has {probas.shape[1]} columns but y_true has {len(classes)} classes "
            f"({classes[:10].tolist()}); give one column per class"
        )
    if classes_to_plot is None:
        indices = list(range(len(classes)))
    else:
        wanted = np.atleast_1d(np.asarray(classes_to_plot))
        indices = np.where(np.isin(classes, wanted))[0].tolist()
    return y, probas, classes, indices


def _class_label(fn: str, classes: np.ndarray, i: int, labels: Sequence[str] | None) -> Any:
    c = classes[i].item() if isinstance(classes[i], np.generic) else classes[i]
    if labels is not None and isinstance(c, int) and not isinstance(c, bool):
        if not 0 <= c < len(labels):
            raise ValueError(f"{fn}: labels names {len(labels)} classes, but y_true holds class {c}")
        return labels[c]
    return c


def _binary_clf_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positives at each distinct threshold, highest first (as sklearn's)."""
    order = np.argsort(score, kind="mergesort")[::-1]
    score = score[order]
    hit = positive[order].astype(np.float64)
    last = np.r_[np.where(np.diff(score))[0], score.size - 1]  # the last sample of each threshold
    tps = np.cumsum(hit)[last]
    fps = 1 + last - tps
    return fps, tps


def _precision_recall(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.metrics.precision_recall_curve``'s precision and recall: recall decreasing, the
    point (recall 0, precision 1) last."""
    fps, tps = _binary_clf_curve(positive, score)
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def _roc(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve``'s fpr and tpr, intermediate collinear points dropped."""
    fps, tps = _binary_clf_curve(positive, score)
    if len(fps) > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr


def _cap_rows(rows: list[list[Any]], limit: int = MAX_ROWS) -> list[list[Any]]:
    """At most ``limit`` rows: each class (column 0) keeps its share, evenly spaced, first and
    last kept; the same input always keeps the same rows."""
    if len(rows) <= limit:
        return rows
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row[0], []).append(i)
    kept: list[int] = []
    for idx in groups.values():
        k = max(1, len(idx) * limit // len(rows))
        picks = np.unique(np.linspace(0, len(idx) - 1, k).round().astype(int))
        kept.extend(idx[j] for j in picks)
    if len(kept) > limit:  # more classes than rows allowed
        kept = [kept[j] for j in np.unique(np.linspace(0, len(kept) - 1, limit).round().astype(int))]
    return [rows[i] for i in sorted(kept)]
