"""Per-feature baselines: seat time per feature, and ``anomaly.feature_mix``'s step test.

The records the real server writes for this rule are tested in
tests/integration/test_anomaly_server_evidence.py; these histories are exact and small.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.vendorkit.anomaly import Event
from meterbox.vendorkit.anomaly import _rules as R
from meterbox.vendorkit.anomaly._features import (
    CHECKOUT,
    EXPIRE,
    HEARTBEAT,
    RELEASE,
    LeaseSpan,
    WorkingDays,
    clients_in,
    hourly,
    lease_spans,
    seat_time_in,
)
from support.anomaly_events import DAY, HOUR, TH, Builder, history


def team_week(
    b: Builder,
    teams: Mapping[str, int],
    days: Mapping[str, int] | None = None,
    *,
    named: bool = True,
) -> object:
    """Five working days on which each team's users hold a seat of their feature 9-17 h
    (``days``: a feature used on its first few working days only). User ``u`` of a team
    is client ``feature-u`` (``named``), so a team of ``n`` is its first ``n`` users."""
    for day in range(7):
        b.run(9 * HOUR)
        holders = []
        if day < 5:
            for feature, users in teams.items():
                if days is None or day < days.get(feature, 5):
                    holders += [(feature, f"{feature}-{u}") for u in range(users)]
        shift(b, holders, named=named)
        b.run(7 * HOUR)
    return b.report()


def shift(b: Builder, holders: list[tuple[str, str]], *, named: bool = True) -> None:
    """Eight hours in which each (feature, client) of ``holders`` holds one seat of its
    feature: checked out as the shift begins, released as it ends (the client unnamed
    unless ``named``)."""
    leases = []
    for feature, client in holders:
        lease = f"{client}-{b.seq}"
        b.add(CHECKOUT, lease=lease, feature=feature, client=client if named else "")
        leases.append(lease)
    b.run(8 * HOUR, seats=len(leases))
    for lease in leases:
        b.add(RELEASE, lease=lease)


def weeks(*teams: Mapping[str, int], named: bool = True) -> list[object]:
    b = Builder()
    return [team_week(b, t, named=named) for t in teams]


def mix(reports: list[object]) -> list[R.Anomaly]:
    return R.feature_mix(history(reports), TH)  # type: ignore[arg-type]


STEADY = {"cad": 20, "sim": 20}


def test_a_feature_gone_at_once_is_a_warning() -> None:
    found = mix(weeks(*[STEADY] * 6, {"cad": 20, "sim": 0}))
    assert [(a.code, a.severity) for a in found] == [(R.FEATURE_MIX, "warning")], found
    assert "'sim'" in found[0].message and "stopped at once" in found[0].message
    assert "Ask the customer" in found[0].message


def test_a_team_of_two_stopping_is_no_warning() -> None:
    """Two people's week off looks like a stop: the zero counts as half a person."""
    found = mix(weeks(*[{"cad": 20, "sim": 2}] * 6, {"cad": 20, "sim": 0}))
    assert "warning" not in {a.severity for a in found}, found


def test_a_stop_in_the_middle_of_a_week_is_warned_by_the_next_report() -> None:
    """The week the use stopped in is judged from the stop, not from the week's start:
    its two days of use are neither a week in use nor an outlier in the baseline."""
    b = Builder()
    reports = [team_week(b, STEADY) for _ in range(6)]
    reports.append(team_week(b, STEADY, days={"sim": 2}))
    assert "warning" not in {a.severity for a in mix(reports)}
    reports.append(team_week(b, {"cad": 20, "sim": 0}))
    found = mix(reports)
    assert [(a.code, a.severity) for a in found] == [(R.FEATURE_MIX, "warning")], found
    assert "12.3 days" in found[0].message, found[0].message


def test_one_stop_is_one_warning_and_info_after() -> None:
    reports = weeks(*[STEADY] * 6, *[{"cad": 20, "sim": 0}] * 3)
    assert [a.severity for a in mix(reports[:7])] == ["warning"]
    for i in (8, 9):
        found = mix(reports[:i])
        assert [a.severity for a in found] == ["info"], (i, found)
        assert "still no seat of feature 'sim'" in found[0].message


def test_a_person_who_left_is_never_a_warning() -> None:
    """One user's feature unused for two months: a person who left or is away looks like
    this; no use counts half a person's week over at most a month."""
    reports = weeks(*[{"cad": 20, "sim": 1}] * 6, *[{"cad": 20, "sim": 0}] * 8)
    for i in range(7, len(reports) + 1):
        assert "warning" not in {a.severity for a in mix(reports[:i])}, i


def test_a_team_of_two_off_for_a_month_is_a_warning() -> None:
    """Two people's week off is no stop; both away for a month, while the rest of the
    site works, is one to ask about."""
    reports = weeks(*[{"cad": 20, "sim": 2}] * 6, *[{"cad": 20, "sim": 0}] * 5)
    severities = [{a.severity for a in mix(reports[:i])} for i in range(7, len(reports) + 1)]
    assert "warning" not in severities[0] | severities[1], severities
    assert "warning" in set().union(*severities), severities


def test_the_last_of_a_team_stopping_after_one_left_is_no_warning() -> None:
    """One of four users left three weeks before the other three stopped: their seat
    time was in line (three of four people vary that much), but a regular client was
    missing from the fortnight before the stop, so it is a team winding down. Without
    client names the same seat time is a stop."""
    teams = [{"cad": 20, "sim": 4}] * 6 + [{"cad": 20, "sim": 3}] * 3 + [{"cad": 20, "sim": 0}] * 3

    def severities(reports: list[object]) -> set[str]:
        return {a.severity for i in range(7, len(reports) + 1) for a in mix(reports[:i])}

    assert "warning" not in severities(weeks(*teams))
    assert "warning" in severities(weeks(*teams, named=False))


def test_most_of_a_feature_gone_at_once_is_info_only() -> None:
    """A fall to a quarter is no stop: a team winding down loses several people in one
    week often enough, so only a feature whose use stopped is a warning."""
    found = mix(weeks(*[STEADY] * 6, {"cad": 20, "sim": 5}))
    assert [(a.code, a.severity) for a in found] == [(R.FEATURE_MIX, "info")], found


def test_a_feature_winding_down_over_eight_weeks_stays_info() -> None:
    """Twenty users leave over eight weeks, a few each week: never a step, often info."""
    teams = [STEADY] * 6 + [{"cad": 20, "sim": n} for n in (18, 15, 13, 10, 8, 5, 3, 0, 0)]
    reports = weeks(*teams)
    seen = []
    for i in range(7, len(reports) + 1):
        seen += [(a.code, a.severity) for a in mix(reports[:i])]
    assert (R.FEATURE_MIX, "info") in seen
    assert (R.FEATURE_MIX, "warning") not in seen, seen


def test_a_team_gone_after_a_wind_down_is_no_warning_either() -> None:
    """A feature already at a tenth stops: the weeks before were not in line."""
    teams = [STEADY] * 6 + [{"cad": 20, "sim": n} for n in (10, 4, 2, 0)]
    found = mix(weeks(*teams))
    assert "warning" not in {a.severity for a in found}, found


def test_steady_features_and_a_busier_site_raise_nothing() -> None:
    assert mix(weeks(*[STEADY] * 7)) == []
    # The whole site at half (a holiday week): both features together, no change of mix.
    assert mix(weeks(*[STEADY] * 6, {"cad": 10, "sim": 10})) == []


def test_a_site_with_one_feature_is_not_judged() -> None:
    assert mix(weeks(*[{"cad": 20}] * 6, {"cad": 2})) == []


def test_too_little_history_is_not_judged() -> None:
    assert mix(weeks(STEADY, STEADY, {"cad": 20, "sim": 0})) == []


_kinds = st.sampled_from([CHECKOUT, RELEASE, EXPIRE, HEARTBEAT])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_kinds, st.integers(0, 5), st.integers(-2 * HOUR, 3 * HOUR), st.integers(0, 2)),
        max_size=40,
    ),
    st.sets(st.integers(0, 5), max_size=3),
)
def test_seat_time_per_feature_adds_up_to_the_site_seat_time(
    steps: list[tuple[str, int, int, int]], open_at_start: set[int]
) -> None:
    """Whatever the order of records and the clock does, the features' seat time sums to
    the seat time the usage rate divides by (one truth of what a seat-hour is)."""
    t, events = 10 * DAY, []
    for seq, (kind, lease, dt, feature) in enumerate(steps):
        t += dt
        events.append(Event(seq, kind, t, lease=f"l{lease}", feature=("cad", "sim", "")[feature]))
    opened = {f"l{k}": "cad" for k in open_at_start}
    spans, still = lease_spans(events, opened)
    times = seat_time_in(spans)
    hours, live = hourly(events, opened)
    assert sum(x.ms for x in times.values()) == sum(hours.seat_ms.values())
    assert set(still) == live
    assert all(x.ms >= 0 and x.sq >= 0 and x.sessions >= 0 for x in times.values())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_kinds, st.integers(0, 5), st.integers(-2 * HOUR, 3 * HOUR), st.integers(0, 1)),
        max_size=40,
    ),
    st.integers(0, 30 * HOUR),
    st.integers(0, 30 * HOUR),
)
def test_a_feature_has_seat_time_in_a_span_exactly_when_a_client_held_it(
    steps: list[tuple[str, int, int, int]], a: int, b: int
) -> None:
    """The clients seen in a span and the seat time in it are one reading of the leases."""
    t, events = 10 * DAY, []
    for seq, (kind, lease, dt, feature) in enumerate(steps):
        t += dt
        f = ("cad", "sim")[feature]
        events.append(Event(seq, kind, t, lease=f"l{lease}", feature=f, client=f"c{lease}"))
    spans, _ = lease_spans(events)
    lo, hi = 10 * DAY + min(a, b), 10 * DAY + max(a, b)
    times = seat_time_in(spans, lo, hi)
    for f in ("cad", "sim"):
        assert bool(clients_in(spans, f, lo, hi)) == (f in times), f


def roster_week(b: Builder, roster: Mapping[str, Collection[int]], *, others: int = 20) -> object:
    """Seven shifts of eight hours, one a day from the builder's hour on: client
    ``sim-u`` holds a seat of 'sim' on the days (0-6) ``roster`` gives it, and ``others``
    users of 'cad' hold theirs on the first five."""
    for day in range(7):
        holders = [*roster.items(), *((f"cad-{u}", range(5)) for u in range(others))]
        shift(b, [(c.split("-")[0], c) for c, days in holders if day in days])
        b.run(16 * HOUR)
    return b.report()


WEEKDAYS = range(5)


def roster_severities(last: Mapping[str, Collection[int]], *, team: int, hour: int) -> set[str]:
    """A team of ``team`` on 'sim' works every weekday for six weeks from ``hour``, then
    the week ``last`` (weekdays for anyone it leaves out), then nobody for three weeks:
    every severity ``feature_mix`` gives the reports after the sixth."""
    b = Builder()
    b.run(hour * HOUR)
    full = {f"sim-{u}": WEEKDAYS for u in range(team)}
    reports = [roster_week(b, full) for _ in range(6)]
    reports.append(roster_week(b, {**full, **last}))
    reports += [roster_week(b, {}) for _ in range(3)]
    return {a.severity for i in range(7, len(reports) + 1) for a in mix(reports[:i])}


def test_the_last_of_a_team_stopping_days_after_one_left_is_no_warning() -> None:
    """One of four left on the Tuesday, the other three on the Friday: every regular was
    seen in the fortnight before the stop (ADR 0040), but the first to leave missed two
    of the team's working days where none was the most it had missed (ADR 0043)."""
    assert "warning" not in roster_severities({"sim-3": (0, 1)}, team=4, hour=9)
    assert "warning" in roster_severities({}, team=4, hour=9)
    # A day off on the Thursday before the team was moved is nobody's absence.
    assert "warning" in roster_severities({"sim-3": (0, 1, 2, 4)}, team=4, hour=9)
    assert "warning" in roster_severities({"sim-3": (0, 1, 2, 3)}, team=4, hour=9)


def test_a_night_shift_team_is_judged_in_its_own_working_days() -> None:
    """Shifts from 22:00 UTC: each shift is one of the team's days, not two halves."""
    assert "warning" in roster_severities({"sim-3": (0, 1, 2, 4)}, team=4, hour=22)
    assert "warning" not in roster_severities({"sim-3": (0, 1)}, team=4, hour=22)


def test_one_of_a_large_team_away_when_it_was_moved_is_still_a_stop() -> None:
    """One of sixteen on leave the whole week the team was moved: an eighth of a team's
    regulars may be away; three of sixteen gone early is a team winding down."""
    assert "warning" in roster_severities({"sim-0": ()}, team=16, hour=9)
    away = {f"sim-{u}": () for u in range(3)}
    assert "warning" not in roster_severities(away, team=16, hour=9)


def test_working_days_begin_at_the_hour_least_held() -> None:
    night = [LeaseSpan("sim", d * DAY + 22 * HOUR, d * DAY + 30 * HOUR, "a") for d in range(5)]
    days = WorkingDays.of(night, 0, 7 * DAY)
    assert days.begin_ms == 6 * HOUR
    assert len(days.worked) == 5  # five shifts, five days
    # From the end of the first shift to the start of the fourth: two shifts missed.
    assert days.missed(night[0].end_ms, night[3].start_ms) == 2
    held = [(s.start_ms, s.end_ms) for i, s in enumerate(night) if i != 2]
    assert days.most_missed(held, 0, 7 * DAY) == 1
    assert WorkingDays.of([], 0, DAY) == WorkingDays(0, ())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20 * DAY), st.integers(0, 2 * DAY)), max_size=12),
    st.lists(st.integers(-DAY, 22 * DAY), min_size=3, max_size=3),
)
def test_days_missed_add_up_over_consecutive_spans(
    spans: list[tuple[int, int]], cuts: list[int]
) -> None:
    """Days wholly between a and c are those wholly between a and b, those wholly
    between b and c, and at most the one day b falls in; never more than were worked."""
    days = WorkingDays.of([LeaseSpan("sim", s, s + d, "a") for s, d in spans], 0, 20 * DAY)
    a, b, c = sorted(cuts)
    ab, bc, ac = days.missed(a, b), days.missed(b, c), days.missed(a, c)
    assert min(ab, bc) >= 0
    assert ab + bc <= ac <= ab + bc + 1
    assert ac <= len(days.worked)
    held = [(s, s + d) for s, d in spans]
    assert days.most_missed(held, 0, 22 * DAY) <= len(days.worked)
