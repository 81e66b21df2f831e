"""The dashboard's HTTP API on a real ``runstream server`` (docs/http-api.md): the runs table
(filters, sort, paging, search, groups, keys), series for charts, run edits and deletion, live
updates.  The data is written into the server's database before it starts, through the storage's
write path, and checked against a model of the same runs in Python.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import queue
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runstream_ingest.server.args import DB_NAME
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from tests.server.test_ingest_protocol import Duplex, batch_msg, http_get, open_msg, uid
from tests.storage.test_downsample import E, P, store_run
from tests.support.server import ServerProc, start_server

N_RUNS = 60
LRS = (0.1, 0.01, 0.001)


@dataclass
class Model:
    """What each stored run is, to compute the expected answer of a query."""

    id: str
    name: str
    lr: float
    opt: str
    layers: int
    acc: float | None
    tags: list[str]
    state: str
    created_at: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)


def model(i: int) -> Model:
    return Model(
        id=f"r{i:02d}",
        name=f"sweep-{i}" if i % 4 == 0 else f"run-{i:02d}",
        lr=LRS[i % 3],
        opt=("adam", "sgd")[i % 2],
        layers=i % 5,
        acc=None if i % 10 == 9 else i / 100,
        tags=["even" if i % 2 == 0 else "odd", *(["best"] if i >= 55 else [])],
        state="running" if i == N_RUNS - 1 else ("failed" if i % 7 == 0 else "finished"),
    )


RUNS = [model(i) for i in range(N_RUNS)]
BY_ID = {m.id: m for m in RUNS}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    data = tmp_path_factory.mktemp("http-api")
    ticks = itertools.count()  # a minute between the storage's clock readings: distinct ISO times
    s = SqliteStorage(data / DB_NAME, clock=lambda: 1_700_000_000.0 + 60 * next(ticks))
    for m in RUNS:
        row = {"loss": 1.0} if m.acc is None else {"loss": 1.0, "acc": m.acc}
        store_run(
            s,
            m.id,
            range(5),
            lambda i, row=row: row,
            meta={"name": m.name, "tags": m.tags},
            config={"lr": m.lr, "opt": {"name": m.opt}, "layers": m.layers},
            exit_code=None if m.state == "running" else (1 if m.state == "failed" else 0),
        )
        info = s.get_run(E, P, m.id)
        assert info is not None
        m.created_at = info.created_at
    s.close()
    srv = start_server(data)
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.log()[-4000:]


def get(srv: ServerProc, path: str, **query: Any) -> tuple[int, Any]:
    q = urllib.parse.urlencode({k: json.dumps(v) if k == "filters" else v for k, v in query.items()})
    status, _, body = http_get(f"{srv.url}{path}" + (f"?{q}" if q else ""))
    return status, body


def request(srv: ServerProc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{srv.url}{path}", data=data, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ids(srv: ServerProc, **query: Any) -> list[str]:
    status, body = get(srv, f"/api/v1/runs/{E}/{P}", limit=1000, **query)
    assert status == 200, body
    assert body["total"] == len(body["runs"])
    return [r["id"] for r in body["runs"]]


def test_the_projects_list_names_every_project_with_its_run_count(server: ServerProc) -> None:
    status, body = get(server, "/api/v1/projects")
    assert status == 200, body
    (only,) = body["projects"]
    assert (only["entity"], only["name"], only["runs"]) == (E, P, N_RUNS)
    assert only["last_active"] >= max(m.created_at for m in RUNS)


# --- the runs table -----------------------------------------------------------------------------
def test_runs_page_newest_first_with_the_total_on_every_page(server: ServerProc) -> None:
    seen: list[str] = []
    for offset in range(0, N_RUNS, 25):
        status, body = get(server, f"/api/v1/runs/{E}/{P}", limit=25, offset=offset)
        assert status == 200 and body["total"] == N_RUNS, body
        seen += [r["id"] for r in body["runs"]]
    assert seen == [m.id for m in sorted(RUNS, key=lambda m: -m.created_at)]


FILTERS: list[tuple[dict[str, Any], Any]] = [
    ({"config.lr": 0.01}, lambda m: m.lr == 0.01),
    ({"config.lr": {"$lt": 0.05}}, lambda m: m.lr < 0.05),
    ({"config.opt.name": "adam"}, lambda m: m.opt == "adam"),
    ({"config.opt/name": {"$ne": "adam"}}, lambda m: m.opt != "adam"),
    ({"config.layers": {"$in": [1, 3]}}, lambda m: m.layers in (1, 3)),
    ({"config.layers": {"$nin": [1, 3]}}, lambda m: m.layers not in (1, 3)),
    ({"config.layers": {"$gte": 2, "$lte": 3}}, lambda m: 2 <= m.layers <= 3),
    ({"summary.acc": {"$gt": 0.3}}, lambda m: m.acc is not None and m.acc > 0.3),
    ({"summary.acc": {"$exists": False}}, lambda m: m.acc is None),
    ({"summary_metrics.acc": {"$exists": True}}, lambda m: m.acc is not None),
    ({"tags": "best"}, lambda m: "best" in m.tags),
    ({"tags": {"$in": ["best", "nope"]}}, lambda m: "best" in m.tags),
    ({"tags": {"$nin": ["even"]}}, lambda m: "even" not in m.tags),
    ({"tags": {"$regex": "^b"}}, lambda m: "best" in m.tags),
    ({"state": "failed"}, lambda m: m.state == "failed"),
    ({"state": {"$in": ["running", "failed"]}}, lambda m: m.state in ("running", "failed")),
    ({"name": {"$regex": "^sweep-"}}, lambda m: m.name.startswith("sweep-")),
    ({"display_name": {"$regex": "-1"}}, lambda m: "-1" in m.name),
    (
        {"$or": [{"config.lr": 0.1}, {"tags": "best"}], "state": "finished"},
        lambda m: (m.lr == 0.1 or "best" in m.tags) and m.state == "finished",
    ),
    (
        {
            "$and": [
                {"config.layers": {"$gt": 0}},
                {"$or": [{"summary.acc": {"$lt": 0.1}}, {"config.opt.name": "sgd"}]},
            ]
        },
        lambda m: m.layers > 0 and ((m.acc is not None and m.acc < 0.1) or m.opt == "sgd"),
    ),
    ({"config.lr": {"$gt": "a"}}, lambda m: False),  # strings and numbers never compare
]


@pytest.mark.parametrize("flt,want", FILTERS, ids=[json.dumps(f) for f, _ in FILTERS])
def test_filters_select_the_runs_the_model_selects(
    server: ServerProc, flt: dict[str, Any], want: Any
) -> None:
    assert sorted(ids(server, filters=flt)) == sorted(m.id for m in RUNS if want(m))


def test_filters_on_created_at_take_seconds_or_iso_times(server: ServerProc) -> None:
    cut = RUNS[30].created_at
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cut))
    want = sorted(m.id for m in RUNS if m.created_at >= cut)
    assert sorted(ids(server, filters={"created_at": {"$gte": cut}})) == want
    assert sorted(ids(server, filters={"createdAt": {"$gte": iso}})) == want


def test_sort_by_a_summary_key_puts_runs_without_it_last_either_way(server: ServerProc) -> None:
    with_acc = [m for m in RUNS if m.acc is not None]
    without = {m.id for m in RUNS if m.acc is None}
    for order, rev in (("-summary.acc", True), ("summary.acc", False)):
        got = ids(server, order=order)
        by_acc = sorted(with_acc, key=lambda m: m.acc or 0.0, reverse=rev)
        assert got[: len(with_acc)] == [m.id for m in by_acc]
        assert set(got[len(with_acc) :]) == without


def test_sort_by_several_keys_and_columns(server: ServerProc) -> None:
    got = ids(server, order="+config.layers,-name")
    by_name = sorted(RUNS, key=lambda m: m.name, reverse=True)
    assert got == [m.id for m in sorted(by_name, key=lambda m: m.layers)]
    assert ids(server, order="+created_at") == [m.id for m in RUNS]


def test_search_matches_name_id_or_tag_case_insensitively(server: ServerProc) -> None:
    assert sorted(ids(server, search="SWEEP")) == sorted(m.id for m in RUNS if "sweep" in m.name)
    assert sorted(ids(server, search="bes")) == sorted(m.id for m in RUNS if "best" in m.tags)
    assert ids(server, search="r07") == ["r07"]


@pytest.mark.parametrize(
    "query,needle",
    [
        ({"filters": {"config.lr": {"$foo": 1}}}, "'$foo'"),
        ({"filters": {"colour": "red"}}, "'colour'"),
        ({"filters": {"$nor": []}}, "'$nor'"),
        ({"filters": {"tags": {"$gt": "a"}}}, "tags"),
        ({"filters": {"name": {"$regex": "("}}}, "regular expression"),
        ({"filters": {"config.lr": {"$in": 3}}}, "$in takes a list"),
        ({"filters": ["config.lr"]}, "object of conditions"),
        ({"order": "-colour"}, "'colour'"),
        ({"limit": 0}, "limit"),
    ],
)
def test_a_bad_query_is_a_400_naming_what_is_wrong(
    server: ServerProc, query: dict[str, Any], needle: str
) -> None:
    status, body = get(server, f"/api/v1/runs/{E}/{P}", **query)
    assert status == 400 and body["error"] == "INVALID_ARGUMENT" and needle in body["message"], body


def test_a_filter_that_is_not_json_is_a_400(server: ServerProc) -> None:
    status, _, body = http_get(f"{server.url}/api/v1/runs/{E}/{P}?filters=%7Bnope")
    assert status == 400 and "filters is not valid JSON" in body["message"]


def test_groups_give_count_and_mean_min_max_per_value(server: ServerProc) -> None:
    status, body = get(
        server, f"/api/v1/groups/{E}/{P}", by="config.opt.name", metrics="summary.acc,config.layers",
        filters={"state": {"$ne": "running"}},
    )  # fmt: skip
    assert status == 200 and body["total_groups"] == 2 and not body["truncated"], body
    for g in body["groups"]:
        runs = [m for m in RUNS if m.opt == g["value"] and m.state != "running"]
        accs = [m.acc for m in runs if m.acc is not None]
        assert g["count"] == len(runs)
        acc = g["metrics"]["summary.acc"]
        assert (acc["count"], acc["min"], acc["max"]) == (len(accs), min(accs), max(accs))
        assert acc["mean"] == pytest.approx(sum(accs) / len(accs))
        assert g["metrics"]["config.layers"]["max"] == max(m.layers for m in runs)
    status, body = get(server, f"/api/v1/groups/{E}/{P}", by="tags")
    assert status == 400 and "grouped by tags" in body["message"]


def test_keys_list_config_and_summary_keys_for_the_column_chooser(server: ServerProc) -> None:
    status, body = get(server, f"/api/v1/keys/{E}/{P}")
    assert status == 200, body
    assert body["config"] == ["layers", "lr", "opt.name"]
    assert {"acc", "loss", "_step", "_runtime", "_timestamp"} <= set(body["summary"])
    assert "created_at" in body["columns"]


# --- series ---------------------------------------------------------------------------------------
def test_series_of_one_run_and_of_several_for_compare(server: ServerProc) -> None:
    status, body = get(server, f"/api/v1/runs/{E}/{P}/r01/series", keys="acc,loss,nope", buckets=3)
    assert status == 200 and body["x_axis"] == "_step", body
    acc = body["series"]["acc"]
    assert not acc["exact"] and sum(acc["count"]) == 5 and acc["max"] == [0.01] * len(acc["x"])
    assert body["series"]["nope"] == {
        "exact": True,
        "x": [],
        "x_last": [],
        "min": [],
        "max": [],
        "mean": [],
        "count": [],
    }
    status, body = get(server, f"/api/v1/series/{E}/{P}", runs="r01,r02,ghost", keys="acc", x_axis="_runtime")
    assert status == 200, body
    assert (
        body["runs"]["r02"]["series"]["acc"]["exact"]
        and body["runs"]["r02"]["series"]["acc"]["mean"] == [0.02] * 5
    )
    assert body["runs"]["ghost"]["error"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "query,needle",
    [({}, "keys is required"), ({"keys": "acc", "buckets": 0}, "buckets"),
     ({"keys": "acc", "x_axis": "epoch"}, "x_axis"), ({"keys": "acc", "min": "x"}, "min must be a number"),
     ({"keys": "acc", "min": 5, "max": 1}, "above")],
)  # fmt: skip
def test_a_bad_series_request_is_a_400(server: ServerProc, query: dict[str, Any], needle: str) -> None:
    status, body = get(server, f"/api/v1/runs/{E}/{P}/r01/series", **query)
    assert status == 400 and needle in body["message"], body


def test_run_pages_for_keys_console_system_and_files(server: ServerProc) -> None:
    assert get(server, f"/api/v1/runs/{E}/{P}/r03/keys") == (
        200,
        {"keys": ["loss", "acc", "_step", "_timestamp", "_runtime"]},
    )
    assert get(server, f"/api/v1/runs/{E}/{P}/r03/console") == (200, {"lines": []})
    assert get(server, f"/api/v1/runs/{E}/{P}/r03/system") == (200, {"samples": []})
    assert get(server, f"/api/v1/runs/{E}/{P}/r03/files") == (200, {"files": []})
    for tail in ("keys", "console", "system", "files", "series?keys=a"):
        status, body = get(server, f"/api/v1/runs/{E}/{P}/ghost/{tail}")
        assert status == 404 and body["error"] == "NOT_FOUND", (tail, body)


# --- editing and deleting -------------------------------------------------------------------------
def test_patch_saves_name_tags_and_notes(server: ServerProc) -> None:
    status, body = request(
        server, "PATCH", f"/api/v1/runs/{E}/{P}/r10", {"name": "renamed", "tags": ["x", "y", "x"]}
    )
    assert status == 200 and (body["name"], body["tags"], body["notes"]) == ("renamed", ["x", "y"], None), (
        body
    )
    status, body = request(server, "PATCH", f"/api/v1/runs/{E}/{P}/r10", {"notes": "lr too high"})
    assert status == 200 and (body["name"], body["notes"]) == ("renamed", "lr too high")
    assert get(server, f"/api/v1/runs/{E}/{P}/r10")[1]["tags"] == ["x", "y"]
    assert ids(server, filters={"tags": "y"}) == ["r10"] and ids(server, search="renamed") == ["r10"]
    request(
        server,
        "PATCH",
        f"/api/v1/runs/{E}/{P}/r10",
        {"name": "run-10", "tags": BY_ID["r10"].tags, "notes": None},
    )


@pytest.mark.parametrize(
    "body,needle",
    [({"state": "finished"}, "cannot edit state"), ({"tags": "x"}, "tags must be a list"),
     ({"tags": [""]}, "each tag"), ({"name": 5}, "name must be"), ({}, "non-empty"), ([1], "non-empty")],
)  # fmt: skip
def test_a_bad_edit_is_a_400_naming_the_field(server: ServerProc, body: Any, needle: str) -> None:
    status, got = request(server, "PATCH", f"/api/v1/runs/{E}/{P}/r11", body)
    assert status == 400 and needle in got["message"], got


def test_delete_removes_an_ended_run_and_refuses_a_running_one(server: ServerProc) -> None:
    status, body = request(server, "DELETE", f"/api/v1/runs/{E}/{P}/r{N_RUNS - 1}")
    assert status == 409 and body["error"] == "FAILED_PRECONDITION" and "running" in body["message"]
    status, body = request(server, "DELETE", f"/api/v1/runs/{E}/{P}/r05")
    assert status == 200 and body == {"deleted": f"{E}/{P}/r05"}
    for path in ("", "/history", "/series?keys=acc"):
        assert get(server, f"/api/v1/runs/{E}/{P}/r05{path}")[0] == 404
    assert "r05" not in ids(server) and request(server, "DELETE", f"/api/v1/runs/{E}/{P}/r05")[0] == 404
    RUNS.remove(BY_ID["r05"])
    assert get(server, f"/api/v1/runs/{E}/{P}", limit=1)[1]["total"] == len(RUNS)


# --- live updates ---------------------------------------------------------------------------------
class Events:
    """A server-sent event stream read on a thread: (event, data) pairs into a queue."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=60)
        self.conn.request("GET", f"{u.path}?{u.query}")
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200 and self.resp.headers["content-type"].startswith("text/event-stream")
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        event = "message"
        try:
            for raw in self.resp:
                line = raw.decode().rstrip("\n")
                if line.startswith(": connected"):
                    self.queue.put(("connected", None))
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.queue.put((event, json.loads(line[6:])))
                    event = "message"
        except Exception:  # the connection closed under the reader (close(), the server stopping)
            pass
        self.queue.put(("closed", None))

    def next(self, timeout: float = 15) -> tuple[str, Any]:
        return self.queue.get(timeout=timeout)

    def close(self) -> None:
        if self.conn.sock is not None:  # wakes the reading thread at once
            with contextlib.suppress(OSError):
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_a_running_run_s_row_is_pushed_when_its_data_arrives(server: ServerProc) -> None:
    import grpc

    from runstream_ingest.wire import ingest_pb2_grpc as pb_grpc

    run_id = uid()
    events = Events(f"{server.url}/api/v1/events/acme/proto")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    try:
        assert events.next() == ("connected", None)
        with Duplex(pb_grpc.IngestStub(channel)) as d:
            d.send(open_msg(run_id))
            assert d.recv().WhichOneof("msg") == "opened"
            for last in (3, 8):
                d.send(batch_msg(last - 2 if last == 3 else 4, last))
                assert d.recv().ack.seq == last
                kind, data = events.next()
                while data is not None and data["last_step"] != last - 1:  # an earlier coalesced push
                    kind, data = events.next()
                assert kind == "run" and data["id"] == run_id and data["state"] == "running"
        status, body = request(server, "PATCH", f"/api/v1/runs/acme/proto/{run_id}", {"tags": ["live"]})
        assert status == 200, body
        kind, data = events.next()
        assert (kind, data["tags"]) == ("run", ["live"])
    finally:
        events.close()
        channel.close()


def test_an_event_stream_can_follow_chosen_runs_only_and_sees_deletions(server: ServerProc) -> None:
    events = Events(f"{server.url}/api/v1/events/{E}/{P}?runs=r20")
    try:
        assert events.next() == ("connected", None)
        request(server, "PATCH", f"/api/v1/runs/{E}/{P}/r21", {"notes": "not followed"})
        request(server, "PATCH", f"/api/v1/runs/{E}/{P}/r20", {"notes": "followed"})
        kind, data = events.next()
        assert (kind, data["id"], data["notes"]) == ("run", "r20", "followed")
        assert request(server, "DELETE", f"/api/v1/runs/{E}/{P}/r20")[0] == 200
        RUNS.remove(BY_ID["r20"])
        assert events.next() == ("deleted", {"path": f"{E}/{P}/r20"})
    finally:
        events.close()


def test_the_server_stops_promptly_with_an_event_stream_open(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "srv")
    events = None
    try:
        events = Events(f"{srv.url}/api/v1/events/{E}/{P}")
        assert events.next() == ("connected", None)
        srv.stop(timeout=15)
        assert srv.proc.returncode == 0, srv.log()[-3000:]
        assert events.next() == ("closed", None)
    finally:
        srv.stop()
        if events is not None:
            events.close()
