"""``runstream.Api``: read runs back from a server (W&B's ``wandb.Api`` shape; docs/http-api.md).

    api = runstream.Api()                      # RUNSTREAM_HOST / `runstream login`
    api.projects("acme")
    for run in api.runs("acme/mnist", filters={"config.lr": {"$lt": 0.01}}, order="-summary.acc"):
        ...
    run = api.run("acme/mnist/run_id")
    run.config, run.summary, run.state
    run.history(keys=["loss"], samples=500)    # downsampled on the server: a DataFrame
    for row in run.scan_history(keys=["loss"]):  # every row, in step order, fetched in pages
        ...
    run.tags.append("best"); run.update()
    run.delete()
    run.history(keys=["loss"], rank=3)         # a distributed run: rank 3's rows (default rank 0's)
    run.scan_history(rank="all")               # every rank's rows, each with _rank
    run.world_size, run.ranks, run.rank_summary(3), run.rank_aggregates

Concurrency contract: an ``Api`` holds no connection; it may be shared between threads.  The
``Run`` and ``Runs`` objects it returns belong to the thread that uses them.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from runstream.errors import Error, UsageError

if TYPE_CHECKING:
    from runstream.read.api_runs import ApiRun, Runs


class ApiError(Error):
    """The server answered with an error (the message says which), or could not be reached."""

    status: int | None = None


class NotFoundError(ApiError):
    """No such run (or path)."""


class UnauthorizedError(ApiError):
    """No key, a bad key, or a key of another entity (``PermissionDeniedError``)."""


class PermissionDeniedError(UnauthorizedError):
    """A valid key of another entity, or a browser request without its CSRF token."""


class InvalidRequestError(ApiError):
    """The server refused the request's arguments: a bad filter, order, key or edit."""


class ConflictError(ApiError):
    """The run's state forbids it: a running run cannot be deleted."""


def authorized(
    url: str, api_key: str | None, method: str = "GET", data: bytes | None = None, content_type: str = ""
) -> urllib.request.Request:
    """A request to the server carrying the API key (the HTTP API's one auth header)."""
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None and content_type:
        req.add_header("content-type", content_type)
    if api_key:
        req.add_header("authorization", f"Bearer {api_key}")
    return req


def http_error(e: urllib.error.HTTPError, method: str, url: str) -> ApiError:
    """The server's refusal as the ``ApiError`` subclass of its status, with the server's message."""
    with e:
        try:
            message = json.loads(e.read()).get("message", e.reason)
        except ValueError:
            message = e.reason
    err = _ERRORS.get(e.code, ApiError)(f"{message} (HTTP {e.code} from {method} {url})")
    err.status = e.code
    return err


_ERRORS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
}
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _floats(obj: Any) -> Any:
    """The server writes non-finite floats as strings (JSON has none); turn them back."""
    if isinstance(obj, str) and obj in _SPECIAL:
        return _SPECIAL[obj]
    if isinstance(obj, dict):
        return {k: _floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_floats(v) for v in obj]
    return obj


class Api:
    """Read (and edit) runs stored on a runstream server, as ``wandb.Api`` does on W&B's.

    Every method makes plain blocking HTTP requests to the server's API (docs/http-api.md),
    each bounded by ``timeout``; nothing runs in the background, and nothing is cached between
    calls except the pages a :class:`~runstream.read.api_runs.Runs` has fetched.  ``run`` and
    ``runs`` give :class:`~runstream.read.api_runs.ApiRun` objects, whose ``history``,
    ``scan_history``, ``files`` and ``update`` make further requests.

    Errors from the server raise an :class:`ApiError` subclass that names the request and the
    server's message: ``NotFoundError`` (404), ``UnauthorizedError`` (401),
    ``PermissionDeniedError`` (403), ``InvalidRequestError`` (400), ``ConflictError`` (409);
    other statuses, and a server that cannot be reached or does not answer within
    ``timeout``, raise ``ApiError`` itself.

    An ``Api`` holds no connection and may be shared between threads.
    """

    def __init__(self, host: str | None = None, api_key: str | None = None, timeout: float = 30.0) -> None:
        """Set up access to a server; no request is made yet.

        Args:
            host: The server's URL.  Default: ``RUNSTREAM_HOST``, else ``WANDB_BASE_URL``,
                else the host last used by ``runstream login``.
            api_key: The key to send.  Default: ``RUNSTREAM_API_KEY``, else ``WANDB_API_KEY``,
                else the key ``runstream login`` stored for the host; none when there is none
                (a server without auth needs none).
            timeout: Seconds each request may take before it fails with ``ApiError``.

        Raises:
            UsageError: No host is given or configured.
        """
        from runstream.login import credentials

        creds = credentials(host)
        self.host = (host or creds.host or "").rstrip("/")
        if not self.host:
            raise UsageError(
                "runstream.Api needs a server: pass host=, set RUNSTREAM_HOST or `runstream login`"
            )
        self.api_key = api_key or creds.api_key
        self.timeout = timeout
        self._default_entity: str | None = None

    @property
    def default_entity(self) -> str:
        """The entity used when a path leaves it out (``api.runs("project")``), as W&B's.

        With an API key, the key's entity, asked of the server once (``POST /api/v1/session``,
        then the session is ended) and kept; otherwise (or on a server without auth, which
        names no entity) the entity ``runstream.init`` would use: ``RUNSTREAM_ENTITY`` /
        ``WANDB_ENTITY``, else the login name.

        Raises:
            UnauthorizedError: The key is refused.
            ApiError: The server cannot be reached (only when a key is set).
        """
        if self._default_entity is None:
            entity = self._key_entity() if self.api_key else None
            if not entity:
                from runstream.settings import resolve_settings

                entity = resolve_settings().entity
            self._default_entity = entity
        return self._default_entity

    def _key_entity(self) -> str | None:
        """The entity of ``api_key`` as the server sees it (None: the server has no auth)."""
        url = f"{self.host}/api/v1/session"
        body = json.dumps({"api_key": self.api_key}).encode()
        req = authorized(url, None, "POST", body, "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer = json.load(resp)
                cookie = resp.headers.get("set-cookie", "").split(";", 1)[0]
        except urllib.error.HTTPError as e:
            raise http_error(e, "POST", url) from None
        except OSError as e:
            raise ApiError(f"the server at {self.host} could not be reached: {e}") from None
        if cookie and answer.get("csrf_token"):  # end the session at once: only the entity was wanted
            end = urllib.request.Request(url, method="DELETE")
            end.add_header("cookie", cookie)
            end.add_header("x-runstream-csrf", str(answer["csrf_token"]))
            try:
                urllib.request.urlopen(end, timeout=self.timeout).close()
            except OSError:  # it expires on its own
                pass
        entity = answer.get("entity")
        return str(entity) if entity else None

    def _request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        q = {k: v for k, v in query.items() if v is not None}
        url = f"{self.host}{path}" + (f"?{urllib.parse.urlencode(q)}" if q else "")
        data = None if body is None else json.dumps(body).encode()
        req = authorized(url, self.api_key, method, data, "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return _floats(json.load(resp))
        except urllib.error.HTTPError as e:
            raise http_error(e, method, url) from None
        except OSError as e:
            raise ApiError(f"the server at {self.host} could not be reached: {e}") from None

    def _get(self, path: str, **query: Any) -> Any:
        return self._request("GET", path, **query)

    @staticmethod
    def _split(path: str, parts: int) -> list[str]:
        if not isinstance(path, str):
            raise UsageError(f"a run path must be a str, not {type(path).__name__}")
        bits = [b for b in path.strip("/").split("/") if b]
        if len(bits) != parts:
            shape = "entity/project/run_id" if parts == 3 else "entity/project"
            raise UsageError(f"expected a path like {shape}, not {path!r}")
        return bits

    def run(self, path: str) -> ApiRun:
        """Fetch one run (one request).

        Args:
            path: ``"entity/project/run_id"`` (a run's ``path``), or ``"project/run_id"`` for
                :attr:`default_entity`'s.

        Returns:
            An :class:`~runstream.read.api_runs.ApiRun` holding the run as the server has it
            now: metadata, state, config and summary (rank 0's for a distributed run, whose
            ``world_size``, ``ranks`` and ``rank_aggregates`` it also holds).

        Raises:
            UsageError: ``path`` does not have three parts.
            NotFoundError: The server has no such run.
            ApiError: Another refusal (see the class docstring), or no answer in time.
        """
        from runstream.read.api_runs import ApiRun

        if isinstance(path, str) and path.strip("/").count("/") == 1:  # "project/run_id"
            path = f"{self.default_entity}/{path.strip('/')}"
        entity, project, run_id = self._split(path, 3)
        return ApiRun(self, self._get(f"/api/v1/runs/{entity}/{project}/{run_id}"))

    def runs(
        self,
        path: str,
        filters: dict[str, Any] | None = None,
        order: str = "-created_at",
        per_page: int = 50,
        search: str | None = None,
    ) -> Runs:
        """A project's runs, filtered and sorted on the server, fetched lazily.

        Args:
            path: ``"entity/project"``, or ``"project"`` for :attr:`default_entity`'s.
            filters: MongoDB-style conditions on run fields, config and summary, e.g.
                ``{"config.lr": {"$lt": 0.01}, "state": "finished"}`` (docs/http-api.md,
                "Filters").
            order: Sort fields, comma-separated, each ``-`` for descending or ``+``/nothing for
                ascending: ``"-summary.acc,+created_at"``.  Default: newest first.
            per_page: How many runs each request fetches, 1 to 10000.
            search: A case-insensitive substring of a run's name, id or one of its tags.

        Returns:
            A :class:`~runstream.read.api_runs.Runs`: iterate it, index it, or take its
            ``len()`` (the number of matching runs).  No request is made until then; pages are
            fetched one request each as they are needed and kept.

        Raises:
            UsageError: At once, for a malformed ``path``, a ``filters`` that is not a dict or
                ``per_page`` out of range.
            InvalidRequestError: When the first page is fetched, if the server refuses the
                filter, order or search (the message names what).
            ApiError: Likewise, for the errors in the class docstring.
        """
        from runstream.read.api_runs import Runs

        if isinstance(path, str) and "/" not in path.strip("/"):
            path = f"{self.default_entity}/{path.strip('/')}"
        entity, project = self._split(path, 2)
        if filters is not None and not isinstance(filters, dict):
            raise UsageError(f"filters must be a dict such as {{'state': 'finished'}}, not {filters!r}")
        if not 1 <= per_page <= 10_000:
            raise UsageError(f"per_page must be in [1, 10000], not {per_page}")
        return Runs(self, entity, project, filters, order, per_page, search)

    def projects(self, entity: str) -> list[str]:
        """The names of ``entity``'s projects, sorted (one request; ``[]`` for an unknown
        entity).  Raises :class:`ApiError` (or a subclass) as the class docstring says."""
        return list(self._get(f"/api/v1/projects/{entity}")["projects"])
