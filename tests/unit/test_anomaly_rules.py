"""Every rule detector: one case that must fire and one that must not."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.vendorkit import clockcheck as C
from meterbox.vendorkit.anomaly import (
    CODES,
    RENAMED,
    InstanceHistory,
    ReportView,
)
from meterbox.vendorkit.anomaly import _rules as R
from support.anomaly_events import (
    DAY,
    HOUR,
    MIN,
    T0,
    TH,
    Builder,
    history,
    stop_and_restart,
    week_with_seats,
)


def codes(found: list[R.Anomaly]) -> set[str]:
    return {a.code for a in found}


# ------------------------------------------------------------ heartbeat gaps
# Clock and heartbeat evidence comes from clockcheck, the checks ingest runs; these
# tests pin that the detectors feed it the stored history the same way.
def test_silence_of_a_running_server_is_a_heartbeat_gap() -> None:
    b = Builder()
    b.add("seat.checkout", lease="x")
    b.run(2 * HOUR, seats=1)
    b.tick(3 * HOUR)  # nothing written for three hours, same boot
    b.add("heartbeat", in_use=1)
    found = R.clock_checks(history([b.report()]), TH)
    assert codes(found) == {C.HEARTBEAT_GAP}
    assert "3h" in found[0].message


def test_clean_shutdown_and_steady_heartbeats_are_not_gaps() -> None:
    b = Builder()
    b.add("seat.checkout", lease="x")
    b.run(2 * HOUR, seats=1)
    b.add("shutdown")
    b.tick(5 * HOUR)
    b.mono = 1_000
    b.add("boot")
    b.run(HOUR, seats=0)
    assert R.clock_checks(history([b.report()]), TH) == []


def test_restart_without_shutdown_while_seats_are_out_is_unclean_restart() -> None:
    b = Builder()
    b.add("seat.checkout", lease="x")
    b.run(HOUR, seats=1)
    b.tick(2 * DAY)
    b.mono = 1_000
    b.add("boot")
    assert codes(R.clock_checks(history([b.report()]), TH)) == {C.HEARTBEAT_UNCLEAN_RESTART}


def test_short_crash_or_crash_with_no_seats_is_not_unclean_restart() -> None:
    b = Builder()
    b.run(HOUR)
    b.tick(2 * DAY)
    b.mono = 1_000
    b.add("boot")
    b.add("seat.checkout", lease="x")
    b.tick(5 * MIN)
    b.mono = 1_000
    b.add("boot")
    assert R.clock_checks(history([b.report()]), TH) == []


def test_gap_across_the_report_boundary_is_seen() -> None:
    b = Builder()
    b.add("seat.checkout", lease="x")
    b.run(HOUR, seats=1)
    first = b.report()
    b.tick(4 * HOUR)
    b.add("heartbeat", in_use=1)
    assert codes(R.clock_checks(history([first, b.report()]), TH)) == {C.HEARTBEAT_GAP}


def test_earlier_reports_are_context_and_raise_nothing_again() -> None:
    b = Builder()
    b.add("seat.checkout", lease="x")
    b.run(HOUR, seats=1)
    b.tick(4 * HOUR)  # a gap inside the first, already judged report
    b.add("heartbeat", in_use=1)
    first = b.report()
    b.run(HOUR, seats=1)
    assert R.clock_checks(history([first, b.report()]), TH) == []


# ------------------------------------------------------------- usage stopped
def test_seats_out_without_usage_for_a_day_is_usage_stopped() -> None:
    b = Builder()
    past = [week_with_seats(b) for _ in range(3)]
    b.add("seat.checkout", lease="y")
    b.add("seat.checkout", lease="z")
    b.run(DAY, seats=2)  # heartbeats only
    b.run(6 * DAY, seats=2, usage_every=15 * MIN)
    found = R.usage_stopped(history([*past, b.report()]), TH)
    assert codes(found) == {R.USAGE_STOPPED}


def test_usage_flowing_with_seats_out_is_not_usage_stopped() -> None:
    b = Builder()
    reports = [week_with_seats(b) for _ in range(4)]
    assert R.usage_stopped(history(reports), TH) == []


def test_usage_stopped_needs_history() -> None:
    b = Builder()
    b.add("seat.checkout", lease="y")
    b.run(3 * DAY, seats=1)
    assert R.usage_stopped(history([b.report()]), TH) == []


# --------------------------------------------------------------- clock steps
def test_recorded_clock_step_back_is_reported() -> None:
    b = Builder()
    b.run(HOUR)
    b.wall -= 3 * DAY
    b.add("clock.step", value_ms=-3 * DAY)
    found = R.clock_checks(history([b.report(received=T0 + 2 * HOUR, created=T0 + 2 * HOUR)]), TH)
    assert codes(found) == {C.CLOCK_STEP_RECORDED}
    assert "back by 3d" in found[0].message


def test_no_clock_step_record_no_clock_step_finding() -> None:
    b = Builder()
    b.run(HOUR)
    b.wall += 2 * MIN  # under the 5-minute threshold: NTP slew territory
    b.run(HOUR)
    assert R.clock_checks(history([b.report()]), TH) == []


def test_wall_and_monotonic_drifting_apart_without_step_record_is_a_wall_step() -> None:
    b = Builder()
    b.run(HOUR)
    b.wall += 2 * HOUR  # wall moved, monotonic did not, and nothing recorded it
    b.add("heartbeat")
    assert codes(R.clock_checks(history([b.report()]), TH)) == {C.CLOCK_WALL_STEP}


def test_divergence_explained_by_a_step_record_or_a_boot_is_not_a_wall_step() -> None:
    b = Builder()
    b.run(HOUR)
    b.wall += 2 * HOUR
    b.add("clock.step", value_ms=2 * HOUR)
    b.run(HOUR)
    b.add("shutdown")
    b.wall += DAY
    b.mono = 1_000
    b.add("boot")
    b.run(HOUR)
    assert codes(R.clock_checks(history([b.report()]), TH)) == {C.CLOCK_STEP_RECORDED}


def test_monotonic_time_going_back_without_a_boot_is_reported() -> None:
    b = Builder()
    b.run(HOUR)
    b.mono -= 10 * MIN
    b.add("heartbeat")
    assert C.CLOCK_MONOTONIC_BACKWARDS in codes(R.clock_checks(history([b.report()]), TH))


def test_restart_with_clock_behind_the_last_record_is_backwards_across_boot() -> None:
    b = Builder()
    b.run(DAY)
    first = b.report()
    b.add("shutdown")
    b.wall -= 10 * DAY
    b.mono = 1_000
    b.add("boot")
    real = T0 + DAY + HOUR  # the vendor's clock, and the time the export was really made
    found = R.clock_checks(history([first, b.report(received=real, created=real)]), TH)
    assert codes(found) == {C.CLOCK_BACKWARDS_ACROSS_BOOT}


def test_restart_with_clock_later_than_before_is_fine() -> None:
    b = Builder()
    b.run(DAY)
    b.add("shutdown")
    b.wall += HOUR
    b.mono = 1_000
    b.add("boot")
    assert R.clock_checks(history([b.report()]), TH) == []


def test_report_dated_after_the_vendor_received_it_is_in_the_future() -> None:
    b = Builder()
    b.run(HOUR)
    report = b.report(received=b.wall - 2 * DAY)
    found = codes(R.clock_checks(history([report]), TH))
    assert {C.CLOCK_FUTURE_RECORD, C.CLOCK_FUTURE_REPORT} <= found


def test_records_older_than_an_imported_receipt_are_before_the_receipt() -> None:
    b = Builder()
    b.run(HOUR)
    vendor_time = b.wall + 5 * DAY  # the receipt says the vendor saw day 5 ...
    b.add("receipt.imported", value_ms=vendor_time)  # ... but the local clock says day 0
    assert codes(R.clock_checks(history([b.report()]), TH)) == {C.CLOCK_BEFORE_RECEIPT}


def test_times_consistent_with_the_vendor_are_fine() -> None:
    b = Builder()
    b.run(HOUR)
    b.add("receipt.imported", value_ms=b.wall - HOUR)
    b.run(HOUR)
    assert R.clock_checks(history([b.report()]), TH) == []


def test_clock_codes_of_earlier_releases_still_explain_themselves() -> None:
    for old, new in RENAMED.items():
        assert old.startswith("anomaly.")
        assert new in C.CODES
        assert new in CODES[old]
    assert set(C.CODES) <= set(CODES)


# ------------------------------------------------------------- lost checkouts
def test_release_of_a_lease_never_checked_out_is_a_lost_checkout() -> None:
    b = Builder()
    b.add("seat.checkout", lease="a")
    b.run(HOUR, seats=1)
    first = b.report()
    b.add("seat.release", lease="a")
    b.add("seat.release", lease="ghost")  # checked out in records a restore erased
    found = R.lease_unknown(history([first, b.report()]), TH)
    assert codes(found) == {R.LEASE_UNKNOWN}
    assert "'ghost'" in found[0].message


def test_release_of_a_lease_from_an_earlier_report_or_window_is_fine() -> None:
    b = Builder()
    b.add("seat.checkout", lease="a")
    b.run(HOUR, seats=1)
    first = b.report()
    b.add("seat.release", lease="a")
    b.add("seat.expire", lease="before-window")
    h = history([first, b.report()])
    bounded = InstanceHistory(
        h.instance_id, h.license_id, h.customer, None, 0, h.reports, frozenset({"before-window"})
    )
    assert R.lease_unknown(bounded, TH) == []


# ------------------------------------------------------------- report timing
def test_report_after_the_interval_is_late() -> None:
    b = Builder()
    b.run(HOUR)
    first = b.report()
    b.run(10 * DAY)
    found = R.report_late(history([first, b.report()], every=7 * DAY), TH)
    assert codes(found) == {R.REPORT_LATE}


def test_report_within_the_interval_is_not_late_nor_without_an_interval() -> None:
    b = Builder()
    b.run(HOUR)
    first = b.report()
    b.run(6 * DAY)
    second = b.report()
    assert R.report_late(history([first, second], every=7 * DAY), TH) == []
    assert R.report_late(history([first, second]), TH) == []


# ----------------------------------------------------------------- usage rate
def test_half_the_usage_per_seat_hour_is_out_of_line() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN) for m in (15, 14, 16, 15)]
    now = week_with_seats(b, usage_every=30 * MIN)
    found = R.usage_rate(history([*past, now]), TH)
    assert codes(found) == {R.USAGE_RATE}
    assert "lower" in found[0].message


def test_usage_rate_within_history_is_fine() -> None:
    b = Builder()
    reports = [week_with_seats(b, usage_every=m * MIN) for m in (15, 14, 16, 15, 16)]
    assert R.usage_rate(history(reports), TH) == []


def test_usage_rate_doubling_is_not_under_reporting() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN) for m in (15, 14, 16, 15)]
    now = week_with_seats(b, usage_every=7 * MIN)
    assert R.usage_rate(history([*past, now]), TH) == []


def test_usage_rate_small_drop_on_a_flat_history_is_within_the_floor() -> None:
    # Flat history has almost no spread, so a 14 % drop is many deviations out; the
    # relative floor keeps such a customer from being flagged for ordinary variation.
    b = Builder()
    past = [week_with_seats(b, usage_every=15 * MIN) for _ in range(8)]
    now = week_with_seats(b, usage_every=int(17.5 * MIN))
    assert R.usage_rate(history([*past, now]), TH) == []
    # A month of it is no different: the floor holds over a span of reports too.
    month = [*past, now, *(week_with_seats(b, usage_every=int(17.5 * MIN)) for _ in range(3))]
    assert R.usage_rate(history(month), TH) == []


def month_with_seats(b: Builder, *, usage_every: int, seats: int = 2) -> ReportView:
    """Four weeks in one report (a monthly reporter), leases open throughout."""
    for i in range(seats):
        b.add("seat.checkout", lease=f"m{b.seq}-{i}")
    b.run(28 * DAY, seats=seats, usage_every=usage_every)
    for lease in [e.lease for e in b.events if e.kind == "seat.checkout"]:
        b.add("seat.release", lease=lease)
    return b.report()


#: Weeks of honest history that swing by about 8 %, as the generator's sites do.
SWINGING = (15.0, 13.8, 16.2, 15.0, 14.0, 16.5, 15.3, 13.9)


def test_a_week_of_30_percent_less_is_within_an_honest_swing() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=int(m * MIN)) for m in SWINGING]
    now = week_with_seats(b, usage_every=int(15 / 0.7 * MIN))
    assert R.usage_rate(history([*past, now]), TH) == []


def test_a_month_of_30_percent_less_is_out_of_line_for_a_monthly_reporter() -> None:
    # The same drop over one monthly report: a month's average drifts less than a
    # week's, so the span is judged with the drift of a span of its length.
    b = Builder()
    past = [week_with_seats(b, usage_every=int(m * MIN)) for m in SWINGING]
    month = month_with_seats(b, usage_every=int(15 / 0.7 * MIN))
    found = R.usage_rate(history([*past, month]), TH)
    assert codes(found) == {R.USAGE_RATE}
    assert "over the last" not in found[0].message


def test_four_weekly_reports_of_30_percent_less_are_out_of_line_together() -> None:
    # Patched clients stay patched: the weekly reporter's month of reports is judged
    # as one span once it has them, and the finding says so.
    b = Builder()
    past = [week_with_seats(b, usage_every=int(m * MIN)) for m in SWINGING]
    low = [week_with_seats(b, usage_every=int(15 / 0.7 * MIN)) for _ in range(4)]
    assert R.usage_rate(history([*past, low[0]]), TH) == []
    spans = [R.usage_rate(history([*past, *low[:n]]), TH) for n in range(2, 5)]
    found = next(f for f in spans if f)
    assert codes(found) == {R.USAGE_RATE}
    assert "over the last" in found[0].message
    # Once out of line, every later report of the month stays so.
    assert all(spans[spans.index(found) :])


def test_a_month_of_22_percent_less_is_out_of_line_though_no_week_of_it_is() -> None:
    # ADR 0041: a span of two slices or more is judged at rate_span_z (2.5), a single
    # week at rate_z (3.0). Four weeks of 22 % less on the swinging history are about
    # 2.9 deviations together, 2.0 a week.
    b = Builder()
    past = [week_with_seats(b, usage_every=int(m * MIN)) for m in SWINGING]
    low = [week_with_seats(b, usage_every=int(15 / 0.78 * MIN)) for _ in range(4)]
    assert R.usage_rate(history([*past, low[0]]), TH) == []
    found = R.usage_rate(history([*past, *low]), TH)
    assert codes(found) == {R.USAGE_RATE}
    assert "over the last" in found[0].message
    assert 2.5 <= -found[0].score < 3.0
    # The span's threshold is what finds it: at the single week's, the month is quiet.
    strict = replace(TH, rate_span_z=TH.rate_z)
    assert R.usage_rate(history([*past, *low]), strict) == []


def test_span_scores_are_what_usage_rate_judges() -> None:
    # usage_rate_spans scores each span whatever its size (what calibration reads);
    # usage_rate finds a drop exactly when a span passes its own threshold and the floor.
    seen = set()
    for f in (0.1, 0.22, 0.3, 0.5):
        b = Builder()
        past = [week_with_seats(b, usage_every=int(m * MIN)) for m in SWINGING]
        low = [week_with_seats(b, usage_every=int(15 / (1 - f) * MIN)) for _ in range(4)]
        for n in range(1, 5):
            h = history([*past, *low[:n]])
            spans = R.usage_rate_spans(h, TH)
            assert [s.reports for s in spans] == [1, 2, 3, 4]
            for s in spans:
                assert s.z_limit == (TH.rate_z if s.reports == 1 else TH.rate_span_z)
                assert s.floor == (TH.rate_week_floor if s.reports == 1 else TH.rate_floor)
            out = any(s.z <= -s.z_limit and s.drop >= s.floor for s in spans)
            assert bool(R.usage_rate(h, TH)) == out, (f, n, spans)
            seen.add(out)
    assert seen == {True, False}


def test_a_single_week_between_the_span_and_the_week_thresholds_is_quiet() -> None:
    # 27 % less for one week is about 2.5 deviations: beyond a span's threshold, within
    # a week's, since honest dips (a quiet or half-empty week) last a week.
    b = Builder()
    past = [week_with_seats(b, usage_every=int(m * MIN)) for m in SWINGING]
    now = week_with_seats(b, usage_every=int(15 / 0.73 * MIN))
    assert R.usage_rate(history([*past, now]), TH) == []
    loose = replace(TH, rate_z=TH.rate_span_z, rate_week_floor=TH.rate_floor)
    assert codes(R.usage_rate(history([*past, now]), loose)) == {R.USAGE_RATE}


#: Weeks of honest history that swing by about 2 %: a round-the-clock site whose
#: weekly drift is most of its deviations.
STEADY = (15.0, 15.4, 14.6, 15.2, 14.8, 15.1, 14.9, 15.0)


def test_a_single_week_far_out_but_less_than_the_week_floor_waits_for_the_next() -> None:
    # ADR 0045: 30 % less for one week on a steady site is five deviations out, and an
    # honest week of such a site dipped that far in the simulation and was back the
    # week after. A single week needs rate_week_floor (40 %); if the drop lasts, the
    # next report's span finds it.
    b = Builder()
    past = [week_with_seats(b, usage_every=int(m * MIN)) for m in STEADY]
    low = [week_with_seats(b, usage_every=int(15 / 0.7 * MIN)) for _ in range(2)]
    (week,) = [s for s in R.usage_rate_spans(history([*past, low[0]]), TH) if s.reports == 1]
    assert week.z <= -TH.rate_z and TH.rate_floor <= week.drop < TH.rate_week_floor
    assert R.usage_rate(history([*past, low[0]]), TH) == []
    found = R.usage_rate(history([*past, *low]), TH)
    assert codes(found) == {R.USAGE_RATE}
    assert "over the last 2 reports" in found[0].message
    # The week alone at the span's floor would have been a finding.
    old = replace(TH, rate_week_floor=TH.rate_floor)
    assert codes(R.usage_rate(history([*past, low[0]]), old)) == {R.USAGE_RATE}


def test_a_single_week_of_half_the_usage_is_found_at_once() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=int(m * MIN)) for m in STEADY]
    now = week_with_seats(b, usage_every=int(15 / 0.5 * MIN))
    found = R.usage_rate(history([*past, now]), TH)
    assert codes(found) == {R.USAGE_RATE}
    assert "over the last" not in found[0].message


def test_a_span_ending_in_an_honest_week_after_a_low_one_is_not_a_drop() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=int(m * MIN)) for m in SWINGING]
    low = week_with_seats(b, usage_every=int(15 / 0.8 * MIN))
    back = [week_with_seats(b, usage_every=int(m * MIN)) for m in (15.0, 14.5, 15.5)]
    for n in range(1, 4):
        assert R.usage_rate(history([*past, low, *back[:n]]), TH) == [], n


def test_usage_rate_half_drop_against_a_noisy_history_is_not_flagged() -> None:
    # Week-to-week swings of +-40 % make a 50 % drop unremarkable.
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN) for m in (10, 22, 13, 25, 11, 20)]
    now = week_with_seats(b, usage_every=30 * MIN)
    assert R.usage_rate(history([*past, now]), TH) == []


def test_seats_out_all_week_with_no_usage_is_out_of_line() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN) for m in (15, 14, 16, 15)]
    now = week_with_seats(b, usage_every=8 * DAY)
    found = R.usage_rate(history([*past, now]), TH)
    assert codes(found) == {R.USAGE_RATE}
    assert "100% lower" in found[0].message


def test_usage_rate_needs_enough_seat_hours_in_the_judged_report() -> None:
    b = Builder()
    past = [week_with_seats(b, usage_every=m * MIN) for m in (15, 14, 16, 15)]
    b.add("seat.checkout", lease="short")
    b.run(10 * HOUR, seats=1, usage_every=60 * MIN)
    b.add("seat.release", lease="short")
    few = b.report()
    assert R.usage_rate(history([*past, few]), TH) == []
    # The same drop over a whole week of two seats is judged.
    slow = week_with_seats(b, usage_every=60 * MIN)
    assert codes(R.usage_rate(history([*past, slow]), TH)) == {R.USAGE_RATE}


# ---------------------------------------------------------------------- clones
def test_second_instance_reporting_at_the_same_time_is_a_clone() -> None:
    a, c = Builder(), Builder()
    a.run(DAY)
    c.run(DAY)
    mine = history([a.report()])
    other = InstanceHistory("inst-b", "lic-1", "acme", None, 0, (c.report(),))
    assert codes(R.clones(mine, [other], TH)) == {R.CLONE}


def test_instance_of_another_license_or_an_earlier_replaced_server_is_no_clone() -> None:
    old, new = Builder(), Builder()
    old.run(DAY)
    old_h = InstanceHistory("inst-old", "lic-1", "acme", None, 0, (old.report(),))
    new.wall += 10 * DAY
    new.run(DAY)
    mine = history([new.report()])
    other_license = InstanceHistory("inst-c", "lic-2", "acme", None, 0, mine.reports)
    assert R.clones(mine, [old_h, other_license], TH) == []


def test_run_rules_collects_every_rule_and_is_quiet_on_a_steady_history() -> None:
    b = Builder()
    reports = [week_with_seats(b) for _ in range(5)]
    assert R.run_rules(history(reports, every=7 * DAY), th=TH) == []


# -------------------------------------------------------------------- downtime
def test_unclean_stop_with_seats_out_for_a_working_day_is_a_downtime_warning() -> None:
    b = Builder()
    past = [week_with_seats(b) for _ in range(3)]
    b.add("seat.checkout", lease="y")
    b.run(DAY, seats=1, usage_every=15 * MIN)
    stop_and_restart(b, 30 * HOUR, clean=False)
    b.run(2 * DAY, seats=1, usage_every=15 * MIN)
    found = R.downtime(history([*past, b.report()]), TH)
    assert [(a.code, a.severity) for a in found] == [(R.DOWNTIME, "warning")]
    assert "Ask the customer" in found[0].message


def test_planned_stop_is_at_most_info_and_a_short_power_cut_is_not_a_warning() -> None:
    b = Builder()
    past = [week_with_seats(b) for _ in range(3)]
    b.run(DAY, usage_every=15 * MIN)
    stop_and_restart(b, 2 * DAY, clean=True)  # shut down cleanly, no seat out
    b.add("seat.checkout", lease="y")
    b.run(DAY, seats=1, usage_every=15 * MIN)
    stop_and_restart(b, 2 * HOUR, clean=False)  # a power cut with a seat out
    b.run(DAY, seats=1, usage_every=15 * MIN)
    found = R.downtime(history([*past, b.report()]), TH)
    assert found and {a.severity for a in found} == {"info"}


def test_server_killed_in_the_afternoon_and_back_at_night_is_a_downtime_warning() -> None:
    # Three working hours lost: no more than a long power cut costs, but the server was
    # left down for twelve hours; users who cannot work get an honest crash fixed.
    b = Builder()
    past = [working_week(b) for _ in range(3)]
    b.run(DAY + 13 * HOUR)  # Tuesday 13:00 (T0 is a Monday 00:00)
    b.add("seat.checkout", lease="y")
    b.run(HOUR, seats=1, usage_every=15 * MIN)
    stop_and_restart(b, 12 * HOUR, clean=False)  # killed at 14:00, back at 02:00
    b.run(2 * DAY, seats=1, usage_every=15 * MIN)
    found = R.downtime(history([*past, b.report()]), TH)
    assert [(a.code, a.severity) for a in found] == [(R.DOWNTIME, "warning")]
    assert "why it stayed down" in found[0].message
    assert 0.25 <= (found[0].score or 0) < TH.downtime_warn_days


def test_power_cut_of_three_working_hours_and_a_friday_night_crash_stay_info() -> None:
    b = Builder()
    past = [working_week(b) for _ in range(3)]
    b.run(DAY + 10 * HOUR)
    b.add("seat.checkout", lease="y")
    b.run(HOUR, seats=1, usage_every=15 * MIN)
    stop_and_restart(b, 3 * HOUR, clean=False)  # a power cut, 11:00 to 14:00
    b.run(3 * DAY + 2 * HOUR, seats=1, usage_every=15 * MIN)  # to Friday 16:00
    stop_and_restart(b, 64 * HOUR, clean=False)  # crashed, found on Monday 08:00
    b.run(DAY, seats=1, usage_every=15 * MIN)
    found = R.downtime(history([*past, b.report()]), TH)
    assert found and {a.severity for a in found} == {"info"}, [a.message for a in found]


def working_week(b: Builder) -> ReportView:
    """A week of an office site: a seat and usage from 08:00 to 17:00 on weekdays."""
    for _day in range(5):
        b.run(8 * HOUR)
        lease = b.add("seat.checkout", lease=f"d{b.seq}").lease
        b.run(9 * HOUR, seats=1, usage_every=15 * MIN)
        b.add("seat.release", lease=lease)
        b.run(7 * HOUR)
    b.run(2 * DAY)
    return b.report()


def test_downtime_needs_two_weeks_of_history() -> None:
    b = Builder()
    past = [week_with_seats(b)]
    b.add("seat.checkout", lease="y")
    b.run(HOUR, seats=1, usage_every=15 * MIN)
    stop_and_restart(b, 3 * DAY, clean=False)
    assert R.downtime(history([*past, b.report()]), TH) == []


# ---------------------------------------------------------------- before issue
def test_records_dated_before_the_license_was_issued_are_a_warning() -> None:
    b = Builder()
    b.run(DAY)
    report = b.report()
    issued_later = InstanceHistory(
        "inst-a", "lic-1", "acme", None, 0, (report,), license_issued_ms=T0 + 30 * DAY
    )
    assert codes(R.before_issue(issued_later, TH)) == {R.BEFORE_ISSUE}
    issued_before = InstanceHistory(
        "inst-a", "lic-1", "acme", None, 0, (report,), license_issued_ms=T0 - DAY
    )
    assert R.before_issue(issued_before, TH) == []
    assert R.before_issue(history([report]), TH) == []  # issue date unknown: silent


# ------------------------------------------------------------------ per meter
def metered_week(b: Builder, meters: dict[str, int]) -> ReportView:
    """Two seats a week; every 15 minutes one record per meter of the given amount."""
    b.add("seat.checkout", lease=f"m{b.seq}")
    lease = b.events[-1].lease
    end = b.wall + 7 * DAY
    while b.wall < end:
        b.tick(15 * MIN)
        for m, amount in meters.items():
            if amount:
                b.add("usage", amount=amount, meter=m)
        b.add("heartbeat", in_use=1)
    b.add("seat.release", lease=lease)
    return b.report()


def test_a_small_meter_that_stops_while_the_big_one_goes_on_is_a_meter_rate_finding() -> None:
    b = Builder()
    past = [metered_week(b, {"solve": 20, "export": 1}) for _ in range(4)]
    now = metered_week(b, {"solve": 20, "export": 0})
    found = R.usage_rate(history([*past, now]), TH)
    # The total barely moves (1 unit in 21); the meter of its own is gone.
    assert codes(found) == {R.METER_RATE}
    assert "'export'" in found[0].message


def test_every_meter_steady_gives_no_meter_finding() -> None:
    b = Builder()
    reports = [metered_week(b, {"solve": 20, "export": 1}) for _ in range(5)]
    assert R.usage_rate(history(reports), TH) == []


def test_one_meter_at_half_while_the_other_goes_on_is_a_meter_mix_finding() -> None:
    b = Builder()
    past = [metered_week(b, {"solve": 20, "export": 4}) for _ in range(4)]
    now = metered_week(b, {"solve": 10, "export": 4})
    found = R.meter_mix(history([*past, now]), TH)
    assert [(a.code, a.severity) for a in found] == [(R.METER_MIX, "warning")]
    assert "'solve'" in found[0].message and "Ask the customer" in found[0].message


@settings(max_examples=15, deadline=None)
@given(scale=st.sampled_from([0.25, 0.5, 0.8, 1.0, 1.5, 3.0]))
def test_every_meter_moving_together_is_no_meter_mix_finding(scale: float) -> None:
    """Less (or more) work of every kind keeps each meter's share: no mix finding."""
    b = Builder()
    past = [metered_week(b, {"solve": 20, "export": 4}) for _ in range(4)]
    now = metered_week(b, {"solve": round(20 * scale), "export": round(4 * scale)})
    assert R.meter_mix(history([*past, now]), TH) == []


def test_meter_mix_needs_two_meters_and_history() -> None:
    b = Builder()
    one = [metered_week(b, {"solve": 20}) for _ in range(4)]
    assert R.meter_mix(history([*one, metered_week(b, {"solve": 10})]), TH) == []
    b = Builder()
    short = [metered_week(b, {"solve": 20, "export": 4}) for _ in range(2)]
    assert R.meter_mix(history([*short, metered_week(b, {"solve": 10, "export": 4})]), TH) == []


# ----------------------------------------------------------- clock severities
def test_ntp_sized_clock_step_is_info_and_a_day_is_a_warning() -> None:
    for step, severity in ((10 * MIN, "info"), (-DAY, "warning")):
        b = Builder()
        b.run(HOUR)
        b.wall += step
        b.add("clock.step", value_ms=step)
        b.run(HOUR)
        found = R.clock_checks(history([b.report(received=b.wall + DAY + HOUR)]), TH)
        steps = [a.severity for a in found if a.code == C.CLOCK_STEP_RECORDED]
        assert steps == [severity]


def test_heartbeat_gap_alone_is_info() -> None:
    b = Builder()
    b.add("seat.checkout", lease="x")
    b.run(HOUR, seats=1)
    b.tick(3 * HOUR)
    b.add("heartbeat", in_use=1)
    found = R.clock_checks(history([b.report()]), TH)
    assert [(a.code, a.severity) for a in found] == [(C.HEARTBEAT_GAP, "info")]


def test_repeated_clock_findings_are_one_finding_with_a_count() -> None:
    b = Builder()
    b.run(HOUR)
    b.wall += 3 * DAY  # ahead of the vendor from here on, and no step record
    for _ in range(5):
        b.tick(MIN)
        b.add("heartbeat")
    found = R.clock_checks(history([b.report(received=T0 + 2 * HOUR, created=T0 + 2 * HOUR)]), TH)
    future = [a for a in found if a.code == C.CLOCK_FUTURE_RECORD]
    assert len(future) == 1
    assert "(5 records in all)" in future[0].message
    assert future[0].severity == "warning"
