"""Alerts in the dashboard, in a real browser (Debian's chromium via Playwright) against a real
``runstream server``: the run page's Alerts tab and the project page's Alerts view list what
``runstream.alert`` sent, with each alert's delivery state (docs/alerts.md)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

import runstream
from tests.support.browser import chromium, open_page
from tests.support.server import running_server
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.usefixtures("finish_active_run")]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_run_page_and_project_page_list_alerts_with_their_delivery_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    with running_server(tmp_path / "server") as srv:  # no webhook: each says "no webhook"
        monkeypatch.setenv("RUNSTREAM_HOST", srv.url)
        run = runstream.init(project="alerts", entity="team", dir=tmp_path / "runs")
        run.log({"loss": 1.0})
        run.alert("Diverged", "loss is <b>nan</b>", level="ERROR")
        run.alert("Checkpoint", "saved", level="INFO")
        run_id = run.id
        run.finish()
        api = f"{srv.url}/api/v1/runs/team/alerts/{run_id}/alerts"
        wait_for(
            lambda: [a["delivery"]["status"] for a in get_json(api)["alerts"]] == ["no_webhook"] * 2,
            20,
            "both alerts stored and their delivery decided",
        )
        with chromium() as browser, open_page(browser, request) as page:
            page.goto(f"{srv.url}/#/r/team/alerts/{run_id}?tab=alerts")
            rows = page.get_by_test_id("alert-row")
            expect(rows).to_have_count(2)
            expect(page.get_by_test_id("alert-title")).to_have_text(["Checkpoint", "Diverged"])
            # The text is shown as text, never as markup.
            expect(rows.nth(1)).to_contain_text("loss is <b>nan</b>")
            expect(page.get_by_test_id("alert-delivery").first).to_have_text("no webhook")

            page.goto(f"{srv.url}/#/p/team/alerts?view=alerts")
            expect(page.get_by_test_id("alert-row")).to_have_count(2)
            expect(page.get_by_test_id("alerts")).to_contain_text(run.name)
            page.get_by_role("link", name=run.name).first.click()
            expect(page.get_by_test_id("tab-alerts")).to_have_class("active")
