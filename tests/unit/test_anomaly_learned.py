"""The learned detector: quiet on a steady customer, loud on a day unlike every other."""

from __future__ import annotations

from dataclasses import replace

from meterbox.vendorkit.anomaly import Event, InstanceHistory, ReportView
from meterbox.vendorkit.anomaly._features import robust_z
from meterbox.vendorkit.anomaly._learned import FEATURES, day_features, feature_floor, learned

T0 = 1_767_571_200_000
HOUR = 3_600_000
DAY = 24 * HOUR


def week(start_seq: int, start: int, *, units: int = 5, dead_day: int | None = None) -> ReportView:
    """Office hours 9-17 with one seat and a usage record every hour; heartbeats hourly."""
    evs: list[Event] = []
    seq = start_seq
    for d in range(7):
        for h in range(24):
            t = start + d * DAY + h * HOUR
            if h == 9:
                evs.append(Event(seq, "seat.checkout", t, lease=f"l{seq}"))
                seq += 1
            if 9 <= h < 17 and d != dead_day:
                evs.append(Event(seq, "usage", t + 60_000, amount=units + (h % 3)))
                seq += 1
            if h == 17:
                lease = next(e.lease for e in reversed(evs) if e.kind == "seat.checkout")
                evs.append(Event(seq, "seat.release", t, lease=lease))
                seq += 1
            evs.append(Event(seq, "heartbeat", t + 120_000, in_use=int(9 <= h < 17)))
            seq += 1
    return ReportView(
        f"w{start_seq}", evs[-1].wall_ms, evs[-1].wall_ms, start_seq, seq - 1, tuple(evs)
    )


def history(dead_day: int | None) -> InstanceHistory:
    reports, seq = [], 0
    for w in range(4):
        r = week(seq, T0 + w * 7 * DAY, dead_day=dead_day if w == 3 else None)
        reports.append(r)
        seq = r.head_seq + 1
    return InstanceHistory("i", "l", "c", None, 0, tuple(reports))


def test_day_features_have_one_value_per_feature_for_each_complete_day() -> None:
    feats = day_features(list(week(0, T0).events))
    assert len(feats) == 5  # the day of the first record and the last are not complete
    assert all(len(v) == len(FEATURES) for v in feats.values())


def test_steady_customer_gives_no_learned_finding() -> None:
    assert learned(history(None)) == []


def test_working_day_with_seats_and_no_usage_is_flagged_with_its_drivers() -> None:
    found = learned(history(dead_day=2))
    assert len(found) == 1
    names = [name for name, _ in found[0].drivers]
    assert names[0] in ("log_units", "log_units_vs_season", "busy_hours_without_usage")


def test_one_restart_on_a_history_without_restarts_is_one_standard_deviation() -> None:
    never = [0.0] * 30
    assert robust_z(1.0, never, feature_floor("boots", never)) == 1.0
    # A volume feature that never varied still gets an honest spread, not 1e-9.
    flat = [3.0] * 30
    assert abs(robust_z(2.5, flat, feature_floor("log_units", flat))) == 2.0


def test_a_day_with_one_restart_is_not_a_learned_finding() -> None:
    h = history(None)
    last = h.reports[-1]
    mid = last.events[len(last.events) // 2]
    boot = Event(mid.seq, "boot", mid.wall_ms, 1_000)
    events = tuple(boot if e.seq == mid.seq else e for e in last.events)
    restarted = InstanceHistory(
        "i", "l", "c", None, 0, (*h.reports[:-1], replace(last, events=events))
    )
    assert learned(restarted) == []


def test_learned_findings_are_info_context_not_alarms() -> None:
    found = learned(history(dead_day=2))
    assert [a.severity for a in found] == ["info"]
