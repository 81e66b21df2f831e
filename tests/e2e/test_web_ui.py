"""The dashboard in a real browser (Debian's chromium via Playwright) against a real
``runstream server``: the runs table of 1,000 runs filtered, sorted and grouped; a run opened; charts
with the right series; smoothing; a spike that survives downsampling; zoom; dark mode; sign-in.

What the page draws is read from uPlot's own data (each chart panel keeps its ``Panel`` as
``el.__panel``), and compared with values computed here from what was written.  A failing test
leaves a screenshot in test-artifacts/.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.browser import (
    ENTITY,
    LONG_PROJECT,
    LONG_RUN,
    PROJECT,
    SPIKE,
    SPIKE_STEP,
    Facts,
    ema,
    fill,
    open_page,
)
from tests.support.server import ServerProc, running_server
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, Facts]]:
    data = tmp_path_factory.mktemp("web") / "server"
    facts = fill(data)
    with running_server(data) as srv:
        yield srv, facts


def total(page: Page) -> Any:
    return page.get_by_test_id("runs-total")


def panel_data(page: Page, key: str) -> Any:
    """uPlot's arrays for the panel of ``key``: [x, then min, max, mean, smoothed per run]."""
    sel = f'[data-testid="panel"][data-key="{key}"]'
    page.wait_for_function("sel => document.querySelector(sel)?.__panel?.u != null", arg=sel)
    return page.eval_on_selector(sel, "el => ({data: el.__panel.u.data, ymax: el.__panel.u.scales.y.max})")


def test_the_projects_page_lists_an_entitys_projects_and_remembers_the_last_one(
    site: tuple[ServerProc, Facts], page: Page
) -> None:
    srv, _ = site
    page.goto(f"{srv.url}/#/?entity={ENTITY}")
    rows = page.get_by_test_id("project-row")
    expect(rows).to_have_text([f"{ENTITY}/{LONG_PROJECT}", f"{ENTITY}/{PROJECT}"])
    rows.filter(has_text=PROJECT).click()
    expect(total(page)).to_have_attribute("data-total", "1000")
    page.goto(f"{srv.url}/#/")
    expect(rows).to_have_count(2)


# --- the runs table --------------------------------------------------------------------------
def test_a_table_of_1000_runs_is_filtered_sorted_and_grouped(
    site: tuple[ServerProc, Facts], page: Page
) -> None:
    srv, facts = site
    page.goto(f"{srv.url}/#/p/{ENTITY}/{PROJECT}")
    expect(total(page)).to_have_attribute("data-total", "1000")
    rows = page.get_by_test_id("run-row")
    expect(rows.first).to_be_visible()
    assert rows.count() < 100, "only the rows in view are in the page (virtual scrolling)"
    # The oldest run is the last row: scrolling there fetches that page from the server.
    page.get_by_test_id("runs-table").evaluate("el => el.scrollTop = el.scrollHeight")
    expect(page.locator('[data-testid="run-row"][data-index="999"]')).to_contain_text("run-0000")

    # With no columns chosen yet, a few config and summary keys are shown beside the fixed ones.
    heads = page.locator('[data-testid="runs-head"]')
    expect(heads.locator('[data-col^="config."]').first).to_be_visible()
    expect(heads.locator('[data-col^="summary."]').first).to_be_visible()

    # Filter builder: config.lr > 0.001.
    page.get_by_test_id("filter-button").click()
    row = page.get_by_test_id("filter-row").first
    row.locator("input.field").fill("config.lr")
    row.locator("select").select_option("$gt")
    row.locator("input.value").fill("0.001")
    page.get_by_test_id("filter-apply").click()
    chosen = [r for r in facts.runs if r.config["lr"] > 0.001]
    expect(total(page)).to_have_attribute("data-total", str(len(chosen)))
    assert len(chosen) == 400

    # Search matches a tag (or name): "baseline" runs only.
    page.get_by_test_id("search").fill("baseline")
    chosen = [r for r in chosen if "baseline" in r.tags]
    expect(total(page)).to_have_attribute("data-total", str(len(chosen)))

    # A summary column from the chooser, sorted descending then ascending by its header.
    page.get_by_test_id("columns-button").click()
    page.locator('[data-testid="column-chooser"] input[data-key="summary.acc"]').check()
    page.keyboard.press("Escape")
    head = page.locator('[data-testid="runs-head"] [data-col="summary.acc"]')
    head.click()
    first = page.locator('[data-testid="run-row"][data-index="0"]')
    best = max(chosen, key=lambda r: r.acc)
    expect(first).to_have_attribute("data-id", best.id)
    expect(first.locator('[data-col="summary.acc"]')).to_have_text(f"{best.acc:g}")
    assert "sort=-summary.acc" in page.url
    head.click()
    expect(first).to_have_attribute("data-id", min(chosen, key=lambda r: r.acc).id)

    # The whole state is in the URL: the same link in a new page shows the same table.
    link = page.url
    other = page.context.new_page()
    other.goto(link)
    expect(total(other)).to_have_attribute("data-total", str(len(chosen)))
    expect(other.locator('[data-testid="run-row"][data-index="0"]')).to_have_attribute(
        "data-id", min(chosen, key=lambda r: r.acc).id
    )
    expect(other.get_by_test_id("search")).to_have_value("baseline")
    other.close()

    # Group by a config key with the mean, min and max of a summary metric per group.
    page.get_by_test_id("group-by").select_option("config.optimizer")
    page.get_by_test_id("group-metric").select_option("summary.acc")
    groups = page.get_by_test_id("group-row")
    by_opt: dict[str, list[float]] = {}
    for r in chosen:
        by_opt.setdefault(r.config["optimizer"], []).append(r.acc)
    expect(groups).to_have_count(len(by_opt))
    for opt, accs in by_opt.items():
        cells = page.locator(f'[data-testid="group-row"][data-value="{opt}"] [data-stat]')
        stats = {
            c.get_attribute("data-stat"): float(c.get_attribute("data-value") or "nan") for c in cells.all()
        }
        assert stats["count"] == len(accs)
        assert stats["mean"] == pytest.approx(statistics.fmean(accs))
        assert (stats["min"], stats["max"]) == (min(accs), max(accs))

    # Picking a group narrows the table to it.
    page.locator('[data-testid="group-row"][data-value="adam"]').click()
    expect(total(page)).to_have_attribute("data-total", str(len(by_opt["adam"])))
    expect(page.get_by_test_id("filter-button")).to_have_text("Filters (2)")


# --- one run ---------------------------------------------------------------------------------
def test_a_run_opens_from_the_table_with_its_overview_and_sectioned_charts(
    site: tuple[ServerProc, Facts], page: Page
) -> None:
    srv, facts = site
    page.goto(f"{srv.url}/#/p/{ENTITY}/{PROJECT}?q=run-0042")
    expect(total(page)).to_have_attribute("data-total", "1")
    page.get_by_role("link", name="run-0042").click()
    expect(page.get_by_test_id("run-name")).to_have_text("run-0042")
    run = facts.runs[42]
    config = page.get_by_test_id("config")
    expect(config.locator("tr", has_text="optimizer")).to_contain_text(run.config["optimizer"])
    expect(config.locator("tr", has_text="model.depth")).to_contain_text(str(run.config["model"]["depth"]))
    expect(page.get_by_test_id("run-state")).to_have_text(run.state)

    page.goto(f"{srv.url}/#/r/{ENTITY}/{LONG_PROJECT}/{LONG_RUN}?tab=charts")
    sections = page.get_by_test_id("section")
    expect(sections).to_have_count(3)
    keys = {
        s.get_attribute("data-section"): s.get_by_test_id("panel").evaluate_all(
            "els => els.map(e => e.dataset.key)"
        )
        for s in sections.all()
    }
    assert keys == {"train": ["train/loss", "train/acc"], "val": ["val/loss"], "charts": ["lr"]}
    for key in facts.long_keys:
        d = panel_data(page, key)["data"]
        assert len(d) == 1 + 4, f"{key}: one run is x + min, max, mean and smoothed series"


def test_compare_overlays_every_selected_run_in_every_chart(
    site: tuple[ServerProc, Facts], page: Page
) -> None:
    srv, _ = site
    page.goto(f"{srv.url}/#/p/{ENTITY}/{PROJECT}?q=run-000")
    expect(total(page)).to_have_attribute("data-total", "10")
    for i in (1, 2, 4):  # optimizers sgd, adamw, sgd
        page.get_by_label(f"select run-000{i}").check()
    compare = page.get_by_test_id("compare")
    expect(compare).to_have_text("Compare 3 runs")
    compare.click()
    panels = page.get_by_test_id("panel")
    expect(panels).to_have_count(2)  # acc and loss
    for key in ("acc", "loss"):
        expect(page.locator(f'[data-testid="panel"][data-key="{key}"]')).to_have_attribute("data-runs", "3")
        assert len(panel_data(page, key)["data"]) == 1 + 3 * 4
    legend = page.get_by_test_id("legend")
    expect(legend).to_contain_text("run-0004")
    swatches = "els => els.map(e => [e.textContent, e.querySelector('.swatch').style.background])"
    colours = dict(legend.locator(":scope > span").evaluate_all(swatches))
    assert len(set(colours.values())) == 3, "coloured by run: a colour each"

    page.get_by_test_id("color-by").select_option("config.optimizer")
    expect(legend).to_contain_text("run-0004 (sgd)")
    colours = dict(legend.locator(":scope > span").evaluate_all(swatches))
    assert colours["run-0001 (sgd)"] == colours["run-0004 (sgd)"] != colours["run-0002 (adamw)"]
    assert "color=config.optimizer" in page.url


def test_the_system_console_and_files_tabs_show_what_the_run_recorded(
    site: tuple[ServerProc, Facts], page: Page
) -> None:
    srv, _ = site
    run = f"{srv.url}/#/r/{ENTITY}/{LONG_PROJECT}/{LONG_RUN}"
    page.goto(f"{run}?tab=system")
    for key in ("system/cpu", "system/gpu.0.util"):
        assert len(panel_data(page, key)["data"][0]) == 60
    page.goto(f"{run}?tab=console")
    expect(page.get_by_test_id("console-count")).to_have_text("301 lines")
    lines = page.get_by_test_id("console").locator(".line")
    expect(lines.first).to_have_text("epoch 0: loss 1.0000")
    assert lines.count() < 100, "only the lines in view are drawn"
    page.get_by_test_id("console-search").fill("epoch 29")
    expect(page.get_by_test_id("console-count")).to_have_text("11 of 301 lines")  # 29, 290..299
    expect(page.get_by_test_id("console").locator("mark").first).to_have_text("epoch 29")
    page.get_by_test_id("console-search").fill("warning")
    expect(page.get_by_test_id("console").locator(".line.stderr")).to_have_count(1)
    page.goto(f"{run}?tab=files")
    expect(page.get_by_test_id("files").locator("tbody tr")).to_have_count(1)
    expect(page.get_by_test_id("files")).to_contain_text("model.ckpt")
    expect(page.get_by_test_id("files")).to_contain_text("42.9 MiB")
    page.goto(f"{srv.url}/#/r/{ENTITY}/{PROJECT}/r00001?tab=console")
    expect(page.get_by_test_id("no-data")).to_have_text("No console output recorded for this run yet.")


def test_scatter_and_parallel_coordinates_draw_the_filtered_runs(
    site: tuple[ServerProc, Facts], page: Page
) -> None:
    srv, facts = site
    f = '[["config.optimizer","$eq","sgd"]]'
    page.goto(f"{srv.url}/#/p/{ENTITY}/{PROJECT}?view=scatter&f={f}&sx=config.lr&sy=summary.acc")
    sgd = [r for r in facts.runs if r.config["optimizer"] == "sgd"]
    expect(page.get_by_test_id("scatter")).to_have_attribute("data-points", str(len(sgd)))
    expect(page.get_by_test_id("scatter").locator("circle")).to_have_count(len(sgd))
    page.get_by_test_id("view-parallel").click()
    expect(page.get_by_test_id("parallel")).to_have_attribute("data-lines", str(len(sgd)))
    assert "view=parallel" in page.url


# --- charts ----------------------------------------------------------------------------------
def test_a_single_spike_in_100k_steps_survives_downsampling_and_zoom(
    site: tuple[ServerProc, Facts], page: Page
) -> None:
    srv, _ = site
    page.goto(f"{srv.url}/#/r/{ENTITY}/{LONG_PROJECT}/{LONG_RUN}?tab=charts")
    got = panel_data(page, "train/loss")
    x, _, hi, mean = got["data"][:4]
    assert len(x) <= 1000, "the chart holds buckets, not 100,000 points"
    assert max(v for v in hi if v is not None) == SPIKE, "the spike is its bucket's max"
    assert got["ymax"] >= SPIKE, "and the y axis reaches it"
    assert max(v for v in mean if v is not None) < SPIKE, "the mean alone would have hidden it"

    # Drag across the middle of the chart: buckets are fetched again for the zoomed range.
    over = page.locator('[data-testid="panel"][data-key="train/loss"] .u-over')
    box = over.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.40, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.70, y, steps=5)
    page.mouse.up()
    page.wait_for_url("**zoom=*")
    lo_x, hi_x = (float(v) for v in page.url.split("zoom=")[1].split("&")[0].replace("%2C", ",").split(","))
    assert lo_x < SPIKE_STEP < hi_x
    page.wait_for_function(
        "([lo, hi]) => { const d = document.querySelector('[data-key=\"train/loss\"]').__panel.u.data;"
        " return d[0][0] >= lo && d[0][d[0].length - 1] <= hi; }",
        arg=[lo_x, hi_x],
    )
    zoomed = panel_data(page, "train/loss")["data"]
    assert max(v for v in zoomed[2] if v is not None) == SPIKE
    step_per_bucket = (zoomed[0][-1] - zoomed[0][0]) / len(zoomed[0])
    assert step_per_bucket < (x[-1] - x[0]) / len(x) / 2, "zoomed buckets are finer"


def test_the_smoothing_slider_redraws_the_debiased_ema_of_the_drawn_means(
    site: tuple[ServerProc, Facts], page: Page
) -> None:
    srv, _ = site
    page.goto(f"{srv.url}/#/r/{ENTITY}/{LONG_PROJECT}/{LONG_RUN}?tab=charts")
    before = panel_data(page, "train/loss")["data"]
    assert before[4] == before[3], "no smoothing: the line is the means"
    page.get_by_test_id("smoothing").fill("0.9")
    page.wait_for_function(
        "() => { const d = document.querySelector('[data-key=\"train/loss\"]').__panel.u.data;"
        " return d[4].some((v, i) => v !== d[3][i]); }"
    )
    after = panel_data(page, "train/loss")["data"]
    assert after[3] == before[3], "the raw means are still drawn (faintly) under the smoothed line"
    assert after[4] == pytest.approx(ema(before[3], 0.9), rel=1e-12)
    assert "smooth=0.9" in page.url
    page.reload()
    expect(page.get_by_test_id("smoothing")).to_have_value("0.9")


# The page's own smooth.js module, imported from where main.js was loaded.
SMOOTH_JS = "import(document.querySelector('script[type=module]').src.replace(/main[.]js$/, 'smooth.js'))"
REFERENCE_EMA = [
    # (values, weight, expected), worked by hand from the formula
    ([1.0, 2.0, 3.0], 0.5, [1.0, 2.5 * 0.5 / 0.75, 2.125 / 0.875]),
    ([4.0, 8.0], 0.0, [4.0, 8.0]),
    ([3.0, None, 5.0], 0.5, [3.0, None, (0.75 + 2.5) / 0.75]),
    ([2.0, float("nan"), 2.0, float("inf"), 2.0], 0.9, [2.0, float("nan"), 2.0, float("inf"), 2.0]),
]


def test_the_pages_ema_matches_reference_values(site: tuple[ServerProc, Facts], page: Page) -> None:
    srv, _ = site
    page.goto(f"{srv.url}/")
    cases = [*REFERENCE_EMA]
    wave = [math.sin(i / 7) + (i % 5) * 0.1 for i in range(300)]
    for w in (0.3, 0.6, 0.99, 0.999):
        cases.append((wave, w, ema(list(wave), w)))
    for values, w, expected in cases:
        got = page.evaluate(f"async ([values, w]) => (await {SMOOTH_JS}).ema(values, w)", [values, w])
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            if e is None or math.isnan(e):
                assert g is None if e is None else math.isnan(g)
            else:
                assert g == pytest.approx(e, rel=1e-12)
    with pytest.raises(Exception, match="smoothing weight"):
        page.evaluate(f"async () => (await {SMOOTH_JS}).ema([1], 1.5)")


# --- dark mode and sign-in -----------------------------------------------------------------------
def test_dark_mode_is_remembered_across_reloads(site: tuple[ServerProc, Facts], page: Page) -> None:
    srv, _ = site
    page.goto(f"{srv.url}/#/p/{ENTITY}/{PROJECT}")
    html = page.locator("html")
    expect(html).to_have_attribute("data-theme", "light")
    light_bg = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    page.get_by_test_id("theme-toggle").click()
    expect(html).to_have_attribute("data-theme", "dark")
    dark_bg = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert dark_bg != light_bg
    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")
    assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") == dark_bg
    expect(total(page)).to_have_attribute("data-total", "1000")
    page.get_by_test_id("theme-toggle").click()
    page.reload()
    expect(html).to_have_attribute("data-theme", "light")


def test_dark_mode_follows_the_system_until_chosen(
    site: tuple[ServerProc, Facts], browser: Browser, request: pytest.FixtureRequest
) -> None:
    srv, _ = site
    with open_page(browser, request, dark=True) as page:
        page.goto(f"{srv.url}/")
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")


def test_signing_in_with_an_api_key_sets_a_session_that_can_edit_runs(
    tmp_path: Path, browser: Browser, request: pytest.FixtureRequest
) -> None:
    data = tmp_path / "server"
    fill(data, runs=3, long_steps=10)
    key = subprocess.run(
        [sys.executable, "-m", "runstream.cli.main", "server", "keys", "create", "--entity", ENTITY,
         "--data-dir", str(data)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    with running_server(data, "--auth") as srv, open_page(browser, request) as page:
        page.goto(f"{srv.url}/#/r/{ENTITY}/{PROJECT}/r00001")
        expect(page.get_by_test_id("signin")).to_be_visible()
        page.get_by_test_id("api-key").fill("rsk_not_a_key")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_test_id("signin-error")).to_contain_text("not valid")
        page.get_by_test_id("api-key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_test_id("run-name")).to_have_text("run-0001")
        cookies = page.context.cookies()
        assert cookies and all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies)
        assert key not in page.content()
        # An edit goes through with the session's CSRF token, and survives a reload.
        page.get_by_test_id("add-tag").fill("reviewed")
        page.get_by_test_id("add-tag").press("Enter")
        expect(page.get_by_test_id("tag").filter(has_text="reviewed")).to_be_visible()
        page.reload()
        expect(page.get_by_test_id("tag").filter(has_text="reviewed")).to_be_visible()


# --- live ----------------------------------------------------------------------------------------
LIVE_SCRIPT = """
import os, time, runstream
run = runstream.init(project="live", entity="acme", name="live-run")
for i in range(10):
    run.log({"loss": 1.0 / (i + 1)})
print(run.id, file=open("id.tmp", "w"))
os.rename("id.tmp", "id")
while not os.path.exists("more"):
    time.sleep(0.01)
for i in range(10, 20):
    run.log({"loss": 1.0 / (i + 1), **({"val/acc": i / 20} if i % 2 else {})})  # a key from step 11 on
while not os.path.exists("stop"):
    time.sleep(0.01)
run.finish()
"""


def api_run(url: str, path: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/runs/{path}", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return {}
        raise


def test_a_running_runs_chart_and_table_row_follow_its_data_and_new_keys_within_2s(
    tmp_path: Path, browser: Browser, request: pytest.FixtureRequest
) -> None:
    (tmp_path / "train.py").write_text(LIVE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    with running_server(tmp_path / "server") as srv, open(tmp_path / "train.err", "wb") as err:
        env["RUNSTREAM_HOST"] = srv.url
        proc = subprocess.Popen(
            [sys.executable, "train.py"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            wait_for((tmp_path / "id").exists, 60, "the script to log its first rows")
            path = f"acme/live/{(tmp_path / 'id').read_text().strip()}"
            wait_for(lambda: api_run(srv.url, path).get("rows") == 10, 10, "the first rows on the server")
            with open_page(browser, request) as chart:
                table = chart.context.new_page()
                table.goto(f"{srv.url}/#/p/acme/live")
                row = table.get_by_test_id("run-row").first
                expect(row.locator('[data-col="state"]')).to_have_text("running")
                chart.goto(f"{srv.url}/#/r/{path}?tab=charts")
                assert len(panel_data(chart, "loss")["data"][0]) == 10
                lengths = "() => document.querySelector('[data-key=\"loss\"]').__panel.u.data[0].length"

                expect(chart.get_by_test_id("section")).to_have_count(1)

                (tmp_path / "more").touch()
                wait_for(lambda: api_run(srv.url, path).get("rows") == 20, 10, "the next rows on the server")
                chart.wait_for_function(f"() => ({lengths})() === 20", timeout=2000)
                # A key logged only from step 11 on gets its panel, in a section of its own, live.
                acc = "() => document.querySelector('[data-key=\"val/acc\"]')?.__panel?.u?.data[0].length"
                chart.wait_for_function(f"() => ({acc})() === 5", timeout=2000)
                assert panel_data(chart, "val/acc")["data"][0] == [11, 13, 15, 17, 19]
                expect(chart.locator('[data-testid="section"][data-section="val"]')).to_have_count(1)

                (tmp_path / "stop").touch()
                wait_for(lambda: api_run(srv.url, path).get("state") == "finished", 30, "the run to finish")
                expect(row.locator('[data-col="state"]')).to_have_text("finished", timeout=2000)
            assert proc.wait(60) == 0, (tmp_path / "train.err").read_text()
        finally:
            proc.kill()
            proc.wait()


def test_the_system_tab_groups_the_samples_into_cpu_memory_disk_network_process_and_gpu_sections(
    tmp_path: Path, browser: Browser, request: pytest.FixtureRequest
) -> None:
    from runstream.format import record as rec
    from runstream_ingest.server.args import DB_NAME
    from runstream_ingest.server.storage.interface import KIND_SYSTEM
    from runstream_ingest.server.storage.sqlite.backend import SqliteStorage
    from tests.support.browser import T0, Writer

    sample = {"cpu": 40.0, "cpu.0": 30.0, "cpu.1": 50.0, "load.1": 1.5, "mem.used_mib": 900.0}
    sample |= {"swap.pct": 0.0, "disk.free_gib": 70.0, "net.recv_mib_s": 2.0, "proc.rss_mib": 300.0}
    sample |= {f"gpu.{g}.{k}": 10.0 * g + 1 for g in (0, 1) for k in ("util", "mem_used_mib", "temp_c")}
    (tmp_path / "server").mkdir()
    store = SqliteStorage(tmp_path / "server" / DB_NAME)
    try:
        w = Writer(store, "sys1", T0, "hw")
        w.add(rec.KIND_RUN, {"name": "sys-run", "start_time": T0})
        for i in range(12):
            w.add(KIND_SYSTEM, {f"system/{k}": v + i for k, v in sample.items()}, t=T0 + 2 * i)
        w.flush()
    finally:
        store.close()
    with running_server(tmp_path / "server") as srv, open_page(browser, request) as page:
        page.goto(f"{srv.url}/#/r/{ENTITY}/hw/sys1?tab=system")
        sections = page.get_by_test_id("system-section")
        expect(sections).to_have_count(8)
        names = ["CPU", "CPU cores", "Memory", "Disk", "Network", "Process", "GPU 0", "GPU 1"]
        assert [s.strip() for s in sections.locator("summary").all_inner_texts()] == names
        gpu1 = sections.nth(7).get_by_test_id("panel")
        expect(gpu1).to_have_count(3)
        keys = sorted(gpu1.nth(i).get_attribute("data-key") or "" for i in range(3))
        assert keys == [f"system/gpu.1.{k}" for k in ("mem_used_mib", "temp_c", "util")]
        memory = sections.nth(2).get_by_test_id("panel")
        assert {memory.nth(i).get_attribute("data-key") for i in range(2)} == {
            "system/mem.used_mib",
            "system/swap.pct",
        }
        util = panel_data(page, "system/gpu.1.util")["data"]
        assert util[0] == [T0 + 2 * i for i in range(12)]
        assert util[-1] == [11.0 + i for i in range(12)]


CONSOLE_SCRIPT = """
import sys, runstream
run = runstream.init(project="cons", entity="acme", id="printer", settings={"console": "redirect"})
print("epoch 1 done")
print("something went wrong", file=sys.stderr)
for i in range(101):
    sys.stdout.write(f"\\r{i}%")
print()
run.finish()
"""


def test_the_console_tab_shows_a_real_runs_output_with_stderr_marked(
    tmp_path: Path, browser: Browser, request: pytest.FixtureRequest
) -> None:
    (tmp_path / "train.py").write_text(CONSOLE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    with running_server(tmp_path / "server") as srv:
        env["RUNSTREAM_HOST"] = srv.url
        done = subprocess.run(
            [sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert b"something went wrong" in done.stderr  # the terminal still shows it
        with open_page(browser, request) as page:
            page.goto(f"{srv.url}/#/r/acme/cons/printer?tab=console")
            view = page.get_by_test_id("console")
            err = view.locator('.line[data-stream="stderr"]').filter(has_text="something went wrong")
            expect(err).to_have_count(1)
            expect(err).to_have_class("line stderr")
            out = view.locator('.line[data-stream="stdout"]')
            expect(out.filter(has_text="epoch 1 done")).to_have_count(1)
            expect(view.locator(".line").filter(has_text="100%")).to_have_count(1)  # the bar: one line
            assert view.locator(".line").filter(has_text="99%").count() == 0
            look = "el => getComputedStyle(el).color + '|' + getComputedStyle(el).boxShadow"
            out_look = out.first.evaluate(look)
            err_look = err.evaluate(look)
            assert out_look.split("|")[0] != err_look.split("|")[0]  # red text
            assert out_look.split("|")[1] == "none" != err_look.split("|")[1]  # and a gutter bar
