"""Pieces every HTTP handler uses: JSON errors, query parameters, run and series JSON.

Pure functions (and one aiohttp middleware); any handler may call them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from runstream.format.fold import json_safe
from runstream_ingest.server.storage.filters import QueryError, cap_depth
from runstream_ingest.server.storage.history.series import Series
from runstream_ingest.server.storage.interface import RunInfo

MAX_PAGE = 10_000
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
log = logging.getLogger("runstream.server.http")
CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "FAILED_PRECONDITION",
    501: "UNIMPLEMENTED",
}


def error(status: int, code: str, message: str) -> web.HTTPException:
    exc = web.HTTPException(text=json.dumps({"error": code, "message": message}))
    exc.set_status(status)
    exc.content_type = "application/json"
    return exc


def bad(message: str) -> web.HTTPException:
    return error(400, "INVALID_ARGUMENT", message)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error in one shape, ``{"error": CODE, "message": ...}``: aiohttp's own (no route,
    wrong method), a bad query (QueryError) and unexpected exceptions (500, details in the server
    log) included."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException as e:
        if e.status < 400 or e.content_type == "application/json":
            raise
        code = CODES.get(e.status) or HTTPStatus(e.status).name
        err = error(e.status, code, e.reason)
        if "Allow" in e.headers:
            err.headers["Allow"] = e.headers["Allow"]
        raise err from None
    except QueryError as e:
        raise bad(str(e)) from None
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        raise error(500, "INTERNAL", "internal server error (see the server log)") from None


def dumps(obj: Any) -> str:
    """orjson (several times faster on series) where it can; ints past 64 bits go through json."""
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return json.dumps(obj)


def respond(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=dumps)


def int_param(request: web.Request, name: str, default: Any, lo: int | None, hi: int | None) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad(f"{name} must be an integer, not {raw!r}") from None
    lo = I64_MIN if lo is None else lo
    hi = I64_MAX if hi is None else hi
    if not lo <= value <= hi:
        raise bad(f"{name}={value} is outside [{lo}, {hi}]")
    return value


def float_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise bad(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise bad(f"{name} must be finite, not {raw!r}")
    return value


def list_param(request: web.Request, name: str, most: int) -> list[str]:
    """A comma-separated list, without empty items and duplicates, in the order given."""
    items = list(dict.fromkeys(k for k in request.query.get(name, "").split(",") if k))
    if len(items) > most:
        raise bad(f"{name} names {len(items)} items; at most {most} per request")
    return items


def json_param(request: web.Request, name: str) -> Any:
    raw = request.query.get(name)
    if not raw:
        return None
    return _loads(raw, name)


async def json_body(request: web.Request, expected: str) -> Any:
    """The request's JSON body; a 400 saying ``expected`` when it is not JSON, and saying so when
    it is nested too deeply to parse."""
    try:
        raw = await request.text()
    except UnicodeDecodeError:
        raise bad(f"the body must be {expected}, in UTF-8") from None
    return _loads(raw, "the body", expected)


def _loads(raw: str, what: str, expected: str | None = None) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        # Python's JSON parser recurses once per level: a body of 100,000 "[" is a few hundred
        # kilobytes and must be the client's error, not the server's.
        raise bad(
            f"{what} is nested too deeply to parse (JSON arrays and objects inside each other)"
        ) from None
    except ValueError as e:
        raise bad(
            f"{what} must be {expected}: {e}" if expected else f"{what} is not valid JSON: {e}"
        ) from None


def run_json(info: RunInfo) -> dict[str, Any]:
    runtime = info.summary.get("_runtime")
    return {
        "entity": info.entity,
        "project": info.project,
        "id": info.run_id,
        "path": f"{info.entity}/{info.project}/{info.run_id}",
        "name": info.name,
        "state": info.state,
        "exit_code": info.exit_code,
        "created_at": info.created_at,
        "heartbeat_at": info.heartbeat_at,
        "finished_at": info.finished_at,
        "runtime": json_safe(runtime) if isinstance(runtime, int | float) else None,
        "host": info.host,
        "program": info.program,
        "tags": info.tags,
        "group": info.group,
        "job_type": info.job_type,
        "notes": info.notes,
        # capped: json_safe and the JSON writers recurse, and one run's value nested hundreds of
        # levels deep must not fail every page that lists it (docs/http-api.md, "Limits")
        "config": json_safe(cap_depth(info.config)),
        "summary": json_safe(cap_depth(info.summary)),
        "last_step": info.last_step,
        "rows": info.row_count,
        # a distributed run's ranks and nodes (docs/distributed.md); 1 and 1 for one process
        "world_size": info.world_size or 1,
        "node_count": info.node_count or 1,
        "meta": json_safe(cap_depth(info.meta)),
        # define_metric's definitions (docs/metrics.md): the dashboard's x axes and hidden charts
        "metrics": json_safe(cap_depth(info.meta.get("_runstream/metrics") or {})),
    }


def _finite(values: Iterable[Any]) -> list[Any]:
    out = list(values)
    if not all(v is None or math.isfinite(v) for v in out):
        out = json_safe(out)
    return out


def series_json(s: Series) -> dict[str, Any]:
    fix: Callable[[Iterable[Any]], list[Any]] = _finite
    return {
        "exact": s.exact,
        "x": fix(s.x),
        "x_last": fix(s.x_last),
        "min": fix(s.min),
        "max": fix(s.max),
        "mean": fix(s.mean),
        "count": s.count,
    }
