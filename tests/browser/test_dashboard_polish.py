"""Both dashboards as a web user sees them: overdraft shown as overdraft, charts that stop
at today, every page readable at 375 px, a styled 404, and errors in words (no JSON or
traceback on an HTML page). Real server, real vendor store, Debian's chromium.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from meterbox.vendorkit.dashboard._data import Source, daily_usage
from meterbox.vendorkit.dashboard.app import build_vendor_dashboard
from meterbox.vendorkit.ingest import ingest
from support.browser import ServerThread, Site, screenshot_path, vendor

pytestmark = pytest.mark.browser

NARROW = {"width": 375, "height": 812}
_MACHINE_TEXT = re.compile(r'Traceback|File "|\{"|"code"|\bNone\b')


def no_horizontal_scroll(page: Page, what: str) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{what} is {overflow}px wider than a 375px screen"


def reads_as_words(page: Page, what: str) -> None:
    text = page.locator("body").inner_text()
    assert not _MACHINE_TEXT.search(text), f"{what} shows machine text: {text[:400]}"


def styled(page: Page) -> bool:
    return bool(
        page.evaluate(
            "[...document.styleSheets].some(s => s.href && s.href.endsWith('dashboard.css')"
            " && s.cssRules.length > 0)"
        )
    )


def login(page: Page, site: Site) -> None:
    page.goto(site.url + "/")
    page.get_by_label("Admin token").fill(site.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Site dashboard")).to_be_visible()


def test_overdraft_is_shown_as_overdraft_on_a_narrow_screen(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    # The license has cad=2+1: three holders use both seats and the overdraft seat.
    for n in range(3):
        r = httpx.post(
            site.url + "/v1/seats/checkout", json={"feature": "cad", "client_id": f"w{n}"}
        )
        assert r.status_code == 200, r.text
    context = browser.new_context(viewport=NARROW)
    page = context.new_page()
    login(page, site)
    pill = page.get_by_test_id("in-use-cad")
    expect(pill).to_have_text(re.compile(r"all 2 seats in use\s+\+ 1 in overdraft"))
    expect(pill).to_have_class(re.compile(r"\bbad\b"))
    expect(page.locator("#seats")).not_to_contain_text("3 of 2")
    meter = page.get_by_test_id("meter-cad")
    # Past ``high`` (the licensed seats) a browser draws the bar in its warning colour.
    assert meter.get_attribute("high") == "2" and meter.get_attribute("value") == "3"
    expect(meter).to_have_attribute("aria-label", re.compile("1 in overdraft"))
    expect(page.locator("#seats")).to_contain_text("0 of 1 overdraft free")
    no_horizontal_scroll(page, "the site dashboard in overdraft")
    page.screenshot(path=screenshot_path(tmp_path, "site-overdraft-375.png"), full_page=True)
    context.close()


def test_the_site_dashboard_has_a_styled_404_and_the_api_keeps_its_json(
    browser: Browser, site: Site
) -> None:
    context = browser.new_context(viewport=NARROW)
    page = context.new_page()
    for path in ("/no-such-page", "/ui/no-such-part"):
        response = page.goto(site.url + path)
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
        expect(page.get_by_role("link", name="Back to the dashboard")).to_be_visible()
        assert styled(page), path
        reads_as_words(page, path)
        no_horizontal_scroll(page, f"the 404 page at {path}")
    context.close()
    # A program (or a browser) asking the API for a path it lacks still gets JSON.
    for accept in ("application/json", "text/html"):
        api = httpx.get(site.url + "/v1/no-such-route", headers={"Accept": accept})
        assert api.status_code == 404
        assert api.headers["content-type"].startswith("application/json")
        assert api.json()["error"]["code"] == "not_found"


def test_a_suspension_imported_through_the_form_is_said_on_the_seats_panel(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    licenses = vendor("licenses", "--home", str(site.vendor_home), "--json")
    [license_id] = re.findall(r'"license_id": "(lic_[0-9a-f]+)"', licenses)
    files = {}
    for action in ("suspend", "resume"):
        files[action] = tmp_path / f"{action}.ntc"
        vendor(
            action, "--home", str(site.vendor_home), "--license", license_id,
            "--reason", "invoice 2025-014 unpaid", "-o", str(files[action]),
        )  # fmt: skip
    context = browser.new_context(viewport=NARROW)
    page = context.new_page()
    login(page, site)
    upload = page.get_by_label("Receipt, top-up, notice or license file")
    upload.set_input_files(files["suspend"])
    page.get_by_role("button", name="Import").click()
    flash = page.get_by_test_id("flash")
    expect(flash).to_contain_text(f"license {license_id} is now suspended")
    expect(page.get_by_test_id("in-use-cad")).to_have_text("no seats granted")
    expect(page.get_by_test_id("refused-cad")).to_contain_text("invoice 2025-014 unpaid")
    reads_as_words(page, "the dashboard of a suspended license")
    no_horizontal_scroll(page, "the dashboard of a suspended license")
    page.get_by_label("Receipt, top-up, notice or license file").set_input_files(files["resume"])
    page.get_by_role("button", name="Import").click()
    expect(flash).to_contain_text(f"license {license_id} is now active")
    expect(page.get_by_test_id("in-use-cad")).to_have_text("0 of 2 in use")
    # The same suspension again is refused, in words.
    page.get_by_label("Receipt, top-up, notice or license file").set_input_files(files["suspend"])
    page.get_by_role("button", name="Import").click()
    expect(flash).to_contain_text("not newer than the last notice")
    expect(page.get_by_test_id("in-use-cad")).to_have_text("0 of 2 in use")
    context.close()


@pytest.fixture
def reported(site: Site, tmp_path: Path) -> Site:
    for n in range(3):
        httpx.post(
            site.url + "/v1/usage",
            json={"meter": "solver-runs", "amount": 150, "client_id": f"ws-{n}"},
        )
        httpx.post(site.url + "/v1/seats/checkout", json={"feature": "cad", "client_id": f"ws-{n}"})
    report = tmp_path / "report-1.mbr"
    report.write_bytes(site.built.instance.export_bytes())
    outcome = ingest(site.vendor_home, report, receipt_out=tmp_path / "receipt-1.mbr")
    assert outcome.accepted, outcome.findings
    return site


def test_vendor_pages_fit_375px_have_a_styled_404_and_speak_in_words(
    browser: Browser, reported: Site, tmp_path: Path
) -> None:
    src = Source(reported.vendor_home)
    with ServerThread(build_vendor_dashboard(src)) as web:
        context = browser.new_context(viewport=NARROW)
        page = context.new_page()
        for path in ("/", "/usage", "/bill", "/anomalies"):
            response = page.goto(web.url + path)
            assert response is not None and response.status == 200, path
            no_horizontal_scroll(page, f"vendor {path}")
            reads_as_words(page, f"vendor {path}")
        page.goto(web.url + "/")
        page.get_by_role("link", name=re.compile(r"UTC$")).first.click()
        expect(page.get_by_role("heading", name=re.compile("^Report"))).to_be_visible()
        no_horizontal_scroll(page, "a vendor report page")
        response = page.goto(web.url + "/no-such-page")
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
        assert styled(page)
        reads_as_words(page, "the vendor 404")
        no_horizontal_scroll(page, "the vendor 404")
        response = page.goto(web.url + "/usage?period=13-2025")
        assert response is not None and response.status == 400
        expect(page.get_by_role("alert")).to_be_visible()
        reads_as_words(page, "a bad period")
        page.screenshot(path=screenshot_path(tmp_path, "vendor-404-375.png"), full_page=True)
        context.close()


def test_usage_charts_stop_at_today(reported: Site) -> None:
    today = datetime.now(UTC).date()
    start = today.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    daily = daily_usage(Source(reported.vendor_home), start, end, today=today)
    [series] = daily["solver-runs"].values()
    assert series[-1] == (today, 450)
    assert [d for d, _ in series] == [
        start + timedelta(days=n) for n in range((today - start).days + 1)
    ]
    # Without ``today`` every day of the month is listed (the old behaviour, for a past month).
    full = daily_usage(Source(reported.vendor_home), start, end)
    assert len(next(iter(full["solver-runs"].values()))) == (end - start).days
