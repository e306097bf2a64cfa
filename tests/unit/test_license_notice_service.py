"""A license notice in the server shell: recorded before it is answered, taken back whole
when the ledger refuses its record, and its seat removals written only after it.

A real :class:`LicenseService` on a real SQLite state and file sink; a sink wrapper
refuses chosen record kinds, as a full or failing ledger would.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meterbox.clock import ManualClock
from meterbox.errors import LicenseSuspended, UnavailableError
from meterbox.server import FeaturePolicy, FileEventSink, LicensePolicy, LicenseService, StateStore
from meterbox.server._sinks import read_frames

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = LicensePolicy(
    "L1",
    "acme",
    "cad",
    datetime(2025, 1, 1, tzinfo=UTC),
    features={"cad": FeaturePolicy(seats=2, lease_seconds=60)},
)


class Refusing:
    """The file sink, but records of the kinds in ``refuse`` fail as a broken disk would."""

    def __init__(self, inner: FileEventSink) -> None:
        self.inner = inner
        self.refuse: set[str] = set()

    async def record(self, kind: str, payload: dict[str, Any]) -> int:
        if kind in self.refuse:
            raise OSError(28, "No space left on device")
        return await self.inner.record(kind, payload)


def run(directory: Path, body: Any) -> None:
    async def main() -> None:
        clock = ManualClock(wall_ms=int(EPOCH.timestamp() * 1000), mono_ms=0)
        store = StateStore(directory / "state.db")
        inner = FileEventSink(directory / "events.bin")
        sink = Refusing(inner)
        service = LicenseService.open(store, [POLICY], sink, clock=clock)
        try:
            await body(service, sink)
        finally:
            await service.aclose()
            store.close()
            inner.close()

    asyncio.run(main())


def kinds(directory: Path) -> list[str]:
    return [kind for _, kind, _, _ in read_frames(directory / "events.bin")]


def test_a_refused_notice_record_takes_the_whole_notice_back(tmp_path: Path) -> None:
    async def body(service: LicenseService, sink: Refusing) -> None:
        held = await service.checkout("cad", "ws1")
        sink.refuse = {"license.suspended"}
        with pytest.raises(UnavailableError):
            await service.import_notice(
                license_id="L1", notice_id="n1", action="suspend", sequence=1, reason="unpaid"
            )
        # Nothing changed: no standing, the lease is live and renews.
        assert service.engine.standings == {}
        renewed = await service.heartbeat(held.lease.lease_id)
        assert renewed.lease.lease_id == held.lease.lease_id
        # The same notice, once the ledger works again, applies (it was never applied).
        sink.refuse = set()
        standing, removals = await service.import_notice(
            license_id="L1", notice_id="n1", action="suspend", sequence=1, reason="unpaid"
        )
        assert standing.status == "suspended" and [r.lease.lease_id for r in removals] == [
            held.lease.lease_id
        ]
        with pytest.raises(LicenseSuspended, match="unpaid"):
            await service.heartbeat(held.lease.lease_id)

    run(tmp_path, body)
    written = kinds(tmp_path)
    # No removal before its notice, and none for the refused attempt.
    assert written.count("seat.removed") == 1
    assert written.index("license.suspended") < written.index("seat.removed")
