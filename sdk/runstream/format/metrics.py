"""Metric definitions (``define_metric``) and the summary rules they set (docs/metrics.md).

A METRIC record's body (docs/ring-format.md, "METRIC") is one ``define_metric`` call: the name
and only the options the caller gave.  ``MetricRules`` merges those calls into one definition per
name, as W&B does (later options win, ``hidden``/``step_sync`` stay on once set, summary
operations add up, ``overwrite`` starts the definition over), and keeps, for every key a
definition with summary operations covers, what those operations need: the first value, and the
min, max, total and count of its numbers.  The SDK fold (``fold.RunState``) and the server's fold
(``RunFold`` in server/storage/interface.py) both use it, so a run's summary is the same whoever
computes it.

Pure Python and no heavy imports: ``runstream.format`` is loaded by ``import runstream``.
Concurrency contract: a ``MetricRules`` belongs to one thread, like the fold that holds it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

SUMMARY_OPS = ("min", "max", "mean", "first", "last", "best", "copy", "none")
GOALS = ("minimize", "maximize")
# The definition fields a METRIC body may hold, with their types (docs/ring-format.md, "METRIC").
FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "step_metric": str,
    "step_sync": bool,
    "hidden": bool,
    "summary": list,
    "goal": str,
    "overwrite": bool,
}
# The operations that need per-key aggregates (``last`` reads the fold's latest value).
_AGG_OPS = frozenset(("min", "max", "mean", "first", "best"))
_SKIP: tuple[bool, bool, str | None] = (False, False, None)  # a key row() has nothing to do with


def check_body(body: Any) -> str | None:
    """Why a METRIC body is not well-formed, or None when it is."""
    if not isinstance(body, dict):
        return f"a METRIC body is a map, not {type(body).__name__}"
    name = body.get("name")
    if not isinstance(name, str) or not name:
        return "a METRIC body needs a non-empty str name"
    for key, value in body.items():
        want = FIELDS.get(key)
        if want is None:
            return f"a METRIC body has no field {key!r}"
        if not isinstance(value, want):
            return f"METRIC field {key!r} must be {want}, not {type(value).__name__}"
    ops = body.get("summary", [])
    if not all(op in SUMMARY_OPS for op in ops):
        return f"METRIC summary operations must be among {SUMMARY_OPS}, not {ops!r}"
    if body.get("goal") not in (None, *GOALS):
        return f"METRIC goal must be one of {GOALS}, not {body.get('goal')!r}"
    return None


def merge(prev: Mapping[str, Any] | None, body: Mapping[str, Any]) -> dict[str, Any]:
    """The definition after one more ``define_metric`` call (W&B core's ``definedMetric.With``)."""
    out: dict[str, Any] = {} if prev is None or body.get("overwrite") else dict(prev)
    out["name"] = body["name"]
    for flag in ("step_sync", "hidden"):  # once on, on: a call that omits it does not turn it off
        if body.get(flag) or out.get(flag):
            out[flag] = True
    if body.get("step_metric"):
        out["step_metric"] = body["step_metric"]
    if "summary" in body:
        ops = [op for op in body["summary"] if op not in ("none", "copy")]
        out["summary"] = [op for op in SUMMARY_OPS if op in ops or op in out.get("summary", [])]
        if "none" in body["summary"]:
            out["none"] = True
        else:
            out.pop("none", None)
    if body.get("goal"):
        out["goal"] = body["goal"]
    return out


def _number(v: Any) -> float | None:
    """``v`` as a float when it counts for min/max/mean: ints and finite floats; bools are not
    numbers here (as in W&B) and NaN is skipped, so one diverged step does not wipe out a best."""
    t = type(v)
    if t is float:
        return v if not math.isnan(v) else None
    if t is int:
        return float(v)
    return None


class MetricRules:
    """A run's metric definitions and the aggregates their summaries need.

    ``defs`` maps each defined name (a glob ends with ``*``) to its merged definition, in the
    order first defined; ``aggs`` maps each covered key to ``[first, min, max, total, count]``
    (min and max are None until a number comes).  Both are plain data, saved as they are by the
    server (docs/storage.md, "Metric definitions").
    """

    def __init__(self, defs: Mapping[str, Any] | None = None, aggs: Mapping[str, Any] | None = None) -> None:
        self.defs: dict[str, dict[str, Any]] = {
            str(k): dict(v) for k, v in (defs or {}).items() if isinstance(v, dict)
        }
        self.aggs: dict[str, list[Any]] = {
            str(k): list(v) for k, v in (aggs or {}).items() if isinstance(v, list) and len(v) == 5
        }
        self.step_values: dict[str, Any] = {}  # step metric -> its latest value (step_sync)
        self._resolved: dict[str, dict[str, Any] | None] = {}
        self._plans: dict[Any, tuple[bool, bool, str | None]] = {}  # key -> what row() does with it
        self._reindex()

    def __bool__(self) -> bool:
        return bool(self.defs)

    def define(self, body: Any) -> bool:
        """Fold one METRIC body; False (nothing changed) when it is not well-formed."""
        if check_body(body) is not None:
            return False
        name = body["name"]
        self.defs[name] = merge(self.defs.get(name), body)
        self._reindex()
        return True

    def _reindex(self) -> None:
        self._resolved.clear()
        self._plans.clear()
        for d in self.defs.values():  # W&B's default before a step metric is first logged: 0
            if d.get("step_metric"):
                self.step_values.setdefault(d["step_metric"], 0)

    def resolve(self, key: str) -> dict[str, Any] | None:
        """The definition that covers ``key``: its own, else that of the longest glob whose prefix
        it starts with (keys starting with ``_`` are never covered by a glob, as in W&B)."""
        try:
            return self._resolved[key]
        except KeyError:
            pass
        if not isinstance(key, str):  # a number key, read back as str later: never defined
            return None
        found = self.defs.get(key)
        if found is None and not key.startswith("_"):
            best = -1
            for name, d in self.defs.items():
                if name.endswith("*") and key.startswith(name[:-1]) and len(name) > best:
                    found, best = d, len(name)
        self._resolved[key] = found
        return found

    def _wants_aggs(self, key: str) -> bool:
        d = self.resolve(key)
        return d is not None and not _AGG_OPS.isdisjoint(d.get("summary", ()))

    # --- folding values ------------------------------------------------------------------------
    def row(self, data: dict[str, Any]) -> None:
        """Fold one history row (flat keys): fill in step metrics (``step_sync``), then count
        each value a definition with summary operations covers.  Changes ``data`` in place.

        Runs for every row of a run with definitions (the sidecar folds 100k+ rows/s), so each
        key costs one lookup of its cached plan."""
        plans, fills = self._plans, None
        for key, value in data.items():
            plan = plans.get(key)
            if plan is None:
                plan = self._plan(key)
            if plan is _SKIP:
                continue
            counted, is_step, step = plan
            if is_step:
                self.step_values[key] = value
            if counted:
                self.add(key, value)
            if step is not None and step not in data:
                fills = [step] if fills is None else [*fills, step]
        if fills is not None:
            for step in fills:
                if step not in data:
                    data[step] = value = self.step_values.get(step, 0)
                    if self._plan(step)[0]:
                        self.add(step, value)

    def _plan(self, key: Any) -> tuple[bool, bool, str | None]:
        """What ``row`` does with ``key``: (count its values, it is a step metric, the step
        metric to fill in beside it); cached until the next definition."""
        d = self.resolve(key)
        step = d.get("step_metric") if d is not None and d.get("step_sync") else None
        plan = (self._wants_aggs(key), key in self.step_values, step)
        plan = _SKIP if plan == _SKIP else plan
        self._plans[key] = plan
        return plan

    def add(self, key: str, value: Any) -> None:
        """Count one value of ``key`` (any type: only numbers reach min/max/mean)."""
        agg = self.aggs.get(key)
        if agg is None:
            agg = self.aggs[key] = [value, None, None, 0.0, 0]
        x = _number(value)
        if x is not None:
            agg[1] = x if agg[1] is None else min(agg[1], x)
            agg[2] = x if agg[2] is None else max(agg[2], x)
            agg[3] += x
            agg[4] += 1

    def covers(self, keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` whose values need counting."""
        return [k for k in keys if self._wants_aggs(k)]

    # --- the summary ---------------------------------------------------------------------------
    def apply(self, summary: dict[str, Any], keep: Iterable[str] = ()) -> dict[str, Any]:
        """``summary`` (each key's last value) with the definitions' rules applied: ``none``
        drops the key, summary operations make its value a dict (``{"min": .., "max": ..}``);
        keys in ``keep`` (the pinned ones) are left as they are."""
        kept = set(keep)
        out: dict[str, Any] = {}
        for key, value in summary.items():
            d = None if key in kept else self.resolve(key)
            if d is None:
                out[key] = value
            elif d.get("none"):
                continue
            elif d.get("summary"):
                out[key] = self.value(key, value, d)
            else:
                out[key] = value
        return out

    def value(self, key: str, last: Any, d: Mapping[str, Any]) -> dict[str, Any]:
        """The summary dict of one key under definition ``d``; a statistic with no number to
        compute it from (only strings logged, say) is left out."""
        ops = d.get("summary", ())
        first, lo, hi, total, n = self.aggs.get(key) or (last, None, None, 0.0, 0)
        out: dict[str, Any] = {}
        if "last" in ops:
            out["last"] = last
        if "first" in ops:
            out["first"] = first
        if "max" in ops and hi is not None:
            out["max"] = hi
        if "min" in ops and lo is not None:
            out["min"] = lo
        if "mean" in ops and n:
            out["mean"] = total / n
        if "best" in ops and d.get("goal") and lo is not None:
            out["best"] = lo if d["goal"] == "minimize" else hi
        return out

    def public(self) -> dict[str, dict[str, Any]]:
        """The definitions as the read side shows them (``RunData.metrics``, the run JSON)."""
        return {n: {k: v for k, v in d.items()} for n, d in self.defs.items()}
