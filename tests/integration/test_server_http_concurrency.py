"""Concurrent requests through the app: no double grant, group commit, no ack unless durable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from meterbox.server import (
    FeaturePolicy,
    FileEventSink,
    LicensePolicy,
    LicenseService,
    MeterPolicy,
    StateStore,
    build_app,
)
from meterbox.server._sinks import read_frames

POLICY = LicensePolicy(
    "L1",
    "acme",
    "cad",
    datetime(2025, 1, 1, tzinfo=UTC),
    features={"cad": FeaturePolicy(seats=3, overdraft=0, lease_seconds=60)},
    meters={"runs": MeterPolicy(limit=25)},
)


class FlakySink:
    """Writes to a real file sink but refuses every record of one kind."""

    def __init__(self, inner: FileEventSink, refuse: str) -> None:
        self.inner, self.refuse = inner, refuse

    async def record(self, kind: str, payload: dict[str, Any]) -> int:
        if kind == self.refuse:
            raise OSError("disk full")
        return await self.inner.record(kind, payload)


async def run(tmp_path: Path, requests: Any, sink_wrap: Any = None) -> tuple[list[Any], Any]:
    store = StateStore(tmp_path / "state.db")
    file_sink = FileEventSink(tmp_path / "events.bin")
    sink = sink_wrap(file_sink) if sink_wrap else file_sink
    service = LicenseService.open(store, [POLICY], sink)
    app = build_app(service, admin_token="a" * 20, housekeeping=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as c:
            results = await asyncio.gather(*(requests(c, i) for i in range(40)))
        return results, (store.load(), file_sink)
    finally:
        store.close()
        file_sink.close()


def test_forty_concurrent_checkouts_get_exactly_three_seats(tmp_path: Path) -> None:
    async def req(c: httpx.AsyncClient, i: int) -> int:
        r = await c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": f"c{i}"})
        return r.status_code

    codes, (snap, sink) = asyncio.run(run(tmp_path, req))
    assert codes.count(200) == 3 and codes.count(409) == 37
    assert len(snap.leases) == 3 and snap.denials == {"cad": 37}
    # Group commit: far fewer fsyncs than records.
    assert sink.fsyncs < 40


def test_concurrent_usage_never_consumes_more_than_the_quota(tmp_path: Path) -> None:
    async def req(c: httpx.AsyncClient, i: int) -> int:
        r = await c.post("/v1/usage", json={"meter": "runs", "amount": 2, "client_id": f"c{i}"})
        return r.status_code

    codes, (snap, _) = asyncio.run(run(tmp_path, req))
    assert codes.count(200) == 12 and codes.count(402) == 28
    assert snap.usage == {("L1", "runs", "total"): 24}
    frames = list(read_frames(tmp_path / "events.bin"))
    assert sum(p["a"] for _, kind, p, _ in frames if kind == "usage") == 24


def test_usage_is_not_acknowledged_or_counted_when_the_ledger_refuses(tmp_path: Path) -> None:
    async def req(c: httpx.AsyncClient, i: int) -> httpx.Response:
        return await c.post(
            "/v1/usage",
            json={"meter": "runs", "amount": 1, "client_id": "c", "idempotency_key": f"k{i % 5}"},
        )

    responses, (snap, _) = asyncio.run(run(tmp_path, req, lambda inner: FlakySink(inner, "usage")))
    assert {r.status_code for r in responses} == {503}
    assert {r.json()["error"]["code"] for r in responses} == {"unavailable"}
    assert snap.usage == {} and snap.idempotency == {}


def test_replays_of_an_in_flight_key_wait_for_the_first_answer(tmp_path: Path) -> None:
    async def req(c: httpx.AsyncClient, i: int) -> dict[str, Any]:
        body = {"meter": "runs", "amount": 1, "client_id": "c", "idempotency_key": f"k{i % 4}"}
        r = await c.post("/v1/usage", json=body)
        return dict(r.json())

    answers, (snap, _) = asyncio.run(run(tmp_path, req))
    assert snap.usage == {("L1", "runs", "total"): 4}
    firsts = [a for a in answers if not a["replayed"]]
    assert len(firsts) == 4 and all(a["seq"] is not None for a in answers)
    by_seq = {a["seq"] for a in answers}
    assert len(by_seq) == 4
