"""Anomaly and clock-tamper detection over reported usage (docs/adr/0007-anomaly-detection.md).

Public API::

    detect(judged, peers=(), customer=())   every detector over the last report of ``judged``
    Anomaly, CODES, RENAMED                 one finding; every stable code with its meaning;
                                            earlier names of the clock codes
    InstanceHistory, ReportView, Event      the pure detector inputs
    event_from_record                       a verified ledger record, reduced
    ThresholdsConfig, LearnedConfig               every tunable
    instance_history, Pending,              stored histories and the rows ingest adds to
                                            them (for meterbox.vendorkit.ingest)
    ingest_view, window_since,              the history ingest judges a report against
    INGEST_REPORTS, INGEST_WINDOW_MS,       (one truth for ingest's read and the
    INGEST_MIN_REPORTS                      evaluation's cut, ADR 0038)

Cryptography proves what happened before the last receipt; after it, and against a
customer who controls the machine, these detectors find *evidence*: silences, clock
steps, usage that stops or shrinks, a second server. They never reject a report.
"""

from __future__ import annotations

from collections.abc import Sequence

from meterbox.vendorkit.anomaly._combine import combined as _combined
from meterbox.vendorkit.anomaly._combine import strands
from meterbox.vendorkit.anomaly._features import (
    DAY_MS,
    Event,
    InstanceHistory,
    ReportView,
    ThresholdsConfig,
    event_from_record,
)
from meterbox.vendorkit.anomaly._learned import LearnedConfig
from meterbox.vendorkit.anomaly._learned import learned as _learned_detector
from meterbox.vendorkit.anomaly._rules import CODES, RENAMED, Anomaly
from meterbox.vendorkit.anomaly._rules import run_rules as _run_rules
from meterbox.vendorkit.anomaly._store import Pending, histories, instance_history
from meterbox.vendorkit.anomaly._window import (
    INGEST_MIN_REPORTS,
    INGEST_REPORTS,
    INGEST_WINDOW_MS,
    ingest_view,
    window_since,
)

__all__ = [
    "CODES",
    "DAY_MS",
    "INGEST_MIN_REPORTS",
    "INGEST_REPORTS",
    "INGEST_WINDOW_MS",
    "Anomaly",
    "Event",
    "InstanceHistory",
    "LearnedConfig",
    "Pending",
    "RENAMED",
    "ReportView",
    "ThresholdsConfig",
    "detect",
    "event_from_record",
    "histories",
    "strands",
    "ingest_view",
    "instance_history",
    "window_since",
]


def detect(
    judged: InstanceHistory,
    peers: Sequence[InstanceHistory] = (),
    customer: Sequence[InstanceHistory] = (),
    *,
    thresholds: ThresholdsConfig | None = None,
    learned_config: LearnedConfig | None = None,
    use_learned: bool = True,
    clock: bool = True,
    evidence: Sequence[Anomaly] = (),
) -> list[Anomaly]:
    """Rules, combined evidence, then the learned detector, over the last report of ``judged``.

    ``peers``: other instances of the same license (clone check). ``customer``: other
    instances of the same customer, whose accepted days train the learned detector.
    ``clock=False`` leaves out the clock and heartbeat checks (ingest runs them itself,
    over every record, as the report streams in). ``evidence``: the findings ingest's own
    checks made of this report (its clock and heartbeat checks); combined evidence reads
    them beside the rules' findings, and they are not returned again.
    """
    th = thresholds or ThresholdsConfig()
    out = _run_rules(judged, peers, th, clock=clock)
    # Combined evidence reads the rules' findings; the learned detector's outliers are
    # no strand of it (an unusual day is not a kind of evidence of its own).
    out.extend(_combined(judged, [*out, *evidence], th))
    if use_learned:
        out.extend(_learned_detector(judged, customer, learned_config))
    return out
