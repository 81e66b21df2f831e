"""Filters into SQL for the SQLite runs table (``query.py``), and the SQL functions they use.

``config`` and ``summary`` are msgpack blobs in ``runs`` (docs/storage.md), so SQL reads their keys
through deterministic functions registered on each reading connection: ``rs_get(blob, key)`` (any
value; lists and maps as JSON text), ``rs_num`` (numbers only, NaN as NULL), ``rs_text`` (strings
only), ``rs_has`` (the key is there), ``rs_tags(blob)`` (the tags as a JSON array for
``json_each``) and ``rs_regexp(pattern, text)`` (RE2 through ``filters.compile_regex``: linear
time, and the interpreter lock released while it matches, so no pattern stalls ingest or other
readers).  They are cached by the blob's bytes, so sorting a 10,000-run table again (the next
page, a refresh) costs a hash per run rather than an unpack.
Measured on 10,000 runs: a sort by a summary key this way takes as long as ``json_extract`` on a
JSON copy of each summary would, without a second copy of every summary to keep in step.

Every value from a request is a bound parameter; field and operator names come from
``filters.py``'s checked tree, never from the request's text.

Concurrency contract: pure functions and per-call builders; the caches (``functools.lru_cache``)
are thread-safe, so every reading thread's connection shares them.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson
import ormsgpack

from runstream.format import record as rec
from runstream_ingest.server.storage.filters import (
    MAX_REGEX_TEXT,
    MAX_VALUE_DEPTH,
    All,
    Any_,
    Cond,
    Field,
    Node,
    QueryError,
    SortKey,
    cap_depth,
    compile_regex,
)

COLUMN_SQL = {
    "id": "r.run_id", "name": "r.name", "state": "r.state", "created_at": "r.created_at",
    "heartbeat_at": "r.heartbeat_at", "finished_at": "r.finished_at", "host": "r.host",
    "program": "r.program", "group": "r.grp", "job_type": "r.job_type", "notes": "r.notes",
    "last_step": "r.last_step", "rows": "r.row_count", "exit_code": "r.exit_code",
    "world_size": "coalesce(r.world_size, 1)", "node_count": "coalesce(r.node_count, 1)",
}  # fmt: skip
NOT_NULL = frozenset(
    ("id", "state", "created_at", "heartbeat_at", "last_step", "rows", "world_size", "node_count")
)
_MISSING = object()
CACHED_VALUES = 30_000  # (blob, key) -> value per function: ~30 MB at most, a 10,000-run table thrice
_SEPARATORS = "./"


def lookup(d: Any, path: str, depth: int = 0) -> Any:
    """``d[path]``, else down nested maps where ``path`` splits at "." or "/" (``optimizer.lr``
    finds ``{"optimizer": {"lr": ...}}``); ``_MISSING`` when nothing matches.  Goes at most
    ``MAX_VALUE_DEPTH`` maps down: a run's value nested deeper is not looked into (one recursion
    per level, and the server shows nothing deeper either)."""
    if not isinstance(d, dict):
        return _MISSING
    if path in d:
        return d[path]
    if depth >= MAX_VALUE_DEPTH:
        return _MISSING
    for i, ch in enumerate(path):
        if ch in _SEPARATORS and isinstance(d.get(path[:i]), dict):
            found = lookup(d[path[:i]], path[i + 1 :], depth + 1)
            if found is not _MISSING:
                return found
    return _MISSING


def _sql_value(v: Any) -> Any:
    """A value as SQLite can hold it: NaN as NULL, lists and maps as JSON text."""
    if v is None or isinstance(v, str | bool):
        return v
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**63 else float(v)
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, dict | list | tuple):
        # cap_depth: orjson refuses nesting past 255, and a failing SQL function fails the query
        return orjson.dumps(cap_depth(v), default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return None


def _unpack(blob: bytes) -> Any:
    try:
        return ormsgpack.unpackb(blob)  # ~2.5x msgpack's speed; str keys only
    except Exception:
        try:
            return rec.unpack_body(blob)
        except Exception:  # a damaged blob reads as empty, never as a failed query
            return {}


def _value(blob: Any, key: str) -> Any:
    return lookup(_unpack(blob), key) if isinstance(blob, bytes) else _MISSING


# SQL's view of a key of a config/summary blob, cached by the blob's bytes: sorting 10,000 runs
# again (the next page, a refresh) costs a hash per run instead of an unpack, and a run whose
# summary changed has a new blob, so nothing stale is ever returned.  Registered as they are (no
# wrapper): a Python frame per row is a measurable part of a sort.
@lru_cache(maxsize=CACHED_VALUES)
def _get(blob: bytes, key: str) -> Any:
    """Any value (lists and maps as JSON text); NULL when missing or NaN."""
    v = _value(blob, key)
    return None if v is _MISSING else _sql_value(v)


@lru_cache(maxsize=CACHED_VALUES)
def _num(blob: bytes, key: str) -> Any:
    """Numbers only (bools as 0/1); NULL otherwise."""
    v = _value(blob, key)
    return _sql_value(v) if isinstance(v, int | float) else None


@lru_cache(maxsize=CACHED_VALUES)
def _tags(blob: bytes) -> str:
    """The tags as a JSON array of strings, for ``json_each``."""
    t = _unpack(blob) if isinstance(blob, bytes) else []
    return orjson.dumps([str(x) for x in t] if isinstance(t, list) else []).decode()


@lru_cache(maxsize=CACHED_VALUES)
def _text(blob: bytes, key: str) -> str | None:
    """Strings only; NULL otherwise."""
    v = _value(blob, key)
    return v if isinstance(v, str) else None


@lru_cache(maxsize=CACHED_VALUES)
def _has(blob: bytes, key: str) -> int:
    return int(_value(blob, key) is not _MISSING)


def register(c: sqlite3.Connection) -> None:
    def regexp(pattern: str, s: Any) -> int:
        # The pattern was checked when the filter was parsed; only the text's first MAX_REGEX_TEXT
        # characters are looked at, so one value costs a bounded time whatever it holds.
        if not isinstance(s, str):
            return 0
        try:
            return int(compile_regex(pattern).search(s[:MAX_REGEX_TEXT]) is not None)
        except (QueryError, UnicodeEncodeError):  # a lone surrogate in the text: no match, no 500
            return 0

    for name, n, fn in (
        ("rs_get", 2, _get), ("rs_num", 2, _num), ("rs_text", 2, _text), ("rs_has", 2, _has),
        ("rs_tags", 1, _tags), ("rs_regexp", 2, regexp),
    ):  # fmt: skip
        c.create_function(name, n, fn, deterministic=True)


# --- filters into SQL --------------------------------------------------------------------------
class Sql:
    """A WHERE clause being built: text and its parameters, in order."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def field(self, f: Field, kind: str = "get") -> str:
        """The SQL of a field's value; for config/summary ``kind`` is get, num or text."""
        if f.source == "column":
            return COLUMN_SQL[f.name]
        self.params.append(f.name)
        return f"rs_{kind}(r.{f.source}, ?)"

    def node(self, n: Node) -> str:
        if isinstance(n, All | Any_):
            joiner = " AND " if isinstance(n, All) else " OR "
            return "(" + joiner.join(self.node(p) for p in n.parts) + ")"
        return self.cond(n)

    def _kind(self, v: Any) -> str:
        return "text" if isinstance(v, str) else "num"

    def cond(self, c: Cond) -> str:
        f, op, v = c.field, c.op, c.value
        if f.source == "tags":
            return self.tags(c)
        if op == "$exists":
            if f.source == "column":
                e = f"{self.field(f)} IS NOT NULL"
            else:
                self.params.append(f.name)
                e = f"rs_has(r.{f.source}, ?)"
            return e if v else f"NOT {e}"
        if op in ("$eq", "$ne"):
            if v is None:
                e = f"{self.field(f)} IS NULL"
            else:
                e = f"coalesce({self.field(f, self._kind(v))} = ?, 0)"
                self.params.append(v)
            return e if op == "$eq" else f"NOT {e}"
        if op in ("$in", "$nin"):
            parts = []
            for kind in ("num", "text"):
                vals = [x for x in v if x is not None and self._kind(x) == kind]
                if vals:
                    parts.append(f"coalesce({self.field(f, kind)} IN ({','.join('?' * len(vals))}), 0)")
                    self.params += vals
            if None in v:
                parts.append(f"{self.field(f)} IS NULL")
            e = "(" + (" OR ".join(parts) or "0") + ")"
            return e if op == "$in" else f"NOT {e}"
        if op == "$regex":
            self.params.append(v)
            return f"rs_regexp(?, {self.field(f, 'text')})"
        sym = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
        e = f"coalesce({self.field(f, self._kind(v))} {sym} ?, 0)"
        self.params.append(v)
        return e

    def tags(self, c: Cond) -> str:
        op, v = c.op, c.value
        each = "EXISTS (SELECT 1 FROM json_each(rs_tags(r.tags)) WHERE {})"
        values = v if op in ("$in", "$nin") else (v,)
        if op not in ("$exists", "$regex") and not all(isinstance(x, str) for x in values):
            raise QueryError(f"tags {op} compares tags with strings, not {v!r}")
        if op == "$exists":
            return "json_array_length(rs_tags(r.tags)) " + ("> 0" if v else "= 0")
        if op == "$regex":
            self.params.append(v)
            return each.format("rs_regexp(?, value)")
        if op in ("$in", "$nin"):
            self.params += list(v)
            e = each.format(f"value IN ({','.join('?' * len(v))})") if v else "0"
            return e if op == "$in" else f"NOT {e}"
        if op in ("$eq", "$ne"):
            self.params.append(v)
            e = each.format("value = ?")
            return e if op == "$eq" else f"NOT {e}"
        raise QueryError(f"tags cannot be compared with {op}")

    def where(self, filters: Node | None, search: str | None) -> str:
        parts = ["r.project = ?", "r.parent IS NULL"]  # member rows of distributed runs are hidden
        if filters is not None:
            parts.append(self.node(filters))
        if search:
            s = search.lower()
            parts.append(
                "(instr(lower(coalesce(r.name, '')), ?) OR instr(lower(r.run_id), ?)"
                " OR EXISTS (SELECT 1 FROM json_each(rs_tags(r.tags)) WHERE instr(lower(value), ?)))"
            )
            self.params += [s, s, s]
        return " AND ".join(parts)

    def order(self, keys: Sequence[SortKey]) -> str:
        out = []
        for k in keys:
            nulls = "" if k.field.source == "column" and k.field.name in NOT_NULL else " NULLS LAST"
            out.append(self.field(k.field) + (" DESC" if k.descending else "") + nulls)
        return ", ".join([*out, "r.id DESC"])
