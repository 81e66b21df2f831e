"""One run, or one request, must not break a project for everyone (issue 10, item B).

A run whose config (or summary) is nested hundreds of levels deep used to make the project's runs
table, its groups, the run page and the keys endpoint answer 500 (RecursionError while flattening
or serialising it).  Deeply nested JSON in a request body or a filter, and integers SQLite cannot
hold in a filter, answered 500 too.  Each is now a normal answer, or a 400 saying what is wrong.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from runstream_ingest.server.args import DB_NAME
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from tests.server.test_http_api import get
from tests.server.test_ingest_protocol import http_get
from tests.storage.test_downsample import E, P, store_run
from tests.support.server import ServerProc, start_server


def nested(depth: int, leaf: Any = 1) -> Any:
    d: Any = {"leaf": leaf}
    for _ in range(depth):
        d = {"k": d}
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    data = tmp_path_factory.mktemp("hostile")
    s = SqliteStorage(data / DB_NAME)
    store_run(
        s, "plain", range(3), lambda i: {"loss": 1.0 / (i + 1)}, config={"lr": 0.1, "opt": {"name": "adam"}}
    )
    # What an SDK without the checks of issue 10 item A let through: stored as it came.
    store_run(s, "deep", range(3), lambda i: {"loss": 0.5}, config={"lr": 0.2, "deep": nested(990)})
    s.close()
    srv = start_server(data)
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.log()[-4000:]


def send(srv: ServerProc, method: str, path: str, raw: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(f"{srv.url}{path}", data=raw, method=method)
    req.add_header("content-type", "application/json")
    req.add_header("origin", srv.url)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_run_with_a_deeply_nested_config_gave_500_for_the_whole_project(server: ServerProc) -> None:
    status, body = get(server, f"/api/v1/runs/{E}/{P}", limit=100)
    assert status == 200, body
    assert sorted(r["id"] for r in body["runs"]) == ["deep", "plain"]
    deep = next(r for r in body["runs"] if r["id"] == "deep")
    assert deep["config"]["lr"] == 0.2
    # Cut at the documented depth, saying so where it was cut.
    value, depth = deep["config"]["deep"], 1
    while isinstance(value, dict) and "k" in value:
        value, depth = value["k"], depth + 1
    assert isinstance(value, str) and "nested deeper than" in value, value
    assert depth <= 64


def test_the_run_page_of_a_deeply_nested_config_gave_500(server: ServerProc) -> None:
    status, body = get(server, f"/api/v1/runs/{E}/{P}/deep")
    assert status == 200, body
    assert body["config"]["lr"] == 0.2
    status, body = get(server, f"/api/v1/runs/{E}/{P}/plain")
    assert status == 200 and body["config"] == {"lr": 0.1, "opt": {"name": "adam"}}, body


def test_the_keys_of_a_project_with_a_deeply_nested_config_gave_500(server: ServerProc) -> None:
    status, body = get(server, f"/api/v1/keys/{E}/{P}")
    assert status == 200, body
    assert "lr" in body["config"] and "opt.name" in body["config"], body
    assert all(len(k) < 2000 for k in body["config"])


@pytest.mark.parametrize(
    "query",
    [
        {"order": "-config.deep"},
        {"order": "config.deep.k.k.k"},
        {"filters": {"config.deep": {"$exists": True}}},
        {"filters": {"config.deep.k": {"$regex": "leaf"}}},
        {"search": "deep"},
    ],
    ids=["sort", "sort-inner", "exists", "regex", "search"],
)
def test_sorting_or_filtering_on_a_deeply_nested_config_gave_500(server: ServerProc, query: Any) -> None:
    status, body = get(server, f"/api/v1/runs/{E}/{P}", **query)
    assert status == 200, body


def test_grouping_by_a_deeply_nested_config_key_gave_500(server: ServerProc) -> None:
    status, body = get(server, f"/api/v1/groups/{E}/{P}", by="config.deep")
    assert status == 200, body
    status, body = get(server, f"/api/v1/groups/{E}/{P}", by="config.lr", metrics="summary.loss")
    assert status == 200 and body["total_groups"] == 2, body


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


@pytest.mark.parametrize("raw", [DEEP_JSON, DEEP_OBJECT], ids=["array", "object"])
def test_a_deeply_nested_json_body_gave_500(server: ServerProc, raw: bytes) -> None:
    status, body = send(server, "PATCH", f"/api/v1/runs/{E}/{P}/plain", raw)
    assert status == 400 and body["error"] == "INVALID_ARGUMENT", body
    assert "nested" in body["message"], body
    status, body = send(server, "POST", "/api/v1/session", raw)
    assert status == 400 and "nested" in body["message"], body


@pytest.mark.parametrize(
    "filters",
    [
        {"$and": [{"$or": [{"$and": [nested(5)]}]}]},
        json.loads("[" * 500 + "]" * 500),
        {"$and": [{"$and": [{"$and": [{"$and": [{"state": "finished"}]}]}]}] * 1},
    ],
    ids=["unknown-field", "list", "ok"],
)
def test_nested_filters_answer_200_or_400(server: ServerProc, filters: Any) -> None:
    status, body = get(server, f"/api/v1/runs/{E}/{P}", filters=filters)
    assert status in (200, 400), body


def test_a_filter_nested_too_deep_gave_500(server: ServerProc) -> None:
    deep = '{"$and":[' * 200 + '{"state":"finished"}' + "]}" * 200
    q = urllib.parse.urlencode({"filters": deep})
    status, _, body = http_get(f"{server.url}/api/v1/runs/{E}/{P}?{q}")
    assert status == 400 and "nest $and/$or at most 32 levels" in body["message"], body
    # as deep as a request line (8 KiB) allows: past the JSON parser's recursion limit
    q = urllib.parse.urlencode({"filters": "[" * 2500})
    status, _, body = http_get(f"{server.url}/api/v1/runs/{E}/{P}?{q}")
    assert status == 400 and "nested too deeply" in body["message"], body


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"config.lr": {"$gt": 2**70}}, "config.lr"),
        ({"config.lr": 2**64}, "config.lr"),
        ({"summary.loss": {"$in": [1, -(2**80)]}}, "summary.loss"),
        ({"last_step": {"$lt": 10**30}}, "last_step"),
        ({"created_at": {"$gte": 2**63}}, "created_at"),
        ({"tags": 2**99}, "tags"),
    ],
)
def test_an_integer_too_large_for_sqlite_in_a_filter_gave_500(
    server: ServerProc, filters: Any, field: str
) -> None:
    status, body = get(server, f"/api/v1/runs/{E}/{P}", filters=filters)
    assert status == 400 and body["error"] == "INVALID_ARGUMENT", body
    assert field in body["message"] and "64-bit" in body["message"], body
    status, body = get(server, f"/api/v1/groups/{E}/{P}", by="config.lr", filters=filters)
    assert status == 400 and field in body["message"], body


def test_the_largest_integers_sqlite_holds_are_fine_in_a_filter(server: ServerProc) -> None:
    status, body = get(
        server, f"/api/v1/runs/{E}/{P}", filters={"config.lr": {"$lt": 2**63 - 1, "$gt": -(2**63)}}
    )
    assert status == 200 and body["total"] == 2, body
