"""What the site dashboard shows, as plain values built from the license service.

Everything here reads: the service's own views (``status``, ``seats_view``,
``balances``, hourly ``peaks``) and the daily usage history. Nothing is re-derived
that the service already decides (seats in use, limits, report deadlines).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from meterbox.server._dashboard._history import UsageHistory, period_label
from meterbox.webcharts import (
    Projection,
    bar_chart,
    burndown_chart,
    daily_used,
    project_exhaustion,
)

if TYPE_CHECKING:
    from meterbox.server._instance import ServerInstance

#: Days shown for meters counted over the license's whole life (no monthly period).
TOTAL_WINDOW_DAYS = 30


@dataclass(frozen=True)
class MeterView:
    license_id: str
    meter: str
    period: str
    used: int
    limit: int | None
    remaining: int | None
    over_limit: str
    percent: int | None
    projection: Projection
    period_end: date | None
    days: list[tuple[date, int]]
    chart: str


def _period_end(start: date) -> date:
    nxt = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    return nxt - timedelta(days=1)


def meter_view(
    balance: dict[str, Any], samples: list[tuple[datetime, int]], now: datetime
) -> MeterView:
    """Burn-down of one balance row: daily values, projection and chart."""
    today = now.astimezone(UTC).date()
    used = int(balance["used"])
    limit = balance["limit"]
    pts = [*samples, (now, used)]
    period_end: date | None = None
    if balance["period_start"]:
        start_t = datetime.fromisoformat(balance["period_start"])
        start = start_t.date()
        period_end = _period_end(start)
        # The counter of a period starts at zero: that anchors the rate even on day one.
        pts = [(start_t, 0), *[p for p in pts if p[0] >= start_t]]
    else:
        start = today - timedelta(days=TOTAL_WINDOW_DAYS - 1)
    projection = project_exhaustion(pts, limit, now)
    days = daily_used(pts, start, today)
    name = f"{balance['meter']} ({balance['license_id']})"
    title = f"Quota burn-down for {name}" if limit is not None else f"Usage of {name}"
    chart = burndown_chart(days, limit, projection, title=title, period_end=period_end)
    return MeterView(
        license_id=balance["license_id"],
        meter=balance["meter"],
        period=balance["period"],
        used=used,
        limit=limit,
        remaining=balance["remaining"],
        over_limit=balance["over_limit"],
        percent=None if not limit else min(100, round(used * 100 / limit)),
        projection=projection,
        period_end=period_end,
        days=days,
        chart=chart,
    )


def seats_context(instance: ServerInstance, now: datetime) -> dict[str, Any]:
    """The seats panel: per feature, seats, holders and denials (polled every 2 s)."""
    features = instance.service.engine.seats_view(now)
    return {"features": features, "now": now, "total_in_use": sum(f["in_use"] for f in features)}


def cluster_context(instance: ServerInstance) -> dict[str, Any]:
    """The cluster panel (polled every 2 s); ``cluster`` is None for a single server."""
    coordinator = instance.service.cluster
    if not coordinator.shared:
        return {"cluster": None}
    view = coordinator.view()
    members = [
        {
            "node": m.node,
            "url": m.url,
            "alive": m.alive,
            "this": m.node == view.node,
            "seen_ago_s": m.seen_ago_s,
        }
        for m in view.members
    ]
    return {
        "cluster": {
            "quorum": view.quorum,
            "problem": view.problem,
            "since_quorum_s": view.since_quorum_s,
            "members": members,
            "alive": sum(1 for m in members if m["alive"]),
            "endpoints": view.extra.get("endpoints", []),
        }
    }


def peaks_chart(instance: ServerInstance, now: datetime, hours: int = 24) -> list[dict[str, Any]]:
    """Peak concurrent seats per hour over the last ``hours`` hours, per feature."""
    peaks = instance.service.engine.seats.peaks
    this_hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    out = []
    for feature in sorted(instance.service.engine.feature_names()):
        bars = []
        for i in range(hours - 1, -1, -1):
            hour = this_hour - timedelta(hours=i)
            bars.append((hour.strftime("%H:00"), float(peaks.get((feature, hour), 0))))
        out.append(
            {
                "feature": feature,
                "chart": bar_chart(bars, title=f"Peak seats of {feature} per hour, last {hours} h"),
                "max": max(int(v) for _, v in bars),
            }
        )
    return out


def site_context(instance: ServerInstance, history: UsageHistory) -> dict[str, Any]:
    service = instance.service
    now = service.now()
    balances = service.engine.balances(now)
    history.record(now, balances)
    status = service.status()
    meters = [
        meter_view(b, history.samples(b["license_id"], b["meter"], period_label(b)), now)
        for b in balances
    ]
    acked = instance.acked_head()
    seq = status["ledger"]["seq"]
    problems = []
    if service.counters.get("sink_failures", 0):
        problems.append(f"{service.counters['sink_failures']} ledger write(s) failed since start")
    if status["report_due"]["overdue"]:
        problems.append("the report deadline has passed: no new seats or usage until a receipt")
    if service.clock_steps:
        problems.append(f"{service.clock_steps} wall-clock step(s) seen since start")
    if service.witnesses.mismatches:
        problems.append(
            f"{service.witnesses.mismatches} client(s) held a ledger head this ledger never had "
            "(restored from a copy or cut back); recorded for the vendor"
        )
    return {
        **seats_context(instance, now),
        **cluster_context(instance),
        "status": status,
        "meters": meters,
        "peaks": peaks_chart(instance, now),
        "licenses": [lic.summary() for lic in service.engine.ordered()],
        "ledger": {
            "seq": seq,
            "head": status["ledger"]["head"],
            "acked_seq": acked.seq if acked else None,
            "unreported": None if seq is None else seq - (acked.seq if acked else 0),
            "problems": problems,
        },
        "counters": dict(service.counters),
    }
