"""The read side over HTTP JSON (docs/http-api.md), served by ``runstream server`` on the same
event loop as gRPC ingest: projects, the runs table (filters, sort, paging, groups), runs and
their edits, sign-in for browsers and live updates.  Charts' data is in ``data.py``.

The address users configure (``RUNSTREAM_HOST=http://127.0.0.1:P``) is this HTTP port;
``GET /api/v1/info`` tells clients the gRPC port, so nobody juggles two addresses.

Auth: programs send an API key header on every request; a browser signs in once
(``POST /api/v1/session``) and then sends a cookie, and must echo its CSRF token on every request
that changes something (``sessions.py``).  A request that changes something and comes from another
origin (its ``Origin`` header names another host) is refused whatever it carries.

Concurrency contract: handlers run on the event loop; storage reads go through the ``readers``
thread pool (each reading thread has its own connections), edits through the ``writer`` executor
(the storage's one writer thread).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web

from runstream_ingest.server.auth.guard import Authenticator, AuthError
from runstream_ingest.server.auth.sessions import COOKIE, CSRF_HEADER, TTL_S, Session, Sessions
from runstream_ingest.server.http.alerts import add_routes as add_alert_routes
from runstream_ingest.server.http.blobs import BlobStore, FileRoutes
from runstream_ingest.server.http.blobs import add_routes as add_file_routes
from runstream_ingest.server.http.data import RunData
from runstream_ingest.server.http.live import KEEPALIVE_S, MIN_INTERVAL_S, LiveHub
from runstream_ingest.server.http.ranks import check_run_id, distributed_json, rank_param
from runstream_ingest.server.http.util import (
    MAX_PAGE,
    bad,
    error,
    int_param,
    json_body,
    json_errors,
    json_param,
    list_param,
    respond,
    run_json,
)
from runstream_ingest.server.storage import filters as fl
from runstream_ingest.server.storage.interface import (
    RunBusy,
    RunGroup,
    RunNotFound,
    RunQueries,
    RunQuery,
    Storage,
)
from runstream_ingest.server.web import add_routes as add_web_routes

T = TypeVar("T")
KEY_HEADERS = ("authorization", "x-runstream-api-key")
WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))
MAX_NAME, MAX_TAG, MAX_TAGS, MAX_NOTES = 128, 128, 100, 100_000


def _open_queries(storage: Storage) -> RunQueries | None:
    from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
    from runstream_ingest.server.storage.sqlite.query import SqliteQueries

    return SqliteQueries(storage) if isinstance(storage, SqliteStorage) else None


class HttpApi(RunData, FileRoutes):
    def __init__(
        self,
        storage: Storage,
        auth: Authenticator,
        readers: ThreadPoolExecutor,
        info: dict[str, Any],
        *,
        writer: ThreadPoolExecutor | None = None,
        live: LiveHub | None = None,
        queries: RunQueries | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.storage = storage
        self.auth = auth
        self.readers = readers
        self.writer = writer or readers  # the storage serialises writes itself either way
        self.info = info
        self.live = live or LiveHub()
        self.queries = queries if queries is not None else _open_queries(storage)
        self.sessions = Sessions()
        self.blobs = blobs  # files kept with runs (blobs.py); None: their routes answer 501
        self._blob_locks: dict[str, asyncio.Lock] = {}
        self._closing = False

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.readers, fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    def _q(self) -> RunQueries:
        if self.queries is None:
            raise error(501, "UNIMPLEMENTED", "this storage backend has no runs queries")
        return self.queries

    # --- who is asking -----------------------------------------------------------------------
    def _authorise(self, request: web.Request, entity: str | None) -> Session | None:
        """Checks the request's key or session for ``entity``; for a request that changes
        something, also its origin and (with a session) its CSRF token."""
        write = request.method in WRITES
        if write:
            _same_origin(request)
        s = None
        if not any(h in request.headers for h in KEY_HEADERS) and COOKIE in request.cookies:
            s = self.sessions.get(request.cookies[COOKIE])
            # Without auth a stale cookie (a restarted server) grants nothing and costs nothing.
            if s is None and self.auth.required:
                raise error(401, "UNAUTHENTICATED", "the session has expired or ended: sign in again")
        if s is not None:
            if s.key is not None and not self.auth.store.is_active(s.key.id):
                self.sessions.end(s.id)
                raise error(401, "UNAUTHENTICATED", f"API key {s.key.id} was revoked: sign in again")
            if write and not s.csrf_ok(request.headers.get(CSRF_HEADER)):
                raise error(
                    403,
                    "PERMISSION_DENIED",
                    f"a request made with the session cookie needs its {CSRF_HEADER}",
                )
            if entity is not None and s.entity is not None and entity != s.entity:
                assert s.key is not None
                raise error(
                    403,
                    "PERMISSION_DENIED",
                    f"API key {s.key.id} belongs to entity {s.entity!r}, not {entity!r}",
                )
            return s
        try:
            self.auth.check(list(request.headers.items()), entity)
        except AuthError as e:
            raise error(e.http_status, e.code.name, e.message) from None
        return None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors])
        run = "/api/v1/runs/{entity}/{project}/{run_id}"
        app.add_routes(
            [
                web.get("/api/v1/info", self.get_info),
                web.get("/api/v1/session", self.get_session),
                web.post("/api/v1/session", self.post_session),
                web.delete("/api/v1/session", self.delete_session),
                web.get("/api/v1/projects", self.get_all_projects),
                web.get("/api/v1/projects/{entity}", self.get_projects),
                web.get("/api/v1/runs/{entity}/{project}", self.get_runs),
                web.get("/api/v1/groups/{entity}/{project}", self.get_groups),
                web.get("/api/v1/keys/{entity}/{project}", self.get_keys),
                web.get("/api/v1/events/{entity}/{project}", self.get_events),
                web.get("/api/v1/series/{entity}/{project}", self.get_multi_series),
                web.get(run, self.get_run),
                web.patch(run, self.patch_run),
                web.delete(run, self.delete_run),
                web.get(run + "/history", self.get_history),
                web.get(run + "/series", self.get_series),
                web.get(run + "/keys", self.get_history_keys),
                web.get(run + "/console", self.get_console),
                web.get(run + "/system", self.get_system),
                web.get(run + "/files", self.get_files),
            ]
        )
        add_file_routes(app, self)  # blobs and run files (blobs.py)
        add_alert_routes(app, self)  # a run's and a project's alerts (alerts.py)
        add_web_routes(app)  # the dashboard: / and /static/... (server/web/)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _shutdown(self, app: web.Application) -> None:
        """Open event streams end now, so that stopping the server never waits on a browser."""
        self._closing = True
        for subs in list(self.live._subs.values()):
            for sub in list(subs):
                sub.wake.set()

    async def _cleanup(self, app: web.Application) -> None:
        if self.queries is not None:
            self.queries.close()

    # --- server and session ------------------------------------------------------------------
    async def get_info(self, request: web.Request) -> web.Response:
        return respond(self.info)

    def _session_json(self, s: Session) -> dict[str, Any]:
        return {
            "entity": s.entity,
            "csrf_token": s.csrf,
            "expires_at": s.expires_at,
            "auth": self.auth.required,
        }

    async def post_session(self, request: web.Request) -> web.Response:
        """Sign in: the key in the body (``{"api_key": ...}``) or a key header; sets the cookie."""
        _same_origin(request)
        key = None
        if request.can_read_body:
            body = await json_body(request, 'JSON: {"api_key": "rsk_..."}')
            if not isinstance(body, dict) or not isinstance(body.get("api_key", ""), str):
                raise bad("the body must be a JSON object with a string api_key")
            key = body.get("api_key") or None
        headers = [("authorization", f"Bearer {key}")] if key else list(request.headers.items())
        try:
            info = self.auth.check(headers, None)
        except AuthError as e:
            raise error(e.http_status, e.code.name, e.message) from None
        old = request.cookies.get(COOKIE)
        if old:
            self.sessions.end(old)
        s = self.sessions.create(info)
        resp = respond(self._session_json(s))
        resp.set_cookie(
            COOKIE,
            s.id,
            max_age=int(TTL_S),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return resp

    async def get_session(self, request: web.Request) -> web.Response:
        s = self.sessions.get(request.cookies.get(COOKIE))
        if s is None:
            raise error(401, "UNAUTHENTICATED", "not signed in (POST /api/v1/session with an API key)")
        self._authorise(request, None)
        return respond(self._session_json(s))

    async def delete_session(self, request: web.Request) -> web.Response:
        s = self._authorise(request, None)
        if s is not None:
            self.sessions.end(s.id)
        resp = respond({"signed_out": s is not None})
        resp.del_cookie(COOKIE, path="/")
        return resp

    # --- projects and the runs table ---------------------------------------------------------
    async def get_all_projects(self, request: web.Request) -> web.Response:
        """Every project the caller may read: with auth, its key's entity's; without, all."""
        s = self._authorise(request, None)
        if s is not None:
            entity = s.entity
        else:
            try:
                key = self.auth.check(list(request.headers.items()), None)
            except AuthError as e:
                raise error(e.http_status, e.code.name, e.message) from None
            entity = None if key is None else key.entity
        return respond({"projects": await self._read(self._q().all_projects, entity)})

    async def get_projects(self, request: web.Request) -> web.Response:
        entity = request.match_info["entity"]
        self._authorise(request, entity)
        return respond({"entity": entity, "projects": await self._read(self.storage.list_projects, entity)})

    def _table_args(self, request: web.Request) -> tuple[fl.Node | None, str | None]:
        filters = fl.parse_filter(json_param(request, "filters"))
        search = request.query.get("search") or None
        if search is not None and len(search) > 1000:
            raise bad("search is longer than 1000 characters")
        return filters, search

    async def get_runs(self, request: web.Request) -> web.Response:
        entity, project = request.match_info["entity"], request.match_info["project"]
        self._authorise(request, entity)
        filters, search = self._table_args(request)
        query = RunQuery(
            filters,
            tuple(fl.parse_order(request.query.get("order"))),
            search,
            int_param(request, "limit", 100, 1, MAX_PAGE),
            int_param(request, "offset", 0, 0, None),
        )
        page = await self._read(self._q().query_runs, entity, project, query)
        return respond(
            {"runs": [run_json(r) for r in page.runs], "total": page.total, "limit": query.limit,
             "offset": query.offset}
        )  # fmt: skip

    async def get_groups(self, request: web.Request) -> web.Response:
        entity, project = request.match_info["entity"], request.match_info["project"]
        self._authorise(request, entity)
        by = request.query.get("by")
        if not by:
            raise bad("by is required: the key to group runs by, such as config.optimizer")
        group = fl.parse_group(by)
        metrics = [fl.parse_field(m) for m in list_param(request, "metrics", 20)]
        if any(m.source == "tags" for m in metrics):
            raise bad("tags are not a metric")
        filters, search = self._table_args(request)
        groups, n = await self._read(self._q().group_runs, entity, project, group, metrics, filters, search)
        return respond(
            {"by": str(group), "groups": [_group_json(g) for g in groups], "total_groups": n,
             "truncated": n > len(groups)}
        )  # fmt: skip

    async def get_keys(self, request: web.Request) -> web.Response:
        entity, project = request.match_info["entity"], request.match_info["project"]
        self._authorise(request, entity)
        keys = await self._read(self._q().run_keys, entity, project)
        return respond({**keys, "columns": sorted(fl.COLUMNS)})

    # --- one run -----------------------------------------------------------------------------
    def _where(self, request: web.Request) -> tuple[str, str, str]:
        entity, project, run_id = (request.match_info[k] for k in ("entity", "project", "run_id"))
        self._authorise(request, entity)
        check_run_id(entity, project, run_id)
        return entity, project, run_id

    async def get_run(self, request: web.Request) -> web.Response:
        """The run; a distributed run's with its ranks and nodes; ``rank=N`` rank N's own row."""
        entity, project, run_id = self._where(request)
        rank = rank_param(request)
        info = await self._read(self.storage.get_run, entity, project, run_id)
        if info is None:
            raise error(404, "NOT_FOUND", f"no run {entity}/{project}/{run_id}")
        if rank:  # rank N's own state, config, summary, ... under the run's id and path
            row_id = await self._target(entity, project, run_id, rank)
            own = await self._read(self.storage.get_run, entity, project, row_id)
            if own is None:
                raise error(404, "NOT_FOUND", f"rank {rank} of run {entity}/{project}/{run_id} is gone")
            own.run_id, own.world_size, own.node_count = run_id, info.world_size, info.node_count
            return respond({**run_json(own), "rank": rank})
        body = run_json(info)
        if info.world_size is not None:
            try:
                members = await self._read(self._q().members, entity, project, run_id)
            except RunNotFound as e:  # deleted since
                raise error(404, "NOT_FOUND", str(e)) from None
            body.update(distributed_json(info, members))
        if rank is not None:
            body["rank"] = rank
        return respond(body)

    async def patch_run(self, request: web.Request) -> web.Response:
        where = self._where(request)
        _whole_run(request)
        body = await json_body(request, "a JSON object of name, tags and/or notes")
        changes = _run_changes(body)
        try:
            info = await self._write(self._q().update_run, *where, changes)
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        self.live.notify("/".join(where))
        return respond(run_json(info))

    async def delete_run(self, request: web.Request) -> web.Response:
        where = self._where(request)
        _whole_run(request)
        try:
            await self._write(self._q().delete_run, *where)
        except RunNotFound as e:
            raise error(404, "NOT_FOUND", str(e)) from None
        except RunBusy as e:
            raise error(409, "FAILED_PRECONDITION", str(e)) from None
        self.live.notify("/".join(where))
        return respond({"deleted": "/".join(where)})

    # --- live updates ------------------------------------------------------------------------
    async def get_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``run`` (the run's JSON) when a run of the project changes,
        ``deleted`` when one is deleted; a comment line every KEEPALIVE_S otherwise."""
        entity, project = request.match_info["entity"], request.match_info["project"]
        self._authorise(request, entity)
        only = list_param(request, "runs", 1000)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        sub = self.live.subscribe(entity, project, frozenset(only) if only else None)
        try:
            await resp.write(b"retry: 1000\n: connected\n\n")
            while not self._closing:
                changed = await sub.next(KEEPALIVE_S)
                if self._closing:
                    break
                if not changed:
                    await resp.write(b": keepalive\n\n")
                    continue
                ids = sorted(p.rsplit("/", 1)[-1] for p in changed)
                flt = fl.parse_filter({"id": {"$in": ids}})
                page = await self._read(self._q().query_runs, entity, project, RunQuery(flt, limit=len(ids)))
                found = {r.run_id for r in page.runs}
                chunks = [f"event: run\ndata: {json.dumps(run_json(r))}\n\n" for r in page.runs]
                chunks += [
                    f"event: deleted\ndata: {json.dumps({'path': f'{entity}/{project}/{i}'})}\n\n"
                    for i in ids
                    if i not in found
                ]
                await resp.write("".join(chunks).encode())
                await asyncio.sleep(MIN_INTERVAL_S)  # later changes coalesce into the next write
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            sub.close()
        return resp


def _same_origin(request: web.Request) -> None:
    """A browser names the page's origin on every request that changes something; another
    site's page is refused (programs send no Origin)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if urlsplit(origin).netloc.lower() != request.host.lower():
        raise error(403, "PERMISSION_DENIED", f"cross-origin request from {origin} refused")


def _whole_run(request: web.Request) -> None:
    """A distributed run is edited and deleted as a whole (its ranks with it)."""
    for p in ("rank", "ranks", "node"):
        if p in request.query:
            raise bad(f"{request.method} applies to the whole run and all its ranks: drop {p}=")


def _run_changes(body: Any) -> dict[str, Any]:
    """A PATCH body checked: name (str or null), tags (list of str), notes (str or null)."""
    if not isinstance(body, dict) or not body:
        raise bad("the body must be a non-empty JSON object of name, tags and/or notes")
    unknown = sorted(set(body) - {"name", "tags", "notes"})
    if unknown:
        raise bad(f"cannot edit {', '.join(unknown)}: a run's name, tags and notes can be edited")
    out: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME):
            raise bad(f"name must be a string of 1 to {MAX_NAME} characters, or null")
        out["name"] = name
    if "notes" in body:
        notes = body["notes"]
        if notes is not None and (not isinstance(notes, str) or len(notes) > MAX_NOTES):
            raise bad(f"notes must be a string of at most {MAX_NOTES} characters, or null")
        out["notes"] = notes
    if "tags" in body:
        tags = body["tags"]
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise bad(f"tags must be a list of at most {MAX_TAGS} strings")
        for t in tags:
            if not isinstance(t, str) or not 0 < len(t) <= MAX_TAG:
                raise bad(f"each tag must be a string of 1 to {MAX_TAG} characters, not {t!r}")
        out["tags"] = list(dict.fromkeys(tags))
    return out


def _group_json(g: RunGroup) -> dict[str, Any]:
    from runstream.format.fold import json_safe

    return {
        "value": json_safe(g.value),
        "count": g.count,
        "metrics": {
            k: {"count": m.count, "mean": json_safe(m.mean), "min": json_safe(m.min), "max": json_safe(m.max)}
            for k, m in g.metrics.items()
        },
    }
