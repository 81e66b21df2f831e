"""The dashboard's files as the server ships and serves them (server/web/), without a browser:
every file is in the package, every reference and module import resolves, and caching is right
(the page is revalidated; its versioned assets are immutable)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from runstream_ingest.server import web as webui
from tests.support import ROOT

PACKAGE = ROOT / "ingest" / "runstream_ingest"
IMPORT = re.compile(r"""(?:^|\s)(?:import|export)\s[^"';]*?from\s+["'](\.{1,2}/[^"']+)["']""", re.M)


@pytest_asyncio.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    webui.add_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


def web_files() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in webui.WEB_DIR.rglob("*") if p.is_file()}


def test_every_web_file_is_in_the_packages_data() -> None:
    # (pyproject.toml read by hand: tomllib is not in Python 3.10, which the package supports)
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    block = re.search(r'^"runstream_ingest.server.web" = \[(.*?)\]', section, re.M | re.S)
    assert block is not None
    patterns = re.findall(r'"([^"]+)"', block.group(1))
    web_package = PACKAGE / "server" / "web"
    shipped = {
        p.relative_to(PACKAGE).as_posix() for pat in patterns for p in web_package.glob(pat) if p.is_file()
    }
    missing = web_files() - shipped
    assert not missing, f"files under server/web/static/ that a wheel would leave out: {sorted(missing)}"


def test_every_relative_module_import_names_a_file_that_exists() -> None:
    files = webui.WebFiles()
    for rel, asset in files.assets.items():
        if not rel.endswith(".js"):
            continue
        for target in IMPORT.findall(asset.body.decode()):
            resolved = (Path("/") / rel).parent.joinpath(target).resolve().relative_to("/").as_posix()
            assert resolved in files.assets, f"{rel} imports {target}, which is not among the web files"


def test_the_vendored_uplot_is_the_makefiles_version_with_its_licence() -> None:
    vendor = webui.WEB_DIR / "vendor"
    version = re.search(r"^UPLOT_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert version is not None
    assert (vendor / "VERSION").read_text().split() == ["uplot", version.group(1)]
    assert "MIT License" in (vendor / "LICENSE").read_text()
    assert (vendor / "uPlot.iife.min.js").stat().st_size > 10_000


@pytest.mark.asyncio
async def test_the_page_names_its_assets_under_this_versions_path_and_is_revalidated(
    client: TestClient[web.Request, web.Application],
) -> None:
    files = webui.WebFiles()
    r = await client.get("/")
    assert r.status == 200 and r.content_type == "text/html"
    assert r.headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    page = await r.text()
    assert webui.ASSET_BASE not in page
    refs = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert len(refs) >= 4
    for ref in refs:
        assert ref.startswith(f"{files.base}/")
        got = await client.get(ref)
        assert got.status == 200, ref
        assert got.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        expected = "text/javascript" if ref.endswith(".js") else "text/css"
        assert got.content_type == expected, ref


@pytest.mark.asyncio
async def test_another_versions_path_or_an_unknown_file_is_not_found(
    client: TestClient[web.Request, web.Application],
) -> None:
    files = webui.WebFiles()
    assert (await client.get(f"{files.base}/js/main.js")).status == 200
    assert (await client.get("/static/0123456789abcdef/js/main.js")).status == 404
    assert (await client.get(f"{files.base}/js/nope.js")).status == 404
    assert (await client.get(f"{files.base}/../__init__.py")).status == 404


def test_the_version_changes_when_a_file_changes(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<script src='{{ASSET_BASE}}/a.js'></script>")
    (tmp_path / "a.js").write_text("export const a = 1;\n")
    before = webui.WebFiles(tmp_path)
    (tmp_path / "a.js").write_text("export const a = 2;\n")
    after = webui.WebFiles(tmp_path)
    assert before.version != after.version
    assert after.index == f"<script src='{after.base}/a.js'></script>".encode()


def test_a_web_dir_without_its_page_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"index\.html is missing"):
        webui.WebFiles(tmp_path)
