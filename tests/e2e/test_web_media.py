"""Media panels in a real browser (Debian's chromium via Playwright) against a real ``runstream
server``: a real online run logs W&B pointer dicts (images with masks and boxes, a list of
images, histograms over steps, a table, a GIF, a WAV, HTML, a point cloud, a plotly figure, custom
charts) and uploads their files with ``run.save``; the run page and the compare view must draw
them from that data.

What is checked is the data drawn, not only that the page loads: the image's natural size and a
pixel's colour are the logged ones; the step slider changes the caption; the histogram's canvas
has a column per step and a row per bin; the table sorts, filters and pages; the charts' series
are the tables' columns.  A failing test leaves a screenshot in test-artifacts/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.support import media_data as md
from tests.support.server import ServerProc, running_server
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

RUN = md.RUNS[0]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def uploaded(srv: ServerProc, run_id: str, paths: set[str]) -> bool:
    files = get_json(f"{srv.url}/api/v1/runs/{md.ENTITY}/{md.PROJECT}/{run_id}/files")["files"]
    return paths <= {f["path"] for f in files if f.get("sha256")}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, md.Plan]]:
    work = tmp_path_factory.mktemp("media")
    plan = md.write_plan(work)
    paths = {p.relative_to(work / "src").as_posix() for p in (work / "src").rglob("*") if p.is_file()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    with running_server(work / "server") as srv:
        env["RUNSTREAM_HOST"] = srv.url
        for run_id in md.RUNS:
            done = subprocess.run(
                [sys.executable, "train.py", run_id],
                cwd=work,
                env=env,
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            wait_for(partial(uploaded, srv, run_id, paths), 30, f"{run_id}'s media files to be uploaded")
        run = get_json(f"{srv.url}/api/v1/runs/{md.ENTITY}/{md.PROJECT}/{RUN}")
        # The server keeps the pointer dicts whole (history and summary): the page reads them.
        assert run["summary"]["samples/img"]["_type"] == "image-file", run["summary"]
        yield srv, plan


def panel(page: Page, key: str) -> Any:
    return page.locator(f'[data-testid="media-panel"][data-key="{key}"]')


def open_run(page: Page, srv: ServerProc) -> None:
    page.goto(f"{srv.url}/#/r/{md.ENTITY}/{md.PROJECT}/{RUN}?tab=charts")
    expect(page.get_by_test_id("media-section").first).to_be_visible()


PIXEL = """([img, x, y]) => {
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d"); g.drawImage(img, 0, 0);
  return Array.from(g.getImageData(x, y, 1, 1).data);
}"""
CANVAS_PIXEL = "([c, x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data)"


def pixel(loc: Any, x: int, y: int, script: str = PIXEL) -> list[int]:
    return loc.evaluate(f"(el, xy) => ({script})([el, xy[0], xy[1]])", [x, y])  # type: ignore[no-any-return]


def test_media_keys_get_media_panels_in_sections_and_no_scalar_chart(
    site: tuple[ServerProc, md.Plan], page: Page
) -> None:
    srv, _ = site
    open_run(page, srv)
    expect(page.locator('[data-testid="panel"][data-key="loss"]')).to_have_count(1)
    expect(page.locator('[data-testid="panel"][data-key="samples/img"]')).to_have_count(0)
    sections = page.get_by_test_id("media-section")
    expect(sections).to_have_count(3)
    assert [sections.nth(i).get_attribute("data-section") for i in range(3)] == [
        "samples",
        "media",
        "custom charts",
    ]
    types = {
        k: panel(page, k).get_attribute("data-type")
        for k in ("samples/img", "weights", "preds", "batch", "clip", "speech", "page", "cloud", "fig")
    }
    assert types == {
        "samples/img": "image-file", "weights": "histogram", "preds": "table-file",
        "batch": "images/separated", "clip": "video-file", "speech": "audio-file", "page": "html-file",
        "cloud": "object3D-file", "fig": "plotly-file",
    }  # fmt: skip
    # A custom chart's table is drawn by its chart, not as a panel of its own.
    expect(panel(page, "pr_table")).to_have_count(0)
    # A value that could not be encoded says so.
    expect(panel(page, "broken").get_by_test_id("media-error")).to_contain_text(md.ENCODE_ERROR)


def test_an_image_shows_its_pixels_caption_masks_and_boxes_at_the_chosen_step(
    site: tuple[ServerProc, md.Plan], page: Page
) -> None:
    srv, _ = site
    open_run(page, srv)
    p = panel(page, "samples/img")
    img = p.get_by_test_id("media-image")
    expect(p.get_by_test_id("media-caption")).to_have_text(md.CAPTION % (md.STEPS - 1))
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle())
    assert img.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [md.IMG_W, md.IMG_H]
    assert pixel(img, 3, 3)[:3] == list(md.COLORS[md.STEPS - 1])

    # The slider picks another step: its caption and its picture.
    slider = p.get_by_test_id("media-step")
    slider.fill("0")
    expect(p.get_by_test_id("media-caption")).to_have_text(md.CAPTION % 0)
    expect(p.get_by_test_id("media-step-value")).to_have_text("0")
    img = p.get_by_test_id("media-image")
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle())
    assert pixel(img, 3, 3)[:3] == list(md.COLORS[0])

    # The mask: the mask's own size, one colour per class (cat on the left, dog bottom right).
    mask = p.get_by_test_id("media-mask")
    expect(mask).to_have_count(1)
    assert mask.evaluate("c => [c.width, c.height]") == [md.IMG_W, md.IMG_H]
    cat, dog, bg = (pixel(mask, x, y, CANVAS_PIXEL) for x, y in ((5, 5), (35, 25), (35, 5)))
    assert cat[3] == dog[3] == bg[3] == 255 and len({tuple(cat), tuple(dog), tuple(bg)}) == 3
    legend = p.locator(".media-legend")
    for name in md.MASK_LABELS.values():
        expect(legend).to_contain_text(name)
    p.get_by_test_id("mask-opacity").fill("0.2")
    assert mask.evaluate("c => c.style.opacity") == "0.2"

    # The boxes: a pixel-domain box (x 4..16 of 40) and a fractional one (middle 0.75, width 0.3).
    boxes = p.get_by_test_id("media-box")
    expect(boxes).to_have_count(2)
    assert boxes.nth(0).evaluate("b => [b.style.left, b.style.width]") == ["10%", "30%"]
    assert boxes.nth(1).evaluate("b => [b.style.left, b.style.width]") == ["60%", "30%"]
    labels = p.get_by_test_id("media-box-label")
    expect(labels.nth(0)).to_have_text("cat")
    expect(labels.nth(1)).to_have_text(f"{md.BOX_CAPTION} conf 0.93")


def test_a_list_of_images_is_a_grid_with_captions(site: tuple[ServerProc, md.Plan], page: Page) -> None:
    srv, _ = site
    open_run(page, srv)
    p = panel(page, "batch")
    expect(p.get_by_test_id("media-image")).to_have_count(3)
    expect(p.get_by_test_id("media-caption")).to_have_text(["item 0", "item 1", "item 2"])
    last = p.get_by_test_id("media-image").nth(2)
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=last.element_handle())
    assert pixel(last, 1, 1)[:3] == [0, 0, 100]


def test_histograms_over_steps_are_a_heat_map_with_a_column_per_step(
    site: tuple[ServerProc, md.Plan], page: Page
) -> None:
    srv, plan = site
    open_run(page, srv)
    heat = panel(page, "weights").get_by_test_id("histogram-heat")
    expect(heat).to_have_count(1)
    assert heat.evaluate("c => [c.width, c.height]") == [md.STEPS, md.HIST_BINS]
    for step, hist in enumerate(plan.hist):
        top = max(range(md.HIST_BINS), key=lambda b: hist["values"][b])
        # The row of the step's largest count is drawn fully opaque (bins bottom to top).
        assert pixel(heat, step, md.HIST_BINS - 1 - top, CANVAS_PIXEL)[3] == 255
    bars = panel(page, "weights").get_by_test_id("media-plot")
    assert bars.evaluate("el => el.__plot.series[0].y") == plan.hist[-1]["values"]


def test_the_table_viewer_sorts_filters_and_pages(site: tuple[ServerProc, md.Plan], page: Page) -> None:
    srv, plan = site
    open_run(page, srv)
    p = panel(page, "preds")
    rows = p.get_by_test_id("table-row")
    expect(rows).to_have_count(20)
    expect(p.get_by_test_id("table-info")).to_have_text(f"rows 1\u201320 of {md.TABLE_ROWS}")  # an en dash
    scores = [r[1] for r in plan.table["data"]]
    p.locator('[data-testid="table-col"][data-col="score"]').click()
    expect(rows.first.locator("td").nth(1)).to_have_text(f"{max(scores):g}")
    p.locator('[data-testid="table-col"][data-col="score"]').click()
    expect(rows.first.locator("td").nth(1)).to_have_text(f"{min(scores):g}")
    p.get_by_test_id("table-next").click()
    p.get_by_test_id("table-next").click()
    expect(rows).to_have_count(md.TABLE_ROWS - 40)
    p.get_by_test_id("table-filter").fill("bee")
    bees = sum(1 for r in plan.table["data"] if r[2] == "bee")
    expect(p.get_by_test_id("table-info")).to_have_attribute("data-total", str(bees))
    # Image cells are thumbnails of the logged images.
    thumb = p.get_by_test_id("table-thumb").first
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=thumb.element_handle())
    assert thumb.evaluate("el => el.naturalWidth") == md.IMG_W


def test_video_audio_and_sandboxed_html(site: tuple[ServerProc, md.Plan], page: Page) -> None:
    srv, _ = site
    open_run(page, srv)
    gif = panel(page, "clip").get_by_test_id("media-video")
    page.wait_for_function(
        "el => el.tagName === 'IMG' && el.complete && el.naturalWidth > 0", arg=gif.element_handle()
    )
    assert gif.evaluate("el => el.naturalWidth") == 32
    audio = panel(page, "speech").get_by_test_id("media-audio")
    got = audio.evaluate(
        """async el => { const r = await fetch(el.src); const b = new Uint8Array(await r.arrayBuffer());
        return [r.status, String.fromCharCode(...b.slice(0, 4)), String.fromCharCode(...b.slice(8, 12))]; }"""
    )
    assert got == [200, "RIFF", "WAVE"]
    page.wait_for_function("el => el.readyState >= 1 && el.duration > 0", arg=audio.element_handle())
    assert abs(audio.evaluate("el => el.duration") - 0.5) < 0.01  # SAMPLE_RATE / 2 samples
    frame = panel(page, "page").get_by_test_id("media-html")
    assert frame.get_attribute("sandbox") == ""
    body = page.frame_locator('[data-key="page"] iframe')
    expect(body.locator("h1")).to_have_text("Hello media")
    # No scripts in the sandbox: the page's script did not run.
    assert frame.evaluate("f => f.srcdoc.includes('document.title')") is True
    assert page.title() != "ran"


def test_point_cloud_plotly_and_custom_charts(site: tuple[ServerProc, md.Plan], page: Page) -> None:
    srv, plan = site
    open_run(page, srv)
    cloud = panel(page, "cloud").get_by_test_id("media-points")
    expect(cloud).to_have_count(1)
    assert cloud.evaluate("c => c.__view.points") == md.N_POINTS
    yaw = cloud.evaluate("c => c.__view.yaw")
    cloud.scroll_into_view_if_needed()
    box = cloud.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 160, box["y"] + 110, steps=4)
    page.mouse.up()
    assert cloud.evaluate("c => c.__view.yaw") > yaw

    fig = panel(page, "fig").get_by_test_id("media-plot").evaluate("el => el.__plot.series")
    assert [(s["name"], s["kind"]) for s in fig] == [("sin", "line"), ("bars", "bar")]
    assert fig[1]["y"] == [i % 4 for i in range(20)]

    pr = page.locator('[data-testid="custom-chart"][data-key="pr"]')
    expect(pr).to_have_attribute("data-chart", "wandb/area-under-curve/v0")
    expect(pr).to_contain_text("Precision-Recall Curve")
    series = pr.get_by_test_id("media-plot").evaluate("el => el.__plot.series")
    assert [s["name"] for s in series] == md.CLASSES
    assert all(len(s["x"]) == 21 for s in series)
    cm = page.locator('[data-testid="custom-chart"][data-key="cm"]')
    grid = cm.get_by_test_id("media-heatgrid").evaluate("el => el.__plot.grid")
    assert grid["rows"] == grid["cols"] == md.CLASSES
    for i, a in enumerate(md.CLASSES):
        for j, p in enumerate(md.CLASSES):
            assert grid["values"][i][j] == plan.confusion[(a, p)]


def test_every_custom_chart_type_is_drawn_from_its_table(
    site: tuple[ServerProc, md.Plan], page: Page
) -> None:
    srv, _ = site
    open_run(page, srv)

    def series(key: str) -> Any:
        chart = page.locator(f'[data-testid="custom-chart"][data-key="{key}"]').get_by_test_id("media-plot")
        expect(chart).to_have_count(1)
        return chart.evaluate("el => el.__plot")

    lines = series("lines")["series"]
    assert [(s["name"], s["kind"], s["x"]) for s in lines] == [
        (n, "line", [0, 1, 2, 3, 4]) for n in ("a", "b")
    ]
    assert lines[1]["y"] == [0, 2, 4, 6, 8]
    dots = series("dots")["series"]
    assert len(dots) == 1 and dots[0]["kind"] == "scatter" and len(dots[0]["x"]) == 10
    bars = series("bars")
    assert bars["categories"] == [b[0] for b in md.BARS] and bars["series"][0]["y"] == [b[1] for b in md.BARS]
    assert sum(series("spread")["series"][0]["y"]) == md.HIST_VALUES
    assert [s["name"] for s in series("series")["series"]] == ["line_0", "line_1"]


def test_compare_shows_the_runs_images_side_by_side_at_one_step(
    site: tuple[ServerProc, md.Plan], page: Page
) -> None:
    srv, _ = site
    page.goto(f"{srv.url}/#/c/{md.ENTITY}/{md.PROJECT}?runs={','.join(md.RUNS)}")
    p = panel(page, "samples/img")
    expect(p.get_by_test_id("media-cell")).to_have_count(2)
    expect(p.get_by_test_id("media-image")).to_have_count(2)
    captions = p.get_by_test_id("media-caption")
    expect(captions).to_have_text([md.CAPTION % (md.STEPS - 1)] * 2)
    p.get_by_test_id("media-step").fill("2")
    expect(captions).to_have_text([md.CAPTION % 2] * 2)
    expect(p.locator(".media-run")).to_have_count(2)  # each cell names its run


def test_media_logged_with_the_sdks_own_objects_is_drawn(
    site: tuple[ServerProc, md.Plan], page: Page, tmp_path: Path
) -> None:
    """runstream.Image (with a mask and a box), Histogram, Table and Audio, encoded by the sidecar."""
    srv, _ = site
    (tmp_path / "sdk.py").write_text(md.SDK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env["RUNSTREAM_HOST"] = srv.url
    done = subprocess.run(
        [sys.executable, "sdk.py"], cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    base = f"{srv.url}/api/v1/runs/{md.ENTITY}/{md.PROJECT}/{md.SDK_RUN}"
    rows = get_json(f"{base}/history")["rows"]
    paths = {rows[-1]["sdk/img"]["path"], rows[-1]["sdk/table"]["path"], rows[-1]["sdk/tone"]["path"]}
    wait_for(partial(uploaded, srv, md.SDK_RUN, paths), 30, "the SDK run's media files to be uploaded")

    page.goto(f"{srv.url}/#/r/{md.ENTITY}/{md.PROJECT}/{md.SDK_RUN}?tab=charts")
    p = panel(page, "sdk/img")
    expect(p.get_by_test_id("media-caption")).to_have_text(md.CAPTION % (md.STEPS - 1))
    img = p.get_by_test_id("media-image")
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle())
    assert img.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [md.IMG_W, md.IMG_H]
    assert pixel(img, 30, 20)[:3] == list(md.COLORS[md.STEPS - 1])
    p.get_by_test_id("media-step").fill("1")
    expect(p.get_by_test_id("media-caption")).to_have_text(md.CAPTION % 1)
    expect(p.get_by_test_id("media-box-label")).to_have_text("kitty")
    expect(p.get_by_test_id("media-mask")).to_have_count(1)

    heat = panel(page, "sdk/hist").get_by_test_id("histogram-heat")
    expect(heat).to_have_count(1)
    assert heat.evaluate("c => c.width") == md.STEPS

    t = panel(page, "sdk/table")
    expect(t.get_by_test_id("table-row")).to_have_count(20)
    t.locator('[data-testid="table-col"][data-col="sq"]').click()
    expect(t.get_by_test_id("table-row").first.locator("td").nth(1)).to_have_text(
        f"{(md.TABLE_ROWS - 1) ** 2:,}"
    )
    audio = panel(page, "sdk/tone").get_by_test_id("media-audio")
    page.wait_for_function("el => el.readyState >= 1 && el.duration > 0", arg=audio.element_handle())
    assert abs(audio.evaluate("el => el.duration") - 1.0) < 0.01
