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
from dataclasses import dataclass
from typing import Any, Final, Literal

from meterbox.ledger import RecordType
from meterbox.vendorkit import clockcheck
from meterbox.vendorkit.anomaly._features import (
    BOOT,
    CHECKOUT,
    CLOCK_STEP,
    DECREMENT,
    EXPIRE,
    HEARTBEAT,
    HOUR_MS,
    RECEIPT,
    RELEASE,
    RENEW,
    USAGE,
    Event,
    InstanceHistory,
    ReportView,
    Thresholds,
    hourly,
)

Severity = Literal["critical", "warning", "info"]

USAGE_STOPPED: Final = "anomaly.usage_stopped"
CLONE: Final = "anomaly.clone"
REPORT_LATE: Final = "anomaly.report_late"
USAGE_RATE: Final = "anomaly.usage_rate"
LEASE_UNKNOWN: Final = "anomaly.lease_unknown"
LEARNED: Final = "anomaly.learned"

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


Rule = Callable[[InstanceHistory, Thresholds], list[Anomaly]]

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
def clock_checks(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
    """Clock and heartbeat evidence in the judged report, by the checks ingest runs.

    Accepted history is fed as acknowledged (context only: the last record, leases
    open, receipts imported); the judged report's records are judged. The vendor's
    clock is the time the report was received.
    """
    report = _judged(h)
    if report is None:
        return []
    checker = clockcheck.ClockChecker(vendor_now_ms=report.received_ms, policy=th.clock)
    for r in h.reports[:-1]:
        for e in r.events:
            _observe(checker, e, acked=True)
    for e in report.events:
        _observe(checker, e, acked=False)
    if report.created_ms > 0:
        checker.check_created(report.created_ms)
    walls = {e.seq: e.wall_ms for e in report.events}
    return [
        Anomaly(
            f.code,
            "warning",
            f.message,
            h.instance_id,
            report.digest,
            f.seq,
            walls.get(f.seq) if f.seq is not None else None,
        )
        for f in checker.findings()
    ]


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


def lease_unknown(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
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
        elif e.kind in (RENEW, RELEASE, EXPIRE) and e.lease and e.lease not in known:
            orphans.append(e)
            known.add(e.lease)
    if not orphans:
        return []
    first = orphans[0]
    return [
        Anomaly(
            LEASE_UNKNOWN,
            "warning",
            f"record {first.seq} ends seat lease {first.lease[:64]!r}, which this server "
            f"never checked out in its reported history ({len(orphans)} such lease(s) in "
            "this report): checkout records were lost, as when a snapshot is restored",
            h.instance_id,
            report.digest,
            first.seq,
            first.wall_ms,
            score=float(len(orphans)),
        )
    ]


def usage_stopped(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
    """Seats checked out for so long without usage that history makes it implausible.

    From accepted history: usage records per seat-hour (three quarters of the lower
    quartile of the per-report rates, so a slow week does not raise alarms). A silence of ``S``
    seat-hours has Poisson probability ``exp(-rate * S)``; below ``silence_p`` it is
    reported.
    """
    report = _judged(h)
    if report is None or len(h.reports) - 1 < th.min_history_reports:
        return []
    rates = [r for r in (_records_per_seat_hour(x.events) for x in h.reports[:-1]) if r > 0]
    if len(rates) < th.min_history_reports:
        return []
    rate = sorted(rates)[len(rates) // 4] * 0.75
    limit = -math.log(th.silence_p) / rate
    ctx = _context(h)
    leases = set(ctx.open_leases)
    silent_ms, last_t, start_seq = 0.0, report.events[0].wall_ms if report.events else 0, None
    out: list[Anomaly] = []
    reported = False
    for e in report.events:
        if leases and e.wall_ms > last_t:
            silent_ms += (e.wall_ms - last_t) * len(leases)
        last_t = max(last_t, e.wall_ms)
        if e.kind in (USAGE, DECREMENT):
            silent_ms, start_seq, reported = 0.0, None, False
            continue
        if start_seq is None:
            start_seq = e.seq
        if not reported and silent_ms / HOUR_MS > limit:
            reported = True
            out.append(
                Anomaly(
                    USAGE_STOPPED,
                    "warning",
                    f"seats stayed checked out for {silent_ms / HOUR_MS:.1f} seat-hours up to "
                    f"record {e.seq} with no usage recorded; history expects about "
                    f"{rate * silent_ms / HOUR_MS:.0f} usage records in that time",
                    h.instance_id,
                    report.digest,
                    e.seq,
                    e.wall_ms,
                    score=rate * silent_ms / HOUR_MS,
                )
            )
        if e.kind == CHECKOUT:
            leases.add(e.lease)
        elif e.kind in (RELEASE, EXPIRE):
            leases.discard(e.lease)
    return out


def _records_per_seat_hour(events: Sequence[Event]) -> float:
    hours, _ = hourly(list(events))
    seat_h = sum(hours.seat_ms.values()) / HOUR_MS
    return sum(hours.records.values()) / seat_h if seat_h > 1 else 0.0


def report_late(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
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
            "info",
            f"this report arrived {_fmt_ms(interval)} after the previous one; the license "
            f"asks for one every {_fmt_ms(h.report_every_ms)}"
            + (f" plus {_fmt_ms(h.grace_ms)} grace" if h.grace_ms else ""),
            h.instance_id,
            report.digest,
            report.head_seq,
            report.received_ms,
            score=interval / allowed,
        )
    ]


def usage_rate(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
    """Units per seat-hour far below the instance's own accepted reports.

    Judged in log space, where under-reporting by a fraction ``f`` is a shift of
    ``log(1 - f)`` whatever the customer's level. The baseline is the median of the
    last ``rate_window`` accepted reports' log rates (reports with fewer than
    ``rate_min_seat_hours`` seat-hours are too noisy to count). The spread against
    which the drop is measured has three parts:

    * week-to-week drift: the reports' robust spread (1.4826 MAD), pooled with a prior
      of ``rate_sigma_prior`` worth ``rate_prior_weight`` reports, because the MAD of
      three to six reports alone is often half or twice the truth, which either
      misses large drops or raises alarms for small ones;
    * the median's own uncertainty (``pi / 2n`` times the drift variance);
    * the judged report's sampling noise: for a sum of usage amounts ``a``, the relative
      variance is about ``sum(a^2) / sum(a)^2`` (compound Poisson). The vendor store
      sums usage per minute, which can only overstate it, so the rule errs quiet.

    A finding needs both a drop beyond ``rate_z`` of that spread and a relative drop
    beyond ``rate_floor``. Only drops count: the threat is usage that goes unreported,
    and a customer whose workload grows pays for it; judging one side halves the false
    alarms that honest drift raises, at no cost in recall.
    """
    report = _judged(h)
    if report is None or len(h.reports) - 1 < th.min_history_reports:
        return []
    now = _rate_sample(report.events)
    if now.seat_hours < th.rate_min_seat_hours:
        return []
    past = [
        math.log(x.units / x.seat_hours)
        for x in (_rate_sample(r.events) for r in h.reports[:-1])
        if x.seat_hours >= th.rate_min_seat_hours and x.units > 0
    ][-th.rate_window :]
    n = len(past)
    if n < th.min_history_reports:
        return []
    base = statistics.median(past)
    mad_sd = 1.4826 * statistics.median(abs(x - base) for x in past)
    k = th.rate_prior_weight
    drift_var = (k * th.rate_sigma_prior**2 + n * mad_sd**2) / (k + n)
    if now.units > 0:
        log_now, sample_var = math.log(now.units / now.seat_hours), now.sum_sq / now.units**2
    else:
        # No (net) usage at all: count it as half a unit, as noisy as a single record.
        log_now, sample_var = math.log(0.5 / now.seat_hours), 1.0
    sd = math.sqrt(drift_var * (1 + math.pi / (2 * n)) + sample_var)
    z = (log_now - base) / sd
    drop = 1 - math.exp(log_now - base)
    if z > -th.rate_z or drop < th.rate_floor:
        return []
    usual, rate = math.exp(base), max(0.0, now.units) / now.seat_hours
    return [
        Anomaly(
            USAGE_RATE,
            "warning",
            f"usage per seat-hour is {rate:.2f}, {drop * 100:.0f}% lower than this "
            f"instance's usual {usual:.2f} over {now.seat_hours:.0f} seat-hours "
            f"({abs(z):.1f} standard deviations of its week-to-week variation); usage may "
            "be under-reported",
            h.instance_id,
            report.digest,
            report.head_seq,
            None,
            score=z,
            drivers=(("units_per_seat_hour", rate), ("history_median", usual)),
        )
    ]


@dataclass(frozen=True, slots=True)
class _RateSample:
    """Usage units, their sum of squares, and seat-hours of one report."""

    units: int
    sum_sq: int
    seat_hours: float


def _rate_sample(events: Sequence[Event]) -> _RateSample:
    hours, _ = hourly(list(events))
    sum_sq = sum(e.amount * e.amount for e in events if e.kind in (USAGE, DECREMENT))
    return _RateSample(sum(hours.units.values()), sum_sq, sum(hours.seat_ms.values()) / HOUR_MS)


def clones(
    judged: InstanceHistory, others: Sequence[InstanceHistory], th: Thresholds
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
                    "are running one license (a cloned server)",
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
)


def run_rules(
    judged: InstanceHistory,
    license_peers: Sequence[InstanceHistory] = (),
    th: Thresholds | None = None,
    *,
    clock: bool = True,
) -> list[Anomaly]:
    """Every rule over the last report of ``judged``; ``license_peers`` for clone checks.

    ``clock=False`` leaves out :func:`clock_checks`: ingest has already run the same
    checks over every record of the report as it streamed in.
    """
    th = th or Thresholds()
    out: list[Anomaly] = []
    for rule in INSTANCE_RULES:
        if rule is clock_checks and not clock:
            continue
        out.extend(rule(judged, th))
    out.extend(clones(judged, license_peers, th))
    return out
