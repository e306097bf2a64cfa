"""Prometheus text exposition (format 0.0.4) of a running server, written by hand.

Only gauges and counters; label values are escaped as the format requires
(backslash, double quote, newline).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Exposition:
    def __init__(self) -> None:
        self._lines: list[str] = []

    def metric(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, str], float | int]],
    ) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {value}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


def render(
    *,
    seats: list[dict[str, Any]],
    balances: list[dict[str, Any]],
    counters: dict[str, int],
    ledger_seq: int | None,
    clock_steps: int,
    report_overdue: bool,
    peaks: dict[tuple[str, datetime], int],
    now: datetime,
) -> str:
    out = Exposition()
    out.metric(
        "meterbox_seats_in_use",
        "gauge",
        "Live leases per feature.",
        (({"feature": f["feature"]}, f["in_use"]) for f in seats),
    )
    out.metric(
        "meterbox_seats_total",
        "gauge",
        "Seats (without overdraft) granted by usable licenses per feature.",
        (({"feature": f["feature"]}, f["seats"]) for f in seats),
    )
    out.metric(
        "meterbox_seats_overdraft",
        "gauge",
        "Overdraft seats granted by usable licenses per feature.",
        (({"feature": f["feature"]}, f["overdraft"]) for f in seats),
    )
    out.metric(
        "meterbox_seat_denials_total",
        "counter",
        "Checkouts refused because every seat was held.",
        (({"feature": f["feature"]}, f["denials"]) for f in seats),
    )
    hour = now.replace(minute=0, second=0, microsecond=0)
    out.metric(
        "meterbox_seats_peak_this_hour",
        "gauge",
        "Peak concurrent leases per feature in the current UTC hour.",
        (({"feature": f}, p) for (f, h), p in sorted(peaks.items()) if h == hour),
    )
    out.metric(
        "meterbox_usage_used",
        "gauge",
        "Counted usage in the current period per license and meter.",
        (({"license": b["license_id"], "meter": b["meter"]}, b["used"]) for b in balances),
    )
    out.metric(
        "meterbox_usage_limit",
        "gauge",
        "Prepaid limit in the current period per license and meter (absent if unlimited).",
        (
            ({"license": b["license_id"], "meter": b["meter"]}, b["limit"])
            for b in balances
            if b["limit"] is not None
        ),
    )
    for name, value in sorted(counters.items()):
        out.metric(f"meterbox_{name}_total", "counter", f"Count of {name}.", [({}, value)])
    if ledger_seq is not None:
        out.metric(
            "meterbox_ledger_seq",
            "gauge",
            "Sequence number of the ledger head.",
            [({}, ledger_seq)],
        )
    out.metric(
        "meterbox_clock_steps_total", "counter", "Wall-clock steps detected.", [({}, clock_steps)]
    )
    out.metric(
        "meterbox_report_overdue",
        "gauge",
        "1 if a license's report deadline has passed.",
        [({}, int(report_overdue))],
    )
    return out.render()
