"""The server has one clock-step detector: the ledger writer's CLOCK_STEP evidence.

A real server instance (ledger writer, state store, service, HTTP app) on real files
under a manual clock. The admin moves the wall clock; the metric, ``/v1/status`` and the
log report exactly the steps the ledger sealed as CLOCK_STEP records, and nothing the
ledger did not seal (a move below its threshold, as NTP makes).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meterbox.clock import ManualClock
from meterbox.ledger import RecordType, ReportVerifier
from meterbox.server import build_app
from meterbox.server._instance import ServerInstance
from meterbox.vendorkit import keys as vendor_keys
from support.server_proc import make_data

HOUR_MS = 3_600_000
TOKEN = "t" * 32


def _steps_metric(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "meterbox_clock_steps":
            return float(family.samples[0].value)
    raise AssertionError("no meterbox_clock_steps metric")


async def _session(
    data: Path, clock: ManualClock
) -> tuple[list[dict[str, object]], list[float], bytes]:
    inst = ServerInstance.open(data, clock=clock)
    app = build_app(inst.service, admin_token=TOKEN, housekeeping=False)
    statuses: list[dict[str, object]] = []
    scraped: list[float] = []
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://site") as c:

            async def use(n: int) -> None:
                r = await c.post("/v1/usage", json={"meter": "runs", "amount": n, "client_id": "h"})
                assert r.status_code == 200, r.text
                statuses.append((await c.get("/v1/status")).json())
                scraped.append(_steps_metric((await c.get("/metrics")).text))

            await use(1)
            clock.advance(60_000)
            clock.step_wall(200_000)  # an NTP-sized correction, below the 5-minute threshold
            await use(2)
            clock.advance(60_000)
            clock.step_wall(-2 * HOUR_MS)  # the admin sets the clock back two hours
            await use(3)
            clock.advance(60_000)
            await use(4)
            assert inst.writer.clock_steps.count == 1
            report = inst.export_bytes()
    finally:
        await inst.service.aclose()
        inst.close()
    return statuses, scraped, report


def test_metric_status_and_log_count_the_steps_the_ledger_sealed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = make_data(tmp_path)
    clock = ManualClock(wall_ms=int(datetime.now(UTC).timestamp() * 1000))
    with caplog.at_level(logging.WARNING):
        statuses, scraped, report = asyncio.run(_session(site.data, clock))

    assert [s["clock_steps"] for s in statuses] == [0, 0, 1, 1]
    assert scraped == [0, 0, 1, 1]
    last = statuses[-1]["last_clock_step"]
    assert isinstance(last, dict)
    # The step is wall minus monotonic: back two hours, plus the earlier 200 s the
    # writer had not counted (its reference offset stays until a step is sealed).
    assert last["delta_ms"] == -2 * HOUR_MS + 200_000
    assert statuses[0]["last_clock_step"] is None
    logged = [r for r in caplog.records if r.getMessage().startswith("wall clock stepped")]
    assert [getattr(r, "step_ms", None) for r in logged] == [-2 * HOUR_MS + 200_000]

    # The ledger holds exactly the one CLOCK_STEP the operator was shown.
    keys = vendor_keys.VendorKeys.load(tmp_path / "vendor")
    verifier = ReportVerifier({kid: pair.ledger_private for kid, pair in keys.pairs.items()})
    kinds = [r.type for r, _ in verifier.records(BytesIO(report))]
    assert kinds.count(RecordType.CLOCK_STEP) == 1
