"""Helpers for the dashboard browser tests: a real vendor, a real server, a real browser.

The browser is Debian's chromium driven by Playwright. When ``/usr/bin/chromium`` is
missing the tests fail (they do not skip) with the command that installs it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from typer.testing import CliRunner

from meterbox.cli import app as cli_app
from meterbox.server._runtime import BuiltServer

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
    built: BuiltServer


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = DOCS_IMG if UPDATE_SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def wait_healthy(url: str) -> None:
    assert httpx.get(f"{url}/healthz", timeout=5).json() == {"ok": True}


class LoopbackOnly:
    """Route handler for a Playwright context: loopback requests pass, any other aborts.

    Every request that tried to leave the machine is kept in ``blocked``, so a test can
    say that a page needed nothing from outside, not only that it rendered.
    """

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def __call__(self, route: Any) -> None:
        from urllib.parse import urlsplit

        url = route.request.url
        host = urlsplit(url).hostname or ""
        if url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("internetdisconnected")
