"""Who may read and change runs over HTTP (docs/http-api.md, "Auth" and "Browser sessions"), on a
real ``runstream server --auth``: API keys for programs; for browsers a session cookie that is
HttpOnly and SameSite=Strict, whose state-changing requests need the session's CSRF token; and no
request that changes something from another origin, whatever it carries.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from runstream.format.api_key import new_key
from runstream_ingest.server.args import DB_NAME
from runstream_ingest.server.auth.keys import KeyStore
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from tests.storage.test_downsample import store_run
from tests.support.server import ServerProc, start_server

TEAM_A, TEAM_B, PROJECT = "team-a", "team-b", "p"


class Client:
    """HTTP calls with chosen headers; remembers the session cookie a sign-in sets."""

    def __init__(self, srv: ServerProc) -> None:
        self.srv = srv
        self.cookie: str | None = None
        self.set_cookie: str = ""

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        cookie: bool = True,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.srv.url + path, data=data, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if data is not None:
            req.add_header("content-type", "application/json")
        if cookie and self.cookie:
            req.add_header("cookie", f"runstream_session={self.cookie}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw, hdrs = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            status, raw, hdrs = e.code, e.read(), e.headers
        self.set_cookie = hdrs.get("set-cookie", "")
        return status, json.loads(raw) if raw else None

    def sign_in(self, key: str | None) -> dict[str, Any]:
        status, body = self.call("POST", "/api/v1/session", {"api_key": key} if key else None, cookie=False)
        assert status == 200, body
        morsel = SimpleCookie(self.set_cookie)["runstream_session"]
        self.cookie = morsel.value
        return dict(body)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, str, str]]:
    data = tmp_path_factory.mktemp("http-auth")
    with KeyStore(data / DB_NAME) as ks:
        key_a, key_b = ks.create(TEAM_A)[1], ks.create(TEAM_B)[1]
    s = SqliteStorage(data / DB_NAME)
    for entity in (TEAM_A, TEAM_B):
        for run in ("r1", "r2", "r3"):
            store_run(s, run, range(3), lambda i: {"loss": float(i)}, entity=entity, project=PROJECT)
    s.close()
    srv = start_server(data, "--auth")
    yield srv, key_a, key_b
    srv.stop()
    assert srv.proc.returncode == 0, srv.log()[-4000:]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


READS = [
    f"/api/v1/projects/{TEAM_A}",
    f"/api/v1/runs/{TEAM_A}/{PROJECT}",
    f"/api/v1/groups/{TEAM_A}/{PROJECT}?by=state",
    f"/api/v1/keys/{TEAM_A}/{PROJECT}",
    f"/api/v1/series/{TEAM_A}/{PROJECT}?runs=r1&keys=loss",
    f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1",
    f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1/history",
    f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1/series?keys=loss",
    f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1/keys",
    f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1/console",
    f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1/system",
    f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1/files",
]


@pytest.mark.parametrize("path", READS)
def test_every_read_needs_a_key_of_the_entity(keys: tuple[ServerProc, str, str], path: str) -> None:
    srv, key_a, key_b = keys
    c = Client(srv)
    status, body = c.call("GET", path)
    assert (status, body["error"]) == (401, "UNAUTHENTICATED"), body
    assert c.call("GET", path, headers=bearer(new_key()))[0] == 401
    status, body = c.call("GET", path, headers=bearer(key_b))
    assert (status, body["error"]) == (403, "PERMISSION_DENIED") and key_b not in body["message"], body
    assert c.call("GET", path, headers=bearer(key_a))[0] == 200


@pytest.mark.parametrize("method,body", [("PATCH", {"notes": "n"}), ("DELETE", None)])
def test_edits_need_a_key_of_the_entity(keys: tuple[ServerProc, str, str], method: str, body: Any) -> None:
    srv, _, key_b = keys
    c = Client(srv)
    path = f"/api/v1/runs/{TEAM_A}/{PROJECT}/r2"
    assert c.call(method, path, body)[0] == 401
    assert c.call(method, path, body, headers=bearer(new_key()))[0] == 401
    assert c.call(method, path, body, headers=bearer(key_b))[0] == 403
    assert c.call("GET", path, headers=bearer(keys[1]))[1]["notes"] is None  # nothing changed


def test_a_program_edits_with_its_key_and_no_csrf_token(keys: tuple[ServerProc, str, str]) -> None:
    srv, key_a, _ = keys
    status, body = Client(srv).call(
        "PATCH", f"/api/v1/runs/{TEAM_A}/{PROJECT}/r3", {"tags": ["k"]}, bearer(key_a)
    )
    assert status == 200 and body["tags"] == ["k"], body


def test_sign_in_sets_an_httponly_samesite_strict_cookie(keys: tuple[ServerProc, str, str]) -> None:
    srv, key_a, _ = keys
    c = Client(srv)
    for bad in ({"api_key": new_key()}, {"api_key": "hunter2"}, None):
        status, body = c.call("POST", "/api/v1/session", bad)
        assert (status, body["error"]) == (
            401,
            "UNAUTHENTICATED",
        ) and "set-cookie" not in c.set_cookie.lower()
    info = c.sign_in(key_a)
    assert info["entity"] == TEAM_A and len(info["csrf_token"]) >= 32 and info["auth"] is True
    cookie = SimpleCookie(c.set_cookie)["runstream_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert key_a not in c.set_cookie and cookie.value != key_a
    assert c.call("GET", "/api/v1/session") == (200, info)
    assert c.call("GET", f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1")[0] == 200
    status, body = c.call("GET", f"/api/v1/runs/{TEAM_B}/{PROJECT}/r1")
    assert (status, body["error"]) == (403, "PERMISSION_DENIED")
    assert Client(srv).call("GET", "/api/v1/session")[0] == 401  # no cookie
    c.cookie = "made-up"
    assert c.call("GET", f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1")[0] == 401


def test_a_change_made_with_the_cookie_needs_the_csrf_token(keys: tuple[ServerProc, str, str]) -> None:
    srv, key_a, _ = keys
    c = Client(srv)
    token = c.sign_in(key_a)["csrf_token"]
    path = f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1"
    for headers in ({}, {"X-Runstream-CSRF": "wrong"}, {"X-Runstream-CSRF": ""}):
        status, body = c.call("PATCH", path, {"notes": "forged"}, headers)
        assert (status, body["error"]) == (403, "PERMISSION_DENIED") and "X-Runstream-CSRF" in body["message"]
        assert c.call("DELETE", path, None, headers)[0] == 403
    assert c.call("GET", path)[1]["notes"] is None
    status, body = c.call("PATCH", path, {"notes": "mine"}, {"X-Runstream-CSRF": token})
    assert status == 200 and body["notes"] == "mine"


def test_changes_from_another_origin_are_refused_whatever_they_carry(
    keys: tuple[ServerProc, str, str],
) -> None:
    srv, key_a, _ = keys
    c = Client(srv)
    token = c.sign_in(key_a)["csrf_token"]
    path = f"/api/v1/runs/{TEAM_A}/{PROJECT}/r1"
    evil = {"Origin": "http://evil.example", "X-Runstream-CSRF": token}
    status, body = c.call("PATCH", path, {"notes": "x"}, evil)
    assert (status, body["error"]) == (403, "PERMISSION_DENIED") and "cross-origin" in body["message"]
    assert c.call("PATCH", path, {"notes": "x"}, {**bearer(key_a), "Origin": "http://evil.example"})[0] == 403
    assert c.call("POST", "/api/v1/session", {"api_key": key_a}, {"Origin": "http://evil.example"})[0] == 403
    same = {"Origin": srv.url, "X-Runstream-CSRF": token}
    assert c.call("PATCH", path, {"notes": "same origin"}, same)[0] == 200


def test_signing_out_or_revoking_the_key_ends_the_session(keys: tuple[ServerProc, str, str]) -> None:
    srv, _, _ = keys
    with KeyStore(srv.data_dir / DB_NAME) as ks:
        info, key = ks.create(TEAM_A)
    c = Client(srv)
    token = c.sign_in(key)["csrf_token"]
    assert c.call("DELETE", "/api/v1/session")[0] == 403  # signing out is a change too
    assert c.call("DELETE", "/api/v1/session", headers={"X-Runstream-CSRF": token}) == (
        200,
        {"signed_out": True},
    )
    assert c.call("GET", f"/api/v1/runs/{TEAM_A}/{PROJECT}")[0] == 401
    c.sign_in(key)
    assert c.call("GET", f"/api/v1/runs/{TEAM_A}/{PROJECT}")[0] == 200
    with KeyStore(srv.data_dir / DB_NAME) as ks:
        assert ks.revoke(info.id)
    status, body = c.call("GET", f"/api/v1/runs/{TEAM_A}/{PROJECT}")
    assert status == 401 and "revoked" in body["message"], body


def test_without_auth_a_session_needs_no_key_but_still_a_csrf_token(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv")
    try:
        c = Client(srv)
        info = c.sign_in(None)
        assert info["entity"] is None and info["auth"] is False
        assert c.call("PATCH", "/api/v1/runs/e/p/nope", {"notes": "x"})[0] == 403
        status, body = c.call(
            "PATCH", "/api/v1/runs/e/p/nope", {"notes": "x"}, {"X-Runstream-CSRF": info["csrf_token"]}
        )
        assert (status, body["error"]) == (404, "NOT_FOUND")
        c.cookie = "from-before-a-restart"  # grants nothing, refuses nothing: there is no auth
        assert c.call("GET", "/api/v1/projects/e") == (200, {"entity": "e", "projects": []})
        assert c.call("GET", "/api/v1/session")[0] == 401  # so the page signs in again
    finally:
        srv.stop()


def test_the_projects_list_shows_only_the_key_s_entity(keys: tuple[ServerProc, str, str]) -> None:
    srv, key_a, key_b = keys
    c = Client(srv)
    assert c.call("GET", "/api/v1/projects")[0] == 401
    for key, team in ((key_a, TEAM_A), (key_b, TEAM_B)):
        status, body = c.call("GET", "/api/v1/projects", headers=bearer(key))
        assert status == 200, body
        assert [(p["entity"], p["name"], p["runs"]) for p in body["projects"]] == [(team, PROJECT, 3)]
    c.sign_in(key_b)
    assert [p["entity"] for p in c.call("GET", "/api/v1/projects")[1]["projects"]] == [TEAM_B]
