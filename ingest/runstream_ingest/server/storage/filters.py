"""The runs-table query language: filters, sort orders and group keys, parsed and checked.

A filter is a dict in MongoDB's style, as ``wandb.Api().runs(filters=...)`` takes (docs/http-api.md,
"Filters")::

    {"config.lr": {"$gt": 0.001}, "state": "finished",
     "$or": [{"tags": "baseline"}, {"name": {"$regex": "^sweep-"}}]}

``parse_filter`` turns it into a small tree (``Cond``, ``All``, ``Any_``) and refuses anything it
does not know with a ``QueryError`` naming the field or operator; backends compile the tree to
their own query language (``sqlite/query.py``).  Nothing here touches a database.

``$regex`` patterns are RE2's (``compile_regex``), not Python's ``re``: a backtracking engine takes
exponential time on patterns such as ``^(a+)+$`` and holds the interpreter lock meanwhile, so one
reader stalled ingest and every other request (issue 10 item 6).  RE2 matches in time linear in the
text and releases the lock while it matches; what it does not support (backreferences, lookaround)
is a 400 naming the construct.

Pure functions over their arguments: any thread may call them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import re2

# Columns of a run, by the name a filter or sort uses; aliases map W&B's names onto them.
COLUMNS = frozenset(
    ("id", "name", "state", "created_at", "heartbeat_at", "finished_at", "host", "program", "group",
     "job_type", "notes", "last_step", "rows", "exit_code", "world_size", "node_count")
)  # fmt: skip
ALIASES = {
    "display_name": "name",
    "run_id": "id",
    "createdAt": "created_at",
    "summary_metrics": "summary",
    "runtime": "summary._runtime",
}
TIME_COLUMNS = frozenset(("created_at", "heartbeat_at", "finished_at"))
SOURCES = ("config", "summary")
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$regex", "$exists")
MAX_CONDITIONS = 200  # a filter is written by hand or by the UI's builder; more is a mistake
MAX_REGEX = 1000  # characters of a $regex pattern
MAX_REGEX_TEXT = 100_000  # characters of a value a $regex looks at: the first ones (a run's notes fit)
MAX_NESTING = 32  # $and/$or inside each other; the parser recurses once per level
I64_MIN, I64_MAX = -(2**63), 2**63 - 1  # what SQLite's INTEGER (and a bound parameter) holds
# Configs and summaries are shown, flattened and sorted on down to this depth; deeper dicts and
# lists read as CUT_NOTE (docs/http-api.md, "Limits").  The SDK refuses deeper values; older
# clients may have stored them, and one such run must not break its project's pages.
MAX_VALUE_DEPTH = 64
CUT_NOTE = f"<nested deeper than {MAX_VALUE_DEPTH} levels: not shown>"

Scalar = str | int | float | bool | None


class QueryError(ValueError):
    """A filter, sort order or group key the server does not understand; the message says what."""


@dataclass(frozen=True, slots=True)
class Field:
    """What a condition looks at: a run column, a config/summary key, or the tags."""

    source: str  # "column", "config", "summary" or "tags"
    name: str  # the column or key ("" for tags)

    def __str__(self) -> str:
        return {"column": self.name, "tags": "tags"}.get(self.source) or f"{self.source}.{self.name}"


@dataclass(frozen=True, slots=True)
class Cond:
    field: Field
    op: str  # one of OPERATORS
    value: Any  # a scalar; a list of scalars for $in/$nin; a compiled pattern's text for $regex


@dataclass(frozen=True, slots=True)
class All:
    parts: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Any_:
    parts: tuple[Node, ...]


Node = Cond | All | Any_


@dataclass(frozen=True, slots=True)
class SortKey:
    field: Field
    descending: bool


def parse_field(text: str) -> Field:
    """``config.lr``, ``summary.train/loss``, ``tags`` or a column such as ``created_at``."""
    if not isinstance(text, str) or not text:
        raise QueryError(f"a field must be a non-empty string, not {text!r}")
    text = ALIASES.get(text, text)
    if text == "tags":
        return Field("tags", "")
    if text in COLUMNS:
        return Field("column", text)
    head, dot, key = text.partition(".")
    head = ALIASES.get(head, head)
    if dot and head in SOURCES:
        if not key:
            raise QueryError(f"field {text!r} names no key after {head!r}")
        return Field(head, key)
    cols = ", ".join(sorted(COLUMNS))
    raise QueryError(f"unknown field {text!r}: use config.<key>, summary.<key>, tags or one of {cols}")


def _scalar(field: Field, op: str, v: Any) -> Scalar:
    if field.source == "column" and field.name in TIME_COLUMNS and isinstance(v, str):
        try:
            t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise QueryError(f"{field} {op}: {v!r} is not a number of seconds nor an ISO 8601 time") from None
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(v, int) and not isinstance(v, bool) and not I64_MIN <= v <= I64_MAX:
        raise QueryError(
            f"{field} {op}: {v} does not fit a 64-bit integer (use a float for a value this large)"
        )
    if v is None or isinstance(v, str | int | float | bool):
        return v
    raise QueryError(f"{field} {op} takes a number, string, bool or null, not {type(v).__name__}")


def _cond(field: Field, op: str, v: Any) -> Cond:
    if op not in OPERATORS:
        raise QueryError(f"unknown operator {op!r} on {field} (known: {', '.join(OPERATORS)})")
    if op in ("$in", "$nin"):
        if not isinstance(v, list | tuple):
            raise QueryError(f"{field} {op} takes a list, not {type(v).__name__}")
        return Cond(field, op, tuple(_scalar(field, op, x) for x in v))
    if op == "$regex":
        if not isinstance(v, str) or len(v) > MAX_REGEX:
            raise QueryError(f"{field} $regex takes a pattern string of at most {MAX_REGEX} characters")
        try:
            compile_regex(v)
        except QueryError as e:
            raise QueryError(f"{field} $regex {v!r} {e}") from None
        return Cond(field, op, v)
    if op == "$exists":
        if not isinstance(v, bool):
            raise QueryError(f"{field} $exists takes true or false, not {v!r}")
        return Cond(field, op, v)
    if op in ("$gt", "$gte", "$lt", "$lte") and (v is None or field.source == "tags"):
        why = " (tags are compared with $eq, $in or $regex)" if field.source == "tags" else ""
        raise QueryError(f"{field} {op} needs a number or string{why}")
    return Cond(field, op, _scalar(field, op, v))


# What RE2 refuses that Python's re (and so a user) may write, by how RE2's message quotes it: a
# name for it, and what to write instead where there is something.
_UNSUPPORTED = (
    ("(?=", "lookahead (?=...)", ""),
    ("(?!", "negative lookahead (?!...)", ""),
    ("(?<=", "lookbehind (?<=...)", ""),
    ("(?<!", "negative lookbehind (?<!...)", ""),
    ("(?>", "an atomic group (?>...)", ""),
    ("(?#", "a comment (?#...)", ""),
    ("(?x", "verbose mode (?x)", ""),
    ("\\Z", "\\Z", "; write \\z for the end of the text"),
    ("\\u", "\\u", "; write \\x{...} for a code point"),
    ("\\U", "\\U", "; write \\x{...} for a code point"),
    ("\\N", "\\N{...}", "; write the character itself or \\x{...}"),
    ("++", "a possessive quantifier ++", ""),
    ("*+", "a possessive quantifier *+", ""),
    ("?+", "a possessive quantifier ?+", ""),
)


@lru_cache(maxsize=64)
def compile_regex(pattern: str) -> Any:
    """A ``$regex`` pattern compiled by RE2 (``search(text)`` as ``re``'s), or a QueryError whose
    message completes "<field> $regex <pattern> ...".  Cached: the reading threads share compiled
    patterns (RE2 matches one pattern from several threads at once)."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except UnicodeEncodeError:
        raise QueryError("is not a valid regular expression: it holds a lone surrogate") from None
    except re2.error as e:
        raw = e.args[0] if e.args else b""
        why = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    construct = why.rpartition(": ")[2]
    name, hint = next(((n, h) for start, n, h in _UNSUPPORTED if construct.startswith(start)), ("", ""))
    if construct[:1] == "\\" and construct[1:2].isdigit():
        name = f"a backreference {construct}"
    elif construct.startswith("(?P") and "(?P=" in pattern:
        name = "a backreference (?P=name)"
    if not name:
        raise QueryError(f"is not a valid regular expression: {why}")
    raise QueryError(
        f"uses {name}, which the server's regular expressions do not support (they are RE2's, matched"
        f' in linear time: no backreferences or lookaround{hint}; docs/http-api.md, "Filters")'
    )


def _re2_options() -> Any:
    o = re2.Options()
    o.log_errors = False  # a refused pattern is the user's 400, not a line on the server's stderr
    # RE2's memory per pattern (program and match cache; 8 MiB by default): with this cache and
    # re2's own (128 patterns) at most ~400 MiB.  Measured: no slower on 100,000-character texts.
    o.max_mem = 2 << 20
    return o


_RE2_OPTIONS = _re2_options()


def parse_filter(spec: Any) -> Node | None:
    """The tree of a filter dict; None for an empty one.  Raises QueryError."""
    if spec is None:
        return None
    count = [0]
    node = _parse(spec, count, "filters", 0)
    return None if isinstance(node, All) and not node.parts else node


def _parse(spec: Any, count: list[int], where: str, depth: int) -> Node:
    if depth > MAX_NESTING:
        raise QueryError(f"a filter may nest $and/$or at most {MAX_NESTING} levels deep")
    if not isinstance(spec, dict):
        raise QueryError(f"{where} must be an object of conditions, not {type(spec).__name__}")
    parts: list[Node] = []
    for key, v in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(v, list) or not v:
                raise QueryError(f"{key} takes a non-empty list of filters")
            subs = tuple(_parse(s, count, f"an item of {key}", depth + 1) for s in v)
            parts.append(All(subs) if key == "$and" else Any_(subs))
            continue
        if isinstance(key, str) and key.startswith("$"):
            raise QueryError(f"unknown operator {key!r} at the top of a filter (use $and or $or, or a field)")
        field = parse_field(key)
        if isinstance(v, dict) and v and all(isinstance(k, str) and k.startswith("$") for k in v):
            conds = [_cond(field, op, x) for op, x in v.items()]
        elif isinstance(v, dict):
            raise QueryError(f"{field}: an object of operators ($gt, $in, ...) or a value, not {v!r}")
        else:
            conds = [_cond(field, "$eq", v)]
        count[0] += len(conds)
        parts += conds
        if count[0] > MAX_CONDITIONS:
            raise QueryError(f"a filter may hold at most {MAX_CONDITIONS} conditions")
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def parse_order(text: str | None) -> list[SortKey]:
    """``"-summary.acc"``, ``"+created_at"`` or several, comma-separated; default newest first."""
    if not text:
        return [SortKey(Field("column", "created_at"), True)]
    keys = []
    for part in text.split(","):
        part = part.strip()
        desc = part.startswith("-")
        name = part[1:] if part[:1] in "+-" else part
        f = parse_field(name)
        if f.source == "tags":
            raise QueryError("runs cannot be sorted by tags")
        keys.append(SortKey(f, desc))
    if len(keys) > 8:
        raise QueryError("at most 8 sort keys")
    return keys


def parse_group(text: str) -> Field:
    """A group key: a column or a config/summary key (not tags)."""
    f = parse_field(text)
    if f.source == "tags":
        raise QueryError("runs cannot be grouped by tags; filter on a tag instead")
    return f


# --- values read back -------------------------------------------------------------------------
def cap_depth(value: Any, limit: int = MAX_VALUE_DEPTH) -> Any:
    """``value`` with every dict or list nested more than ``limit`` deep replaced by ``CUT_NOTE``:
    what the server shows, flattens and serialises, so no stored value can make a reader recurse
    past Python's (or orjson's) limit.  Iterative; ``value`` itself, uncopied, when nothing is
    that deep (the common case: a pass that skips scalars)."""
    if not _deeper_than(value, limit):
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, int, Any, Any]] = [(value, 0, root, 0)]
    while stack:
        src, depth, parent, key = stack.pop()
        if isinstance(src, dict | list | tuple):
            if depth >= limit:
                parent[key] = CUT_NOTE
                continue
            if isinstance(src, dict):
                dst: Any = dict.fromkeys(src)  # the keys now, in order; the values as they come
                stack.extend((v, depth + 1, dst, k) for k, v in src.items())
            else:
                dst = [None] * len(src)
                stack.extend((v, depth + 1, dst, i) for i, v in enumerate(src))
            parent[key] = dst
        else:
            parent[key] = src
    return root[0]


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list | tuple) else ()
        for c in children:
            if isinstance(c, dict | list | tuple):
                if depth + 1 >= limit:
                    return True
                stack.append((c, depth + 1))
    return False
