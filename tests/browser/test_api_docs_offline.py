"""/docs and /redoc in a real browser with every request off the machine blocked.

The pages must render the API's operations from the package's own files: a request to
a CDN is blocked and recorded, and any recorded request or Content-Security-Policy
violation fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, expect

from meterbox.server._apidocs import FILES
from support.browser import LoopbackOnly, Site, screenshot_path

pytestmark = pytest.mark.browser

ASSETS = Path(__file__).resolve().parents[2] / "src/meterbox/server/_apidocs/assets"


def _open(browser: Browser, url: str) -> tuple[object, LoopbackOnly, list[str]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    guard = LoopbackOnly()
    context.route("**/*", guard)
    page = context.new_page()
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(url)
    return page, guard, problems


def test_swagger_ui_renders_the_operations_offline(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    page, guard, problems = _open(browser, site.url + "/docs")
    ops = page.locator(".opblock-summary-path")
    expect(ops.first).to_be_visible(timeout=20_000)
    paths = set(ops.all_inner_texts())
    spec = httpx.get(site.url + "/openapi.json").json()
    assert {"/v1/seats/checkout", "/v1/usage", "/v1/admin/export"} <= {
        p.replace("\u200b", "") for p in paths
    }
    assert len(paths) >= len([p for p in spec["paths"] if not p.startswith("/api/")]) - 1
    page.screenshot(path=str(screenshot_path(tmp_path, "api-docs-swagger.png")))
    assert guard.blocked == [], guard.blocked
    assert problems == [], problems
    page.context.close()


def test_redoc_renders_the_operations_offline(browser: Browser, site: Site, tmp_path: Path) -> None:
    page, guard, problems = _open(browser, site.url + "/redoc")
    heading = page.get_by_role("heading", name="meterbox license server")
    expect(heading.first).to_be_visible(timeout=20_000)
    expect(page.get_by_text("/v1/seats/checkout").first).to_be_attached()
    operations = page.locator("[data-section-id^='operation/']")
    assert operations.count() >= 5
    page.screenshot(path=str(screenshot_path(tmp_path, "api-docs-redoc.png")))
    assert guard.blocked == [], guard.blocked
    assert problems == [], problems
    page.context.close()


def test_pages_have_no_inline_script_and_send_the_policy(site: Site) -> None:
    for path in ("/docs", "/redoc"):
        r = httpx.get(site.url + path)
        assert r.status_code == 200
        assert "script-src 'self';" in r.headers["content-security-policy"]
        assert "<script>" not in r.text and "https://" not in r.text
    assert httpx.get(site.url + "/docs/assets/../../pyproject.toml").status_code == 404
    assert httpx.get(site.url + "/docs/assets/nothing.js").status_code == 404
    r = httpx.get(site.url + "/docs/assets/redoc-LICENSE")
    assert r.status_code == 200 and "MIT" in r.text
    manifest = json.loads((ASSETS / "MANIFEST.json").read_text())
    assert set(manifest) <= set(FILES)
