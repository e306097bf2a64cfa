"""Clock consistency checks: each check fires on its tampering and stays quiet on honest clocks."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.ledger import Record, RecordType
from meterbox.vendorkit.clockcheck import ClockCheckConfig, check_records

NOW = 1_768_867_200_000  # vendor clock: 2026-01-20 00:00 UTC
T0 = NOW - 86_400_000  # site records start a day earlier
MIN = 60_000


class Timeline:
    """Builds records with explicit wall and monotonic times."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.wall, self.mono = T0, 1_000

    def add(self, rtype: RecordType, payload: dict[str, Any] | None = None) -> int:
        seq = len(self.records)
        self.records.append(Record(seq, rtype, 0, self.wall, self.mono, payload or {}))
        return seq

    def tick(self, ms: int, rtype: RecordType = RecordType.HEARTBEAT, **payload: Any) -> int:
        self.wall += ms
        self.mono += ms
        return self.add(rtype, payload)

    def boot(self, wall_delta: int, mono: int = 500) -> int:
        self.wall += wall_delta
        self.mono = mono
        return self.add(RecordType.BOOT)


def run(t: Timeline, acked_upto: int = -1, created: int | None = None) -> list[tuple[str, Any]]:
    pairs = [(r, r.seq <= acked_upto) for r in t.records]
    found = check_records(pairs, vendor_now_ms=NOW, created_ms=created)
    return [(f.code, f.seq) for f in found]


def honest() -> Timeline:
    t = Timeline()
    t.add(RecordType.GENESIS)
    for _ in range(10):
        t.tick(MIN)
    return t


def test_honest_timeline_has_no_findings() -> None:
    t = honest()
    t.tick(1000, RecordType.SHUTDOWN)
    t.boot(wall_delta=10 * MIN)  # a reboot: monotonic restarts, wall moves on
    t.tick(MIN)
    assert run(t, created=t.wall + 1000) == []


def test_wall_step_without_clock_step_record() -> None:
    t = honest()
    t.wall -= 6 * MIN  # set back six minutes while running
    seq = t.tick(MIN)
    assert run(t) == [("clock.wall_step", seq)]


def test_wall_step_just_under_threshold_is_tolerated() -> None:
    t = honest()
    t.wall += 5 * MIN
    t.tick(MIN)
    assert run(t) == []


def test_creeping_steps_add_up_to_a_finding() -> None:
    t = honest()
    seqs = []
    for _ in range(4):
        t.wall -= 2 * MIN  # each step alone is below the threshold
        seqs.append(t.tick(MIN))
    assert run(t) == [("clock.wall_step", seqs[2])]


def test_ntp_corrections_of_a_slow_clock_adding_up_are_drift_not_a_step() -> None:
    # A minute a day for six days: each move is NTP-sized and the rate (700 ppm) a
    # clock's own error, so the built-up six minutes are drift (info), not a jump.
    hour = 60 * MIN
    t = honest()
    seqs = []
    for _ in range(6):
        for _ in range(23):
            t.tick(hour)
        t.wall += MIN
        seqs.append(t.tick(hour))
    found = check_records([(r, False) for r in t.records], vendor_now_ms=t.wall + hour)
    assert [(f.code, f.seq, f.severity) for f in found] == [("clock.drift", seqs[5], "info")]


def test_recorded_clock_step_is_reported_once_as_such() -> None:
    t = honest()
    t.wall += 3_600_000
    seq = t.tick(0, RecordType.CLOCK_STEP, d=3_600_000)
    t.tick(MIN)
    assert run(t) == [("clock.step_recorded", seq)]


def test_monotonic_time_going_backwards_inside_one_run() -> None:
    t = honest()
    t.mono -= 10_000
    seq = t.add(RecordType.HEARTBEAT)
    assert ("clock.monotonic_backwards", seq) in run(t)


def test_monotonic_restart_at_a_boot_is_normal() -> None:
    t = honest()
    t.boot(wall_delta=MIN, mono=1)
    t.tick(MIN)
    assert run(t) == []


def test_wall_clock_earlier_after_a_restart() -> None:
    t = honest()
    seq = t.boot(wall_delta=-3_600_000)
    assert run(t) == [("clock.backwards_across_boot", seq)]


def test_small_backwards_across_restart_is_rtc_noise() -> None:
    t = honest()
    t.boot(wall_delta=-30_000)
    assert run(t) == []


def test_records_dated_after_the_vendor_clock() -> None:
    t = honest()
    t.wall = NOW + 10 * MIN
    t.mono += 1  # keep the run consistent except for the absolute time
    t.records.clear()
    seq = t.add(RecordType.GENESIS)
    assert run(t) == [("clock.future_record", seq)]


def test_report_created_in_the_future_or_before_its_records() -> None:
    t = honest()
    assert run(t, created=NOW + 3_600_000) == [("clock.future_report", None)]
    assert run(t, created=t.wall - 3_600_000) == [("clock.report_before_records", None)]


def test_heartbeat_gap_while_seats_are_out() -> None:
    t = honest()
    t.tick(1000, RecordType.SEAT_CHECKOUT, i="L1", f="cad")
    seq = t.tick(4 * MIN)
    assert run(t) == [("heartbeat.gap", seq)]


def test_same_gap_without_seats_is_not_a_finding() -> None:
    t = honest()
    t.tick(1000, RecordType.SEAT_CHECKOUT, i="L1", f="cad")
    t.tick(1000, RecordType.SEAT_RELEASE, i="L1")
    t.tick(10 * MIN)
    assert run(t) == []


def test_acknowledged_records_raise_nothing() -> None:
    t = honest()
    t.wall -= 60 * MIN
    t.tick(MIN)
    assert run(t, acked_upto=len(t.records) - 1) == []


def test_findings_are_capped_per_code() -> None:
    t = honest()
    for _ in range(80):
        t.wall -= 10 * MIN
        t.tick(MIN)
    found = run(t)
    assert len(found) == 51
    assert found[-1] == ("clock.wall_step", None)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * MIN), min_size=1, max_size=40))
def test_property_clocks_that_move_together_raise_nothing(steps: list[int]) -> None:
    t = Timeline()
    t.add(RecordType.GENESIS)
    for ms in steps:
        t.tick(ms)
    assert run(t) == []


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=ClockCheckConfig().max_step_ms + 1, max_value=20 * 60 * MIN),
    st.booleans(),
)
def test_property_any_unrecorded_step_beyond_threshold_is_found(step: int, back: bool) -> None:
    t = honest()  # ends 23 hours before the vendor's clock: no step here reaches the future
    t.wall += -step if back else step
    seq = t.tick(MIN)
    assert ("clock.wall_step", seq) in run(t)
