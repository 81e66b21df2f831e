"""Records folded into a run's state: metadata, config, summary, history, loss counters, exit.

The SDK reads a run back with it (``runstream.read.local``: ``read_run``, ``runstream inspect``),
and the sidecar uses the same fold to write ``files/summary.json`` at finish, which keeps summary
work off ``log``'s hot path.  The rules (docs/run-dir.md, "Reading a run"): the summary is every
key's last logged value, overridden by what the user pinned; nested dicts read as ``a/b`` keys
(and, in the summary, also as nested dicts: ``NestedReads``).  ``define_metric``'s definitions
(METRIC records, ``format/metrics.py``) make a key's summary ``{"min": .., "max": ..}`` or drop it.

Concurrency contract: a ``RunState`` belongs to one thread.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from runstream.format import record as rec
from runstream.format.metrics import MetricRules

STATS_KEYS = {
    "dropped_records": "_runstream/dropped_records",
    "dropped_bytes": "_runstream/dropped_bytes",
    "overflow_peak_bytes": "_runstream/overflow_peak_bytes",
    "step_regressions": "_runstream/step_regressions",
    "ring_skipped_bytes": "_runstream/ring_skipped_bytes",
    "sidecar_lost_records": "_runstream/sidecar_lost_records",
    "dropped_media": "_runstream/dropped_media",
    "media_errors": "_runstream/media_errors",
}
# Counters that are records lost (the rest describe pressure, not loss).
LOSS_KEYS = ("dropped_records", "step_regressions", "sidecar_lost_records", "dropped_media", "media_errors")


# strict_map_key=False: keys are always str here, and skipping the check is ~30% faster
unpack_fast = functools.partial(msgpack.unpackb, raw=False, strict_map_key=False)


def flatten(d: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become ``a/b`` keys, as W&B shows them.  A dict with a ``"_type"`` key is a
    typed value (a media pointer, a histogram: docs/media.md) and stays whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "_type" not in v:
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


class NestedReads(dict[str, Any]):
    """A summary: flat ``a/b`` keys (as shown), whose prefixes also read as nested dicts.

    ``summary.update({"nested": {"a": 1}})`` stores ``nested/a``; ``s["nested"]`` then returns
    ``{"a": 1}``, as W&B's summary reads it back.  Iterating, ``len`` and JSON see the flat keys.
    """

    def __missing__(self, key: str) -> Any:
        nested = unflatten_prefix(self, key)
        if nested is None:
            raise KeyError(key)
        return nested

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        return isinstance(key, str) and unflatten_prefix(self, key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


def unflatten_prefix(flat: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The ``key/...`` entries of ``flat`` as one nested dict, or None when there are none."""
    prefix = key + "/"
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if isinstance(k, str) and k.startswith(prefix):
            node = out
            *parents, leaf = k[len(prefix) :].split("/")
            for p in parents:
                child = node.get(p)
                if not isinstance(child, dict):
                    child = node[p] = {}
                node = child
            node[leaf] = v
    return out or None


@dataclass
class RunState:
    keep_rows: bool = True
    run: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_count: int = 0
    keys: dict[str, None] = field(default_factory=dict)  # ordered set
    first_row: dict[str, Any] | None = None
    last_row: dict[str, Any] | None = None
    latest: dict[str, Any] = field(default_factory=dict)
    pinned: dict[str, Any] = field(default_factory=dict)
    unpinned: set[str] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=dict)
    exit: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)  # runstream.alert, in order
    # define_metric's definitions and aggregates (format/metrics.py); None until the first one,
    # so a run without definitions pays nothing per row
    metrics: MetricRules | None = None
    last_seq: int = 0
    records: int = 0
    start_time: float | None = None
    last_step: int = -1
    _last_time: float = 0.0

    def feed(self, records: Iterable[rec.Record]) -> None:
        for r in records:
            self.records += 1
            self.last_seq = r.seq
            if r.kind == rec.KIND_ROW:
                self._row(r)
            elif r.kind == rec.KIND_RUN:
                meta = r.value()
                self.run.update(meta)
                if self.start_time is None:
                    self.start_time = meta.get("start_time", r.time)
            elif r.kind == rec.KIND_CONFIG:
                self.config.update(r.value())
            elif r.kind == rec.KIND_SUMMARY:
                v = r.value()
                for k, val in flatten(v.get("set", {})).items():
                    self.pinned[k] = val
                    self.unpinned.discard(k)
                for k in v.get("del", []):
                    self.pinned.pop(k, None)
                    self.unpinned.add(k)
            elif r.kind == rec.KIND_STATS:
                self.stats.update(r.value())
            elif r.kind == rec.KIND_EXIT:
                self.exit = r.value()
            elif r.kind == rec.KIND_ALERT:
                self.alerts.append(r.value())
            elif r.kind == rec.KIND_METRIC:
                if self.metrics is None:
                    self.metrics = MetricRules()
                self.metrics.define(r.value())

    def _row(self, r: rec.Record) -> None:
        data = unpack_fast(r.body)
        if any(type(v) is dict for v in data.values()):
            data = flatten(data)
        self.row_count += 1
        self.last_step = r.step
        self._last_time = r.time
        if self.metrics is not None:  # step_sync fills, min/max/mean counted (format/metrics.py)
            self.metrics.row(data)
        if not self.keep_rows:  # summary only: the cheapest fold (the sidecar's, at 100k+ rows/s)
            self.latest.update(data)
            return
        if not all(type(k) is str for k in data):
            data = {str(k): v for k, v in data.items()}
        start = self.start_time if self.start_time is not None else r.time
        data["_step"] = r.step
        data["_timestamp"] = r.time
        data["_runtime"] = r.time - start
        for k in data:
            if k not in self.keys:
                self.keys[k] = None
        self.latest.update(data)
        if self.first_row is None:
            self.first_row = data
        self.last_row = data
        self.rows.append(data)

    @property
    def summary(self) -> dict[str, Any]:
        latest = self.latest
        if self.row_count and "_step" not in latest:  # folded without rows: add the last row's
            start = self.start_time if self.start_time is not None else self._last_time
            t = self._last_time
            latest = {**latest, "_step": self.last_step, "_timestamp": t, "_runtime": t - start}
        out = {str(k): v for k, v in latest.items() if k not in self.unpinned}
        if self.metrics is not None:
            out = self.metrics.apply(out)
        out = NestedReads(out)
        out.update(self.pinned)
        for name, key in STATS_KEYS.items():
            if self.stats.get(name):
                out[key] = self.stats[name]
        return out

    @property
    def dropped(self) -> int:
        return sum(int(self.stats.get(k, 0)) for k in LOSS_KEYS)

    def state(self, running: bool) -> str:
        if self.exit is not None:
            return str(
                self.exit.get("state") or ("finished" if self.exit.get("exit_code") == 0 else "failed")
            )
        return "running" if running else "crashed"


def json_safe(obj: Any) -> Any:
    """JSON has no NaN or infinities: write them as the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    return obj
