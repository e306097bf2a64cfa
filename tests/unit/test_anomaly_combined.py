"""Combined evidence: independent kinds of signal in one report escalate together."""

from __future__ import annotations

from meterbox.vendorkit import clockcheck as C
from meterbox.vendorkit.anomaly import ReportView, detect, strands
from meterbox.vendorkit.anomaly import _rules as R
from meterbox.vendorkit.anomaly._combine import FAMILIES, combined
from support.anomaly_events import (
    DAY,
    HOUR,
    MIN,
    TH,
    Builder,
    history,
    stop_and_restart,
    week_with_seats,
)


def _finding(code: str, severity: R.Severity) -> R.Anomaly:
    return R.Anomaly(code, severity, "m", "inst-a")


def _quiet_history() -> list[ReportView]:
    b = Builder()
    return [week_with_seats(b, usage_every=m * MIN) for m in (15, 14, 16, 15)]


def test_every_family_code_is_a_known_code_and_no_code_is_in_two_families() -> None:
    codes = [c for fam in FAMILIES.values() for c in fam]
    assert len(codes) == len(set(codes))
    assert set(codes) <= set(R.CODES)
    assert C.CLOCK_DRIFT not in codes  # honest drift is no clock inconsistency


def test_warnings_of_two_families_are_critical_and_of_one_family_are_not() -> None:
    h = history(_quiet_history())
    two = [_finding(R.LEASE_UNKNOWN, "warning"), _finding(R.DOWNTIME, "warning")]
    (found,) = combined(h, two, TH)
    assert (found.code, found.severity) == (R.COMBINED, "critical")
    assert "Ask the customer" in found.message or "ask the customer" in found.message
    # Two codes of one family (a usage drop seen in total and per meter) are one story.
    one = [_finding(R.USAGE_RATE, "warning"), _finding(R.METER_RATE, "warning")]
    assert combined(h, one, TH) == []
    # Info findings of two families are no warnings of two families.
    weak = [_finding(R.LEASE_UNKNOWN, "info"), _finding(R.DOWNTIME, "info")]
    assert combined(h, weak, TH) == []


def _stop_turn_clock_and_hide(b: Builder, *, every_min: int, clock_ms: int) -> ReportView:
    """An unclean stop with a seat out, a clock step, then a week of lighter usage."""
    b.add("seat.checkout", lease="s1")
    b.run(DAY, seats=1, usage_every=every_min * MIN)
    stop_and_restart(b, 3 * HOUR, clean=False)
    b.add("seat.expire", lease="s1")  # the restarted server culls the lease it restored
    b.add("seat.checkout", lease="s2")
    b.run(HOUR, seats=1, usage_every=every_min * MIN)
    b.wall += clock_ms
    b.add("clock.step", value_ms=clock_ms)
    b.run(6 * DAY, seats=1, usage_every=every_min * MIN)
    b.add("seat.release", lease="s2")
    return b.report(received=b.wall + HOUR)


def test_weak_triple_of_unclean_stop_clock_step_and_usage_drop_is_a_warning() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN, seats=1) for m in (15, 14, 16, 15)]
    # 20-minute usage against a 15-minute history: 26 % lower and 3.0 deviations, below
    # the rule's 30 % and 3.5 deviations.
    now = _stop_turn_clock_and_hide(b, every_min=20, clock_ms=20 * MIN)
    h = history([*past, now])
    found = detect(h, thresholds=TH, use_learned=False)
    by_code = {a.code: a.severity for a in found}
    assert R.USAGE_RATE not in by_code  # no usage finding on its own
    assert by_code[C.CLOCK_STEP_RECORDED] == "info"
    assert by_code[C.HEARTBEAT_UNCLEAN_RESTART] == "info"
    assert by_code[R.COMBINED] == "warning"


def test_a_power_cut_with_an_ntp_step_and_steady_usage_stays_info() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN, seats=1) for m in (15, 14, 16, 15)]
    now = _stop_turn_clock_and_hide(b, every_min=15, clock_ms=20 * MIN)
    found = detect(history([*past, now]), thresholds=TH, use_learned=False)
    assert R.COMBINED not in {a.code for a in found}
    assert {a.severity for a in found} <= {"info"}


def test_a_quiet_week_after_a_clean_shutdown_and_an_ntp_step_stays_info() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN, seats=1) for m in (15, 14, 16, 15)]
    b.run(DAY, usage_every=20 * MIN)
    stop_and_restart(b, 3 * HOUR, clean=True)  # planned: no seat out, SHUTDOWN written
    b.wall += 20 * MIN
    b.add("clock.step", value_ms=20 * MIN)
    now = week_with_seats(b, usage_every=20 * MIN, seats=1)
    found = detect(history([*past, now]), thresholds=TH, use_learned=False)
    assert R.COMBINED not in {a.code for a in found}


def test_the_triple_with_one_strand_already_a_warning_is_critical() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN, seats=1) for m in (15, 14, 16, 15)]
    now = _stop_turn_clock_and_hide(b, every_min=30, clock_ms=20 * MIN)  # half the usage
    found = detect(history([*past, now]), thresholds=TH, use_learned=False)
    by_code = {a.code: a.severity for a in found}
    assert by_code[R.USAGE_RATE] == "warning"
    assert by_code[R.COMBINED] == "critical"


def test_ingest_s_own_clock_and_heartbeat_findings_are_strands_of_combined_evidence() -> None:
    """Ingest runs the clock and heartbeat checks itself (``clock=False`` here); without
    their findings the weak triple has one strand only, with them it is the warning."""
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN, seats=1) for m in (15, 14, 16, 15)]
    now = _stop_turn_clock_and_hide(b, every_min=20, clock_ms=20 * MIN)
    h = history([*past, now])
    alone = detect(h, thresholds=TH, use_learned=False, clock=False)
    assert R.COMBINED not in {a.code for a in alone}
    # What ingest's checks found of this report, as ingest hands them on.
    ingest_found = [
        (C.CLOCK_STEP_RECORDED, "info", "a recorded step", 7),
        (C.HEARTBEAT_UNCLEAN_RESTART, "info", "no shutdown record", 3),
        ("ledger.recovered", "warning", "not a strand", None),
        (C.CLOCK_DRIFT, "info", "honest drift is no strand", None),
    ]
    evidence = strands(ingest_found, "inst-a")
    assert [a.code for a in evidence] == [C.CLOCK_STEP_RECORDED, C.HEARTBEAT_UNCLEAN_RESTART]
    found = detect(h, thresholds=TH, use_learned=False, clock=False, evidence=evidence)
    by_code = {a.code: a.severity for a in found}
    assert by_code[R.COMBINED] == "warning"
    # The strands themselves are not reported a second time.
    assert C.CLOCK_STEP_RECORDED not in by_code and C.HEARTBEAT_UNCLEAN_RESTART not in by_code
    # A strand that is a warning on its own makes the triple critical.
    loud = strands([(C.CLOCK_STEP_RECORDED, "warning", "m", 7), ingest_found[1]], "inst-a")
    found = detect(h, thresholds=TH, use_learned=False, clock=False, evidence=loud)
    assert {a.code: a.severity for a in found}[R.COMBINED] == "critical"


def test_strands_keep_only_family_codes_with_a_known_severity() -> None:
    got = strands(
        [
            (C.CLOCK_STEP_RECORDED, "loud", "unknown severity", 1),
            ("witness.mismatch", "critical", "no family", 2),
            (R.DOWNTIME, "warning", "downtime", 3),
        ],
        "inst-b",
    )
    assert [(a.code, a.severity, a.instance_id, a.seq) for a in got] == [
        (R.DOWNTIME, "warning", "inst-b", 3)
    ]
