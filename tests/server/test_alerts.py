"""Alerts through a real server (docs/alerts.md): a run's alerts reach the server once, are listed
for the run and the project, and are POSTed to the entity's webhook -- a real HTTP receiver on
127.0.0.1 -- with Slack's ``text``; failures are retried with back-off, a refusing URL is not,
and an undelivered alert survives a server restart."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.format import record as rec
from runstream_ingest.server.alerts import AlertDelivery
from runstream_ingest.server.storage.sqlite.alerts import list_alerts
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from tests.e2e.test_online import free_port
from tests.support.server import ServerProc, start_server
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("finish_active_run")


class Receiver:
    """A webhook receiver: answers ``fail`` (status) to the first ``failures`` POSTs, then 200;
    keeps every request's arrival time and JSON body."""

    def __init__(self, port: int = 0, failures: int = 0, fail: int = 503, retry_after: str = "") -> None:
        self.failures, self.fail, self.retry_after = failures, fail, retry_after
        self.requests: list[tuple[float, str, dict[str, Any]]] = []
        rcv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                rcv.requests.append((time.monotonic(), self.path, json.loads(body)))
                status = rcv.fail if len(rcv.requests) <= rcv.failures else 200
                self.send_response(status)
                if status != 200 and rcv.retry_after:
                    self.send_header("Retry-After", rcv.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def delivered(self) -> list[dict[str, Any]]:
        n = len(self.requests)
        return [body for i, (_, _, body) in enumerate(self.requests[:n]) if i >= self.failures]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.close()


@pytest.fixture
def stopped_servers() -> Iterator[list[ServerProc]]:
    servers: list[ServerProc] = []
    yield servers
    for s in servers:
        s.stop()


def serve(data_dir: Path, servers: list[ServerProc], *extra: str) -> ServerProc:
    srv = start_server(data_dir, *extra)
    servers.append(srv)
    return srv


def online_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str) -> Any:
    monkeypatch.setenv("RUNSTREAM_HOST", url)
    return runstream.init(project="alerts", entity="team", dir=tmp_path / "runs")


def get(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + path, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def alerts_of(url: str, run: str) -> list[dict[str, Any]]:
    return get(url, f"/api/v1/runs/team/alerts/{run}/alerts")["alerts"]  # type: ignore[no-any-return]


def test_alert_is_stored_listed_and_posted_after_two_failures_with_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver, stopped_servers: list[ServerProc]
) -> None:
    srv = serve(
        tmp_path / "srv",
        stopped_servers,
        "--alert-webhook",
        f"team={receiver.url}",
        "--alert-retry-base",
        "0.4",
    )
    run = online_run(monkeypatch, tmp_path, srv.url)
    run.log({"loss": 0.1})
    assert run.alert("Loss low", "loss fell to 0.1", level=runstream.AlertLevel.WARN) is True
    assert run.alert("Loss low", "again", level="WARN") is False  # rate-limited in the SDK
    run_id = run.id
    run.finish()
    wait_for(lambda: len(receiver.requests) >= 3, 30, "the third delivery attempt")
    times = [t for t, _, _ in receiver.requests]
    # Back-off: about 0.4 s, then 0.8 s, between attempts (the queue is polled every 0.5 s).
    assert times[1] - times[0] >= 0.35 and times[2] - times[1] >= 0.75
    time.sleep(1.5)
    assert len(receiver.requests) == 3  # delivered: no more attempts
    _, path, body = receiver.requests[-1]
    assert path == "/hook"
    assert "Loss low" in body["text"] and "loss fell to 0.1" in body["text"] and "WARN" in body["text"]
    assert {k: body[k] for k in ("title", "alert_text", "level", "entity", "project", "run_id")} == {
        "title": "Loss low", "alert_text": "loss fell to 0.1", "level": "WARN", "entity": "team",
        "project": "alerts", "run_id": run_id,
    }  # fmt: skip
    assert body["run_url"] == f"{srv.url}/#/r/team/alerts/{run_id}"
    assert body["time"].endswith("Z") and body["step"] == 1
    # The API lists it once, for the run and for the project, with its delivery state.
    (got,) = alerts_of(srv.url, run_id)
    assert (got["title"], got["text"], got["level"], got["id"]) == (
        "Loss low", "loss fell to 0.1", "WARN", body["alert_id"]
    )  # fmt: skip
    assert got["delivery"]["status"] == "delivered" and got["delivery"]["attempts"] == 3
    assert got["delivery"]["last_error"] is None and got["delivery"]["delivered_at"] > 0
    project = get(srv.url, "/api/v1/alerts/team/alerts")
    assert project["total"] == 1 and project["alerts"][0]["run_id"] == run_id


def test_a_project_lists_alerts_of_all_its_runs_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped_servers: list[ServerProc]
) -> None:
    srv = serve(tmp_path / "srv", stopped_servers)  # no webhook: stored and listed, not sent
    ids = []
    for i in range(2):
        run = online_run(monkeypatch, tmp_path, srv.url)
        run.alert(f"run {i}", "done", level="INFO")
        ids.append(run.id)
        run.finish()
    wait_for(lambda: get(srv.url, "/api/v1/alerts/team/alerts")["total"] == 2, 20, "both alerts")
    got = get(srv.url, "/api/v1/alerts/team/alerts")["alerts"]
    assert [a["run_id"] for a in got] == ids[::-1]
    wait_for(
        lambda: all(a["delivery"]["status"] == "no_webhook" for a in alerts_of(srv.url, ids[0])),
        10,
        "the no-webhook decision",
    )
    page = get(srv.url, "/api/v1/alerts/team/alerts?limit=1&offset=1")
    assert page["total"] == 2 and [a["run_id"] for a in page["alerts"]] == [ids[0]]
    with pytest.raises(urllib.error.HTTPError) as e:
        get(srv.url, "/api/v1/runs/team/alerts/nosuchrun/alerts")
    assert e.value.code == 404 and "nosuchrun" in json.loads(e.value.read())["message"]


def test_a_refusing_webhook_is_not_retried_and_the_failure_is_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped_servers: list[ServerProc]
) -> None:
    gone = Receiver(failures=100, fail=404)  # a revoked Slack URL answers 404 forever
    try:
        srv = serve(
            tmp_path / "srv", stopped_servers, "--alert-webhook", f"*={gone.url}", "--alert-retry-base", "0.2"
        )
        run = online_run(monkeypatch, tmp_path, srv.url)
        run.alert("t", "x", level="ERROR")
        run_id = run.id
        run.finish()
        wait_for(lambda: alerts_of(srv.url, run_id)[0]["delivery"]["status"] == "failed", 20, "failed")
        time.sleep(1.0)
        assert len(gone.requests) == 1
        delivery = alerts_of(srv.url, run_id)[0]["delivery"]
        assert delivery["attempts"] == 1 and delivery["last_error"].startswith("HTTP 404")
    finally:
        gone.close()


def test_an_undelivered_alert_is_delivered_after_a_server_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped_servers: list[ServerProc]
) -> None:
    port = free_port()  # nothing listens there yet: every attempt fails to connect
    hook = f"http://127.0.0.1:{port}/hook"
    args = ("--alert-webhook", f"team={hook}", "--alert-retry-base", "0.5")
    srv = serve(tmp_path / "srv", stopped_servers, *args)
    run = online_run(monkeypatch, tmp_path, srv.url)
    run.alert("restart", "survives", level="ERROR")
    run_id = run.id
    run.finish()
    wait_for(lambda: alerts_of(srv.url, run_id)[0]["delivery"]["attempts"] >= 1, 20, "a failed attempt")
    delivery = alerts_of(srv.url, run_id)[0]["delivery"]
    assert delivery["status"] == "pending" and delivery["last_error"]
    srv.stop()
    rcv = Receiver(port=port)
    try:
        srv2 = serve(tmp_path / "srv", stopped_servers, *args)
        wait_for(lambda: rcv.requests, 30, "delivery after the restart")
        assert rcv.requests[0][2]["title"] == "restart"
        wait_for(lambda: alerts_of(srv2.url, run_id)[0]["delivery"]["status"] == "delivered", 10, "delivered")
        assert len(alerts_of(srv2.url, run_id)) == 1
    finally:
        rcv.close()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--alert-webhook", "no-equals-sign"], "expected ENTITY=URL"),
        (["--alert-webhook", "team=ftp://x/y"], "must start with http:// or https://"),
        (["--alert-webhook", "a=http://h/1", "--alert-webhook", "a=http://h/2"], "entity 'a' is given twice"),
    ],
)
def test_bad_webhook_options_stop_the_server_with_a_clear_error(
    tmp_path: Path, args: list[str], words: str
) -> None:
    cmd = [sys.executable, "-m", "runstream.cli.main", "server", "--host", "127.0.0.1", "--port", "0",
           "--grpc-port", "0", "--data-dir", str(tmp_path / "srv"), *args]  # fmt: skip
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert words in p.stderr


# --- the delivery loop in this process, over a real SQLite storage and a real receiver -----------


def store_alerts(store: SqliteStorage, bodies: list[Any], t: float | None = None) -> None:
    store.open_run("team", "alerts", "r1", "w", "allow")
    when = time.time() if t is None else t
    recs = [rec.Record(i + 1, rec.KIND_ALERT, 0, 0, when, rec.pack_body(b)) for i, b in enumerate(bodies)]
    store.store_batch("team", "alerts", "r1", "w", 1, len(recs), recs)


def alert_body(title: str) -> dict[str, Any]:
    return {"title": title, "text": "x", "level": "WARN", "wait_duration": 60.0, "step": 3, "suppressed": 1}


def deliver_until(
    store: SqliteStorage, receiver: Receiver, done: Any, timeout: float = 20, **kw: Any
) -> None:
    """Run ``AlertDelivery`` for ``receiver``'s webhook until ``done(alerts)`` holds."""
    readers, writer = ThreadPoolExecutor(1), ThreadPoolExecutor(1)

    async def main() -> None:
        d = AlertDelivery(store, readers, writer, {"team": receiver.url}, "http://dash.example", **kw)
        d.start()
        try:
            deadline = time.monotonic() + timeout
            while not done(list_alerts(store, "team", "alerts", "r1", 100, 0)[0]):
                assert time.monotonic() < deadline, "timed out waiting for the deliveries"
                await asyncio.sleep(0.05)
        finally:
            await d.stop()

    try:
        asyncio.run(main())
    finally:
        readers.shutdown()
        writer.shutdown()


def test_429_retry_after_is_honoured_and_max_attempts_ends_in_failed(tmp_path: Path) -> None:
    rcv = Receiver(failures=100, fail=429, retry_after="0.4")
    store = SqliteStorage(tmp_path / "db.sqlite")
    try:
        store_alerts(store, [alert_body("busy")])
        deliver_until(
            store, rcv, lambda al: al[0].status == "failed", retry_base=0.05, max_attempts=3,
        )  # fmt: skip
        (a,) = list_alerts(store, "team", "alerts", "r1", 100, 0)[0]
        assert a.attempts == 3 and a.last_error is not None and a.last_error.startswith("HTTP 429")
        assert len(rcv.requests) == 3
        times = [t for t, _, _ in rcv.requests]
        assert min(y - x for x, y in itertools.pairwise(times)) >= 0.35  # Retry-After, not the 0.05 s base
        assert a.suppressed == 1 and "1 more with this title were rate-limited" in rcv.requests[0][2]["text"]
        assert rcv.requests[0][2]["run_url"] == "http://dash.example/#/r/team/alerts/r1"
    finally:
        store.close()
        rcv.close()


def test_an_alert_older_than_a_day_is_expired_not_sent_and_bad_bodies_are_kept_raw(tmp_path: Path) -> None:
    rcv = Receiver()
    store = SqliteStorage(tmp_path / "db.sqlite")
    try:
        store_alerts(store, [alert_body("old"), {"title": "", "text": "x", "level": "INFO"}, [1, 2]],
                     t=time.time() - 2 * 86_400)  # fmt: skip
        deliver_until(store, rcv, lambda al: al and al[0].status != "pending")
        (a,) = list_alerts(store, "team", "alerts", "r1", 100, 0)[0]
        assert (a.title, a.status, a.attempts) == ("old", "expired", 0)
        assert rcv.requests == []
        c = sqlite3.connect(tmp_path / "db.sqlite")
        try:
            raw = c.execute("SELECT seq, reason FROM raw_records ORDER BY seq").fetchall()
        finally:
            c.close()
        assert raw == [(2, "malformed body"), (3, "malformed body")]
    finally:
        store.close()
        rcv.close()
