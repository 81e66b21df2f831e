"""The dashboard's static files (``server/web/static/``), served beside the HTTP API on the same app.

``add_routes(app)`` adds:

* ``GET /`` (and ``/index.html``): the single page.  Views are routed in the URL's fragment
  (``/#/p/acme/mnist?sort=-summary.acc``), so every view's state is a shareable link and the
  server needs no catch-all route.  The page is sent with ``Cache-Control: no-cache`` and names
  its assets under ``/static/<version>/``;
* ``GET /static/<version>/<path>``: the files under ``static/``.  ``<version>`` is a hash of their
  contents, so a URL's bytes never change and browsers may keep them for a year
  (``immutable``); a new server version changes every URL.  A request for another version is a
  404 rather than today's bytes under yesterday's name, which a cache would keep forever.

Nothing is built: the files ship in the package as they are (pyproject.toml's package-data), and
``make vendor`` refreshes the vendored uPlot under ``static/vendor/``.

Concurrency contract: the file table is built once, at ``add_routes``, and only read afterwards
(handlers run on the event loop).
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).parent / "static"
ASSET_BASE = "{{ASSET_BASE}}"  # replaced in index.html by /static/<version>
IMMUTABLE = "public, max-age=31536000, immutable"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
# What a browser fetching the page may load: our own files only, no inline script, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


class WebFiles:
    """The files under ``root`` read once into memory (about 100 KB), keyed by relative path."""

    def __init__(self, root: Path = WEB_DIR) -> None:
        if not (root / "index.html").is_file():
            raise FileNotFoundError(f"the web UI's index.html is missing from {root}")
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        digest = hashlib.sha256()
        self.assets: dict[str, Asset] = {}
        for p in files:
            rel = p.relative_to(root).as_posix()
            body = p.read_bytes()
            digest.update(rel.encode() + b"\0" + body)
            ctype = TYPES.get(p.suffix) or mimetypes.guess_type(p.name)[0] or "application/octet-stream"
            self.assets[rel] = Asset(body, ctype)
        self.version = digest.hexdigest()[:16]
        self.base = f"/static/{self.version}"
        index = self.assets.pop("index.html").body.decode()
        self.index = index.replace(ASSET_BASE, self.base).encode()

    async def get_index(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.index,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Frame-Options": "DENY"},
        )

    async def get_asset(self, request: web.Request) -> web.Response:
        version, path = request.match_info["version"], request.match_info["path"]
        asset = self.assets.get(path) if version == self.version else None
        if asset is None:
            raise web.HTTPNotFound(reason=f"no file {request.path} (this server's are under {self.base}/)")
        return web.Response(
            body=asset.body,
            content_type=asset.content_type,
            charset="utf-8" if asset.content_type.startswith("text/") else None,
            headers={"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"},
        )


def add_routes(app: web.Application, root: Path = WEB_DIR) -> WebFiles:
    """Serve the dashboard from ``app``: ``/`` and ``/static/<version>/...``."""
    files = WebFiles(root)
    app.add_routes(
        [
            web.get("/", files.get_index),
            web.get("/index.html", files.get_index),
            web.get("/static/{version}/{path:.+}", files.get_asset),
        ]
    )
    return files
