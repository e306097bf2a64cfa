"""Detector inputs: plain, immutable views of one server instance's reported history.

Everything here is pure. The vendor store adapter (:mod:`meterbox.vendorkit.anomaly._store`)
and the evaluation (``bench/anomaly_eval.py``, straight from verified ledgers) both build
the same :class:`InstanceHistory`, so the detectors never see SQL or files.

Invariants:

* ``Event`` holds only what detectors need from one ledger record; ``mono_ms`` is ``-1``
  when the source did not keep it (detectors that need it then stay silent);
* a ``ReportView`` holds the records that were new in that report, in sequence order;
* an ``InstanceHistory`` holds its reports in ingest order; the last one is the report
  being judged, the ones before it are accepted history.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from meterbox.vendorkit.clockcheck import ClockCheckConfig, clock_step_ms, receipt_vendor_ms

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
WEEK_HOURS: Final = 168
#: Unix time 0 was a Thursday; shifting by three days makes hour-of-week 0 Monday 00:00 UTC.
_WEEK_SHIFT_MS: Final = 3 * DAY_MS

USAGE: Final = "usage"
DECREMENT: Final = "usage.decrement"
CHECKOUT: Final = "seat.checkout"
RENEW: Final = "seat.renew"
RELEASE: Final = "seat.release"
EXPIRE: Final = "seat.expire"
HEARTBEAT: Final = "heartbeat"
BOOT: Final = "boot"
SHUTDOWN: Final = "shutdown"
CLOCK_STEP: Final = "clock.step"
RECEIPT: Final = "receipt.imported"
RECOVERY: Final = "recovery"
#: A renewal or release of a lease the server did not hold (payload ``i``, ``o``).
UNKNOWN_LEASE: Final = "seat.unknown"
#: Seat records read as the plain kinds: a borrow holds a seat like a checkout, and its
#: early return ends it like a release.
_SEAT_ALIASES: Final = {"seat.borrowed": CHECKOUT, "seat.returned": RELEASE}


@dataclass(frozen=True, slots=True)
class Event:
    """One ledger record, reduced to what the detectors read."""

    seq: int
    kind: str
    wall_ms: int
    mono_ms: int = -1
    amount: int = 0
    lease: str = ""
    #: Seats in use (heartbeat payload ``n``), or -1 when not stated.
    in_use: int = -1
    #: Clock step in ms (clock.step records), or vendor time in ms (receipt.imported).
    value_ms: int = 0
    #: Usage records this event stands for: the vendor store hands usage to the
    #: detectors summed per minute, which keeps a million-record report cheap to judge.
    count: int = 1
    #: The meter of a usage record ("" when the source summed meters together).
    meter: str = ""
    #: The feature a checkout took a seat of ("" elsewhere, or when not stated).
    feature: str = ""
    #: The client a checkout took the seat for (its ``c``; "" elsewhere or unstated).
    client: str = ""


@dataclass(frozen=True, slots=True)
class ReportView:
    """One ingested report: its clock readings and the records that were new in it."""

    digest: str
    created_ms: int
    received_ms: int
    from_seq: int
    head_seq: int
    events: tuple[Event, ...] = ()

    @property
    def first_wall_ms(self) -> int | None:
        return self.events[0].wall_ms if self.events else None

    @property
    def last_wall_ms(self) -> int | None:
        return max((e.wall_ms for e in self.events), default=None)


@dataclass(frozen=True, slots=True)
class InstanceHistory:
    """Accepted reports of one instance, then the one being judged (last)."""

    instance_id: str
    license_id: str
    customer: str = ""
    report_every_ms: int | None = None
    grace_ms: int = 0
    reports: tuple[ReportView, ...] = ()
    #: Leases checked out before the first report held here (a bounded window of a
    #: longer history), so a later release of one is not mistaken for a lost checkout.
    known_leases: frozenset[str] = frozenset()
    #: When the license was issued (ms), if the source knows: nothing honest is
    #: recorded before it.
    license_issued_ms: int | None = None

    @property
    def events(self) -> Iterator[Event]:
        for r in self.reports:
            yield from r.events


@dataclass(frozen=True, slots=True)
class ThresholdsConfig:
    """Every tunable of the detectors, in one place (defaults in docs/adr/0007)."""

    #: The clock and heartbeat checks (:mod:`meterbox.vendorkit.clockcheck`, the one
    #: implementation ingest uses too). Its heartbeat interval must be the server's.
    clock: ClockCheckConfig = field(default_factory=ClockCheckConfig)
    #: Usage stopping: a silence (seats out, server running, no usage) longer than
    #: this many times the longest of any slice of history, and at least
    #: ``silence_min_ms``, is reported.
    silence_factor: float = 2.0
    silence_min_ms: int = 4 * HOUR_MS
    #: Drop of log usage per seat-hour, in standard deviations, that is out of line
    #: (fitted on the development seeds, ADR 0037).
    rate_z: float = 3.0
    #: The same for a span of ``rate_span_slices`` slices of wall time or more (two or
    #: more weekly reports, one monthly report): the honest spans' scores are narrower
    #: than single weeks' (ADR 0041), and a drop that lasts is what patched clients
    #: leave, where an honest dip (a quiet or half-empty week) lasts a week.
    rate_span_z: float = 2.5
    rate_span_slices: float = 1.5
    #: Relative drop of usage per seat-hour that always counts as normal variation.
    rate_floor: float = 0.2
    #: The relative drop a span shorter than ``rate_span_slices`` (one weekly report)
    #: needs to be a finding by itself (ADR 0045): an honest week dips by up to a
    #: third and is back the week after; a smaller drop that lasts is found by the
    #: span of the next report, at ``rate_span_z``.
    rate_week_floor: float = 0.4
    #: Prior for the week-to-week standard deviation of log usage per seat-hour, and
    #: how many reports it weighs: a few reports' spread alone is too noisy to trust.
    rate_sigma_prior: float = 0.10
    rate_prior_weight: float = 4.0
    #: Prior for the week-to-week standard deviation of a meter's log share against
    #: the site's other meters (:data:`~._rules.METER_MIX`), beyond sampling noise;
    #: weighed like ``rate_sigma_prior``.
    mix_sigma_prior: float = 0.15
    #: The same for a feature's log share of the site's seat time against its other
    #: features (:data:`~._rules.FEATURE_MIX`): teams' weeks vary more than jobs' mix.
    feature_sigma_prior: float = 0.20
    #: The longest span with no use of a feature that a stop's evidence counts
    #: (:data:`~._rules.FEATURE_MIX`): no use counts half a person's week over the whole
    #: span, so evidence would grow without bound; over a month a person who left, or a
    #: team of two off for a month, is as far as it goes.
    feature_idle_max_ms: int = 28 * DAY_MS
    #: A regular client of a feature whose use stopped must have missed no more of its
    #: team's working days before the stop than it missed in a row in the baseline, or
    #: than this many (:data:`~._rules.FEATURE_MIX`, ADR 0043): users moved to a copy
    #: leave together, each from a working day of their own; a day off is nobody's
    #: absence.
    feature_absence_floor_days: int = 1
    #: The share of a stopped feature's regular clients (rounded down) that may have
    #: missed more of those days than that and the stop still be one (ADR 0043): one
    #: person in a large team on leave the week the team was moved; none in a team of
    #: up to seven, where the first to leave is the wind-down's trace.
    feature_away_share: float = 0.125
    #: Seat-hours a report needs before its usage per seat-hour is judged or trusted.
    rate_min_seat_hours: float = 20.0
    #: The most recent slices of accepted history the baseline is taken from.
    rate_window: int = 12
    #: Accepted history is cut into slices this long for the usage baselines, so a
    #: monthly reporter has as many baseline samples as a weekly one.
    slice_ms: int = 7 * DAY_MS
    #: How much each further slice of a judged span counts as an independent sample of
    #: the slice-to-slice drift: a span of ``m`` slices drifts with variance
    #: ``drift / (1 + (m - 1) * rate_slice_independence)``. 1 would take weeks as
    #: independent (a month then drifts half as much as a week); 0 would take a month
    #: to drift as much as one week. Half way allows for weeks that run alike.
    rate_slice_independence: float = 0.5
    #: The judged report is also judged together with the reports before it, this many
    #: in all, against the slices before them: clients patched to under-report stay
    #: patched, and a month of a drop says more than a week (ADR 0037).
    rate_pool_reports: int = 4
    #: A weak drop of usage per seat-hour (this many deviations and this relative drop)
    #: is no finding on its own; it counts only towards :data:`COMBINED` evidence.
    weak_rate_z: float = 2.0
    weak_rate_floor: float = 0.15
    #: Accepted reports needed before history-based rules speak (and slices of
    #: accepted history, whichever is the stronger requirement).
    min_history_reports: int = 2
    min_history_slices: int = 3
    #: Downtime: expected work lost, in working days (the mean of the site's five
    #: busiest days of the week), that
    #: makes a stop that was unclean or left seats out a warning; and the total over
    #: the report of such stops. A power cut of three working hours loses about 0.4.
    downtime_warn_days: float = 0.6
    #: Downtime of any kind (a planned stop too) worth an info line, in the same unit.
    downtime_info_days: float = 0.25
    #: An unplanned stop longer than this that cost ``downtime_info_days`` or more of
    #: work is a warning on its own: users cannot work while the server is down, so an
    #: honest crash or power cut is restarted within hours (ADR 0037).
    downtime_long_ms: int = 6 * HOUR_MS
    #: Clock evidence smaller than this stays info (NTP corrections, a wrong time zone
    #: fixed by hand); larger steps, back or forward, are warnings.
    clock_warn_ms: int = 2 * HOUR_MS
    #: Records dated this long before the license was issued are a warning.
    before_issue_tolerance_ms: int = DAY_MS


# ---------------------------------------------------------------- from ledgers
def event_from_record(seq: int, kind: str, wall_ms: int, mono_ms: int, payload: Any) -> Event:
    """Reduce one verified ledger record (``kind`` as :attr:`RecordType.kind`)."""
    p: Mapping[str, Any] = payload if isinstance(payload, Mapping) else {}
    kind = _SEAT_ALIASES.get(kind, kind)
    if kind in (USAGE, DECREMENT):
        a = p.get("a", 0)
        amount = a if isinstance(a, int) and not isinstance(a, bool) else 0
        m = p.get("m", "")
        return Event(
            seq,
            kind,
            wall_ms,
            mono_ms,
            amount=-amount if kind == DECREMENT else amount,
            meter=m if isinstance(m, str) else "",
        )
    if kind in (CHECKOUT, RENEW, RELEASE, EXPIRE, UNKNOWN_LEASE):
        lease = p.get("i", "")
        f = p.get("f", "") if kind == CHECKOUT else ""
        c = p.get("c", "") if kind == CHECKOUT else ""
        return Event(
            seq,
            kind,
            wall_ms,
            mono_ms,
            lease=lease if isinstance(lease, str) else "",
            feature=f if isinstance(f, str) else "",
            client=c if isinstance(c, str) else "",
        )
    if kind == HEARTBEAT:
        n = p.get("n", -1)
        return Event(seq, kind, wall_ms, mono_ms, in_use=n if isinstance(n, int) else -1)
    if kind == CLOCK_STEP:
        return Event(seq, kind, wall_ms, mono_ms, value_ms=clock_step_ms(p) or 0)
    if kind == RECEIPT:
        return Event(seq, kind, wall_ms, mono_ms, value_ms=receipt_vendor_ms(p))
    return Event(seq, kind, wall_ms, mono_ms)


# ------------------------------------------------------------ derived series
def hour_of_week(wall_ms: int) -> int:
    return int(((wall_ms + _WEEK_SHIFT_MS) // HOUR_MS) % WEEK_HOURS)


@dataclass(slots=True)
class Hourly:
    """Per-hour totals of one span of records, keyed by the hour's start (wall ms)."""

    units: dict[int, int] = field(default_factory=dict)
    records: dict[int, int] = field(default_factory=dict)
    seat_ms: dict[int, int] = field(default_factory=dict)

    def seat_hours(self, hour: int) -> float:
        return self.seat_ms.get(hour, 0) / HOUR_MS


def hourly(events: Sequence[Event], open_leases: Iterable[str] = ()) -> tuple[Hourly, set[str]]:
    """Units, usage records and seat time per wall-clock hour; returns leases still open.

    Seat time runs from a checkout to its release or expiry. A lease still open at the
    end of ``events`` is counted up to the last record only: what happens after is the
    next report's business.
    """
    out = Hourly()
    live: dict[str, int] = dict.fromkeys(open_leases, events[0].wall_ms if events else 0)
    last = events[0].wall_ms if events else 0
    for e in events:
        t = e.wall_ms
        if t > last and live:
            _add_seat_time(out.seat_ms, last, t, len(live))
        last = max(last, t)
        if e.kind in (USAGE, DECREMENT):
            h = t - t % HOUR_MS
            out.units[h] = out.units.get(h, 0) + e.amount
            out.records[h] = out.records.get(h, 0) + e.count
        elif e.kind == CHECKOUT:
            live[e.lease] = t
        elif e.kind in (RELEASE, EXPIRE):
            live.pop(e.lease, None)
    return out, set(live)


@dataclass(frozen=True, slots=True)
class SeatTime:
    """Seat time of one feature over one span: its sum, the sum of its sessions' squares
    (each lease's time within the span is one session), how many sessions, and the most
    seats held at once (about how many people use the feature)."""

    ms: int = 0
    sq: int = 0
    sessions: int = 0
    peak: int = 0

    def plus(self, piece_ms: int) -> SeatTime:
        return SeatTime(
            self.ms + piece_ms, self.sq + piece_ms * piece_ms, self.sessions + 1, self.peak
        )


@dataclass(frozen=True, slots=True)
class LeaseSpan:
    """The wall time one lease held a seat of ``feature`` for ``client``: [start_ms, end_ms]."""

    feature: str
    start_ms: int
    end_ms: int
    client: str = ""


def lease_spans(
    events: Sequence[Event], open_leases: Mapping[str, str] | None = None
) -> tuple[list[LeaseSpan], dict[str, str]]:
    """Every lease's seat time over ``events``; returns the leases still open (lease: feature).

    A lease counts from its checkout (or the first record, for ``open_leases``, leases
    open when the span begins, each with its feature) to its release or expiry, or to the
    last record; time follows the latest wall time seen, as :func:`hourly` does, so a
    clock set back adds no seat time. Leases whose feature is not known count under "".
    """
    start = events[0].wall_ms if events else 0
    live = {k: (f, start, "") for k, f in (open_leases or {}).items()}
    out: list[LeaseSpan] = []
    last = start
    for e in events:
        last = max(last, e.wall_ms)
        if e.kind == CHECKOUT:
            live.setdefault(e.lease, (e.feature, last, e.client))
        elif e.kind in (RELEASE, EXPIRE) and e.lease in live:
            f, since, c = live.pop(e.lease)
            out.append(LeaseSpan(f, since, last, c))
    out.extend(LeaseSpan(f, since, last, c) for f, since, c in live.values())
    return out, {k: f for k, (f, _, _) in live.items()}


def seat_time_in(
    spans: Iterable[LeaseSpan], start_ms: int | None = None, end_ms: int | None = None
) -> dict[str, SeatTime]:
    """Seat time per feature within [start_ms, end_ms) (unbounded where None): each
    lease's time inside it is one session."""
    out: dict[str, SeatTime] = {}
    edges: dict[str, list[tuple[int, int]]] = {}
    for s in spans:
        a = s.start_ms if start_ms is None else max(s.start_ms, start_ms)
        b = s.end_ms if end_ms is None else min(s.end_ms, end_ms)
        if b > a:
            out[s.feature] = out.get(s.feature, SeatTime()).plus(b - a)
            edges.setdefault(s.feature, []).extend(((a, 1), (b, -1)))
    for f, marks in edges.items():
        held = peak = 0
        for _, step in sorted(marks):  # a seat released at t is free for one taken at t
            held += step
            peak = max(peak, held)
        out[f] = replace(out[f], peak=peak)
    return out


def clients_in(spans: Iterable[LeaseSpan], feature: str, start_ms: int, end_ms: int) -> set[str]:
    """The named clients that held a seat of ``feature`` for some time within
    [start_ms, end_ms) (the leases :func:`seat_time_in` counts there)."""
    return {
        s.client
        for s in spans
        if s.feature == feature and s.client and max(s.start_ms, start_ms) < min(s.end_ms, end_ms)
    }


@dataclass(frozen=True, slots=True)
class WorkingDays:
    """The days a team worked: days of 24 hours that begin at the hour of day its
    seats were least held (so a night shift is one day, not two halves of UTC days),
    numbered from that hour on the epoch's first day, each one on which the team held
    a seat (ADR 0043)."""

    begin_ms: int
    worked: tuple[int, ...]

    @classmethod
    def of(cls, spans: Sequence[LeaseSpan], start_ms: int, end_ms: int) -> WorkingDays:
        """The team's working days, their hour of day learned from ``spans`` within
        [start_ms, end_ms) (midnight UTC if they hold no seat time there)."""
        by_hour = [0] * 24
        acc: dict[int, int] = {}
        for s in spans:
            _add_seat_time(acc, max(s.start_ms, start_ms), min(s.end_ms, end_ms), 1)
        for h, ms in acc.items():
            by_hour[h % DAY_MS // HOUR_MS] += ms
        begin = min(range(24), key=lambda h: (by_hour[h], h)) * HOUR_MS
        days: set[int] = set()
        for s in spans:  # a seat freed as a day begins was held the day before
            last = max(s.end_ms - 1, s.start_ms)
            days.update(range((s.start_ms - begin) // DAY_MS, (last - begin) // DAY_MS + 1))
        return cls(begin, tuple(sorted(days)))

    def missed(self, after_ms: int, before_ms: int) -> int:
        """How many of the days worked lie wholly between ``after_ms`` and ``before_ms``."""
        first = -(-(after_ms - self.begin_ms) // DAY_MS)
        last = (before_ms - self.begin_ms) // DAY_MS  # the first day not over by ``before_ms``
        lo = bisect.bisect_left(self.worked, first)
        return max(0, bisect.bisect_left(self.worked, last) - lo)

    def most_missed(self, held: Sequence[tuple[int, int]], start_ms: int, end_ms: int) -> int:
        """The most days worked missed in a row between two of the spans ``held``
        within [start_ms, end_ms) (the time before the first and after the last is not
        counted: it is not known where that absence began or ended)."""
        most, covered = 0, None
        clipped = sorted((max(a, start_ms), min(b, end_ms)) for a, b in held)
        for s0, s1 in (x for x in clipped if x[1] > x[0]):
            if covered is not None and s0 > covered:
                most = max(most, self.missed(covered, s0))
            covered = s1 if covered is None else max(covered, s1)
        return most


def _add_seat_time(acc: dict[int, int], start: int, end: int, seats: int) -> None:
    t = start
    while t < end:
        h = t - t % HOUR_MS
        nxt = min(end, h + HOUR_MS)
        acc[h] = acc.get(h, 0) + (nxt - t) * seats
        t = nxt


def robust_z(value: float, history: Sequence[float], floor: float = 0.0) -> float:
    """(value - median) / spread, the spread being 1.4826 * MAD floored by ``floor``.

    The floor is the smallest spread the feature can honestly have (its sampling
    noise, or a prior for a feature that history happens never to have varied): a
    history that never restarted says nothing about how rare one restart is, and
    without a floor a zero MAD makes any change look infinitely unlikely. With no
    floor given, 2 % of the median (and never less than 1e-3) is used.
    """
    if not history:
        return 0.0
    s = sorted(history)
    med = _median(s)
    mad = _median(sorted(abs(x - med) for x in s))
    spread = max(1.4826 * mad, floor, 0.02 * abs(med), 1e-3)
    return (value - med) / spread


def _median(s: Sequence[float]) -> float:
    n = len(s)
    if n == 0:
        return 0.0
    mid = n // 2
    return float(s[mid]) if n % 2 else (s[mid - 1] + s[mid]) / 2.0
