"""``define_metric`` in the dashboard, in a real browser against a real server: a metric with a
``step_metric`` is drawn against it by default (its drawn x values are the step metric's logged
values), an x axis chosen in the URL wins, and ``hidden`` metrics get no chart."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

import runstream
from tests.support.server import running_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TRAIN = """
import runstream
run = runstream.init(project="dmweb", id="dmweb001")
run.define_metric("epoch", hidden=True)
run.define_metric("val/*", step_metric="epoch")
for step in range(40):
    row = {"loss": 1.0 / (step + 1)}
    if step % 10 == 9:  # an epoch ends: its number and the validation accuracy
        row.update({"epoch": 100 + step // 10, "val": {"acc": step / 40}})
    run.log(row)
run.finish()
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's URL to the run's page."""
    work = tmp_path_factory.mktemp("dmweb")
    (work / "train.py").write_text(textwrap.dedent(TRAIN))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    with running_server(work / "server") as srv:
        env["RUNSTREAM_HOST"] = srv.url
        cmd = [sys.executable, "train.py"]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        yield f"{srv.url}/#/r/{runstream.Api(srv.url).run('dmweb/dmweb001').path}"


def panel(page: Page, key: str) -> Any:
    return page.locator(f'[data-testid="panel"][data-key="{key}"]')


def drawn_x(page: Page, key: str) -> list[float]:
    loc = panel(page, key)
    expect(loc).to_have_attribute("data-runs", "1")
    return loc.evaluate("el => Array.from(el.__panel.tables[0][0])")  # type: ignore[no-any-return]


def test_a_metric_with_a_step_metric_is_drawn_against_it_and_hidden_ones_are_not_drawn(
    site: str, page: Page
) -> None:
    page.goto(f"{site}?tab=charts")
    expect(panel(page, "loss")).to_be_visible()
    expect(panel(page, "val/acc")).to_have_attribute("data-x-axis", "epoch")
    expect(panel(page, "loss")).to_have_attribute("data-x-axis", "_step")
    assert drawn_x(page, "val/acc") == [100, 101, 102, 103]
    assert drawn_x(page, "loss")[:3] == [0, 1, 2]
    expect(panel(page, "epoch")).to_have_count(0)  # hidden


def test_an_x_axis_chosen_in_the_url_wins_over_the_step_metric(site: str, page: Page) -> None:
    page.goto(f"{site}?tab=charts&x=_step")
    expect(panel(page, "val/acc")).to_have_attribute("data-x-axis", "_step")
    assert drawn_x(page, "val/acc") == [9, 19, 29, 39]
