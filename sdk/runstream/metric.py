"""``define_metric``: what a call checks and records, and the ``Metric`` it returns (docs/metrics.md).

The call writes one METRIC record (docs/ring-format.md, "METRIC") and returns; it never waits.
The definitions take effect downstream, where records are folded (``runstream.format.metrics``):
in ``read_run``, the sidecar's ``summary.json``, and the server's stored summary.  ``run.summary``
read in the training process shows the last committed row's values and hides ``"none"`` keys
(min/max/mean need every row, which only the fold sees: ``read_run(run.dir).summary`` has them).

Concurrency contract: as ``Run``'s: called from the thread that logs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runstream.errors import Error
from runstream.format import record as rec
from runstream.format.metrics import SUMMARY_OPS, MetricRules, merge

if TYPE_CHECKING:
    from runstream.run import Run


class MetricError(Error, ValueError):
    """A ``define_metric`` argument is not one it can take (the message names it)."""


class Metric:
    """What ``define_metric`` returns (W&B's ``wandb_metric.Metric``): the call's arguments, as
    given (``goal`` spelt out, ``summary`` as a tuple).  It can be discarded; passing it as another
    call's ``step_metric`` means its name."""

    __slots__ = ("goal", "hidden", "name", "overwrite", "step_metric", "step_sync", "summary")
    _SHOWN = ("name", "step_metric", "step_sync", "hidden", "summary", "goal", "overwrite")

    def __init__(
        self,
        name: str,
        step_metric: str | None = None,
        step_sync: bool | None = None,
        hidden: bool | None = None,
        summary: tuple[str, ...] | None = None,
        goal: str | None = None,
        overwrite: bool | None = None,
    ) -> None:
        self.name = name
        self.step_metric = step_metric
        self.step_sync = step_sync
        self.hidden = hidden
        self.summary = summary
        self.goal = goal
        self.overwrite = overwrite

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._SHOWN if getattr(self, k) is not None)
        return f"Metric({given})"


def parse(
    name: Any,
    step_metric: Any = None,
    step_sync: Any = None,
    hidden: Any = None,
    summary: Any = None,
    goal: Any = None,
    overwrite: Any = None,
) -> tuple[Metric, dict[str, Any]]:
    """Check one call's arguments (W&B's rules) and return its ``Metric`` and METRIC body.

    Raises:
        MetricError: naming the argument that is wrong.
    """
    if isinstance(step_metric, Metric):
        step_metric = step_metric.name
    for arg, value, want in (
        ("name", name, str),
        ("step_metric", step_metric, str),
        ("step_sync", step_sync, bool),
        ("hidden", hidden, bool),
        ("summary", summary, str),
        ("goal", goal, str),
        ("overwrite", overwrite, bool),
    ):
        if value is not None and not isinstance(value, want):
            raise MetricError(
                f"define_metric: {arg} must be a {want.__name__}, not {type(value).__name__} ({value!r})"
            )
    if not name:
        raise MetricError("define_metric: name must be a non-empty str")
    if "*" in name[:-1]:
        raise MetricError(f"define_metric: name {name!r}: a glob may only end with '*' (like 'train/*')")
    if step_metric is not None and not step_metric:
        raise MetricError("define_metric: step_metric must be a non-empty str")
    ops: tuple[str, ...] | None = None
    if summary is not None:
        ops = tuple(s.strip().lower() for s in summary.split(",") if s.strip())
        bad = [s for s in ops if s not in SUMMARY_OPS]
        if bad:
            raise MetricError(
                f"define_metric: summary operation {bad[0]!r} is not one of {', '.join(SUMMARY_OPS)} "
                "(combine them with commas: 'min,max')"
            )
    goal_full: str | None = None
    if goal is not None:
        goal_full = {"min": "minimize", "max": "maximize"}.get(goal[:3].lower())
        if goal_full is None:
            raise MetricError(f"define_metric: goal must be 'minimize' or 'maximize', not {goal!r}")
    if step_sync is None and step_metric is not None:
        step_sync = True  # W&B's default: a step metric is filled in rows that lack it
    metric = Metric(name, step_metric, step_sync, hidden, ops, goal_full, overwrite)
    body: dict[str, Any] = {"name": name}
    for key, value in (
        ("step_metric", step_metric),
        ("step_sync", step_sync),
        ("hidden", hidden),
        ("summary", list(ops) if ops is not None else None),
        ("goal", goal_full),
        ("overwrite", overwrite),
    ):
        if value is not None:
            body[key] = value
    return metric, body


def define(run: Run, *args: Any, **kwargs: Any) -> Metric:
    """``Run.define_metric``: check, record, remember for ``run.summary``'s in-process reads."""
    metric, body = parse(*args, **kwargs)
    rules: MetricRules | None = run._metric_rules
    if rules is None:
        rules = run._metric_rules = MetricRules()
    merged = merge(rules.defs.get(metric.name), body)
    if "best" in merged.get("summary", ()) and not merged.get("goal"):
        raise MetricError(
            f"define_metric: {metric.name!r}: summary 'best' needs goal='minimize' or goal='maximize' "
            "(or use summary='min' or 'max')"
        )
    rules.define(body)
    run._emit(rec.KIND_METRIC, body)
    return metric


def define_active(
    name: str,
    step_metric: Any = None,
    step_sync: bool | None = None,
    hidden: bool | None = None,
    summary: str | None = None,
    goal: str | None = None,
    overwrite: bool | None = None,
) -> Metric:
    """``runstream.define_metric``: :meth:`runstream.Run.define_metric` of the active run (the
    same arguments, errors and non-blocking behaviour); in disabled mode a ``Metric`` and
    nothing recorded.

    Raises:
        UsageError: No run is active (before ``init``, or after ``finish``).
        MetricError: As :meth:`runstream.Run.define_metric`.
    """
    import runstream

    run = runstream.run
    if run is None:
        from runstream.errors import UsageError

        raise UsageError("runstream.define_metric() was called before runstream.init(): start a run first")
    return run.define_metric(name, step_metric, step_sync, hidden, summary, goal, overwrite)  # type: ignore[no-any-return]


def restore(run: Run, defs: Any, emit: bool) -> None:
    """Put the definitions a resumed run had (``{name: merged definition}``: a journal's fold,
    or the server's run JSON ``metrics``) back in force.  ``emit``: write them into this journal
    too (a run resumed from the server's copy starts a new local journal, which must hold them
    for ``read_run``); each is written with ``overwrite`` so it replaces, not adds to, what the
    server has."""
    if not isinstance(defs, dict) or not defs:
        return
    rules = run._metric_rules = MetricRules()
    for d in defs.values():
        if not isinstance(d, dict):
            continue
        body = {k: v for k, v in d.items() if k in ("name", "step_metric", "step_sync", "hidden", "goal")}
        ops = list(d.get("summary") or []) + (["none"] if d.get("none") else [])
        if ops:
            body["summary"] = ops
        body["overwrite"] = True
        if rules.define(body) and emit:
            run._emit(rec.KIND_METRIC, body)
