"""The server over HTTP with an injected clock: lease expiry, the report-deadline lock,
top-ups, and the full export -> vendor ingest -> receipt import -> compaction loop."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from meterbox.cli import app as cli_app
from meterbox.clock import ManualClock
from meterbox.licenses import Feature, License, Meter, Topup
from meterbox.server._instance import init_server, read_admin_token
from meterbox.server._runtime import BuiltServer, build_server
from meterbox.server._service import ServiceConfig
from meterbox.vendorkit import keys as vendor_keys
from support.timing import ManualSleeps
from support.vendor_ingest import make_home

DAY_MS = 86_400_000
START_MS = int(datetime(2026, 3, 2, 9, tzinfo=UTC).timestamp() * 1000)


@dataclass
class Running:
    url: str
    token: str
    clock: ManualClock
    home: Path
    data: Path
    built: BuiltServer
    tmp: Path
    #: The housekeeping loop's waits: a cull round runs only when the test fires one.
    sweeps: ManualSleeps

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=10)

    def admin(self, path: str, content: bytes | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.post(f"{self.url}{path}", content=content, headers=headers, timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    home = make_home(tmp_path)
    keys = vendor_keys.VendorKeys.load(home)
    lic = License(
        license_id="lic_roundtrip",
        customer="ACME",
        product="Solver",
        issued=datetime(2026, 3, 1, tzinfo=UTC),
        vendor_key_id=keys.signer().key_id.hex(),
        features={"cad": Feature(1, 0, 60)},
        meters={"runs": Meter(10, "total")},
        report_every_days=30,
        grace_days=5,
    )
    (tmp_path / "lic.lic").write_bytes(lic.sign(keys.signer()))
    clock = ManualClock(wall_ms=START_MS)
    data = tmp_path / "srv"
    init_server(
        data,
        vendor_pub=home / "vendor.pub",
        license_files=[tmp_path / "lic.lic"],
        clock=clock,
        fingerprint="site",
    )
    sweeps = ManualSleeps()
    built = build_server(data, clock=clock, settings=ServiceConfig(cull_interval=0.2), sleep=sweeps)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(built.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield Running(
            f"http://127.0.0.1:{port}",
            read_admin_token(data),
            clock,
            home,
            data,
            built,
            tmp_path,
            sweeps,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        built.close()


def test_an_unrenewed_lease_expires_and_frees_its_seat(running: Running) -> None:
    first = running.post("/v1/seats/checkout", {"feature": "cad", "client_id": "a"})
    assert first.status_code == 200
    denied = running.post("/v1/seats/checkout", {"feature": "cad", "client_id": "b"})
    assert denied.status_code == 409
    assert denied.json()["error"]["code"] == "no_seat"
    running.sweeps.fire_from_thread()  # a cull round inside the lease changes nothing
    assert httpx.get(f"{running.url}/v1/seats", timeout=5).json()["features"][0]["in_use"] == 1
    running.clock.advance(61_000)  # the lease (60 s) runs out
    running.sweeps.fire_from_thread()  # the next cull round frees it
    assert httpx.get(f"{running.url}/v1/seats", timeout=5).json()["features"][0]["in_use"] == 0
    gone = running.post("/v1/seats/heartbeat", {"lease_id": first.json()["lease_id"]})
    assert gone.status_code == 404
    assert (
        running.post("/v1/seats/checkout", {"feature": "cad", "client_id": "b"}).status_code == 200
    )


def test_top_up_raises_the_quota_once(running: Running) -> None:
    assert (
        running.post("/v1/usage", {"meter": "runs", "amount": 10, "client_id": "a"}).status_code
        == 200
    )
    over = running.post("/v1/usage", {"meter": "runs", "amount": 1, "client_id": "a"})
    assert over.status_code == 402
    assert over.json()["error"]["code"] == "quota_exceeded"
    keys = vendor_keys.VendorKeys.load(running.home)
    topup = Topup(
        topup_id="top_1", license_id="lic_roundtrip", meter="runs", units=5,
        issued=datetime(2026, 3, 2, tzinfo=UTC),
    ).sign(keys.signer())  # fmt: skip
    assert running.admin("/v1/admin/import", topup).json()["imported"] == "topup"
    again = running.admin("/v1/admin/import", topup)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "topup_already_applied"
    ok = running.post("/v1/usage", {"meter": "runs", "amount": 5, "client_id": "a"})
    assert ok.status_code == 200
    assert ok.json()["remaining"] == 0


def test_report_deadline_locks_new_grants_until_a_receipt_is_imported(running: Running) -> None:
    assert (
        running.post("/v1/usage", {"meter": "runs", "amount": 2, "client_id": "a"}).status_code
        == 200
    )
    running.clock.advance(36 * DAY_MS)  # 30 days + 5 days grace, and a day more
    for path, body in (
        ("/v1/usage", {"meter": "runs", "amount": 1, "client_id": "a"}),
        ("/v1/seats/checkout", {"feature": "cad", "client_id": "a"}),
    ):
        locked = running.post(path, body)
        assert locked.status_code == 403, locked.text
        assert locked.json()["error"]["code"] == "report_overdue"

    # The site exports, the vendor ingests and signs a receipt, the site imports it.
    report = running.tmp / "report.mbr"
    report.write_bytes(running.admin("/v1/admin/export").content)
    receipt = running.tmp / "receipt.mbr"
    result = CliRunner().invoke(
        cli_app,
        ["vendor", "ingest", "--home", str(running.home), str(report),
         "--receipt-out", str(receipt), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    assert outcome["status"] in {"accepted", "accepted_with_findings"}
    assert outcome["totals"] == {"runs": 2}
    imported = running.admin("/v1/admin/import", receipt.read_bytes()).json()
    assert imported["imported"] == "receipt"

    # Unlocked, and the next report carries only what came after the receipt.
    assert (
        running.post("/v1/usage", {"meter": "runs", "amount": 3, "client_id": "a"}).status_code
        == 200
    )
    second = running.tmp / "report-2.mbr"
    second.write_bytes(running.admin("/v1/admin/export").content)
    result = CliRunner().invoke(
        cli_app,
        ["vendor", "ingest", "--home", str(running.home), str(second),
         "--receipt-out", str(running.tmp / "receipt-2.mbr"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"] == {"runs": 3}
