"""The vendor's dashboard in a real browser over a store with one ingested report.

A real server takes seats and usage, its report is exported and ingested by the real
vendor ingest; the dashboard then shows the customer, the report and its findings,
usage charts, and the month's bill, whose CSV download matches the billing core.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect
from typer.testing import CliRunner

from meterbox.vendorkit.billing import Period, bill
from meterbox.vendorkit.dashboard._data import Source
from meterbox.vendorkit.dashboard.app import build_vendor_dashboard
from meterbox.vendorkit.ingest import ingest
from support.browser import ServerThread, Site, screenshot_path

pytestmark = pytest.mark.browser


@pytest.fixture
def reported(site: Site, tmp_path: Path) -> Site:
    for n in range(3):
        r = httpx.post(
            site.url + "/v1/usage",
            json={"meter": "solver-runs", "amount": 150, "client_id": f"ws-{n}"},
        )
        assert r.status_code == 200, r.text
    for n in range(3):
        httpx.post(site.url + "/v1/seats/checkout", json={"feature": "cad", "client_id": f"ws-{n}"})
    report = tmp_path / "report-1.mbr"
    report.write_bytes(site.built.instance.export_bytes())
    outcome = ingest(site.vendor_home, report, receipt_out=tmp_path / "receipt-1.mbr")
    assert outcome.accepted, outcome.findings
    return site


def test_overview_report_usage_and_bill_with_csv_download(
    browser: Browser, reported: Site, tmp_path: Path
) -> None:
    src = Source(reported.vendor_home)
    period = datetime.now(UTC).strftime("%Y-%m")
    with ServerThread(build_vendor_dashboard(src)) as web:
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1280, "height": 900}
        )
        page = context.new_page()
        page.goto(web.url + "/")
        expect(page.get_by_role("heading", name="Acme Labs")).to_be_visible()
        expect(page.locator("main")).to_contain_text("Solver Suite")
        expect(page.locator("main")).to_contain_text("cad: 2+1")
        report_link = page.get_by_role("link", name=re.compile(r"UTC$")).first
        expect(report_link).to_be_visible()
        page.screenshot(path=screenshot_path(tmp_path, "vendor-overview.png"), full_page=True)

        report_link.click()
        expect(page.get_by_role("heading", name=re.compile("^Report"))).to_be_visible()
        expect(page.locator("main")).to_contain_text("accepted")

        page.get_by_role("link", name="Usage").click()
        expect(
            page.get_by_role("img", name=f"Units of solver-runs per day, {period}")
        ).to_be_visible()
        expect(
            page.get_by_role("img", name=re.compile("Peak seats of cad per hour"))
        ).to_be_visible()

        page.get_by_role("link", name="Bill").click()
        expect(page.get_by_role("heading", name=f"Bill for {period}")).to_be_visible()
        table = page.get_by_test_id("bill-meters")
        expect(table).to_contain_text("solver-runs")
        # 450 used against 500 prepaid this month: nothing over.
        expect(table.locator("tbody tr").first).to_contain_text("450")
        expect(table.locator("tbody tr").first).to_contain_text("500")
        page.screenshot(path=screenshot_path(tmp_path, "vendor-bill.png"), full_page=True)

        with page.expect_download() as info:
            page.get_by_role("link", name="Download CSV").click()
        download = info.value
        assert download.suggested_filename == f"bill-{period}.csv"
        path = tmp_path / download.suggested_filename
        download.save_as(path)
        text = path.read_text()
        assert text == bill(reported.vendor_home, Period.parse(period)).to_csv()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["meter"], r["used"], r["prepaid"], r["overage"]) for r in rows] == [
            ("solver-runs", "450", "500", "0")
        ]

        page.get_by_role("link", name="Findings").click()
        expect(page.get_by_role("heading", name="Findings and anomalies")).to_be_visible()
        expect(page.locator("main")).to_contain_text("anomaly.clone")

        narrow = browser.new_context(viewport={"width": 375, "height": 812})
        small = narrow.new_page()
        small.goto(web.url + "/bill")
        overflow = small.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"bill page is {overflow}px wider than a 375px screen"
        narrow.close()
        context.close()


def test_foreign_host_header_and_bad_period_are_refused(reported: Site) -> None:
    with ServerThread(build_vendor_dashboard(Source(reported.vendor_home))) as web:
        # A page on another origin reaching the port through DNS rebinding names its own host.
        assert httpx.get(web.url + "/", headers={"host": "evil.example"}).status_code == 400
        bad = httpx.get(web.url + "/bill", params={"period": "2026-13"})
        assert bad.status_code == 400
        assert "YYYY-MM" in bad.text
        assert "access-control-allow-origin" not in bad.headers


def test_dashboard_command_refuses_a_non_loopback_host(reported: Site) -> None:
    from meterbox.vendorkit.cli import app

    result = CliRunner().invoke(
        app, ["dashboard", "--home", str(reported.vendor_home), "--host", "0.0.0.0"]
    )
    assert result.exit_code != 0
    assert "loopback" in result.output
