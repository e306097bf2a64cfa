"""Fixtures of the browser tests; the helpers they use live in support.browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from meterbox.server._instance import init_server, read_admin_token
from meterbox.server._runtime import build_server
from support.browser import CHROMIUM, CHROMIUM_ARGS, ServerThread, Site, vendor


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A vendor home with one license, and a running server (dashboard included)."""
    home = tmp_path / "vendor"
    vendor("init", "--home", str(home))
    lic = tmp_path / "acme.lic"
    vendor(
        "issue", "--home", str(home), "--customer", "Acme Labs", "--product", "Solver Suite",
        "--seats", "cad=2+1", "--lease", "60", "--meter", "solver-runs=500/month",
        "--report-every", "30", "--grace", "7", "-o", str(lic),
    )  # fmt: skip
    data = tmp_path / "server"
    init_server(data, vendor_pub=home / "vendor.pub", license_files=[lic], fingerprint="site-1")
    built = build_server(data)
    try:
        with ServerThread(built.app) as server:
            yield Site(tmp_path, home, data, server.url, read_admin_token(data), built)
    finally:
        built.close()


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in the
# main thread while it is open, which would break every later test that calls
# asyncio.run(). Closing it after each browser test module keeps the suite independent.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Debian's chromium is needed at {CHROMIUM} for the browser tests; "
            "install it with scripts/install-system-deps.sh (apt-get install chromium)",
            pytrace=False,
        )
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
