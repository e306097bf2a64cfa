"""License clock: never backwards, keeps running when the wall clock is set back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.clock import ManualClock, SystemClock
from meterbox.server._core.clock import LicenseClock

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def test_setting_the_wall_clock_back_does_not_turn_license_time_back() -> None:
    c = LicenseClock(floor=T0)
    assert c.observe(T0 + timedelta(hours=1), 100.0) == T0 + timedelta(hours=1)
    # License time goes on at the monotonic rate from where it was. The step itself
    # is the ledger writer's evidence (tests/integration/test_server_clock_steps.py).
    assert c.observe(T0 - timedelta(days=1), 110.0) == T0 + timedelta(hours=1, seconds=10)


def test_floor_from_a_receipt_raises_license_time() -> None:
    c = LicenseClock(floor=T0)
    c.raise_floor(T0 + timedelta(days=2))
    assert c.observe(T0, 0.0) == T0 + timedelta(days=2)
    c.raise_floor(T0)  # lower floors change nothing
    assert c.floor >= T0 + timedelta(days=2)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(-(10**6), 10**6), st.floats(0, 1000), st.booleans()), max_size=40
    )
)
def test_license_time_never_goes_backwards(steps: list[tuple[int, float, bool]]) -> None:
    c = LicenseClock(floor=T0)
    mono = 0.0
    last = T0
    for wall_offset, dt, floor in steps:
        mono += dt
        if floor:
            c.raise_floor(T0 + timedelta(seconds=wall_offset))
        now = c.observe(T0 + timedelta(seconds=wall_offset), mono)
        assert now >= last
        assert now >= T0 + timedelta(seconds=wall_offset)
        last = now


def test_system_and_manual_clocks_give_aware_utc_now_from_wall_ms() -> None:
    manual = ManualClock(wall_ms=1_767_225_600_123)
    assert manual.now() == datetime(2026, 1, 1, 0, 0, 0, 123_000, tzinfo=UTC)
    manual.step_wall(-86_400_000)
    assert manual.now() == datetime(2025, 12, 31, 0, 0, 0, 123_000, tzinfo=UTC)
    system = SystemClock()
    before = system.wall_ms()
    now = system.now()
    assert now.utcoffset() == timedelta(0)
    # One millisecond of slack for the float round trip through timestamp().
    assert before - 1 <= now.timestamp() * 1000 <= system.wall_ms() + 1
