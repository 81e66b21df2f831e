"""The read side over HTTP JSON (docs/http-api.md), served by ``runstream server`` on the same
event loop as gRPC ingest.

The address users configure (``RUNSTREAM_HOST=http://127.0.0.1:P``) is this HTTP port;
``GET /api/v1/info`` tells clients the gRPC port, so nobody juggles two addresses.

Concurrency contract: handlers run on the event loop; storage reads go through the ``readers``
thread pool (the storage gives each reading thread its own connection).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import web

from runstream.reader import json_safe

from ..storage.base import Storage
from .auth import Authenticator, AuthError

T = TypeVar("T")
MAX_PAGE = 10_000
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
log = logging.getLogger("runstream.server.http")
_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error in one shape, ``{"error": CODE, "message": ...}``: aiohttp's own (no route,
    wrong method) and unexpected exceptions (500, details in the server log) included."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException as e:
        if e.status < 400 or e.content_type == "application/json":
            raise
        code = _CODES.get(e.status) or HTTPStatus(e.status).name
        err = _error(e.status, code, e.reason)
        if "Allow" in e.headers:
            err.headers["Allow"] = e.headers["Allow"]
        raise err from None
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        raise _error(500, "INTERNAL", "internal server error (see the server log)") from None


def run_json(info: Any) -> dict[str, Any]:
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
        "host": info.host,
        "program": info.program,
        "tags": info.tags,
        "group": info.group,
        "job_type": info.job_type,
        "notes": info.notes,
        "config": json_safe(info.config),
        "summary": json_safe(info.summary),
        "last_step": info.last_step,
        "rows": info.row_count,
    }


class HttpApi:
    def __init__(
        self, storage: Storage, auth: Authenticator, readers: ThreadPoolExecutor, info: dict[str, Any]
    ) -> None:
        self.storage = storage
        self.auth = auth
        self.readers = readers
        self.info = info

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.readers, fn, *args)

    def _authorise(self, request: web.Request, entity: str | None) -> None:
        try:
            self.auth.check(list(request.headers.items()), entity)
        except AuthError as e:
            status = 401 if e.code.name == "UNAUTHENTICATED" else 403
            raise _error(status, e.code.name, e.message) from None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors])
        app.add_routes(
            [
                web.get("/api/v1/info", self.get_info),
                web.get("/api/v1/projects/{entity}", self.get_projects),
                web.get("/api/v1/runs/{entity}/{project}", self.get_runs),
                web.get("/api/v1/runs/{entity}/{project}/{run_id}", self.get_run),
                web.get("/api/v1/runs/{entity}/{project}/{run_id}/history", self.get_history),
            ]
        )
        return app

    async def get_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.info)

    async def get_projects(self, request: web.Request) -> web.Response:
        entity = request.match_info["entity"]
        self._authorise(request, entity)
        return web.json_response(
            {"entity": entity, "projects": await self._read(self.storage.list_projects, entity)}
        )

    async def get_runs(self, request: web.Request) -> web.Response:
        entity, project = request.match_info["entity"], request.match_info["project"]
        self._authorise(request, entity)
        limit = _int(request, "limit", 100, 1, MAX_PAGE)
        offset = _int(request, "offset", 0, 0, None)
        runs = await self._read(self.storage.list_runs, entity, project, limit, offset)
        return web.json_response({"runs": [run_json(r) for r in runs]})

    async def get_run(self, request: web.Request) -> web.Response:
        entity, project, run_id = (request.match_info[k] for k in ("entity", "project", "run_id"))
        self._authorise(request, entity)
        info = await self._read(self.storage.get_run, entity, project, run_id)
        if info is None:
            raise _error(404, "NOT_FOUND", f"no run {entity}/{project}/{run_id}")
        return web.json_response(run_json(info))

    async def get_history(self, request: web.Request) -> web.Response:
        """One page of rows in step order; ``next_min_step`` continues (absent on the last page)."""
        entity, project, run_id = (request.match_info[k] for k in ("entity", "project", "run_id"))
        self._authorise(request, entity)
        keys_arg = request.query.get("keys")
        keys = [k for k in keys_arg.split(",") if k] if keys_arg else None
        keys = keys or None  # "?keys=,," asks for no key in particular: every key
        min_step = _int(request, "min_step", None, None, None)
        max_step = _int(request, "max_step", None, None, None)
        page = _int(request, "page_size", 1000, 1, MAX_PAGE)

        def first_page() -> list[dict[str, Any]]:
            pages = self.storage.scan_history(entity, project, run_id, keys, min_step, max_step, page)
            return next(iter(pages), [])

        if await self._read(self.storage.get_run, entity, project, run_id) is None:
            raise _error(404, "NOT_FOUND", f"no run {entity}/{project}/{run_id}")
        rows = await self._read(first_page)
        body: dict[str, Any] = {"rows": json_safe(rows)}
        if len(rows) == page:
            body["next_min_step"] = rows[-1]["_step"] + 1
        return web.json_response(body)


def _error(status: int, code: str, message: str) -> web.HTTPException:
    exc = web.HTTPException(text=web.json_response({"error": code, "message": message}).text)
    exc.set_status(status)
    exc.content_type = "application/json"
    return exc


def _int(request: web.Request, name: str, default: Any, lo: int | None, hi: int | None) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _error(400, "INVALID_ARGUMENT", f"{name} must be an integer, not {raw!r}") from None
    lo = I64_MIN if lo is None else lo
    hi = I64_MAX if hi is None else hi
    if not lo <= value <= hi:
        raise _error(400, "INVALID_ARGUMENT", f"{name}={value} is outside [{lo}, {hi}]")
    return value
