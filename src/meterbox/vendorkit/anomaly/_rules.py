"""Rule detectors: each reads an :class:`InstanceHistory` and judges its last report.

Every rule is a pure function ``(history, thresholds) -> list[Anomaly]`` with one stable
finding code (``anomaly.*``; never rename one, only add). Rules judge only the records
that were new in the last report; earlier reports are accepted history that supplies
context (the last record before, leases still open, baselines).

What a rule cannot see it does not guess: a rule that needs monotonic time is silent
when the source did not keep it (``mono_ms == -1``); a rule that needs history is silent
until ``min_history_reports`` accepted reports exist.

Clock and heartbeat evidence is not judged here: :func:`clock_checks` runs
:class:`meterbox.vendorkit.clockcheck.ClockChecker`, the one implementation that ingest
also runs on every report, and passes its stable ``clock.*`` / ``heartbeat.*`` codes
through. The ``anomaly.*`` names the clock rules had before they were merged stay in
:data:`CODES` (see :data:`RENAMED`) so findings stored under them still explain
themselves.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

from meterbox.ledger import Finding, RecordType
from meterbox.vendorkit import clockcheck
from meterbox.vendorkit.anomaly._features import (
    BOOT,
    CHECKOUT,
    CLOCK_STEP,
    DAY_MS,
    DECREMENT,
    EXPIRE,
    HEARTBEAT,
    HOUR_MS,
    RECEIPT,
    RECOVERY,
    RELEASE,
    RENEW,
    SHUTDOWN,
    UNKNOWN_LEASE,
    USAGE,
    WEEK_HOURS,
    Event,
    InstanceHistory,
    LeaseSpan,
    ReportView,
    SeatTime,
    ThresholdsConfig,
    WorkingDays,
    clients_in,
    hour_of_week,
    hourly,
    lease_spans,
    seat_time_in,
)

Severity = Literal["critical", "warning", "info"]

USAGE_STOPPED: Final = "anomaly.usage_stopped"
CLONE: Final = "anomaly.clone"
REPORT_LATE: Final = "anomaly.report_late"
USAGE_RATE: Final = "anomaly.usage_rate"
LEASE_UNKNOWN: Final = "anomaly.lease_unknown"
LEARNED: Final = "anomaly.learned"
DOWNTIME: Final = "anomaly.downtime"
BEFORE_ISSUE: Final = "anomaly.before_issue"
METER_RATE: Final = "anomaly.meter_rate"
METER_MIX: Final = "anomaly.meter_mix"
FEATURE_MIX: Final = "anomaly.feature_mix"
COMBINED: Final = "anomaly.combined"

#: Clock rules that lived here before the single implementation in
#: :mod:`meterbox.vendorkit.clockcheck`: old code -> the code that reports it now.
RENAMED: Final[dict[str, str]] = {
    "anomaly.heartbeat_gap": clockcheck.HEARTBEAT_GAP,
    "anomaly.unclean_downtime": clockcheck.HEARTBEAT_UNCLEAN_RESTART,
    "anomaly.clock_step": clockcheck.CLOCK_STEP_RECORDED,
    "anomaly.clock_divergence": clockcheck.CLOCK_WALL_STEP,
    "anomaly.monotonic_backwards": clockcheck.CLOCK_MONOTONIC_BACKWARDS,
    "anomaly.clock_back_across_boot": clockcheck.CLOCK_BACKWARDS_ACROSS_BOOT,
    "anomaly.clock_ahead_of_vendor": clockcheck.CLOCK_FUTURE_RECORD,
    "anomaly.clock_behind_vendor": clockcheck.CLOCK_BEFORE_RECEIPT,
}

#: Every code the detectors report, with the one-line meaning shown beside it; and the
#: earlier names of the clock rules, so findings stored under them still explain.
CODES: Final[dict[str, str]] = {
    **clockcheck.CODES,
    USAGE_STOPPED: "seats stayed checked out but no usage was recorded",
    CLONE: "a second server instance reports for the same license at the same time",
    REPORT_LATE: "the report came later than the license's reporting interval",
    USAGE_RATE: "usage per seat-hour fell out of line with this instance's history",
    LEASE_UNKNOWN: "a seat lease was released that the server never checked out: records "
    "were lost (a restored snapshot)",
    LEARNED: "this report's daily usage pattern is unlike the customer's history",
    DOWNTIME: "the server was down while the customer usually works, after a stop that "
    "was unclean or left seats checked out",
    BEFORE_ISSUE: "records are dated before the license was issued (a clock set back, "
    "typically on a fresh copy of the server)",
    METER_RATE: "one meter's usage per seat-hour fell out of line with its own history",
    METER_MIX: "one meter's share of usage, against the site's other meters, fell out of "
    "line with its own history",
    FEATURE_MIX: "one feature's share of seat time, against the site's other features, "
    "fell at once out of line with its own history",
    COMBINED: "independent kinds of evidence in one report (stops, usage, clock, lost "
    "records) that no routine operation produces together",
    **{old: f"{clockcheck.CODES[new]} (now reported as {new})" for old, new in RENAMED.items()},
}


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One finding: a stable code, a plain explanation, and where it was seen."""

    code: str
    severity: Severity
    message: str
    instance_id: str
    report_digest: str = ""
    seq: int | None = None
    wall_ms: int | None = None
    score: float | None = None
    drivers: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "instance_id": self.instance_id,
            "report": self.report_digest,
        }
        if self.seq is not None:
            out["seq"] = self.seq
        if self.wall_ms is not None:
            out["wall_ms"] = self.wall_ms
        if self.score is not None:
            out["score"] = round(self.score, 4)
        if self.drivers:
            out["drivers"] = {k: round(v, 4) for k, v in self.drivers}
        return out


Rule = Callable[[InstanceHistory, ThresholdsConfig], list[Anomaly]]

#: Event kinds as ledger record types, for the clock checks.
_RECORD_TYPES: Final = {t.kind: t for t in RecordType}


# ------------------------------------------------------------------- context
@dataclass(frozen=True, slots=True)
class _Context:
    """What accepted history says about the moment the judged report starts."""

    before: Event | None
    open_leases: frozenset[str]
    in_use: int
    high_water_ms: int
    vendor_floor_ms: int


def _context(h: InstanceHistory) -> _Context:
    before: Event | None = None
    leases: set[str] = set()
    in_use, high, floor = 0, 0, 0
    for r in h.reports[:-1]:
        for e in r.events:
            before = e
            high = max(high, e.wall_ms)
            leases, in_use, floor = _track(e, leases, in_use, floor)
    return _Context(before, frozenset(leases), in_use, high, floor)


def _track(e: Event, leases: set[str], in_use: int, floor: int) -> tuple[set[str], int, int]:
    if e.kind == CHECKOUT:
        leases.add(e.lease)
    elif e.kind in (RELEASE, EXPIRE):
        leases.discard(e.lease)
    elif e.kind == HEARTBEAT and e.in_use >= 0:
        in_use = e.in_use
    elif e.kind == BOOT:
        # Leases do not survive in the ledger's view across a restart without records;
        # the server re-records what it restores, so start from what it says next.
        in_use = 0
    elif e.kind == RECEIPT and e.value_ms > 0:
        floor = max(floor, e.value_ms)
    return leases, in_use, floor


def _judged(h: InstanceHistory) -> ReportView | None:
    return h.reports[-1] if h.reports else None


def _fmt_ms(ms: float) -> str:
    ms = abs(ms)
    if ms >= 2 * 86_400_000:
        return f"{ms / 86_400_000:.1f} days"
    if ms >= 2 * HOUR_MS:
        return f"{ms / HOUR_MS:.1f} hours"
    if ms >= 120_000:
        return f"{ms / 60_000:.0f} minutes"
    return f"{ms / 1000:.0f} seconds"


def _elapsed(a: Event, b: Event) -> int:
    """Time between two records: monotonic within one boot when known, else wall."""
    if b.kind != BOOT and a.mono_ms >= 0 and b.mono_ms >= a.mono_ms:
        return b.mono_ms - a.mono_ms
    return b.wall_ms - a.wall_ms


# ---------------------------------------------------------------------- rules
def clock_checks(h: InstanceHistory, th: ThresholdsConfig) -> list[Anomaly]:
    """Clock and heartbeat evidence in the judged report, by the checks ingest runs.

    Accepted history is fed as acknowledged (context only: the last record, leases
    open, receipts imported); the judged report's records are judged. The vendor's
    clock is the time the report was received.

    Severity (see :func:`clock_severity`): a single weak signal (a gap, an unclean
    restart, a clock moved by less than ``clock_warn_ms``) is ``info``: honest sites
    produce those. A clock moved by more, or monotonic time going back, is a warning.
    """
    report = _judged(h)
    if report is None:
        return []
    checker = clockcheck.ClockChecker(vendor_now_ms=report.received_ms, policy=th.clock)
    prior: list[Event] = []
    for r in h.reports[:-1]:
        for e in r.events:
            _observe(checker, e, acked=True)
        if r.events:
            prior = [r.events[-1]]
    for e in report.events:
        _observe(checker, e, acked=False)
    if report.created_ms > 0:
        checker.check_created(report.created_ms)
    evs = [*prior, *report.events]
    index = {e.seq: i for i, e in enumerate(evs)}
    out = []
    # One finding per code, the first, with how often it recurred: fifty lines that
    # each say "dated ten days ahead" tell the clerk no more than one.
    seen: dict[str, int] = {}
    for f in checker.findings():
        if f.seq is not None:
            seen[f.code] = seen.get(f.code, 0) + 1
    firsts: dict[str, Finding] = {}
    for f in checker.findings():
        firsts.setdefault(f.code, f)
    for f in firsts.values():
        at = index.get(f.seq) if f.seq is not None else None
        size = _clock_size(f.code, evs, at, report)
        sev = clock_severity(f.code, size, th)
        out.append(
            Anomaly(
                f.code,
                sev,
                f.message
                + (f" ({seen[f.code]} records in all)" if seen.get(f.code, 0) > 1 else "")
                + _clock_advice(f.code, sev),
                h.instance_id,
                report.digest,
                f.seq,
                evs[at].wall_ms if at is not None else None,
                score=float(size) if size is not None else None,
            )
        )
    return out


#: Clock codes whose size (ms) decides between info and warning.
_SIZED: Final = frozenset(
    {
        clockcheck.CLOCK_STEP_RECORDED,
        clockcheck.CLOCK_WALL_STEP,
        clockcheck.CLOCK_BACKWARDS_ACROSS_BOOT,
        clockcheck.CLOCK_FUTURE_RECORD,
        clockcheck.CLOCK_FUTURE_REPORT,
        clockcheck.CLOCK_REPORT_BEFORE_RECORDS,
        clockcheck.CLOCK_BEFORE_RECEIPT,
    }
)
_WEAK: Final = frozenset(
    {clockcheck.HEARTBEAT_GAP, clockcheck.HEARTBEAT_UNCLEAN_RESTART, clockcheck.CLOCK_DRIFT}
)


def clock_severity(code: str, size_ms: int | None, th: ThresholdsConfig) -> Severity:
    """``info`` for the weak signals honest sites produce, ``warning`` for real jumps."""
    if code in _WEAK:
        return "info"
    if code in _SIZED:
        if size_ms is None:
            return "warning"
        return "warning" if abs(size_ms) >= th.clock_warn_ms else "info"
    return "warning"


def _clock_size(code: str, evs: Sequence[Event], at: int | None, report: ReportView) -> int | None:
    """How far the clock moved, in ms, for a sized clock finding (None if unknown)."""
    if code == clockcheck.CLOCK_FUTURE_REPORT:
        return report.created_ms - report.received_ms
    if code == clockcheck.CLOCK_REPORT_BEFORE_RECORDS:
        return max(e.wall_ms for e in report.events) - report.created_ms if report.events else None
    if at is None:
        return None
    e = evs[at]
    if code == clockcheck.CLOCK_FUTURE_RECORD:
        return e.wall_ms - report.received_ms
    if code == clockcheck.CLOCK_STEP_RECORDED:
        return e.value_ms
    if code == clockcheck.CLOCK_BEFORE_RECEIPT:
        floor = max((x.value_ms for x in evs[:at] if x.kind == RECEIPT), default=0)
        return floor - e.wall_ms if floor else None
    prev = next((x for x in reversed(evs[:at]) if x.mono_ms >= 0), None)
    if prev is None:
        return None
    if code == clockcheck.CLOCK_BACKWARDS_ACROSS_BOOT:
        return prev.wall_ms - e.wall_ms
    if code == clockcheck.CLOCK_WALL_STEP and e.mono_ms >= 0:
        return (e.wall_ms - e.mono_ms) - (prev.wall_ms - prev.mono_ms)
    return None


def _clock_advice(code: str, sev: Severity) -> str:
    if code in _WEAK:
        return (
            ". On its own this is routine (a crash, a power cut, a paused virtual machine); "
            "see the downtime and usage findings of this report for whether work went "
            "unrecorded"
        )
    if sev == "info":
        return (
            ". A move this small is what NTP corrections or a time zone fixed by hand look "
            "like; no action unless it recurs"
        )
    return (
        ". Honest causes are rare at this size (a dead RTC battery after a power cut, a "
        "restore of a virtual machine). Ask the customer who changed the server's clock "
        "and why, and whether the server was copied or restored"
    )


def _observe(checker: clockcheck.ClockChecker, e: Event, *, acked: bool) -> None:
    rtype = _RECORD_TYPES.get(e.kind)
    if rtype is None:
        return
    checker.observe(
        e.seq,
        rtype,
        e.wall_ms,
        e.mono_ms,
        acked=acked,
        details=clockcheck.RecordDetails(
            lease=e.lease or None,
            in_use=e.in_use if e.in_use >= 0 else None,
            step_ms=e.value_ms if e.kind == CLOCK_STEP else None,
            receipt_ms=e.value_ms if e.kind == RECEIPT else 0,
        ),
    )


def lease_unknown(h: InstanceHistory, th: ThresholdsConfig) -> list[Anomaly]:
    """A release, renewal or expiry of a lease the instance's history never checked out.

    The server records every checkout before it hands the lease out, so a lease it
    later releases must be in its reported history. When it is not, checkouts were
    lost: a restored snapshot (the lost records included the checkout of a seat a client
    still held) or deleted records. Reported once per report, with the first such lease.
    """
    report = _judged(h)
    if report is None:
        return []
    known = set(h.known_leases)
    for r in h.reports[:-1]:
        known.update(e.lease for e in r.events if e.kind == CHECKOUT)
    orphans: list[Event] = []
    for e in report.events:
        if e.kind == CHECKOUT:
            known.add(e.lease)
        elif e.kind in (RENEW, RELEASE, EXPIRE, UNKNOWN_LEASE) and e.lease and e.lease not in known:
            orphans.append(e)
            known.add(e.lease)
    if not orphans:
        return []
    first = orphans[0]
    return [
        Anomaly(
            LEASE_UNKNOWN,
            "warning",
            f"record {first.seq} ends or renews seat lease {first.lease[:64]!r}, which this "
            f"server never checked out in its reported history ({len(orphans)} such "
            "lease(s) in this report): checkout records were lost, as when the server's "
            "data is restored from a copy while clients still hold seats. No routine "
            "operation loses them; a crash does not. Ask the customer whether the server "
            "was restored from a backup or moved, and when",
            h.instance_id,
            report.digest,
            first.seq,
            first.wall_ms,
            score=float(len(orphans)),
        )
    ]


def usage_stopped(h: InstanceHistory, th: ThresholdsConfig) -> list[Anomaly]:
    """Seats checked out, the server running, and no usage for far longer than ever before.

    A *silence* is wall time during which at least one seat was checked out, the
    server was writing records (no two records further apart than a heartbeat gap,
    no restart: downtime is :func:`downtime`'s business) and no usage was recorded.
    Clients meter in batches, and all of a site's clients often flush together, so
    silences are neither Poisson nor per seat: the baseline is empirical, the
    longest silence of each slice of accepted history. A silence longer than
    ``silence_factor`` times the longest of them, and at least ``silence_min_ms``, is
    reported.
    """
    report = _judged(h)
    if report is None or not _enough_history(h, th):
        return []
    past = [e for r in h.reports[:-1] for e in r.events]
    longest = []
    leases: set[str] = set()
    for sl in _slices(past, th.slice_ms):
        worst, leases = _longest_silence(sl, leases, th.clock.gap_ms)
        longest.append(worst[0])
    if len(longest) < th.min_history_slices:
        return []
    limit = max(th.silence_factor * max(longest), th.silence_min_ms)
    (silent, _first, end), _ = _longest_silence(
        report.events, set(_context(h).open_leases), th.clock.gap_ms
    )
    if silent <= limit or end is None:
        return []
    return [
        Anomaly(
            USAGE_STOPPED,
            "warning",
            f"seats stayed checked out for {_fmt_ms(silent)} up to record {end.seq} while the "
            "server ran, with no usage recorded; the longest such silence in this site's "
            f"history was {_fmt_ms(max(longest))}. Legitimate causes look like sessions "
            "left open over a holiday, which earlier reports would already show. Ask the "
            "customer whether clients were changed or could not reach the server",
            h.instance_id,
            report.digest,
            end.seq,
            end.wall_ms,
            score=silent / max(1, *longest),
        )
    ]


def _longest_silence(
    events: Sequence[Event], leases: set[str], gap_ms: int
) -> tuple[tuple[int, Event | None, Event | None], set[str]]:
    """The longest silence in ``events`` (ms, first and last record) and leases open after."""
    leases = set(leases)
    best: tuple[int, Event | None, Event | None] = (0, None, None)
    run, first, prev = 0, None, None
    for e in events:
        if prev is not None:
            dt = e.wall_ms - prev.wall_ms
            if leases and 0 <= dt <= gap_ms and e.kind not in (BOOT, RECOVERY):
                if first is None:
                    first = prev
                run += dt
                if run > best[0]:
                    best = (run, first, e)
            elif dt > gap_ms or e.kind in (BOOT, RECOVERY) or not leases:
                run, first = 0, None
        if e.kind in (USAGE, DECREMENT):
            run, first = 0, None
        elif e.kind == CHECKOUT:
            leases.add(e.lease)
        elif e.kind in (RELEASE, EXPIRE):
            leases.discard(e.lease)
        prev = e
    return best, leases


def _enough_history(h: InstanceHistory, th: ThresholdsConfig) -> bool:
    return len(h.reports) - 1 >= th.min_history_reports


def _slices(events: Sequence[Event], slice_ms: int) -> list[list[Event]]:
    """Events cut into consecutive slices of ``slice_ms`` of wall time (in seq order).

    A record dated before the slice it follows (a clock set back) stays in the
    current slice: slices follow the ledger, not the clock.
    """
    out: list[list[Event]] = []
    end = None
    for e in events:
        if end is None or e.wall_ms >= end:
            start = e.wall_ms if end is None else max(end, e.wall_ms - (e.wall_ms - end) % slice_ms)
            end = start + slice_ms
            out.append([])
        out[-1].append(e)
    return out


def report_late(h: InstanceHistory, th: ThresholdsConfig) -> list[Anomaly]:
    """A report received later than the license's interval (plus grace) after the last."""
    if h.report_every_ms is None or len(h.reports) < 2:
        return []
    prev, report = h.reports[-2], h.reports[-1]
    interval = report.received_ms - prev.received_ms
    allowed = h.report_every_ms + h.grace_ms
    if interval <= allowed:
        return []
    return [
        Anomaly(
            REPORT_LATE,
            # A warning (ADR 0016): past its deadline the server should have stopped
            # granting, so a late report is worth a look even when it is honest.
            "warning",
            f"this report arrived {_fmt_ms(interval)} after the previous one; the license "
            f"asks for one every {_fmt_ms(h.report_every_ms)}"
            + (f" plus {_fmt_ms(h.grace_ms)} grace" if h.grace_ms else "")
            + "; past the deadline the server must refuse new grants (see "
            "enforcement.granted_after_deadline)",
            h.instance_id,
            report.digest,
            report.head_seq,
            report.received_ms,
            score=interval / allowed,
        )
    ]


def usage_rate(h: InstanceHistory, th: ThresholdsConfig) -> list[Anomaly]:
    """Units per seat-hour far below this instance's own accepted history: in total,
    and for each meter on its own (``anomaly.meter_rate``).

    Judged in log space, where under-reporting by a fraction ``f`` is a shift of
    ``log(1 - f)`` whatever the customer's level. The baseline is the median of the
    log rates of the last ``rate_window`` slices of accepted history (slices of
    ``slice_ms``, so a monthly reporter has four baseline samples per report; slices
    with fewer than ``rate_min_seat_hours`` seat-hours are too noisy to count). The
    spread against which the drop is measured has three parts:

    * slice-to-slice drift: the slices' robust spread (1.4826 MAD), pooled with a
      prior of ``rate_sigma_prior`` worth ``rate_prior_weight`` slices, because the MAD
      of a few samples alone is often half or twice the truth; a judged span of ``m``
      slices (a monthly report, about four) averages its slices' drift, counted as
      ``1 + (m - 1) * rate_slice_independence`` independent slices;
    * the median's own uncertainty (``pi / 2n`` times the drift variance);
    * the judged report's sampling noise: for a sum of usage amounts ``a``, the relative
      variance is about ``sum(a^2) / sum(a)^2`` (compound Poisson; never below one
      record's worth when nothing was recorded).

    A finding needs both a drop beyond ``rate_z`` of that spread (``rate_span_z`` for a
    span of ``rate_span_slices`` slices or more, ADR 0041) and a relative drop beyond
    ``rate_floor``. Only drops count: the threat is usage that goes unreported.
    When the judged report alone shows none, the last ``rate_pool_reports`` reports are
    judged as one span against the slices before them: a drop that persists (clients
    patched to under-report stay patched) is out of line sooner over two reports than
    over one. Per meter, the threshold is raised for the number of meters judged (Bonferroni),
    so a site with three meters raises no more false alarms than a site with one;
    a meter whose records name no meter (a store that sums meters) is judged in total
    only.
    """
    report = _judged(h)
    if report is None:
        return []
    out: list[Anomaly] = []
    for pool in range(1, max(1, th.rate_pool_reports) + 1):
        out = _usage_rate_over(h, report, pool, th)
        if out:
            break
    return out


def _usage_rate_over(
    h: InstanceHistory, report: ReportView, pool: int, th: ThresholdsConfig
) -> list[Anomaly]:
    """:func:`usage_rate`'s findings for the last ``pool`` reports judged as one span."""
    rates = _rate_inputs(h, th, pool)
    if rates is None:
        return []
    past, now = rates
    span = "" if pool == 1 else f" over the last {pool} reports"
    out: list[Anomaly] = []
    z_limit, floor = _rate_limit(now.slices, th), _rate_floor(now.slices, th)
    total = _judge_rate(
        [x.units / x.seat_hours for x in past if x.units > 0], now.units, now.sum_sq,
        now.seat_hours, th, z_limit, floor, slices=now.slices,
    )  # fmt: skip
    if total is not None:
        out.append(_rate_finding(h, report, USAGE_RATE, "usage", now.seat_hours, total, span))
    meters = sorted(m for m in {k for x in past for k in x.per_meter} if m)
    if len(meters) > 1:
        # Bonferroni over the meters: the z of a one-sided tail probability / n.
        z = _z_for(_tail(z_limit) / len(meters))
        for m in meters:
            hist = [
                x.per_meter[m][0] / x.seat_hours for x in past if x.per_meter.get(m, (0, 0))[0] > 0
            ]
            if len(hist) < th.min_history_slices:
                continue
            units, sq = now.per_meter.get(m, (0, 0))
            found = _judge_rate(hist, units, sq, now.seat_hours, th, z, floor, slices=now.slices)
            if found is not None:
                out.append(
                    _rate_finding(
                        h, report, METER_RATE, f"meter {m!r}", now.seat_hours, found, span
                    )
                )
    return out


def _rate_limit(slices: float, th: ThresholdsConfig) -> float:
    """The deviations a drop of usage per seat-hour over ``slices`` slices must reach.

    ADR 0041: a span of ``rate_span_slices`` slices or more is judged at
    ``rate_span_z``, a shorter one at ``rate_z``. Fitted on the development seeds so
    that both are about 3.5 deviations of the honest reports' own scores, whose spread
    is narrower for spans (0.6-0.75) than for single weeks (0.83).
    """
    return th.rate_span_z if slices >= th.rate_span_slices else th.rate_z


def _rate_floor(slices: float, th: ThresholdsConfig) -> float:
    """The relative drop a span of ``slices`` slices must show as well (ADR 0045).

    One weekly report's span needs ``rate_week_floor``: an honest week's dip (a quiet
    week of a large round-the-clock site, whose deviations are almost all drift) reaches
    a quarter to a third at three deviations and is gone the week after, while clients
    patched to under-report stay patched, so a smaller drop that lasts is out of line
    over the next report's span. Longer spans need ``rate_floor``.
    """
    return th.rate_floor if slices >= th.rate_span_slices else th.rate_week_floor


@dataclass(frozen=True, slots=True)
class SpanScore:
    """One span :func:`usage_rate` judges, scored whatever the outcome (calibration)."""

    #: Reports in the span (1: the judged report alone).
    reports: int
    #: Slices of wall time it covers, and the thresholds that apply to that length:
    #: deviations and relative drop.
    slices: float
    z_limit: float
    floor: float
    #: Relative drop of total usage per seat-hour, and its deviations (negative: lower).
    drop: float
    z: float


def usage_rate_spans(h: InstanceHistory, th: ThresholdsConfig) -> list[SpanScore]:
    """Every span of the last 1 to ``rate_pool_reports`` reports that :func:`usage_rate`
    would judge, with its total usage score (what its thresholds are fitted on)."""
    out: list[SpanScore] = []
    for pool in range(1, max(1, th.rate_pool_reports) + 1):
        rates = _rate_inputs(h, th, pool)
        if rates is None:
            continue
        past, now = rates
        d = _rate_score(
            [x.units / x.seat_hours for x in past if x.units > 0], now.units, now.sum_sq,
            now.seat_hours, th, now.slices,
        )  # fmt: skip
        if d is not None:
            limit, floor = _rate_limit(now.slices, th), _rate_floor(now.slices, th)
            out.append(SpanScore(pool, now.slices, limit, floor, d.drop, d.z))
    return out


def _rate_inputs(
    h: InstanceHistory, th: ThresholdsConfig, pool: int = 1
) -> tuple[list[_RateSample], _RateSample] | None:
    """The baseline slices and the sample of the last ``pool`` reports together, or None
    if too little to judge (each of those reports must be one the history can judge)."""
    if not h.reports or len(h.reports) - pool < th.min_history_reports:
        return None
    judged = h.reports[-pool:]
    if pool > 1 and any(not r.events for r in judged):
        return None
    past_events = [e for r in h.reports[:-pool] for e in r.events]
    now_events = [e for r in judged for e in r.events]
    # Leases open when the span begins: the context of a history ending at its first report.
    first = replace(h, reports=h.reports[: len(h.reports) - pool + 1])
    now = _rate_sample(now_events, _context(first).open_leases)
    if now.seat_hours < th.rate_min_seat_hours:
        return None
    past = [
        x
        for x in _slice_samples(past_events, th.slice_ms)
        if x.seat_hours >= th.rate_min_seat_hours
    ][-th.rate_window :]
    if len(past) < th.min_history_slices:
        return None
    return past, replace(now, slices=_span_slices(now_events, th.slice_ms))


def _span_slices(events: Sequence[Event], slice_ms: int) -> float:
    """How many slices of wall time ``events`` span (at least one)."""
    if not events:
        return 1.0
    first = min(e.wall_ms for e in events)
    last = max(e.wall_ms for e in events)
    return max(1.0, (last - first) / slice_ms)


def weak_usage_drop(h: InstanceHistory, th: ThresholdsConfig) -> float | None:
    """The relative drop of total usage per seat-hour when it is weakly out of line.

    ``weak_rate_z`` deviations and ``weak_rate_floor`` instead of the rule's own
    thresholds: about one honest week in forty is this low, so it is no finding on
    its own, only one strand of combined evidence (:mod:`._combine`).
    """
    rates = _rate_inputs(h, th)
    if rates is None:
        return None
    past, now = rates
    found = _judge_rate(
        [x.units / x.seat_hours for x in past if x.units > 0], now.units, now.sum_sq,
        now.seat_hours, th, th.weak_rate_z, th.weak_rate_floor, slices=now.slices,
    )  # fmt: skip
    return None if found is None else found.drop


@dataclass(frozen=True, slots=True)
class _RateDrop:
    rate: float
    usual: float
    drop: float
    z: float


def _judge_rate(
    history_rates: Sequence[float],
    units: int,
    sum_sq: int,
    seat_hours: float,
    th: ThresholdsConfig,
    z_limit: float,
    floor: float | None = None,
    *,
    slices: float = 1.0,
) -> _RateDrop | None:
    """The drop of a span of ``slices`` slices against slices of history, if out of line."""
    d = _rate_score(history_rates, units, sum_sq, seat_hours, th, slices)
    if d is None or d.z > -z_limit or d.drop < (th.rate_floor if floor is None else floor):
        return None
    return d


def _rate_score(
    history_rates: Sequence[float],
    units: int,
    sum_sq: int,
    seat_hours: float,
    th: ThresholdsConfig,
    slices: float,
) -> _RateDrop | None:
    """The drop and its deviations, whatever their size (None with too little history)."""
    past = [math.log(r) for r in history_rates if r > 0]
    n = len(past)
    if n < th.min_history_slices:
        return None
    base = statistics.median(past)
    spread = _spread(past, base)
    k = th.rate_prior_weight
    drift_var = (k * th.rate_sigma_prior**2 + n * spread**2) / (k + n)
    if units > 0:
        log_now, sample_var = math.log(units / seat_hours), max(sum_sq / units**2, 0.0)
    else:
        # No (net) usage at all: count it as half a unit, as noisy as a single record.
        log_now, sample_var = math.log(0.5 / seat_hours), 1.0
    independent = 1 + (slices - 1) * th.rate_slice_independence
    sd = math.sqrt(drift_var * (1 / independent + math.pi / (2 * n)) + sample_var)
    z = (log_now - base) / sd
    drop = 1 - math.exp(log_now - base)
    return _RateDrop(max(0.0, units) / seat_hours, math.exp(base), drop, z)


def _spread(past: Sequence[float], base: float) -> float:
    """The larger of the robust and the classical spread of ``past`` around ``base``.

    With a few samples the MAD often lands on two near-equal slices and reports almost
    no spread (a 3-seat site whose weeks swing by 25 % showed a MAD of 1 %), while an
    outlier slice inflates the classical one. Taking the larger costs sensitivity,
    never a false alarm, which is the order the false-alarm budget asks for (ADR 0027).
    """
    return max(1.4826 * statistics.median(abs(x - base) for x in past), statistics.stdev(past))


def meter_mix(h: InstanceHistory, th: ThresholdsConfig) -> list[Anomaly]:
    """One meter's usage far below its usual share against the site's other meters.

    Clients that report one meter at a fraction leave the others as they were, so the
    meter's ratio to the rest of the site's usage falls by that fraction. Week-to-week
    swings of the whole workload and of seat-hours (which dominate a small site's
    usage per seat-hour, :data:`METER_RATE`) move every meter together and cancel in
    the ratio; what is left is each meter's sampling noise and the drift of the mix.

    Judged in log space like the usage rate: the baseline is the median of the log
    ratio ``log(units of the meter / units of the other meters)`` over the slices of
    accepted history (:func:`usage_rate`'s slices and window) in which both were used.
    The spread has the same three parts as the rate's, each with a floor:

    * the mix's slice-to-slice drift: the slices' spread *net of their own sampling
      noise* (which the median's uncertainty below already counts), pooled with a
      prior of ``mix_sigma_prior`` worth ``rate_prior_weight`` slices, so a history
      that happens to look steady never shrinks the drift below what the prior allows;
    * the median's own uncertainty (``pi / 2n`` times drift plus sampling variance);
    * the judged report's sampling noise of both sums (compound Poisson: the relative
      variance of a sum of amounts ``a`` is at most ``sum(a^2) / sum(a)^2``).

    A finding needs a drop of the ratio beyond ``rate_z`` of that spread, raised for the
    number of meters judged (Bonferroni, as for :data:`METER_RATE`), and beyond
    ``rate_floor``. A meter not used at all in the judged report is
    :data:`METER_RATE`'s finding (its rate is judged without a ratio's noise).
    """
    report = _judged(h)
    rates = _rate_inputs(h, th)
    if report is None or rates is None:
        return []
    past, now = rates
    meters = sorted(m for m in {k for x in past for k in x.per_meter} if m)
    if len(meters) < 2:
        return []
    z_limit = _z_for(_tail(th.rate_z) / len(meters))
    out: list[Anomaly] = []
    for m in meters:
        hist: list[tuple[float, float]] = []
        for x in past:
            mine, rest = _split(x.per_meter, m)
            if mine[0] > 0 and rest[0] > 0:
                hist.append((math.log(mine[0] / rest[0]), _rel_var(mine) + _rel_var(rest)))
        mine, rest = _split(now.per_meter, m)
        if len(hist) < th.min_history_slices or mine[0] <= 0 or rest[0] <= 0:
            continue
        now_var = _rel_var(mine) + _rel_var(rest)
        mix = _mix_drop(hist, math.log(mine[0] / rest[0]), now_var, th.mix_sigma_prior, th)
        if not _out_of_line(mix, z_limit, th):
            continue
        base, z, drop = mix.base, mix.z, mix.drop
        share, usual = mine[0] / (mine[0] + rest[0]), math.exp(base) / (1 + math.exp(base))
        out.append(
            Anomaly(
                METER_MIX,
                "warning",
                f"meter {m!r} is {share * 100:.0f}% of this report's usage, against a usual "
                f"{usual * 100:.0f}%: {drop * 100:.0f}% less of it for the same amount of the "
                f"site's other meters ({abs(z):.1f} standard deviations of its week-to-week "
                "variation, sampling noise included), while those meters went on as "
                "before. Clients that report one meter at a fraction look like this. "
                "Legitimate causes look like a change in the kind of work (fewer jobs of "
                "this kind) that persists in later reports. Ask the customer whether "
                "their work on this meter changed, and which client versions they run",
                h.instance_id,
                report.digest,
                report.head_seq,
                None,
                score=z,
                drivers=(("share", share), ("usual_share", usual)),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class _Mix:
    """A share judged against its history: the baseline log ratio, the deviations and
    relative drop of the judged one, and the variance of the mix's drift."""

    base: float
    z: float
    drop: float
    drift_var: float


def _mix_drop(
    hist: Sequence[tuple[float, float]],
    log_now: float,
    now_var: float,
    sigma_prior: float,
    th: ThresholdsConfig,
) -> _Mix:
    """A log ratio against slices of history, each ``(log ratio, its sampling variance)``.

    The spread has three parts, each with a floor: the slices' drift net of their own
    sampling noise, pooled with ``sigma_prior`` worth ``rate_prior_weight`` slices; the
    median's own uncertainty (``pi / 2n`` times drift plus sampling variance); and the
    judged ratio's sampling variance ``now_var``.
    """
    n = len(hist)
    logs = [x for x, _ in hist]
    base = statistics.median(logs)
    noise = statistics.fmean(v for _, v in hist)
    drift = max(0.0, _spread(logs, base) ** 2 - noise)
    k = th.rate_prior_weight
    drift_var = (k * sigma_prior**2 + n * drift) / (k + n)
    sd = math.sqrt(drift_var + (drift_var + noise) * math.pi / (2 * n) + now_var)
    return _Mix(base, (log_now - base) / sd, 1 - math.exp(log_now - base), drift_var)


def feature_mix(h: InstanceHistory, th: ThresholdsConfig) -> list[Anomaly]:
    """One feature's share of the site's seat time far below its usual share.

    Users of one feature moved to a copy of the server that does not report take that
    feature's seat time out of the reports while the site's other features go on: the
    feature's ratio to the rest of the site's seat time falls, whatever the site's
    workload did that week (which moves every feature together and cancels in the ratio).

    Judged like :func:`meter_mix` (:func:`_mix_drop`: the median log ratio over slices
    of history, here ``slice_ms`` of wall time counted back from the judged report's
    first record, with drift pooled with ``feature_sigma_prior``), with seat time in
    place of usage: its sampling unit is a session (one lease's time in the span), so
    the relative variance of a feature's seat time is ``sum(session^2) /
    sum(session)^2``, floored by its people's (:func:`_seat_var`). A feature with no
    seat time in a span counts half of one person's usual week, as noisy as half a
    person. The threshold is raised for the number of features judged (Bonferroni).

    The finding is a ``warning`` when the feature's use stopped at once
    (:func:`_stop`): judged from the moment its last seat was freed, so the week the
    use stopped in does not hide the stop in the baseline; otherwise a share out of line
    is ``info``: a share that fell over weeks, or fell to less, is what a team winding
    down its use leaves (people leave one by one, a project ends), and a move done in
    steps, or of part of a team, leaves that same trace, which the threat model says.
    """
    report = _judged(h)
    if report is None or not report.events or len(h.reports) - 1 < th.min_history_reports:
        return []
    spans, _ = lease_spans(list(h.events), dict.fromkeys(h.known_leases, ""))
    start = min(e.wall_ms for r in h.reports[:-1] for e in r.events) if h.reports[0].events else 0
    r0 = min(e.wall_ms for e in report.events)
    r1 = max(e.wall_ms for e in report.events)
    now = seat_time_in(spans, r0)
    if _seat_hours(now) < th.rate_min_seat_hours:
        return []
    past, ends = _seat_slices(spans, start, r0, th)
    features = sorted(f for f in {k for x in past for k in x} if f)
    if len(features) < 2 or len(past) < max(th.min_history_slices, 2):
        return []
    z_limit = _z_for(_tail(th.rate_z) / len(features))
    prev_end = h.reports[-2].last_wall_ms
    out: list[Anomaly] = []
    for f in features:
        stop = _stop(spans, f, start, r1, z_limit, th)
        if stop is not None:
            again = _stopped_before(stop, spans, f, start, prev_end, z_limit, th)
            out.append(_stop_finding(h, report, f, stop, again=again))
            continue
        base = _FeatureBase.of(f, past, ends)
        now_ratio = base.ratio(now)
        if len(base.hist) < th.min_history_slices or now_ratio is None:
            continue
        mix = base.judge(now_ratio, th)
        if _out_of_line(mix, z_limit, th):
            out.append(_feature_finding(h, report, f, now, mix))
    return out


def _seat_slices(
    spans: Sequence[LeaseSpan], start: int, until: int, th: ThresholdsConfig
) -> tuple[list[dict[str, SeatTime]], list[int]]:
    """Up to ``rate_window`` slices of ``slice_ms`` counted back from ``until`` to
    ``start``, each with at least ``rate_min_seat_hours`` of seat time: seat time per
    feature, and when each slice ends (oldest first)."""
    past: list[dict[str, SeatTime]] = []
    ends: list[int] = []
    end = until
    while end - th.slice_ms >= start and len(past) < th.rate_window:
        x = seat_time_in(spans, end - th.slice_ms, end)
        if _seat_hours(x) >= th.rate_min_seat_hours:
            past.insert(0, x)
            ends.insert(0, end)
        end -= th.slice_ms
    return past, ends


@dataclass(frozen=True, slots=True)
class _FeatureBase:
    """One feature's baseline: the slices of history, when each ends, and per slice
    the feature's (log ratio, variance) against the other features (None if undefined)."""

    feature: str
    past: list[dict[str, SeatTime]]
    ends: list[int]
    ratios: list[tuple[float, float] | None]

    @classmethod
    def of(cls, feature: str, past: list[dict[str, SeatTime]], ends: list[int]) -> _FeatureBase:
        return cls(feature, past, ends, [_seat_ratio(x, feature) for x in past])

    @property
    def hist(self) -> list[tuple[float, float]]:
        return [r for r in self.ratios if r is not None]

    def ratio(self, times: dict[str, SeatTime]) -> tuple[float, float] | None:
        return _seat_ratio(times, self.feature, hist_of=self.past)

    def judge(self, ratio: tuple[float, float], th: ThresholdsConfig) -> _Mix:
        return _mix_drop(self.hist, *ratio, th.feature_sigma_prior, th)

    def falling(self, th: ThresholdsConfig) -> bool:
        """Whether the history trends down, in the feature's share or in its own seat
        time: the weighted least-squares slope over the slices is ``weak_rate_z`` below
        zero (:func:`_trend_z`). A team winding down shows it over weeks; a flat history
        that stops does not. Its own seat time counts too, because a share against a
        small other feature is too noisy to show what a large team's hours show."""
        share, own = [], []
        for i, (times, ratio) in enumerate(zip(self.past, self.ratios, strict=True)):
            if ratio is not None:
                share.append((float(i), *ratio))
            t = times.get(self.feature, SeatTime())
            if t.ms > 0:
                own.append((float(i), math.log(t.ms), t.sq / t.ms**2))
        return min(_trend_z(share, th), _trend_z(own, th)) <= -th.weak_rate_z

    def in_line(self, ratio: tuple[float, float], th: ThresholdsConfig) -> bool:
        """Not below the baseline by more than the prior drift and the span's own
        sampling noise allow (``weak_rate_z``): neither below the median of every slice
        nor below that of the older half. The history's spread is left out, and the
        older half is there, because a wind-down inside the history widens the one and
        lowers the median, and would pass its own weeks as in line."""
        logs = [x for x, _ in self.hist]
        sd = math.sqrt(th.feature_sigma_prior**2 + ratio[1])
        older = logs[: max(1, len(logs) // 2)]
        base = max(statistics.median(logs), statistics.median(older))
        return (ratio[0] - base) / sd > -th.weak_rate_z


@dataclass(frozen=True, slots=True)
class _Stop:
    """A feature's use that stopped at once: when its last seat was freed, how long
    nothing of it was used to the report's end, its share in the two slices before and
    its usual share, and the step's size in standard deviations."""

    at_ms: int
    idle_ms: int
    before_share: float
    usual_share: float
    z: float


def _stop(
    spans: Sequence[LeaseSpan],
    feature: str,
    start: int,
    r1: int,
    z_limit: float,
    th: ThresholdsConfig,
) -> _Stop | None:
    """The feature's use stopped at once and stayed stopped to ``r1``, the report's end.

    The stop is the moment the feature's last seat was freed, at least ``slice_ms``
    before ``r1``; the baseline is the slices counted back from it, so the part of a
    week used before the stop is no outlier in its own baseline, and the idle span runs
    from it to ``r1``, counted up to ``feature_idle_max_ms``. It stopped at once when

    * the idle span, with no seat of the feature at all, is out of line against the
      baseline (``z_limit``; no use counts half of one person's usual week over the
      whole span, with half a person's variance: a small team's week off is not a stop,
      and a person who left is not one however long ago);
    * the two slices before the stop were in line with the baseline
      (:meth:`_FeatureBase.in_line`), every regular client of the feature was seen in
      them (:func:`_regulars_stayed`), the baseline does not trend down
      (:meth:`_FeatureBase.falling`), and the idle span is out of line against those
      two slices too (``z_limit`` of both spans' noise and the history's drift).

    A fall to less, however steep, is no stop: a team winding down loses several
    people in one week often enough (three of six within a fortnight of an eight-week
    wind-down, about one time in two), and users moved to a copy take all of theirs.
    """
    at = max((s.end_ms for s in spans if s.feature == feature), default=None)
    if at is None or r1 - at < th.slice_ms:
        return None
    past, ends = _seat_slices(spans, start, at, th)
    base = _FeatureBase.of(feature, past, ends)
    if len(base.hist) < max(th.min_history_slices, 2):
        return None
    idle = seat_time_in(spans, at, min(r1, at + th.feature_idle_max_ms))
    after = base.ratio(idle)
    if after is None or _seat_hours(idle) < th.rate_min_seat_hours:
        return None
    mix = base.judge(after, th)
    if not _out_of_line(mix, z_limit, th):
        return None
    before = base.ratio(seat_time_in(spans, at - 2 * th.slice_ms, at))
    if before is None or not base.in_line(before, th) or base.falling(th):
        return None
    if not _regulars_stayed(spans, base, at, th):
        return None
    z = _z_between(before, after, mix.drift_var)
    if z > -z_limit:
        return None
    return _Stop(at, r1 - at, _share(before[0]), _share(mix.base), z)


def _regulars_stayed(
    spans: Sequence[LeaseSpan], base: _FeatureBase, at: int, th: ThresholdsConfig
) -> bool:
    """Whether the feature's regular clients stayed to the stop: a regular is a named
    client seen in at least half of the baseline's slices before the two slices before
    the stop (all of them, if fewer than two are older). Every regular must have held a
    seat of the feature within those two slices (ADR 0040), and all but
    ``feature_away_share`` of them (rounded down) must have missed no more of the
    team's working days (:class:`WorkingDays`) before the stop than they missed in a
    row in those older slices, or than ``feature_absence_floor_days`` (ADR 0043).

    People leave a team one by one, so when the last of a winding-down team stop the
    others are already gone, and for longer than they were ever away; users moved to a
    copy leave together, each from one of their own working days. A count of people is
    what seat time cannot give a small team: four people's weeks vary by a quarter, yet
    one of the four missing is plain, and the first of three to leave, gone three
    working days where one was the most they had missed, is plain too. Absences are
    counted in the days the team itself worked, each beginning at the hour its seats
    were least held, not in hours or UTC days: a weekend a few hours longer than the
    ones before is no absence, and a night shift is one day. Clients that are not
    named (older sources) are no evidence either way."""
    two = at - 2 * th.slice_ms
    ends = [e for e in base.ends if e <= two]
    if len(ends) < 2:
        ends = list(base.ends)
    seen: dict[str, int] = {}
    for end in ends:
        for c in clients_in(spans, base.feature, end - th.slice_ms, end):
            seen[c] = seen.get(c, 0) + 1
    regulars = {c for c, n in seen.items() if 2 * n >= len(ends)}
    if not regulars <= clients_in(spans, base.feature, two, at):
        return False
    team = [s for s in spans if s.feature == base.feature]
    days = WorkingDays.of(team, ends[0] - th.slice_ms, ends[-1])
    away = 0
    for c in regulars:
        mine = [(s.start_ms, s.end_ms) for s in team if s.client == c]
        last = max(e for _, e in mine if e <= at)
        usual = days.most_missed(mine, ends[0] - th.slice_ms, ends[-1])
        away += days.missed(last, at) > max(usual, th.feature_absence_floor_days)
    return away <= int(len(regulars) * th.feature_away_share)


def _stopped_before(
    stop: _Stop,
    spans: Sequence[LeaseSpan],
    feature: str,
    start: int,
    prev_end: int | None,
    z_limit: float,
    th: ThresholdsConfig,
) -> bool:
    """Whether the previous report already showed this stop (one stop, one warning):
    judged at that report's end, with the seat time known then."""
    if prev_end is None or prev_end - stop.at_ms < th.slice_ms:
        return False
    seen = [s for s in spans if s.start_ms < prev_end]
    return _stop(seen, feature, start, prev_end, z_limit, th) is not None


def _share(log_ratio: float) -> float:
    """A feature's share of seat time from its log ratio to the other features'."""
    return math.exp(log_ratio) / (1 + math.exp(log_ratio))


def _out_of_line(mix: _Mix, z_limit: float, th: ThresholdsConfig) -> bool:
    return mix.z <= -z_limit and mix.drop >= th.rate_floor


def _trend_z(points: Sequence[tuple[float, float, float]], th: ThresholdsConfig) -> float:
    """The slope of ``(slice index, log value, sampling variance)`` points, in standard
    deviations (weighted least squares, each point's variance its own plus the prior
    drift ``feature_sigma_prior``); 0 with fewer than three points."""
    if len(points) < 3:
        return 0.0
    w = [1 / (th.feature_sigma_prior**2 + v) for _, _, v in points]
    sw = sum(w)
    mx = sum(wi * x for wi, (x, _, _) in zip(w, points, strict=True)) / sw
    my = sum(wi * y for wi, (_, y, _) in zip(w, points, strict=True)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, (x, _, _) in zip(w, points, strict=True))
    sxy = sum(wi * (x - mx) * (y - my) for wi, (x, y, _) in zip(w, points, strict=True))
    return sxy / math.sqrt(sxx)


def _z_between(a: tuple[float, float], b: tuple[float, float], drift_var: float) -> float:
    """Deviations of log ratio ``b`` from ``a``, each with its sampling variance."""
    return (b[0] - a[0]) / math.sqrt(drift_var + a[1] + b[1])


def _seat_hours(times: dict[str, SeatTime]) -> float:
    return sum(t.ms for t in times.values()) / HOUR_MS


#: The relative variance of one person's week of seat time (a week off, a busy week).
_PERSON_VAR: Final = 0.25


def _seat_var(t: SeatTime) -> float:
    """Relative sampling variance of seat time: its sessions', and never less than its
    people's (people come and go, not sessions: ``_PERSON_VAR`` over the most seats
    held at once, about how many people use the feature)."""
    return max(t.sq / t.ms**2, _PERSON_VAR / max(1, t.peak))


def _seat_ratio(
    times: dict[str, SeatTime], feature: str, hist_of: Sequence[dict[str, SeatTime]] = ()
) -> tuple[float, float] | None:
    """(log of ``feature``'s seat time over the other named features', its sampling
    variance), or None if the other features had none. With ``hist_of`` (the history),
    a feature with no seat time counts half of one person's usual week, with the
    variance of half a person (:func:`_seat_var`'s floor)."""
    others = [v for k, v in times.items() if k and k != feature]
    rest = SeatTime(
        sum(t.ms for t in others),
        sum(t.sq for t in others),
        sum(t.sessions for t in others),
        sum(t.peak for t in others),
    )
    if rest.ms <= 0:
        return None
    mine = times.get(feature, SeatTime())
    if mine.ms > 0:
        return math.log(mine.ms / rest.ms), _seat_var(mine) + _seat_var(rest)
    weeks = [x[feature] for x in hist_of if x.get(feature, SeatTime()).ms > 0]
    if not weeks:
        return None
    per_person = statistics.fmean(t.ms / max(1, t.peak) for t in weeks)
    return math.log(0.5 * per_person / rest.ms), _PERSON_VAR / 0.5 + _seat_var(rest)


def _feature_finding(
    h: InstanceHistory,
    report: ReportView,
    feature: str,
    now: dict[str, SeatTime],
    mix: _Mix,
) -> Anomaly:
    total = sum(t.ms for k, t in now.items() if k)
    share = now.get(feature, SeatTime()).ms / total if total else 0.0
    usual = _share(mix.base)
    message = (
        f"feature {feature!r} took {share * 100:.0f}% of this report's seat time, against a "
        f"usual {usual * 100:.0f}%: {mix.drop * 100:.0f}% less of it for the same seat time "
        f"of the site's other features ({abs(mix.z):.1f} standard deviations of its "
        "week-to-week variation, sampling noise included). Its use did not stop at once "
        "after weeks in line: it fell over weeks, or to less, as a team winding down its "
        "use of the feature leaves. If the customer expects no such change, ask whether "
        "another server serves its users"
    )
    return Anomaly(
        FEATURE_MIX,
        "info",
        message,
        h.instance_id,
        report.digest,
        report.head_seq,
        None,
        score=mix.z,
        drivers=(("share", share), ("usual_share", usual)),
    )


def _stop_finding(
    h: InstanceHistory, report: ReportView, feature: str, stop: _Stop, *, again: bool
) -> Anomaly:
    """The stop's warning; ``info`` when the previous report already showed it."""
    at = datetime.fromtimestamp(stop.at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    severity: Severity = "info" if again else "warning"
    if again:
        message = (
            f"still no seat of feature {feature!r} taken since {at} "
            f"({_fmt_ms(stop.idle_ms)}), the stop the previous report was warned of"
        )
    else:
        message = (
            f"the use of feature {feature!r} stopped at once: no seat of it was taken for "
            f"{_fmt_ms(stop.idle_ms)} since its last seat was freed at {at}, while the "
            f"site's other features went on; in the two weeks before it took "
            f"{stop.before_share * 100:.0f}% of the site's seat time, against a usual "
            f"{stop.usual_share * 100:.0f}%, and had not been falling "
            f"({abs(stop.z):.1f} standard deviations of its week-to-week variation, "
            "sampling noise included). Users of one feature moved to a copy of the server "
            "that does not report look like this. Legitimate causes look like a team that "
            "stopped using the feature all together (a project ended, the team moved on "
            "or is away), which the customer will know of. Ask the customer whether work "
            "on this feature stopped on that day, and whether another server serves its "
            "users"
        )
    return Anomaly(
        FEATURE_MIX,
        severity,
        message,
        h.instance_id,
        report.digest,
        report.head_seq,
        None,
        score=stop.z,
        drivers=(("before_share", stop.before_share), ("usual_share", stop.usual_share)),
    )


def _split(
    per_meter: dict[str, tuple[int, int]], meter: str
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(units, sum of squares) of ``meter`` and of every other named meter together."""
    mine = per_meter.get(meter, (0, 0))
    rest = [v for k, v in per_meter.items() if k and k != meter]
    return mine, (sum(u for u, _ in rest), sum(q for _, q in rest))


def _rel_var(units_sq: tuple[int, int]) -> float:
    """Relative sampling variance of a sum of amounts (compound Poisson upper bound)."""
    units, sq = units_sq
    return sq / units**2 if units > 0 else 1.0


def _tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _z_for(p: float) -> float:
    return statistics.NormalDist().inv_cdf(1 - p)


def _rate_finding(
    h: InstanceHistory,
    report: ReportView,
    code: str,
    what: str,
    seat_hours: float,
    d: _RateDrop,
    span: str = "",
) -> Anomaly:
    return Anomaly(
        code,
        "warning",
        f"{what} per seat-hour{span} is {d.rate:.2f}, {d.drop * 100:.0f}% lower than this "
        f"instance's usual {d.usual:.2f} over {seat_hours:.0f} seat-hours "
        f"({abs(d.z):.1f} standard deviations of its week-to-week variation): usage may be "
        "under-reported. Legitimate causes look like a change of work (a new project, "
        "a lighter kind of job) that persists in later reports. Ask the customer "
        "whether their work changed, and which client versions they run",
        h.instance_id,
        report.digest,
        report.head_seq,
        None,
        score=d.z,
        drivers=(("units_per_seat_hour", d.rate), ("history_median", d.usual)),
    )


@dataclass(frozen=True, slots=True)
class _RateSample:
    """Usage units, their sum of squares, and seat-hours of one span; per meter too."""

    units: int
    sum_sq: int
    seat_hours: float
    per_meter: dict[str, tuple[int, int]]
    #: How many slices of wall time the span covers (a monthly report about four).
    slices: float = 1.0


def _slice_samples(events: Sequence[Event], slice_ms: int) -> list[_RateSample]:
    """One :class:`_RateSample` per slice of ``events``; seat time runs across slices."""
    out: list[_RateSample] = []
    leases: set[str] = set()
    for sl in _slices(events, slice_ms):
        out.append(_rate_sample(sl, frozenset(leases)))
        for e in sl:
            if e.kind == CHECKOUT:
                leases.add(e.lease)
            elif e.kind in (RELEASE, EXPIRE):
                leases.discard(e.lease)
    return out


def _rate_sample(events: Sequence[Event], open_leases: frozenset[str] = frozenset()) -> _RateSample:
    hours, _ = hourly(list(events), open_leases)
    per: dict[str, tuple[int, int]] = {}
    sum_sq = 0
    for e in events:
        if e.kind in (USAGE, DECREMENT):
            sum_sq += e.amount * e.amount
            u, q = per.get(e.meter, (0, 0))
            per[e.meter] = (u + e.amount, q + e.amount * e.amount)
    return _RateSample(
        sum(hours.units.values()), sum_sq, sum(hours.seat_ms.values()) / HOUR_MS, per
    )


def downtime(h: InstanceHistory, th: ThresholdsConfig) -> list[Anomaly]:
    """Server stops that cost the customer's usual working time, judged by how they ended.

    For every restart in the judged report (a BOOT or RECOVERY record), the downtime
    runs from the last record before it to the restart. Its cost is the work this
    site usually does in those hours of the week (the mean units per hour of week
    over accepted history), in working days (the mean of its five busiest days). A
    stop is *planned* when it ended with a SHUTDOWN record and no seat was checked
    out; otherwise it is
    *unplanned* (a crash, a power cut, kill -9, or a restored copy whose records end
    where the copy was taken).

    * ``warning``: unplanned stops of this report cost ``downtime_warn_days`` or more
      in total (a power cut of three working hours costs about 0.4 days; suppressing
      usage by stopping the server for a working day costs about 1), or one unplanned
      stop lasted ``downtime_long_ms`` or more and cost ``downtime_info_days`` (a server
      left down from the afternoon to the night: users who cannot work get an honest
      crash restarted within hours);
    * ``info``: any stop costing ``downtime_info_days`` or more.
    """
    report = _judged(h)
    if report is None or not report.events or not _enough_history(h, th):
        return []
    past = [e for r in h.reports[:-1] for e in r.events]
    profile = _week_profile(past)
    if profile is None:
        return []
    per_hour, per_day = profile
    prev = past[-1] if past else None
    leases: set[str] = set(_context(h).open_leases)
    in_use = _context(h).in_use
    stops: list[tuple[Event, Event, float, bool, int]] = []
    for e in report.events:
        if e.kind in (BOOT, RECOVERY) and prev is not None and prev.kind not in (BOOT, RECOVERY):
            seats = max(len(leases), in_use)
            planned = prev.kind == SHUTDOWN and seats == 0
            cost = _expected_units(per_hour, prev.wall_ms, e.wall_ms) / per_day
            stops.append((prev, e, cost, planned, seats))
        if e.kind == CHECKOUT:
            leases.add(e.lease)
        elif e.kind in (RELEASE, EXPIRE):
            leases.discard(e.lease)
            # The last heartbeat's count is stale once a seat is given back.
            in_use = max(0, in_use - 1)
        elif e.kind == HEARTBEAT and e.in_use >= 0:
            in_use = e.in_use
        elif e.kind in (BOOT, RECOVERY):
            in_use = 0
        prev = e
    unplanned = [x for x in stops if not x[3]]
    lost = sum(x[2] for x in unplanned)
    left_down = [
        x
        for x in unplanned
        if x[1].wall_ms - x[0].wall_ms >= th.downtime_long_ms and x[2] >= th.downtime_info_days
    ]
    out: list[Anomaly] = []
    if lost >= th.downtime_warn_days or left_down:
        worst = max(left_down or unplanned, key=lambda x: x[2])
        a, b, cost, _, seats = worst
        out.append(
            Anomaly(
                DOWNTIME,
                "warning",
                f"the server was down for {_fmt_ms(b.wall_ms - a.wall_ms)} after record "
                f"{a.seq} ({'no shutdown record' if a.kind != SHUTDOWN else 'shut down'} "
                f"with {seats} seat(s) checked out), restarting at record {b.seq}; this "
                f"site usually does {cost:.1f} days' worth of work in those hours "
                f"({len(unplanned)} such stop(s) in this report, {lost:.1f} days in all). "
                "Work done meanwhile was not metered. Legitimate causes look like a power "
                "cut or hardware failure: short (users who cannot work get the server "
                "restarted within hours), rare, with users idle meanwhile. Ask the "
                "customer what stopped the server, why it stayed down, whether users kept "
                "working, and whether the server's data was restored from a backup",
                h.instance_id,
                report.digest,
                b.seq,
                b.wall_ms,
                score=lost,
                drivers=(("lost_days", lost), ("stops", float(len(unplanned)))),
            )
        )
    else:
        for a, b, cost, planned, _seats in stops:
            if cost < th.downtime_info_days:
                continue
            kind = "a planned stop (shut down, no seat out)" if planned else "an unplanned stop"
            out.append(
                Anomaly(
                    DOWNTIME,
                    "info",
                    f"the server was down for {_fmt_ms(b.wall_ms - a.wall_ms)} after record "
                    f"{a.seq}, {kind}, in hours worth {cost:.1f} days of this site's usual "
                    "work. Routine for maintenance and holidays; worth a question only if "
                    "it recurs in working hours",
                    h.instance_id,
                    report.digest,
                    b.seq,
                    b.wall_ms,
                    score=cost,
                )
            )
    return out


def _week_profile(events: Sequence[Event]) -> tuple[list[float], float] | None:
    """Mean units per hour of week over ``events`` and the units of a working day.

    ``None`` with less than two weeks of history or no usage at all.
    """
    if not events:
        return None
    first = min(e.wall_ms for e in events)
    last = max(e.wall_ms for e in events)
    if last - first < 14 * DAY_MS:
        return None
    units: dict[int, int] = {}
    for e in events:
        if e.kind in (USAGE, DECREMENT):
            hr = e.wall_ms - e.wall_ms % HOUR_MS
            units[hr] = units.get(hr, 0) + e.amount
    sums = [0.0] * WEEK_HOURS
    counts = [0] * WEEK_HOURS
    t = first - first % HOUR_MS
    while t <= last:
        w = hour_of_week(t)
        sums[w] += units.get(t, 0)
        counts[w] += 1
        t += HOUR_MS
    per_hour = [s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)]
    # The unit is a working day: the mean of the five busiest days of the week, so a
    # site that never works weekends is not charged 7/5 days for one working day.
    days = sorted((sum(per_hour[d * 24 : d * 24 + 24]) for d in range(7)), reverse=True)
    per_day = sum(days[:5]) / 5
    if per_day <= 0:
        return None
    return per_hour, per_day


def _expected_units(per_hour: Sequence[float], start: int, end: int) -> float:
    """Expected units between two wall times by the hour-of-week profile."""
    if end <= start:
        return 0.0
    # Beyond four weeks the profile only repeats: cap the walk.
    end = min(end, start + 28 * DAY_MS)
    total, t = 0.0, start
    while t < end:
        h = t - t % HOUR_MS
        nxt = min(end, h + HOUR_MS)
        total += per_hour[hour_of_week(t)] * (nxt - t) / HOUR_MS
        t = nxt
    return total


def before_issue(h: InstanceHistory, th: ThresholdsConfig) -> list[Anomaly]:
    """Records of the judged report dated well before the license was issued.

    An honest server cannot record anything for a license before the vendor issued
    it; a server whose clock says otherwise had its clock set back, which matters most
    on a fresh copy of the server started to run a second site on one license.
    """
    report = _judged(h)
    if report is None or h.license_issued_ms is None:
        return []
    limit = h.license_issued_ms - th.before_issue_tolerance_ms
    early = [e for e in report.events if e.wall_ms < limit]
    if not early:
        return []
    first = early[0]
    return [
        Anomaly(
            BEFORE_ISSUE,
            "warning",
            f"{len(early)} record(s) of this report, the first at record {first.seq}, are "
            f"dated up to {_fmt_ms(limit - min(e.wall_ms for e in early))} before the "
            "license was issued: the server's clock was set back. No legitimate cause "
            "produces this except a machine whose clock was never set. Ask the customer "
            "which machine runs this server, and whether another copy of it exists",
            h.instance_id,
            report.digest,
            first.seq,
            first.wall_ms,
            score=float(len(early)),
        )
    ]


def clones(
    judged: InstanceHistory, others: Sequence[InstanceHistory], th: ThresholdsConfig
) -> list[Anomaly]:
    """Another instance of the same license active over the same time as the judged report.

    Activity is taken from both clocks we have: the records' wall times and the vendor's
    receive times, so setting one server's clock aside does not hide the overlap.
    """
    report = _judged(judged)
    if report is None or not report.events:
        return []
    lo = min(report.first_wall_ms or report.received_ms, _prev_received(judged))
    hi = max(report.last_wall_ms or 0, report.received_ms)
    out = []
    for other in others:
        if other.instance_id == judged.instance_id or other.license_id != judged.license_id:
            continue
        spans = [
            (min(r.first_wall_ms or r.received_ms, r.received_ms), r.received_ms)
            for r in other.reports
        ]
        if any(a < hi and b > lo for a, b in spans):
            out.append(
                Anomaly(
                    CLONE,
                    "critical",
                    f"instance {other.instance_id} also reports for license "
                    f"{judged.license_id} over the same period as this report: two servers "
                    "are running one license (a cloned server). A reinstalled server "
                    "looks different: the old one stops reporting before the new one "
                    "starts. Ask the customer which machines run the server",
                    judged.instance_id,
                    report.digest,
                    None,
                    lo,
                )
            )
    return out


def _prev_received(h: InstanceHistory) -> int:
    return h.reports[-2].received_ms if len(h.reports) > 1 else h.reports[-1].received_ms


#: Rules over one instance, in the order their findings are listed.
INSTANCE_RULES: Final[tuple[Rule, ...]] = (
    clock_checks,
    usage_stopped,
    lease_unknown,
    report_late,
    usage_rate,
    meter_mix,
    feature_mix,
    downtime,
    before_issue,
)


def run_rules(
    judged: InstanceHistory,
    license_peers: Sequence[InstanceHistory] = (),
    th: ThresholdsConfig | None = None,
    *,
    clock: bool = True,
) -> list[Anomaly]:
    """Every rule over the last report of ``judged``; ``license_peers`` for clone checks.

    ``clock=False`` leaves out :func:`clock_checks`: ingest has already run the same
    checks over every record of the report as it streamed in.
    """
    th = th or ThresholdsConfig()
    out: list[Anomaly] = []
    for rule in INSTANCE_RULES:
        if rule is clock_checks and not clock:
            continue
        out.extend(rule(judged, th))
    out.extend(clones(judged, license_peers, th))
    return out
