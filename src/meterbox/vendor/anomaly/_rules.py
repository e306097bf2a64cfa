"""Rule detectors: each reads an :class:`InstanceHistory` and judges its last report.

Every rule is a pure function ``(history, thresholds) -> list[Anomaly]`` with one stable
finding code (``anomaly.*``; never rename one, only add). Rules judge only the records
that were new in the last report; earlier reports are accepted history that supplies
context (the last record before, leases still open, baselines).

What a rule cannot see it does not guess: a rule that needs monotonic time is silent
when the source did not keep it (``mono_ms == -1``); a rule that needs history is silent
until ``min_history_reports`` accepted reports exist.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from meterbox.vendor.anomaly._features import (
    BOOT,
    CHECKOUT,
    CLOCK_STEP,
    DECREMENT,
    EXPIRE,
    HEARTBEAT,
    HOUR_MS,
    RECEIPT,
    RELEASE,
    SHUTDOWN,
    USAGE,
    Event,
    InstanceHistory,
    ReportView,
    Thresholds,
    hourly,
    robust_z,
)

Severity = Literal["critical", "warning", "info"]

HEARTBEAT_GAP: Final = "anomaly.heartbeat_gap"
CRASH_GAP: Final = "anomaly.unclean_downtime"
USAGE_STOPPED: Final = "anomaly.usage_stopped"
CLOCK_STEPPED: Final = "anomaly.clock_step"
CLOCK_DIVERGENCE: Final = "anomaly.clock_divergence"
MONO_BACKWARDS: Final = "anomaly.monotonic_backwards"
CLOCK_BACK_ACROSS_BOOT: Final = "anomaly.clock_back_across_boot"
CLOCK_AHEAD_OF_VENDOR: Final = "anomaly.clock_ahead_of_vendor"
CLOCK_BEHIND_VENDOR: Final = "anomaly.clock_behind_vendor"
CLONE: Final = "anomaly.clone"
REPORT_LATE: Final = "anomaly.report_late"
USAGE_RATE: Final = "anomaly.usage_rate"
LEARNED: Final = "anomaly.learned"

#: Every code and the one-line meaning shown by ``meterbox vendor anomalies``.
CODES: Final[dict[str, str]] = {
    HEARTBEAT_GAP: "the running server wrote nothing for longer than its heartbeat allows",
    CRASH_GAP: "the server stopped without a shutdown record while seats were in use",
    USAGE_STOPPED: "seats stayed checked out but no usage was recorded",
    CLOCK_STEPPED: "the server recorded a step of its wall clock",
    CLOCK_DIVERGENCE: "wall time and monotonic time drifted apart without a step record",
    MONO_BACKWARDS: "monotonic time went backwards without a reboot",
    CLOCK_BACK_ACROSS_BOOT: "after a restart the wall clock was behind the last time seen",
    CLOCK_AHEAD_OF_VENDOR: "report or record times are ahead of the vendor's clock",
    CLOCK_BEHIND_VENDOR: "records are older than a receipt the server had already imported",
    CLONE: "a second server instance reports for the same license at the same time",
    REPORT_LATE: "the report came later than the license's reporting interval",
    USAGE_RATE: "usage per seat-hour is out of line with this instance's history",
    LEARNED: "this report's daily usage pattern is unlike the customer's history",
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
def heartbeat_gaps(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
    """Silences of a running server, and unclean stops while seats were in use.

    A running server writes a heartbeat every minute whatever the load, so a silence
    within one boot is evidence of records that were not written. A silence that ends
    in a restart without a shutdown record is a crash, or a restored snapshot; it counts
    only while seats were checked out. A clean stop (shutdown, then boot) is the
    customer's right and is not reported here.
    """
    report = _judged(h)
    if report is None:
        return []
    ctx = _context(h)
    leases, in_use, floor = set(ctx.open_leases), ctx.in_use, 0
    prev = ctx.before
    out: list[Anomaly] = []
    for e in report.events:
        if prev is not None:
            gap = _elapsed(prev, e)
            seats = max(len(leases), in_use)
            if gap > th.gap_ms and e.kind != BOOT and prev.kind != SHUTDOWN:
                out.append(
                    Anomaly(
                        HEARTBEAT_GAP,
                        "warning",
                        f"the server kept running but wrote no record for {_fmt_ms(gap)} "
                        f"before record {e.seq}"
                        + (f", while {seats} seat(s) were checked out" if seats else "")
                        + "; a running server writes a heartbeat every minute",
                        h.instance_id,
                        report.digest,
                        e.seq,
                        e.wall_ms,
                        score=gap / th.gap_ms,
                    )
                )
            elif gap > th.gap_ms and e.kind == BOOT and prev.kind != SHUTDOWN and seats > 0:
                out.append(
                    Anomaly(
                        CRASH_GAP,
                        "warning",
                        f"the server stopped without a shutdown record and restarted "
                        f"{_fmt_ms(gap)} later (record {e.seq}) while {seats} seat(s) were "
                        "checked out: a crash, or a restored snapshot",
                        h.instance_id,
                        report.digest,
                        e.seq,
                        e.wall_ms,
                        score=gap / th.gap_ms,
                    )
                )
        leases, in_use, floor = _track(e, leases, in_use, floor)
        prev = e
    return out


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


def clock_steps(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
    """Clock steps the server itself recorded (it records steps of 5 minutes or more)."""
    report = _judged(h)
    if report is None:
        return []
    out = []
    for e in report.events:
        if e.kind == CLOCK_STEP and abs(e.value_ms) >= th.divergence_ms:
            way = "back" if e.value_ms < 0 else "forward"
            out.append(
                Anomaly(
                    CLOCK_STEPPED,
                    "warning",
                    f"the server's wall clock was set {way} by {_fmt_ms(e.value_ms)} "
                    f"(record {e.seq})",
                    h.instance_id,
                    report.digest,
                    e.seq,
                    e.wall_ms,
                    score=e.value_ms / th.divergence_ms,
                )
            )
    return out


def clock_divergence(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
    """Wall and monotonic time of one boot drifting apart with no step record to say so.

    Also: monotonic time going backwards without a boot record, which no honest server
    can produce (records were spliced, or written by something else).
    """
    report = _judged(h)
    if report is None:
        return []
    prev = _context(h).before
    out: list[Anomaly] = []
    for e in report.events:
        if prev is not None and e.kind != BOOT and prev.mono_ms >= 0 and e.mono_ms >= 0:
            d_mono = e.mono_ms - prev.mono_ms
            if d_mono < 0:
                out.append(
                    Anomaly(
                        MONO_BACKWARDS,
                        "warning",
                        f"monotonic time went back by {_fmt_ms(d_mono)} at record {e.seq} "
                        "without a restart",
                        h.instance_id,
                        report.digest,
                        e.seq,
                        e.wall_ms,
                    )
                )
            else:
                drift = (e.wall_ms - prev.wall_ms) - d_mono
                if abs(drift) > th.divergence_ms and e.kind != CLOCK_STEP:
                    out.append(
                        Anomaly(
                            CLOCK_DIVERGENCE,
                            "warning",
                            f"between records {prev.seq} and {e.seq} the wall clock moved "
                            f"{_fmt_ms(drift)} {'more' if drift > 0 else 'less'} than "
                            "monotonic time, and no clock step was recorded",
                            h.instance_id,
                            report.digest,
                            e.seq,
                            e.wall_ms,
                            score=drift / th.divergence_ms,
                        )
                    )
        prev = e
    return out


def clock_back_across_boot(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
    """A restart whose wall time is before a time the server had already written.

    The server cannot see a clock set back while it was stopped; its ledger can.
    """
    report = _judged(h)
    if report is None:
        return []
    high = _context(h).high_water_ms
    out = []
    for e in report.events:
        if e.kind == BOOT and high and e.wall_ms < high - th.backwards_ms:
            out.append(
                Anomaly(
                    CLOCK_BACK_ACROSS_BOOT,
                    "warning",
                    f"the server restarted (record {e.seq}) with its wall clock "
                    f"{_fmt_ms(high - e.wall_ms)} behind the latest time it had written before",
                    h.instance_id,
                    report.digest,
                    e.seq,
                    e.wall_ms,
                    score=(high - e.wall_ms) / th.backwards_ms,
                )
            )
        high = max(high, e.wall_ms)
    return out


def clock_vs_vendor(h: InstanceHistory, th: Thresholds) -> list[Anomaly]:
    """Customer times compared with the vendor's: ahead of the vendor clock at ingest,
    or behind a receipt's vendor time that the server had already imported."""
    report = _judged(h)
    if report is None:
        return []
    out: list[Anomaly] = []
    latest = max(report.created_ms, report.last_wall_ms or 0)
    if latest > report.received_ms + th.future_ms:
        out.append(
            Anomaly(
                CLOCK_AHEAD_OF_VENDOR,
                "warning",
                f"the report carries times {_fmt_ms(latest - report.received_ms)} after the "
                "vendor received it: the server's clock was set forward",
                h.instance_id,
                report.digest,
                None,
                latest,
                score=(latest - report.received_ms) / th.future_ms,
            )
        )
    floor = _context(h).vendor_floor_ms
    for e in report.events:
        if e.kind == RECEIPT and e.value_ms > 0:
            if e.wall_ms < e.value_ms - th.future_ms:
                out.append(_behind(h, report, e, e.value_ms - e.wall_ms))
                break
            floor = max(floor, e.value_ms)
        elif floor and e.wall_ms < floor - th.future_ms:
            out.append(_behind(h, report, e, floor - e.wall_ms))
            break
    return out


def _behind(h: InstanceHistory, report: ReportView, e: Event, by: int) -> Anomaly:
    return Anomaly(
        CLOCK_BEHIND_VENDOR,
        "warning",
        f"record {e.seq} is dated {_fmt_ms(by)} before the vendor time of a receipt the "
        "server had already imported: the server's clock was set back",
        h.instance_id,
        report.digest,
        e.seq,
        e.wall_ms,
        score=by / HOUR_MS,
    )


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
    """Units per seat-hour against the instance's own accepted reports (robust z-score).

    Both a robust z beyond ``rate_z`` and a relative change beyond ``rate_floor`` are
    needed: a customer whose rate never varies would otherwise be flagged for 3 %.
    """
    report = _judged(h)
    if report is None or len(h.reports) - 1 < th.min_history_reports:
        return []
    past = [v for v in (units_per_seat_hour(r.events) for r in h.reports[:-1]) if v is not None]
    now = units_per_seat_hour(report.events)
    if now is None or len(past) < th.min_history_reports:
        return []
    z = robust_z(now, past)
    med = sorted(past)[len(past) // 2]
    rel = (now - med) / med if med else 0.0
    if abs(z) < th.rate_z or abs(rel) < th.rate_floor:
        return []
    way = "lower" if rel < 0 else "higher"
    return [
        Anomaly(
            USAGE_RATE,
            "warning",
            f"usage per seat-hour is {now:.2f}, {abs(rel) * 100:.0f}% {way} than this "
            f"instance's usual {med:.2f} (robust z {z:+.1f})"
            + ("; usage may be under-reported" if rel < 0 else ""),
            h.instance_id,
            report.digest,
            report.head_seq,
            None,
            score=z,
            drivers=(("units_per_seat_hour", now), ("history_median", med)),
        )
    ]


def units_per_seat_hour(events: Sequence[Event]) -> float | None:
    hours, _ = hourly(list(events))
    seat_h = sum(hours.seat_ms.values()) / HOUR_MS
    if seat_h < 10:
        return None
    return sum(hours.units.values()) / seat_h


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
    heartbeat_gaps,
    usage_stopped,
    clock_steps,
    clock_divergence,
    clock_back_across_boot,
    clock_vs_vendor,
    report_late,
    usage_rate,
)


def run_rules(
    judged: InstanceHistory,
    license_peers: Sequence[InstanceHistory] = (),
    th: Thresholds | None = None,
) -> list[Anomaly]:
    """Every rule over the last report of ``judged``; ``license_peers`` for clone checks."""
    th = th or Thresholds()
    out: list[Anomaly] = []
    for rule in INSTANCE_RULES:
        out.extend(rule(judged, th))
    out.extend(clones(judged, license_peers, th))
    return out
