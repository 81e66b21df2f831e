"""Alerts over HTTP (docs/http-api.md, "Alerts"): a run's, and a project's, newest first, each
with its webhook delivery state.

Concurrency contract: as ``api.py`` (handlers on the event loop, storage reads on the
``readers`` pool).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from runstream.format.fold import json_safe
from runstream_ingest.server.http.util import MAX_PAGE, error, int_param, respond
from runstream_ingest.server.storage.interface import RunNotFound
from runstream_ingest.server.storage.sqlite import alerts as st
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage

if TYPE_CHECKING:
    from runstream_ingest.server.http.api import HttpApi


def add_routes(app: web.Application, api: HttpApi) -> None:
    """``GET /api/v1/runs/{entity}/{project}/{run_id}/alerts`` and
    ``GET /api/v1/alerts/{entity}/{project}``; both take ``limit`` (1..10000, default 100) and
    ``offset`` and answer ``{"alerts": [...], "total": n, "limit", "offset"}``."""

    async def alerts(request: web.Request, run_id: str | None, entity: str, project: str) -> web.Response:
        if not isinstance(api.storage, SqliteStorage):
            raise error(501, "UNIMPLEMENTED", "this storage backend keeps no alerts")
        limit = int_param(request, "limit", 100, 1, MAX_PAGE)
        offset = int_param(request, "offset", 0, 0, 2**62)
        try:
            found, total = await api._read(
                st.list_alerts, api.storage, entity, project, run_id, limit, offset
            )
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        return respond(
            {"alerts": [json_safe(a.as_json()) for a in found], "total": total, "limit": limit,
             "offset": offset}
        )  # fmt: skip

    async def run_alerts(request: web.Request) -> web.Response:
        entity, project, run_id = api._where(request)
        return await alerts(request, run_id, entity, project)

    async def project_alerts(request: web.Request) -> web.Response:
        entity, project = request.match_info["entity"], request.match_info["project"]
        api._authorise(request, entity)
        return await alerts(request, None, entity, project)

    app.add_routes(
        [
            web.get("/api/v1/runs/{entity}/{project}/{run_id}/alerts", run_alerts),
            web.get("/api/v1/alerts/{entity}/{project}", project_alerts),
        ]
    )
