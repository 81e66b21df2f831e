"""Rich media in history on the server (issue 11, docs/media.md): rows whose values are W&B
pointer dicts (``{"_type": "image-file", ...}``, histograms, tables, lists of images) and the
sidecar's MEDIA records travel the real path from a journal (shipper, gRPC, decode, storage) and
come back unchanged from every read the SDK's ``Api`` makes: ``scan_history``, ``history`` (also
down-sampled), the summary; the charts leave them out without failing; the media files download
as run files.

The journal is written here as the sidecar writes it after its media stage (a MEDIA record with
``FLAG_MEDIA_DONE`` before each row that holds a pointer), so the test does not depend on the
encoders.  ``test_a_real_online_run_...`` goes through ``runstream.init`` and the sidecar too.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

import runstream
from runstream.format import record as rec
from runstream.format.frame import CODEC_ZSTD, TYPE_BATCH, encode_frame
from runstream.read.api import Api
from runstream.read.api_runs import ApiRun
from runstream_ingest.server.args import DB_NAME
from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
from runstream_ingest.sidecar.journal import JournalWriter
from runstream_ingest.sidecar.sources.blob_upload import BlobClient
from tests.support.server import ServerProc, start_server
from tests.support.shipping import PATH, LoopThread

STEPS = 400
START = 1_000_000.0
IMG_EVERY, IMGS_EVERY, LABEL_EVERY = 10, 50, 100


def png(step: int) -> bytes:
    """The (fake) bytes of the image logged at ``step``."""
    return b"\x89PNG\r\n\x1a\n" + f"image of step {step}".encode() * 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def img_path(step: int) -> str:
    return f"media/images/img_{step}_{sha(png(step))[:20]}.png"


def image(step: int) -> dict[str, Any]:
    data = png(step)
    return {"_type": "image-file", "path": img_path(step), "sha256": sha(data), "size": len(data),
            "format": "png", "width": 64, "height": 32, "caption": f"step {step}"}  # fmt: skip


def histogram(step: int) -> dict[str, Any]:
    return {"_type": "histogram", "values": [step, 1, 2, 0], "bins": [0.0, 0.5, 1.0, 1.5, 2.0]}


def table(step: int) -> dict[str, Any]:
    return {"_type": "table-file", "path": f"media/table/preds_{step}_{'ab' * 10}.table.json",
            "sha256": "cd" * 32, "size": 321, "ncols": 2, "nrows": 3, "log_mode": "IMMUTABLE"}  # fmt: skip


def images(step: int) -> dict[str, Any]:
    return {"_type": "images/separated", "width": 64, "height": 32, "format": "png", "count": 2,
            "filenames": [img_path(step), img_path(step + 1)], "captions": ["a", None]}  # fmt: skip


FAILED = {"_type": "image-file", "error": "cannot encode an image of shape (3,)"}


def row(step: int) -> dict[str, Any]:
    """The row logged at ``step``, as the sidecar journals it (pointers in place of media)."""
    r: dict[str, Any] = {"loss": 1.0 / (step + 1), "hist": histogram(step)}
    r["val"] = {"acc": step / STEPS, "hist": histogram(step + 1)}  # flattened: val/acc, val/hist
    if step % IMG_EVERY == 0:
        r["img"] = image(step)
    if step % IMGS_EVERY == 0:
        r["imgs"] = images(step)
    if step % LABEL_EVERY == 0:
        r["label"] = f"label {step}"
        r["mixed"] = step / 10 if step < 200 else histogram(step)  # numbers, then pointers
    if step in (0, STEPS - 1):
        r["preds"] = table(step)
    if step == 5:
        r["pair"] = [image(5), histogram(5)]  # a plain list of pointers
    if step == 7:
        r["broken"] = FAILED
    return r


def flat(step: int) -> dict[str, Any]:
    """``row(step)`` as read back: nested dicts without "_type" flattened to a/b keys."""
    r = row(step)
    val = r.pop("val")
    return {**r, "val/acc": val["acc"], "val/hist": val["hist"]}


def media_keys(r: dict[str, Any]) -> list[tuple[str, Any]]:
    out = [(k, v) for k, v in r.items() if isinstance(v, dict) and "_type" in v]
    return out + [(f"val/{k}", v) for k, v in r["val"].items() if isinstance(v, dict)]


def journal_records(files: dict[str, bytes]) -> list[tuple[int, int, int, float, bytes]]:
    """(kind, flags, step, time, body) of the run, in order: RUN, CONFIG, each row after its MEDIA
    records (one of them an encoding error, one not marked done), the media files, EXIT."""
    out: list[tuple[int, int, int, float, bytes]] = [
        (rec.KIND_RUN, 0, 0, START, rec.pack_body({"start_time": START, "name": "media-run"})),
        (rec.KIND_CONFIG, 0, 0, START, rec.pack_body({"lr": 0.1})),
    ]
    media_id = 0
    for step in range(STEPS):
        t = START + 1 + step * 0.01
        r = row(step)
        for key, pointer in media_keys(r):
            media_id += 1
            body = {"id": media_id, "key": key, "step": step}
            body.update({"error": pointer["error"]} if "error" in pointer else {"pointer": pointer})
            out.append((rec.KIND_MEDIA, rec.FLAG_MEDIA_DONE, step, t, rec.pack_body(body)))
        out.append((rec.KIND_ROW, 0, step, t, rec.pack_body(r)))
        if step == 3:
            # Never written by a working sidecar (it encodes every MEDIA record before the
            # journal): the server keeps it raw rather than fail or fold it.
            meta = rec.pack_body({"id": 0, "type": "html", "key": "page", "step": 3, "inject": False})
            out.append((rec.KIND_MEDIA, 0, step, t, len(meta).to_bytes(4, "little") + meta + b"<b>x</b>"))
    for path, data in files.items():
        body = {"path": path, "sha256": sha(data), "size": len(data), "policy": "now"}
        out.append((rec.KIND_FILE, 0, 0, START + 10, rec.pack_body(body)))
    out.append((rec.KIND_EXIT, 0, 0, START + 20, rec.pack_body({"exit_code": 0})))
    return out


def write_journal(run_dir: Path, files: dict[str, bytes] | None = None) -> int:
    """The run's journal in frames of varied sizes (small ones are decoded record by record on
    the server, big ones by the vectorised path); returns the last seq."""
    records = journal_records(files or {})
    z = zstandard.ZstdCompressor(level=1)
    w = JournalWriter(run_dir / "journal", fsync="never")
    w.open()
    seq, cuts = 1, [0, 7, 40, 900, len(records)]
    for a, b in itertools.pairwise(cuts):
        part = b"".join(
            rec.encode(seq + i, kind, step, t, body, flags)
            for i, (kind, flags, step, t, body) in enumerate(records[a:b])
        )
        w.append(
            encode_frame(TYPE_BATCH, CODEC_ZSTD, seq, seq + b - a - 1, z.compress(part)), seq, seq + b - a - 1
        )
        seq += b - a
    assert w.close()
    return seq - 1


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, Path]]:
    """A server holding the run (shipped from its journal by the real shipper) and the media
    files it names uploaded as run files."""
    tmp = tmp_path_factory.mktemp("media-history")
    srv = start_server(tmp / "server")
    loop = LoopThread()
    try:
        files = {img_path(s): png(s) for s in (0, STEPS - STEPS % IMG_EVERY - IMG_EVERY)}
        for path, data in files.items():
            f = tmp / Path(path).name
            f.write_bytes(data)
            BlobClient(srv.url, None).upload(f, sha(data), len(data))
        run_dir = tmp / "run"
        last = write_journal(run_dir, files)
        s = loop.start(run_dir, srv.url)
        assert loop.wait_acked(s, last, 60), f"acked {s.shipper.acked} of {last}\n{srv.log()[-3000:]}"
        assert s.shipper.fatal is None
        loop.stop(s)
    finally:
        loop.close()
    yield srv, tmp
    srv.stop()
    assert srv.proc.returncode == 0, srv.log()[-4000:]


@pytest.fixture
def run(shipped: tuple[ServerProc, Path]) -> ApiRun:
    return runstream.Api(shipped[0].url).run(PATH)


def test_scan_history_returns_every_row_with_its_pointers_unchanged(run: ApiRun) -> None:
    rows = list(run.scan_history(page_size=97))
    assert [r["_step"] for r in rows] == list(range(STEPS))
    for r in rows:
        step = r["_step"]
        assert {k: v for k, v in r.items() if not k.startswith("_")} == flat(step), step
    assert rows[5]["pair"] == [image(5), histogram(5)] and rows[7]["broken"] == FAILED
    assert rows[20]["img"]["path"] == img_path(20) and rows[20]["img"]["caption"] == "step 20"


def test_scan_history_of_media_keys_gives_only_the_rows_holding_them(run: ApiRun) -> None:
    rows = list(run.scan_history(keys=["img", "preds"], min_step=100, max_step=250))
    assert [r["_step"] for r in rows] == list(range(100, 251, IMG_EVERY))
    assert [r["img"] for r in rows] == [image(s) for s in range(100, 251, IMG_EVERY)]
    assert all("preds" not in r and "loss" not in r for r in rows)
    preds = list(run.scan_history(keys=["preds"]))
    assert [(r["_step"], r["preds"]) for r in preds] == [(0, table(0)), (STEPS - 1, table(STEPS - 1))]


def test_the_summary_holds_each_key_s_last_pointer(run: ApiRun) -> None:
    last = STEPS - 1
    s = run.summary
    assert s["hist"] == histogram(last) and s["val/hist"] == histogram(last + 1)
    assert s["img"] == image(last - last % IMG_EVERY) and s["imgs"] == images(last - last % IMGS_EVERY)
    assert s["preds"] == table(last) and s["pair"] == [image(5), histogram(5)] and s["broken"] == FAILED
    assert s["label"] == f"label {last - last % LABEL_EVERY}"
    assert s["loss"] == pytest.approx(1 / STEPS) and s["_step"] == last
    assert run.state == "finished" and run.rows == STEPS and run.config == {"lr": 0.1}


def test_history_of_pointer_keys_gives_them_as_logged(run: ApiRun) -> None:
    rows = run.history(keys=["img", "loss"], pandas=False)
    assert [r["_step"] for r in rows] == list(range(STEPS))  # fewer points than samples: exact
    assert [r["_step"] for r in rows if "img" in r] == list(range(0, STEPS, IMG_EVERY))
    assert all(r["img"] == image(r["_step"]) for r in rows if "img" in r)
    assert all(r["loss"] == pytest.approx(1 / (r["_step"] + 1)) for r in rows)
    df = run.history(keys=["hist", "preds", "loss"])
    assert type(df).__name__ == "DataFrame" and list(df.columns) == ["_step", "hist", "preds", "loss"]
    assert df["hist"].tolist() == [histogram(s) for s in range(STEPS)]
    assert df["preds"].iloc[0] == table(0) and df["preds"].iloc[-1] == table(STEPS - 1)
    assert all(isinstance(v, float) and math.isnan(v) for v in df["preds"].iloc[1:-1])
    mixed = run.history(keys=["mixed"], pandas=False)
    assert [(r["_step"], r["mixed"]) for r in mixed] == [(0, 0.0), (100, 10.0), (200, histogram(200)),
                                                         (300, histogram(300))]  # fmt: skip


def test_history_of_every_key_includes_the_pointer_keys(run: ApiRun) -> None:
    df = run.history()
    assert {"loss", "hist", "val/acc", "val/hist", "img", "imgs", "preds", "pair", "broken", "label"} <= set(
        df.columns
    )
    by_step = df.set_index("_step")
    assert by_step.loc[50, "imgs"] == images(50) and by_step.loc[5, "pair"] == [image(5), histogram(5)]
    assert by_step.loc[7, "broken"] == FAILED and by_step.loc[300, "label"] == "label 300"
    assert by_step.loc[123, "val/hist"] == histogram(124) and by_step.loc[123, "val/acc"] == 123 / STEPS


def test_downsampled_history_samples_pointer_keys_and_averages_numbers(run: ApiRun) -> None:
    rows = run.history(keys=["loss", "hist", "img"], samples=10, pandas=False, stats=True)
    hists = [(r["_step"], r["hist"]) for r in rows if "hist" in r]
    assert (
        len(hists) == 10 and hists[0] == (0, histogram(0)) and hists[-1] == (STEPS - 1, histogram(STEPS - 1))
    )
    assert all(h == histogram(s) for s, h in hists)
    imgs = [(r["_step"], r["img"]) for r in rows if "img" in r]
    assert len(imgs) == 10 and all(v == image(s) for s, v in imgs)
    assert imgs[0][0] == 0 and imgs[-1][0] == STEPS - IMG_EVERY
    loss = [r for r in rows if "loss" in r]
    assert 0 < len(loss) <= 10 and sum(r["loss:count"] for r in loss) == STEPS
    assert all("hist:min" not in r for r in rows)
    rel = run.history(keys=["img"], samples=3, x_axis="_runtime", pandas=False)
    assert [r["img"] for r in rel] == [image(0), image(190), image(STEPS - IMG_EVERY)]
    assert rel[0]["_runtime"] == pytest.approx(1.0)


def test_charts_leave_pointer_keys_out_without_failing(run: ApiRun, shipped: tuple[ServerProc, Path]) -> None:
    series = run.series(["loss", "img", "hist", "pair"], buckets=20)
    assert sum(series["loss"]["count"]) == STEPS
    assert all(series[k]["x"] == [] for k in ("img", "hist", "pair"))
    got = Api(shipped[0].url)._get(
        "/api/v1/series/tests/shipping", keys="loss,img,val/hist", runs="run1", buckets=5, x_axis="_runtime"
    )
    one = got["runs"]["run1"]["series"]
    assert sum(one["loss"]["count"]) == STEPS and one["img"]["x"] == [] and one["val/hist"]["x"] == []


def test_runs_can_be_filtered_sorted_and_grouped_on_pointer_summaries(run: ApiRun) -> None:
    api = run._api
    assert [r.id for r in api.runs("tests/shipping", filters={"summary.img.width": 64})] == ["run1"]
    assert [r.id for r in api.runs("tests/shipping", filters={"summary.img.width": 1})] == []
    assert [r.id for r in api.runs("tests/shipping", order="-summary.hist")] == ["run1"]
    groups = api.runs("tests/shipping").groups("summary.preds", ["summary.img", "summary.loss"])
    assert [g["count"] for g in groups] == [1]
    assert groups[0]["metrics"]["summary.img"]["count"] == 0  # not a number: not averaged


def test_a_media_file_uploaded_as_a_run_file_downloads_unchanged(run: ApiRun, tmp_path: Path) -> None:
    step = STEPS - STEPS % IMG_EVERY - IMG_EVERY
    f = run.file(img_path(step))
    assert (f.sha256, f.size) == (image(step)["sha256"], image(step)["size"])
    got = f.download(root=tmp_path)
    assert got == (tmp_path / img_path(step)).resolve() and got.read_bytes() == png(step)
    names = {x.name for x in run.files()}
    assert img_path(0) in names and run.file(img_path(0)).download(root=tmp_path).read_bytes() == png(0)


def test_media_records_are_not_kept_but_an_unencoded_one_is_kept_raw(
    shipped: tuple[ServerProc, Path],
) -> None:
    db = shipped[0].data_dir / DB_NAME
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        raw = c.execute("SELECT kind, flags, step, reason FROM raw_records").fetchall()
    assert raw == [(rec.KIND_MEDIA, 0, 3, "media record not encoded by the sidecar")]


def test_media_records_in_one_batch_with_rows_store_the_rows(tmp_path: Path) -> None:
    """In process, through ``store_batch``: a batch of MEDIA records and rows, as small and big
    batches (the list and the vectorised ``RecordBatch`` paths), stores every row."""
    s = SqliteStorage(tmp_path / DB_NAME)
    try:
        s.open_run("e", "p", "r", "w", "")
        recs = [
            rec.Record(i + 1, kind, flags, step, t, body)
            for i, (kind, flags, step, t, body) in enumerate(journal_records({}))
        ]
        n = len(recs)
        s.store_batch("e", "p", "r", "w", 1, 30, recs[:30])
        s.store_batch("e", "p", "r", "w", 31, n, recs[30:])
        rows = [r for page in s.scan_history("e", "p", "r") for r in page]
        assert [r["_step"] for r in rows] == list(range(STEPS))
        assert all({k: v for k, v in r.items() if not k.startswith("_")} == flat(r["_step"]) for r in rows)
        info = s.get_run("e", "p", "r")
        assert info is not None and info.summary["img"] == image(STEPS - IMG_EVERY)
    finally:
        s.close()


@pytest.mark.slow
@pytest.mark.usefixtures("finish_active_run")
def test_a_real_online_run_logging_pointer_dicts_reads_back_unchanged(
    tmp_path: Path, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run.log`` of a nested dict holding a "_type" dict keeps it whole, through the SDK, the
    sidecar and the server; a file saved under media/images/ downloads as a run file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNSTREAM_HOST", server.url)
    media = tmp_path / "media" / "images"
    media.mkdir(parents=True)
    (media / "img_0_x.png").write_bytes(png(0))
    run = runstream.init(
        project="media",
        dir=tmp_path,
        settings={"console": "off", "disable_stats": True, "disable_code": True},
    )
    for step in range(5):
        run.log({"loss": 1.0 / (step + 1), "h": histogram(step), "val": {"img": image(step), "acc": 0.5}})
    run.save("media/images/img_0_x.png", policy="now")
    path = run.path
    run.finish()
    api_run = runstream.Api(server.url).run(path)
    rows = list(api_run.scan_history())
    assert [r["h"] for r in rows] == [histogram(s) for s in range(5)]
    assert [r["val/img"] for r in rows] == [image(s) for s in range(5)]
    assert api_run.summary["h"] == histogram(4) and api_run.summary["val/img"] == image(4)
    assert api_run.history(keys=["h"], pandas=False)[2]["h"] == histogram(2)
    f = api_run.file("media/images/img_0_x.png")
    assert f.download(root=tmp_path / "dl").read_bytes() == png(0)
