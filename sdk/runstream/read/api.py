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
    def __init__(self, host: str | None = None, api_key: str | None = None, timeout: float = 30.0) -> None:
        from runstream.login import credentials

        creds = credentials(host)
        self.host = (host or creds.host or "").rstrip("/")
        if not self.host:
            raise UsageError(
                "runstream.Api needs a server: pass host=, set RUNSTREAM_HOST or `runstream login`"
            )
        self.api_key = api_key or creds.api_key
        self.timeout = timeout

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
        bits = [b for b in path.strip("/").split("/") if b]
        if len(bits) != parts:
            shape = "entity/project/run_id" if parts == 3 else "entity/project"
            raise UsageError(f"expected a path like {shape}, not {path!r}")
        return bits

    def run(self, path: str) -> ApiRun:
        """One run, by ``entity/project/run_id``."""
        from runstream.read.api_runs import ApiRun

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
        """The project's runs matching ``filters`` (docs/http-api.md, "Filters"), sorted by
        ``order`` (``"-summary.acc"``, ``"+created_at"``, several comma-separated), fetched
        ``per_page`` at a time as they are iterated.  ``len()`` is the number that match."""
        from runstream.read.api_runs import Runs

        entity, project = self._split(path, 2)
        if filters is not None and not isinstance(filters, dict):
            raise UsageError(f"filters must be a dict such as {{'state': 'finished'}}, not {filters!r}")
        if not 1 <= per_page <= 10_000:
            raise UsageError(f"per_page must be in [1, 10000], not {per_page}")
        return Runs(self, entity, project, filters, order, per_page, search)

    def projects(self, entity: str) -> list[str]:
        return list(self._get(f"/api/v1/projects/{entity}")["projects"])
