"""Fixtures for the dashboard browser tests: a real vendor, a real server, a real browser.

The browser is Debian's chromium driven by Playwright. When ``/usr/bin/chromium`` is
missing the tests fail (they do not skip) with the command that installs it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, sync_playwright
from typer.testing import CliRunner

from meterbox.cli import app as cli_app
from meterbox.server.dashboard import mount_dashboard
from meterbox.server.instance import init_server, read_admin_token
from meterbox.server.runtime import BuiltApp, build_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
#: Set to 1 to refresh the screenshots in docs/img/ (they go to a temporary folder otherwise).
UPDATE_SCREENSHOTS = os.environ.get("METERBOX_UPDATE_SCREENSHOTS") == "1"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving an ASGI app on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def vendor(*args: str) -> str:
    result = CliRunner().invoke(cli_app, ["vendor", *args])
    assert result.exit_code == 0, result.output
    return result.output


@dataclass
class Site:
    root: Path
    vendor_home: Path
    data: Path
    url: str
    token: str
    built: BuiltApp


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A vendor home with one license, and a running server with the dashboard mounted."""
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
    built = build_app(data)
    app = mount_dashboard(built.app, built.instance)
    try:
        with ServerThread(app) as server:
            yield Site(tmp_path, home, data, server.url, read_admin_token(data), built)
    finally:
        built.close()


@pytest.fixture(scope="session")
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


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = DOCS_IMG if UPDATE_SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def wait_healthy(url: str) -> None:
    assert httpx.get(f"{url}/healthz", timeout=5).json() == {"ok": True}
