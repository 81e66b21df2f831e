"""``runstream.Api`` against a real server (docs/http-api.md, "Python"): projects, runs filtered and
sorted (lazy, paged), one run's fields, downsampled ``history``, ``scan_history``, ``update``,
``delete``, and an exception class for each way a request can be refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import runstream
from runstream.read.api import Api
from runstream_ingest.server.args import DB_NAME
from runstream_ingest.server.auth.keys import KeyStore
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from tests.storage.test_downsample import DT, E, P, store_run
from tests.support.server import ServerProc, start_server

SPIKE = 31_337


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    data = tmp_path_factory.mktemp("read-api")
    s = SqliteStorage(data / DB_NAME)
    for i in range(12):
        store_run(
            s, f"r{i:02d}", range(10), lambda st, i=i: {"loss": 1 / (st + 1), "acc": i / 10 + st / 1000},
            meta={"name": f"run-{i}", "tags": ["a" if i % 2 else "b"]},
            config={"lr": (0.1, 0.01)[i % 2], "model": {"depth": i % 3}},
        )  # fmt: skip
    store_run(s, "long", range(100_000), lambda st: {"loss": 50.0 if st == SPIKE else math.cos(st / 1e4)})
    store_run(s, "live", range(3), lambda st: {"loss": 1.0}, exit_code=None)
    s.close()
    srv = start_server(data)
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.log()[-4000:]


@pytest.fixture
def api(server: ServerProc) -> Api:
    return runstream.Api(server.url)


def test_projects_and_one_run_s_fields(api: Api) -> None:
    assert api.projects(E) == [P] and api.projects("nobody") == []
    run = api.run(f"{E}/{P}/r03")
    assert (run.id, run.name, run.tags, run.notes, run.state) == ("r03", "run-3", ["a"], None, "finished")
    assert run.config == {"lr": 0.01, "model": {"depth": 0}} and run.summary["acc"] == pytest.approx(0.309)
    assert run.last_step == 9 and run.rows == 10 and run.runtime == pytest.approx(9 * DT)


def test_runs_are_filtered_sorted_and_fetched_a_page_at_a_time(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real = Api._get

    def counting(self: Api, path: str, **query: Any) -> Any:
        calls.append(query)
        return real(self, path, **query)

    monkeypatch.setattr(Api, "_get", counting)
    runs = api.runs(
        f"{E}/{P}",
        filters={"config.lr": 0.1, "config.model.depth": {"$in": [0, 1]}},
        order="-summary.acc",
        per_page=2,
    )
    assert calls == []  # nothing is fetched until it is used
    assert len(runs) == 4 and len(calls) == 1
    got = [r.id for r in runs]
    assert (
        got == ["r10", "r06", "r04", "r00"] and len(calls) == 3
    )  # pages 0, 1 (cached 0), then a short page 2
    assert runs[-1].id == "r00" and runs[1].id == "r06"
    with pytest.raises(IndexError):
        runs[4]


def test_runs_search_and_groups(api: Api) -> None:
    assert [r.id for r in api.runs(f"{E}/{P}", search="run-1", order="name")] == ["r01", "r10", "r11"]
    groups = api.runs(f"{E}/{P}", filters={"tags": "b"}).groups("config.model.depth", ["summary.acc"])
    assert [(g["value"], g["count"]) for g in groups] == [(0, 2), (1, 2), (2, 2)]
    assert groups[0]["metrics"]["summary.acc"]["max"] == pytest.approx(0.609)


def test_history_is_downsampled_on_the_server_and_keeps_the_spike(api: Api) -> None:
    run = api.run(f"{E}/{P}/long")
    df = run.history(keys=["loss"], samples=200, stats=True)
    assert isinstance(df, pd.DataFrame) and list(df.columns) == [
        "_step",
        "loss",
        "loss:min",
        "loss:max",
        "loss:count",
    ]
    assert 0 < len(df) <= 200 and df["loss:count"].sum() == 100_000
    assert df["loss:max"].max() == 50.0 and df["loss"].max() < 50.0
    rel = run.history(keys=["loss"], samples=50, x_axis="_runtime", pandas=False)
    assert isinstance(rel, list) and len(rel) <= 50 and rel[0]["_runtime"] == pytest.approx(0.0)


def test_history_of_a_short_run_is_every_row_and_defaults_to_every_key(api: Api) -> None:
    df = api.run(f"{E}/{P}/r02").history()
    assert list(df.columns) == ["_step", "loss", "acc"] and list(df["_step"]) == list(range(10))
    assert list(df["loss"]) == [1 / (s + 1) for s in range(10)]
    rows = api.run(f"{E}/{P}/r02").history(keys=["acc"], pandas=False)
    assert rows[3] == {"_step": 3, "acc": pytest.approx(0.203)}


def test_scan_history_streams_every_row_between_steps(api: Api) -> None:
    rows = list(
        api.run(f"{E}/{P}/long").scan_history(
            keys=["loss"], min_step=SPIKE - 5, max_step=SPIKE + 5, page_size=4
        )
    )
    assert [r["_step"] for r in rows] == list(range(SPIKE - 5, SPIKE + 6))
    assert rows[5]["loss"] == 50.0


def test_update_saves_name_tags_and_notes(api: Api) -> None:
    run = api.run(f"{E}/{P}/r07")
    run.name = "renamed"
    run.tags.append("best")
    run.notes = "a good one"
    run.update()
    again = api.run(f"{E}/{P}/r07")
    assert (again.name, again.tags, again.notes) == ("renamed", ["a", "best"], "a good one")
    assert [r.id for r in api.runs(f"{E}/{P}", filters={"tags": "best"})] == ["r07"]
    run.tags = ["a", 3]  # type: ignore[list-item]
    with pytest.raises(runstream.UsageError, match="tags"):
        run.update()


def test_delete_removes_an_ended_run_and_refuses_a_running_one(api: Api) -> None:
    api.run(f"{E}/{P}/r08").delete()
    with pytest.raises(runstream.NotFoundError):
        api.run(f"{E}/{P}/r08")
    with pytest.raises(runstream.ConflictError, match="running"):
        api.run(f"{E}/{P}/live").delete()


def test_a_bad_request_raises_an_error_that_says_what_was_wrong(api: Api) -> None:
    with pytest.raises(runstream.InvalidRequestError, match=r"\$gtt"):
        len(api.runs(f"{E}/{P}", filters={"summary.acc": {"$gtt": 1}}))
    with pytest.raises(runstream.InvalidRequestError, match="unknown field"):
        list(api.runs(f"{E}/{P}", order="-accuracy"))
    with pytest.raises(runstream.UsageError, match="filters must be a dict"):
        api.runs(f"{E}/{P}", filters=[("config.lr", 1)])  # type: ignore[arg-type]
    with pytest.raises(runstream.NotFoundError):
        api.run(f"{E}/{P}/ghost").history(keys=["loss"])
    with pytest.raises(runstream.UsageError, match="entity/project"):
        api.runs(f"{E}/{P}/r01")


def test_a_refused_key_raises_unauthorized_or_permission_denied(tmp_path: Path) -> None:
    with KeyStore(tmp_path / DB_NAME) as ks:
        key_a, key_b = ks.create("team-a")[1], ks.create("team-b")[1]
    srv = start_server(tmp_path, "--auth")
    try:
        with pytest.raises(runstream.UnauthorizedError) as e:
            runstream.Api(srv.url).projects("team-a")
        assert not isinstance(e.value, runstream.PermissionDeniedError) and e.value.status == 401
        with pytest.raises(runstream.PermissionDeniedError):
            runstream.Api(srv.url, api_key=key_b).runs("team-a/p")[0]
        assert len(runstream.Api(srv.url, api_key=key_a).runs("team-a/p")) == 0
    finally:
        srv.stop()
