"""``runstream.Api``: read runs back from a server (W&B's ``wandb.Api`` shape).

    api = runstream.Api()                      # RUNSTREAM_HOST / `runstream login`
    run = api.run("entity/project/run_id")
    run.config, run.summary, run.state
    for row in run.scan_history(keys=["loss"]):  # every row, in step order, fetched in pages
        ...

Concurrency contract: an ``Api`` holds no connection; it may be shared between threads.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import Error, UsageError


class ApiError(Error):
    """The server answered with an error (the message says which)."""


class NotFoundError(ApiError):
    pass


class UnauthorizedError(ApiError):
    """No key, a bad key, or a key of another entity."""


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
        from .login import credentials

        creds = credentials(host)
        self.host = (host or creds.host or "").rstrip("/")
        if not self.host:
            raise UsageError(
                "runstream.Api needs a server: pass host=, set RUNSTREAM_HOST or `runstream login`"
            )
        self.api_key = api_key or creds.api_key
        self.timeout = timeout

    def _get(self, path: str, **query: Any) -> Any:
        q = {k: v for k, v in query.items() if v is not None}
        url = f"{self.host}{path}" + (f"?{urllib.parse.urlencode(q)}" if q else "")
        req = urllib.request.Request(url)
        if self.api_key:
            req.add_header("authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return _floats(json.load(resp))
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("message", e.reason)
            except ValueError:
                message = e.reason
            cls = {404: NotFoundError, 401: UnauthorizedError, 403: UnauthorizedError}.get(e.code, ApiError)
            raise cls(f"{message} (HTTP {e.code} from {url})") from None
        except OSError as e:
            raise ApiError(f"the server at {self.host} could not be reached: {e}") from None

    @staticmethod
    def _split(path: str, parts: int) -> list[str]:
        bits = [b for b in path.strip("/").split("/") if b]
        if len(bits) != parts:
            shape = "entity/project/run_id" if parts == 3 else "entity/project"
            raise UsageError(f"expected a path like {shape}, not {path!r}")
        return bits

    def run(self, path: str) -> ApiRun:
        entity, project, run_id = self._split(path, 3)
        return ApiRun(self, self._get(f"/api/v1/runs/{entity}/{project}/{run_id}"))

    def runs(self, path: str, per_page: int = 100) -> Iterator[ApiRun]:
        entity, project = self._split(path, 2)
        offset = 0
        while True:
            page = self._get(f"/api/v1/runs/{entity}/{project}", limit=per_page, offset=offset)["runs"]
            yield from (ApiRun(self, r) for r in page)
            if len(page) < per_page:
                return
            offset += per_page

    def projects(self, entity: str) -> list[str]:
        return list(self._get(f"/api/v1/projects/{entity}")["projects"])


class ApiRun:
    def __init__(self, api: Api, data: dict[str, Any]) -> None:
        self._api = api
        self._data = data

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"<runstream.ApiRun {self._data['path']} ({self._data['state']})>"

    def refresh(self) -> ApiRun:
        self._data = self._api.run(self._data["path"])._data
        return self

    def scan_history(
        self,
        keys: Sequence[str] | None = None,
        min_step: int | None = None,
        max_step: int | None = None,
        page_size: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Every row (or its ``keys``), in step order, fetched ``page_size`` rows at a time."""
        base = f"/api/v1/runs/{self._data['path']}/history"
        step = min_step
        while True:
            page = self._api._get(
                base,
                keys=",".join(keys) if keys else None,
                min_step=step,
                max_step=max_step,
                page_size=page_size,
            )
            yield from page["rows"]
            if "next_min_step" not in page:
                return
            step = page["next_min_step"]
