"""The site admin's dashboard in a real browser against a real server.

Log in with the admin token, watch a seat appear when a client checks out, download
the report and verify it with the vendor's keys, import the vendor's receipt through
the form, and check the page on a 375 px wide screen.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from meterbox.ledger import ReportVerifier
from meterbox.vendorkit.ingest import ingest
from meterbox.vendorkit.keys import VendorKeys
from support.browser import Site, screenshot_path

pytestmark = pytest.mark.browser


def login(page: Page, site: Site) -> None:
    page.goto(site.url + "/")
    expect(page).to_have_url(site.url + "/login")
    page.get_by_label("Admin token").fill(site.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Site dashboard")).to_be_visible()


def test_wrong_token_is_refused_and_the_token_never_reaches_a_url_or_cookie(
    browser: Browser, site: Site
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(site.url + "/")
    page.get_by_label("Admin token").fill("not-the-token-at-all")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not this server's admin token")
    login(page, site)
    assert site.token not in page.url
    cookies = context.cookies()
    assert [c["name"] for c in cookies] == ["meterbox_session"]
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    assert site.token not in cookies[0]["value"]
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(site.url + "/login")
    page.goto(site.url + "/")
    expect(page).to_have_url(site.url + "/login")
    context.close()


def test_seats_panel_follows_a_client_checkout_and_release_without_reload(
    browser: Browser, site: Site
) -> None:
    page = browser.new_page()
    login(page, site)
    in_use = page.get_by_test_id("in-use-cad")
    expect(in_use).to_have_text("0 of 2 in use")
    lease = httpx.post(
        site.url + "/v1/seats/checkout",
        json={"feature": "cad", "client_id": "workstation-7", "hostname": "ws7.lab"},
    ).json()
    expect(in_use).to_have_text("1 of 2 in use", timeout=8000)
    expect(page.locator("#seats")).to_contain_text("workstation-7")
    expect(page.locator("#seats")).to_contain_text("ws7.lab")
    httpx.post(site.url + "/v1/seats/release", json={"lease_id": lease["lease_id"]})
    expect(in_use).to_have_text("0 of 2 in use", timeout=8000)
    page.close()


def test_export_download_verifies_and_the_receipt_imports_through_the_form(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    for n in range(3):
        r = httpx.post(
            site.url + "/v1/usage",
            json={"meter": "solver-runs", "amount": 40, "client_id": f"c{n}"},
        )
        assert r.status_code == 200, r.text
    httpx.post(site.url + "/v1/seats/checkout", json={"feature": "cad", "client_id": "ws-1"})
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    login(page, site)
    expect(page.get_by_test_id("used-solver-runs")).to_have_text("120 used")
    expect(page.get_by_test_id("exhaust-solver-runs")).to_be_visible()
    expect(
        page.get_by_role("img", name=re.compile("Quota burn-down for solver-runs"))
    ).to_be_visible()

    with page.expect_download() as info:
        page.get_by_role("button", name="Export report").click()
    download = info.value
    assert re.fullmatch(r"report-[0-9a-f]{8}-\d+\.mbr", download.suggested_filename)
    report = tmp_path / download.suggested_filename
    download.save_as(report)

    keys = VendorKeys.load(site.vendor_home)
    verifier = ReportVerifier({kid: pair.ledger_private for kid, pair in keys.pairs.items()})
    with report.open("rb") as f:
        result = verifier.verify(f)
    assert not result.critical, result.findings
    assert result.instance_id == site.built.instance.writer.instance_id
    assert result.records > 0

    outcome = ingest(site.vendor_home, report, receipt_out=tmp_path / "receipt.mbr")
    assert outcome.accepted, outcome.findings
    assert outcome.receipt_path is not None

    expect(page.get_by_test_id("last-receipt")).to_have_text("none yet")
    upload = page.get_by_label("Receipt, top-up, notice or license file")
    upload.set_input_files(outcome.receipt_path)
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_test_id("flash")).to_contain_text("Receipt")
    expect(page.get_by_test_id("flash")).to_contain_text("imported")
    expect(page.get_by_test_id("last-receipt")).to_contain_text(f"records up to {outcome.head.seq}")  # type: ignore[union-attr]
    page.screenshot(path=screenshot_path(tmp_path, "site-dashboard.png"), full_page=True)

    # A file that is not a vendor document is refused with an explanation; nothing changes.
    bogus = tmp_path / "bogus.bin"
    bogus.write_bytes(b"certainly not a receipt")
    page.get_by_label("Receipt, top-up, notice or license file").set_input_files(bogus)
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_test_id("flash")).to_contain_text("Nothing imported from bogus.bin")
    context.close()


def test_dashboard_fits_a_narrow_screen(browser: Browser, site: Site, tmp_path: Path) -> None:
    httpx.post(site.url + "/v1/seats/checkout", json={"feature": "cad", "client_id": "laptop-3"})
    httpx.post(
        site.url + "/v1/usage", json={"meter": "solver-runs", "amount": 75, "client_id": "x"}
    )
    context = browser.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2)
    page = context.new_page()
    login(page, site)
    expect(page.get_by_test_id("in-use-cad")).to_have_text("1 of 2 in use")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow}px wider than a 375px screen"
    page.screenshot(path=screenshot_path(tmp_path, "site-dashboard-narrow.png"), full_page=False)
    context.close()


def test_forms_need_the_session_csrf_token_and_apis_are_untouched(site: Site) -> None:
    with httpx.Client(base_url=site.url) as anon:
        r = anon.get("/", follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/login")
        assert anon.post("/ui/export", follow_redirects=False).status_code == 303
        assert anon.get("/ui/seats").status_code == 401
        # The JSON API and its bearer-token admin endpoints are unchanged.
        assert anon.get("/v1/seats").json()["features"][0]["feature"] == "cad"
        assert anon.post("/v1/admin/export").status_code == 401
        assert anon.get("/healthz").json() == {"ok": True}
    with httpx.Client(base_url=site.url) as admin:
        r = admin.post("/login", data={"token": site.token}, follow_redirects=False)
        assert r.status_code == 303
        assert "HttpOnly" in r.headers["set-cookie"]
        assert (
            "SameSite=strict" in r.headers["set-cookie"]
            or "SameSite=Strict" in r.headers["set-cookie"]
        )
        page = admin.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "access-control-allow-origin" not in page.headers
        assert site.token not in page.text
        refused = admin.post("/ui/export", data={"csrf": "forged"})
        assert refused.status_code == 403
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        ok = admin.post("/ui/export", data={"csrf": csrf.group(1)})
        assert ok.status_code == 200
        assert ok.headers["content-disposition"].startswith("attachment;")
