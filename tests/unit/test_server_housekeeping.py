"""The server's housekeeping loop on an injected clock: culling, heartbeats, a bad round.

The loop runs as an asyncio task of a real :class:`LicenseService` (SQLite state, file
event sink). Its waits are ``support.timing`` stand-ins: each fired wait moves the
service's wall and monotonic clocks by the cull interval, so every round happens at a
known license time. The one real-time culling check is tests/integration/test_server_http.py
(``test_leases_survive_a_restart_and_expire_by_culling``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meterbox.clock import ManualClock
from meterbox.server import FeaturePolicy, FileEventSink, LicensePolicy, LicenseService, StateStore
from meterbox.server._sinks import read_frames
from support.timing import ManualSleeps

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
LEASE_SECONDS = 60
#: The defaults the loop runs with: a cull every 5 s, a heartbeat record every 60 s.
CULL_EVERY = 5.0
HEARTBEAT_EVERY = 60.0
POLICY = LicensePolicy(
    "L1",
    "acme",
    "cad",
    datetime(2025, 1, 1, tzinfo=UTC),
    features={"cad": FeaturePolicy(seats=1, lease_seconds=LEASE_SECONDS)},
)


class Clock(ManualClock):
    """License time for the service, starting at EPOCH, moved only by advance()."""

    def __init__(self) -> None:
        super().__init__(wall_ms=int(EPOCH.timestamp() * 1000), mono_ms=0)

    def advance(self, seconds: float) -> None:  # type: ignore[override]
        super().advance(round(seconds * 1000))


@asynccontextmanager
async def housekeeping(directory: Path) -> AsyncIterator[tuple[LicenseService, ManualSleeps]]:
    """A service with its housekeeping loop running on a manual clock, stopped on exit."""
    clock = Clock()
    sleeps = ManualSleeps(on_fire=clock.advance)
    store = StateStore(directory / "state.db")
    sink = FileEventSink(directory / "events.bin")
    service = LicenseService.open(store, [POLICY], sink, clock=clock, sleep=sleeps)
    task = asyncio.create_task(service.run_housekeeping())
    try:
        yield service, sleeps
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await service.aclose()
        store.close()
        sink.close()


def kinds(directory: Path) -> list[str]:
    return [kind for _, kind, _, _ in read_frames(directory / "events.bin")]


def in_use(service: LicenseService) -> int:
    return int(service.status()["seats_in_use"]["cad"])


def test_unrenewed_lease_is_culled_by_the_first_round_after_it_ends(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with housekeeping(tmp_path) as (service, sleeps):
            await service.checkout("cad", "client-1")
            while sleeps.elapsed < LEASE_SECONDS - CULL_EVERY:
                await sleeps.fire()
            assert in_use(service) == 1  # every round so far ran inside the lease
            assert "seat.expire" not in kinds(tmp_path)
            await sleeps.fire()  # at the lease's end
            await sleeps.fire()  # past it
            assert in_use(service) == 0
            assert service.counters["expiries"] == 1
            assert kinds(tmp_path).count("seat.expire") == 1
            assert sleeps.delays[:13] == [CULL_EVERY] * 13

    asyncio.run(scenario())


def test_heartbeat_record_is_written_once_its_interval_has_passed_on_the_service_clock(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with housekeeping(tmp_path) as (_, sleeps):
            while sleeps.elapsed < HEARTBEAT_EVERY - CULL_EVERY:
                await sleeps.fire()
            assert "heartbeat" not in kinds(tmp_path)
            await sleeps.fire()  # 60 s of service time since the loop started
            assert kinds(tmp_path).count("heartbeat") == 1
            while sleeps.elapsed < 2 * HEARTBEAT_EVERY - CULL_EVERY:
                await sleeps.fire()
            assert kinds(tmp_path).count("heartbeat") == 1
            await sleeps.fire()
            assert kinds(tmp_path).count("heartbeat") == 2

    asyncio.run(scenario())


def test_a_failing_round_leaves_the_loop_running(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with housekeeping(tmp_path) as (service, sleeps):
            await service.checkout("cad", "client-1")
            real_cull: Callable[[], Coroutine[Any, Any, Any]] = service.cull
            calls: list[int] = []

            async def cull_failing_once() -> Any:
                calls.append(1)
                if len(calls) == 1:
                    raise OSError("disk unplugged")
                return await real_cull()

            service.cull = cull_failing_once  # type: ignore[method-assign]
            while sleeps.elapsed < LEASE_SECONDS:
                await sleeps.fire()
            assert len(calls) == LEASE_SECONDS // CULL_EVERY
            await sleeps.fire()  # the loop survived the first round and culls on time
            assert in_use(service) == 0

    asyncio.run(scenario())
