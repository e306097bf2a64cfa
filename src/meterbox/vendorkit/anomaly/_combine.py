"""Combined evidence: signals of different kinds in one report escalate together.

Each rule judges one kind of evidence and keeps to a false-alarm budget on its own, so
a single weak signal (one unclean restart, an NTP-sized clock step, a quiet week) is
``info``: honest sites produce each of them now and then (ADR 0012). What honest
operations do not produce is several *independent* kinds at once. The kinds
(:data:`FAMILIES`) are independent in the sense that matters: no legitimate
operation the evaluation knows (maintenance, power cuts, upgrades, NTP, holidays, a
project ending, growth) moves two of them to a warning in one report.

* ``critical`` :data:`~._rules.COMBINED`: warnings of two or more families in the report (a
  restored copy that lost checkouts *and* cost a working day; a clock set back *and*
  usage gone). One of them alone stays the warning it is.
* ``warning`` :data:`~._rules.COMBINED`: the weak triple ADR 0027 names, each strand below
  its own rule's threshold: the server stopped without a shutdown while seats were
  out, usage per seat-hour weakly below history (:func:`._rules.weak_usage_drop`),
  and a clock inconsistency of any size. A power cut gives the first; NTP the third;
  a quiet week the second; all three together is what stopping the server, turning
  its clock and hiding the lost usage looks like. ``critical`` when one strand is a
  warning on its own (the usage drop, say, beyond the rule's threshold).

Pure: takes the findings the rules already made and the history they judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from meterbox.vendorkit import clockcheck
from meterbox.vendorkit.anomaly._features import InstanceHistory, ThresholdsConfig
from meterbox.vendorkit.anomaly._rules import (
    BEFORE_ISSUE,
    COMBINED,
    DOWNTIME,
    LEASE_UNKNOWN,
    METER_MIX,
    METER_RATE,
    USAGE_RATE,
    USAGE_STOPPED,
    Anomaly,
    Severity,
    weak_usage_drop,
)

_RUNS: Final = "the server's runs (stops, restarts, silences)"
_USAGE: Final = "usage"
_CLOCK: Final = "the clock"
_LOST: Final = "lost records"

#: Evidence families: codes that tell the same story count once.
FAMILIES: Final[dict[str, frozenset[str]]] = {
    _RUNS: frozenset({clockcheck.HEARTBEAT_UNCLEAN_RESTART, clockcheck.HEARTBEAT_GAP, DOWNTIME}),
    _USAGE: frozenset({USAGE_RATE, METER_RATE, METER_MIX, USAGE_STOPPED}),
    _CLOCK: frozenset(
        {c for c in clockcheck.CODES if c.startswith("clock.") and c != clockcheck.CLOCK_DRIFT}
        | {BEFORE_ISSUE}
    ),
    _LOST: frozenset({LEASE_UNKNOWN}),
}
#: Codes that are a stop without a shutdown while seats were out.
_UNCLEAN: Final = frozenset({clockcheck.HEARTBEAT_UNCLEAN_RESTART, DOWNTIME})
_ALARM: Final = frozenset({"warning", "critical"})
_SEVERITIES: Final[dict[str, Severity]] = {
    "info": "info",
    "warning": "warning",
    "critical": "critical",
}


def strands(
    findings: Iterable[tuple[str, str, str, int | None]], instance_id: str
) -> list[Anomaly]:
    """The findings of another check (code, severity, message, seq) that are a strand of
    combined evidence, as anomalies of ``instance_id``; the others are left out.

    Ingest runs the clock and heartbeat checks itself, over every record as the report
    streams; this is how combined evidence sees what they found.
    """
    return [
        Anomaly(code, sev, message, instance_id, seq=seq)
        for code, severity, message, seq in findings
        if _family(code) is not None and (sev := _SEVERITIES.get(severity)) is not None
    ]


def _family(code: str) -> str | None:
    return next((name for name, codes in FAMILIES.items() if code in codes), None)


def combined(h: InstanceHistory, found: Sequence[Anomaly], th: ThresholdsConfig) -> list[Anomaly]:
    """At most one ``anomaly.combined`` finding for the judged report (see the module doc)."""
    if not h.reports:
        return []
    report = h.reports[-1]
    warned = sorted({f for a in found if a.severity in _ALARM and (f := _family(a.code))})
    if len(warned) >= 2:
        return [
            Anomaly(
                COMBINED,
                "critical",
                "this report carries independent warnings about "
                + " and ".join(warned)
                + ". Each has honest causes on its own; no routine operation (maintenance, "
                "a power cut, an upgrade, NTP, a holiday) produces them together, while "
                "restoring a copy of the server, stopping it or turning its clock to hide "
                "usage does. Read the warnings below, then ask the customer for the "
                "server's operating log over this period and whether its data or clock "
                "was changed by hand",
                h.instance_id,
                report.digest,
                score=float(len(warned)),
            )
        ]
    seen = {a.code for a in found}
    unclean = seen & _UNCLEAN
    clocked = seen & FAMILIES[_CLOCK]
    if not unclean or not clocked:
        return []
    drop = weak_usage_drop(h, th)
    if drop is None:
        return []
    # A strand that is a warning on its own makes the whole a step worse.
    strands = unclean | clocked | FAMILIES[_USAGE]
    strong = any(a.severity in _ALARM for a in found if a.code in strands)
    return [
        Anomaly(
            COMBINED,
            "critical" if strong else "warning",
            f"three weak signals in one report: the server stopped without a shutdown "
            f"while seats were out ({sorted(unclean)[0]}), its clock was inconsistent "
            f"({sorted(clocked)[0]}), and usage per seat-hour was {drop * 100:.0f}% below "
            "its history. Each alone is routine (a power cut, an NTP correction, a quiet "
            "week); together they are what stopping the server during work and turning "
            "its clock looks like. Ask the customer what happened to the server in this "
            "period (power, maintenance, who set its clock)",
            h.instance_id,
            report.digest,
            score=drop,
        )
    ]


__all__ = ["FAMILIES", "combined"]
