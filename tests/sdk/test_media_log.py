"""Rich data through ``log``: each type logged from a script, read back from the local run with
its file in place, as a W&B user's code would read it (docs/media.md)."""

from __future__ import annotations

import json
import os
import signal
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

import runstream
from runstream.format.ring_layout import W_MEDIA_DROPPED, W_OVERFLOW_PEAK

pytestmark = pytest.mark.usefixtures("finish_active_run")


def offline(tmp_path: Path, **kw: Any) -> Any:
    return runstream.init(project="m", mode="offline", dir=tmp_path, **kw)


def finished(run: Any) -> Any:
    run.finish()
    return runstream.read_run(run.dir)


def read_pixels(path: Path) -> Any:
    with PILImage.open(path) as im:
        return np.asarray(im)


def frames_and_size(path: Path) -> tuple[int, tuple[int, int]]:
    with PILImage.open(path) as im:
        return im.n_frames, im.size


def media_file(run: Any, pointer: dict[str, Any]) -> Path:
    path = Path(run.dir) / "files" / pointer["path"]
    assert path.is_file(), pointer
    return path


def test_an_image_array_is_a_png_beside_a_w_and_b_pointer_in_the_row(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    run = offline(tmp_path)
    run.log({"loss": 0.5, "sample": runstream.Image(pixels, caption="first")})
    data = finished(run)
    (row,) = data.history
    assert row["loss"] == 0.5
    p = row["sample"]
    assert p["_type"] == "image-file" and p["format"] == "png" and p["caption"] == "first"
    assert (p["width"], p["height"]) == (32, 24)
    assert p["path"].startswith("media/images/sample_0_") and p["path"].endswith(".png")
    f = media_file(run, p)
    assert p["size"] == f.stat().st_size
    assert np.array_equal(read_pixels(f), pixels)
    assert data.summary["sample"] == p


def test_the_logged_buffer_may_be_reused_at_once(tmp_path: Path) -> None:
    buf = np.zeros((8, 8), dtype=np.uint8)
    run = offline(tmp_path)
    run.log({"a": runstream.Image(buf)}, commit=False)
    buf[:] = 255  # a training loop refilling its buffer before the row is committed
    run.log({"b": 1})
    (row,) = finished(run).history
    assert read_pixels(media_file(run, row["a"])).max() == 0


def test_a_list_of_images_is_one_images_separated_value(tmp_path: Path) -> None:
    run = offline(tmp_path)
    imgs = [runstream.Image(np.full((4, 6, 3), i * 40, np.uint8), caption=f"c{i}") for i in range(3)]
    run.log({"examples": imgs})
    (row,) = finished(run).history
    v = row["examples"]
    assert v["_type"] == "images/separated" and v["count"] == 3
    assert (v["width"], v["height"]) == (6, 4) and v["captions"] == ["c0", "c1", "c2"]
    for i, name in enumerate(v["filenames"]):
        assert read_pixels(Path(run.dir) / "files" / name)[0, 0, 0] == i * 40


def test_media_nested_in_dicts_and_mixed_with_scalars(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log({"val": {"img": runstream.Image(np.zeros((2, 2), np.uint8)), "acc": 0.9}, "epoch": 3})
    (row,) = finished(run).history
    assert row["val/acc"] == 0.9 and row["epoch"] == 3
    assert row["val/img"]["path"].startswith("media/images/val/img_0_")


def test_histograms_and_arrays_are_stored_as_w_and_b_stores_them(tmp_path: Path) -> None:
    values = np.random.default_rng(0).normal(size=1000)
    run = offline(tmp_path)
    run.log(
        {
            "h": runstream.Histogram(values, num_bins=10),
            "small": np.arange(4),
            "one": np.array([2.5]),
            "big": np.arange(100.0),
            "huge_int": 2**70,
        }
    )
    (row,) = finished(run).history
    counts, edges = np.histogram(values, bins=10)
    assert row["h"] == {"_type": "histogram", "values": counts.tolist(), "bins": edges.tolist()}
    assert row["small"] == [0, 1, 2, 3] and row["one"] == 2.5
    assert row["big"]["_type"] == "histogram" and len(row["big"]["values"]) == 32
    assert sum(row["big"]["values"]) == 100
    assert row["huge_int"] == float(2**70)


def test_a_tensor_of_one_dimension_is_a_list(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    run = offline(tmp_path)
    run.log({"t": torch.tensor([1.0, 2.0, 3.0]), "img": runstream.Image(torch.ones(3, 5, 4))})
    (row,) = finished(run).history
    assert row["t"] == [1.0, 2.0, 3.0]
    assert (row["img"]["width"], row["img"]["height"]) == (4, 5)


def test_a_table_with_image_cells_is_a_json_file_with_pointers(tmp_path: Path) -> None:
    run = offline(tmp_path)
    t = runstream.Table(columns=["id", "label", "img"])
    for i in range(3):
        t.add_data(i, f"n{i}", runstream.Image(np.full((3, 3), i, np.uint8)))
    run.log({"preds": t})
    (row,) = finished(run).history
    p = row["preds"]
    assert p["_type"] == "table-file" and p["ncols"] == 3 and p["nrows"] == 3
    content = json.loads(media_file(run, p).read_text())
    assert content["columns"] == ["id", "label", "img"]
    assert [r[:2] for r in content["data"]] == [[0, "n0"], [1, "n1"], [2, "n2"]]
    assert all(r[2]["_type"] == "image-file" for r in content["data"])
    media_file(run, content["data"][2][2])


def test_a_dataframe_is_logged_as_a_table(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    run = offline(tmp_path)
    run.log({"df": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})})
    (row,) = finished(run).history
    content = json.loads(media_file(run, row["df"]).read_text())
    assert content == {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}


def test_a_matplotlib_figure_is_logged_as_the_image_it_draws(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.plot([0, 1], [0, 1])
    run = offline(tmp_path)
    run.log({"fig": fig, "plt": plt})
    plt.close(fig)
    (row,) = finished(run).history
    for key in ("fig", "plt"):
        assert row[key]["_type"] == "image-file" and (row[key]["width"], row[key]["height"]) == (100, 50)


def test_a_plotly_figure_is_kept_as_its_json(tmp_path: Path) -> None:
    go = pytest.importorskip("plotly.graph_objects")
    run = offline(tmp_path)
    run.log({"chart": go.Figure(data=[go.Scatter(x=[1, 2], y=[3, 4])])})
    (row,) = finished(run).history
    assert row["chart"]["_type"] == "plotly-file"
    fig = json.loads(media_file(run, row["chart"]).read_text())
    assert fig["data"][0]["y"] in ([3, 4], {"dtype": "i1", "bdata": "AwQ="})


def test_video_audio_html_and_points(tmp_path: Path) -> None:
    run = offline(tmp_path)
    frames = np.stack([np.full((3, 8, 10), 50 * i, np.uint8) for i in range(5)])  # 5 different frames
    samples = np.sin(np.linspace(0, 100, 8000)).astype(np.float32)
    points = np.random.default_rng(2).normal(size=(50, 3))
    run.log(
        {
            "clip": runstream.Video(frames, fps=5),
            "tone": runstream.Audio(samples, sample_rate=8000, caption="sine"),
            "page": runstream.Html("<html><head></head><body>hi</body></html>"),
            "cloud": runstream.Object3D(points),
        }
    )
    (row,) = finished(run).history
    assert frames_and_size(media_file(run, row["clip"])) == (5, (10, 8))
    with wave.open(str(media_file(run, row["tone"]))) as w:
        assert w.getframerate() == 8000 and w.getnframes() == 8000
    assert '<base target="_blank">' in media_file(run, row["page"]).read_text()
    assert np.allclose(json.loads(media_file(run, row["cloud"]).read_text()), points)


def test_an_image_file_is_kept_even_when_deleted_right_after_log(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    PILImage.fromarray(np.full((5, 7, 3), 9, np.uint8)).save(src)
    run = offline(tmp_path)
    run.log({"f": runstream.Image(str(src))})
    src.unlink()
    (row,) = finished(run).history
    assert (row["f"]["width"], row["f"]["height"]) == (7, 5)
    assert read_pixels(media_file(run, row["f"]))[0, 0, 0] == 9
    assert not any((Path(run.dir) / "media-staging").glob("*")), "staged copies are removed once journaled"


def test_a_payload_larger_than_the_ring_takes_the_spill(tmp_path: Path) -> None:
    run = offline(tmp_path, settings={"ring_size": 256 * 1024})
    frames = np.random.default_rng(3).integers(0, 255, (20, 3, 64, 64), dtype=np.uint8)  # 245 KB
    run.log({"clip": runstream.Video(frames)})
    (row,) = finished(run).history
    assert frames_and_size(media_file(run, row["clip"]))[0] == 20


def test_media_past_the_spill_bound_is_dropped_counted_and_the_row_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = offline(tmp_path, settings={"ring_size": 256 * 1024, "media_spill_size": 0})
    run.log({"loss": 1.0, "clip": runstream.Video(np.zeros((20, 3, 64, 64), np.uint8))})
    assert run._writer.ring.words[W_MEDIA_DROPPED] == 1
    data = finished(run)
    (row,) = data.history
    assert row["loss"] == 1.0 and "clip" not in row
    assert data.summary["_runstream/dropped_media"] == 1
    err = capsys.readouterr().err
    assert "the media logged under 'clip' was dropped" in err
    assert "0 lost, 1 media values not stored (see runstream inspect)" in err  # the finish line


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: runstream.Image(np.zeros((2, 3, 5))), ["shape (2, 3, 5)", "not an image"]),
        (lambda: runstream.Image("/nonexistent.png"), ["is not a file"]),
        (
            lambda: runstream.Image(np.zeros((4, 4)), masks={"m": {"mask_data": np.zeros((3, 3))}}),
            ["mask 'm'"],
        ),
        (lambda: runstream.Histogram(np.zeros(5), num_bins=600), ["512"]),
        (lambda: runstream.Audio(np.zeros(10)), ["sample_rate"]),
        (lambda: runstream.Video(np.zeros((4, 4))), ["not a video"]),
        (lambda: runstream.Object3D(np.zeros((4, 5))), ["N x 3"]),
        (lambda: runstream.Table(columns=["a"], data=[[1, 2]]), ["2 values for 1 columns"]),
    ],
)
def test_bad_media_fails_in_the_line_that_made_it(make: Any, words: list[str]) -> None:
    with pytest.raises((ValueError, TypeError)) as e:
        make()
    for w in words:
        assert w in str(e.value)


def test_a_bad_value_names_its_key_and_nothing_of_the_call_is_logged(tmp_path: Path) -> None:
    run = offline(tmp_path)
    with pytest.raises(TypeError, match="'bad'"):
        run.log({"img": runstream.Image(np.zeros((2, 2), np.uint8)), "bad": object()})
    run.log({"ok": 1})
    (row,) = finished(run).history
    assert row["ok"] == 1 and "img" not in row


def test_media_rows_follow_the_step_rules(tmp_path: Path) -> None:
    def img(v: int) -> Any:
        return runstream.Image(np.full((2, 2), v, np.uint8))

    run = offline(tmp_path)
    run.log({"a": img(1)}, commit=False)
    run.log({"x": 1.0}, step=3)  # commits the pending media row at step 0; x pends at 3
    run.log({"b": img(2)}, step=5)  # commits x at 3; b pends at 5
    run.log({"c": img(3)}, commit=False)  # merges into step 5
    rows = finished(run).history  # finish commits step 5
    assert [r["_step"] for r in rows] == [0, 3, 5]
    assert rows[0]["a"]["_type"] == "image-file" and rows[1]["x"] == 1.0
    assert read_pixels(media_file(run, rows[2]["b"]))[0, 0] == 2
    assert read_pixels(media_file(run, rows[2]["c"]))[0, 0] == 3


def test_media_set_in_the_summary_is_stored_as_its_pointer(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.log({"loss": 1.0})
    run.summary["best"] = runstream.Image(np.full((3, 3), 5, np.uint8), caption="best")
    run.summary.update({"table": runstream.Table(columns=["a"], data=[[1]])})
    data = finished(run)
    best = data.summary["best"]
    assert best["_type"] == "image-file" and best["caption"] == "best"
    assert read_pixels(media_file(run, best))[0, 0] == 5
    assert json.loads(media_file(run, data.summary["table"]).read_text())["data"] == [[1]]
    assert [set(r) - {"_step", "_timestamp", "_runtime"} for r in data.history] == [{"loss"}]


def test_images_logged_while_the_sidecar_stalls_wait_in_the_overflow_and_all_arrive(tmp_path: Path) -> None:
    # The C fast path's MEDIA records meet a full ring: they queue in order behind the ring, as rows
    # do, and none is lost or reordered.
    run = offline(tmp_path, settings={"ring_size": 64 * 1024, "overflow_size": 8 * 1024 * 1024})
    pid = run._sidecar.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(200):
            run.log({"img": runstream.Image(np.full((32, 32, 3), i, np.uint8)), "i": i})
    finally:
        os.kill(pid, signal.SIGCONT)
    assert run._ring.words[W_OVERFLOW_PEAK] > 0
    data = finished(run)
    assert [r["i"] for r in data.history] == list(range(200))
    for row in data.history[::37]:
        assert read_pixels(media_file(run, row["img"]))[0, 0, 0] == row["i"]
    assert data.dropped == 0 and data.summary.get("_runstream/dropped_media", 0) == 0
