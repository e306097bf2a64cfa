"""Prometheus metrics of a running server, through ``prometheus_client``.

Each server has its own :class:`~prometheus_client.CollectorRegistry` (never the
library's process-wide default, which would mix the metrics of two servers in one
process, as in the tests): the server's collector, build info, and the process and
platform collectors. The server's metrics are read from the service at scrape time
(:class:`Snapshot`, a plain value) and turned into metric families by the pure
:func:`families`, so the text is always the current state, never a copy of it.

Names (docs/api.md): counters end in ``_total`` and gauges never do; the only
rename from the hand-written exposition is ``meterbox_seats_total`` (a gauge) to
``meterbox_seats_granted``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from meterbox import __version__
from meterbox.server._cluster import ClusterStats


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape reports: the service's state at one instant."""

    seats: Sequence[Mapping[str, Any]]
    balances: Sequence[Mapping[str, Any]]
    counters: Mapping[str, int]
    ledger_seq: int | None
    clock_steps: int
    report_overdue: bool
    peaks: Mapping[tuple[str, datetime], int]
    now: datetime
    #: A cluster node's etcd view; None for a single server (no meterbox_cluster_*).
    cluster: ClusterStats | None = None


def _gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def families(snap: Snapshot) -> list[Metric]:
    """The server's metric families for ``snap`` (pure)."""
    in_use = _gauge("meterbox_seats_in_use", "Live leases per feature.", ["feature"])
    granted = _gauge(
        "meterbox_seats_granted",
        "Seats (without overdraft) granted by usable licenses per feature.",
        ["feature"],
    )
    overdraft = _gauge(
        "meterbox_seats_overdraft",
        "Overdraft seats granted by usable licenses per feature.",
        ["feature"],
    )
    denials = CounterMetricFamily(
        "meterbox_seat_denials",
        "Checkouts refused because every seat was held.",
        labels=["feature"],
    )
    for f in snap.seats:
        in_use.add_metric([f["feature"]], f["in_use"])
        granted.add_metric([f["feature"]], f["seats"])
        overdraft.add_metric([f["feature"]], f["overdraft"])
        denials.add_metric([f["feature"]], f["denials"])
    hour = snap.now.replace(minute=0, second=0, microsecond=0)
    peak = _gauge(
        "meterbox_seats_peak_this_hour",
        "Peak concurrent leases per feature in the current UTC hour.",
        ["feature"],
    )
    for (feature, h), p in sorted(snap.peaks.items()):
        if h == hour:
            peak.add_metric([feature], p)
    used = _gauge(
        "meterbox_usage_used",
        "Counted usage in the current period per license and meter.",
        ["license", "meter"],
    )
    limit = _gauge(
        "meterbox_usage_limit",
        "Prepaid limit in the current period per license and meter (absent if unlimited).",
        ["license", "meter"],
    )
    for b in snap.balances:
        used.add_metric([b["license_id"], b["meter"]], b["used"])
        if b["limit"] is not None:
            limit.add_metric([b["license_id"], b["meter"]], b["limit"])
    out: list[Metric] = [in_use, granted, overdraft, denials, peak, used, limit]
    for name, value in sorted(snap.counters.items()):
        out.append(CounterMetricFamily(f"meterbox_{name}", f"Count of {name}.", value=value))
    if snap.ledger_seq is not None:
        out.append(
            GaugeMetricFamily(
                "meterbox_ledger_seq", "Sequence number of the ledger head.", value=snap.ledger_seq
            )
        )
    out.append(
        CounterMetricFamily(
            "meterbox_clock_steps", "Wall-clock steps detected.", value=snap.clock_steps
        )
    )
    out.append(
        GaugeMetricFamily(
            "meterbox_report_overdue",
            "1 if a license's report deadline has passed.",
            value=int(snap.report_overdue),
        )
    )
    if snap.cluster is not None:
        out += cluster_families(snap.cluster)
    return out


def cluster_families(stats: ClusterStats) -> list[Metric]:
    """``meterbox_cluster_*`` of one node (pure; docs/api.md)."""
    requests = HistogramMetricFamily(
        "meterbox_cluster_etcd_request_seconds",
        "Duration of this node's etcd calls, failover to other members included.",
        labels=["operation"],
    )
    for op, (counts, total) in sorted(stats.etcd_seconds.items()):
        bounds = [repr(b) for b in stats.buckets] + ["+Inf"]
        requests.add_metric([op], list(zip(bounds, counts, strict=True)), total)
    held = _gauge(
        "meterbox_cluster_seats_held",
        "Seats held in etcd by all nodes per license and feature (counted every 5 s).",
        ["license", "feature"],
    )
    for (lic, feature), n in sorted(stats.seats_held.items()):
        held.add_metric([lic, feature], n)
    blocks = _gauge(
        "meterbox_cluster_quota_held_units",
        "Units of shared quota this node holds in open blocks per license and meter.",
        ["license", "meter"],
    )
    unused = _gauge(
        "meterbox_cluster_quota_unused_units",
        "Units of this node's open quota blocks not granted yet per license and meter.",
        ["license", "meter"],
    )
    for (lic, meter), (size, left) in sorted(stats.quota_held.items()):
        blocks.add_metric([lic, meter], size)
        unused.add_metric([lic, meter], left)
    counters = [
        CounterMetricFamily(name, doc, value=value)
        for name, doc, value in (
            ("meterbox_cluster_idem_keys_published",
             "Idempotency keys this node published to etcd.", stats.idem_published),
            ("meterbox_cluster_idem_remote_hits",
             "Resent usage answered from a key another node published.", stats.idem_remote_hits),
            ("meterbox_cluster_idem_publish_failures",
             "Usage answered although its key could not be published.",
             stats.idem_publish_failures),
            ("meterbox_cluster_quota_idle_returns",
             "Quota blocks given back because nothing drew on them.", stats.quota_idle_returns),
        )
    ]  # fmt: skip
    return [
        GaugeMetricFamily(
            "meterbox_cluster_quorum",
            "1 while this node reaches etcd quorum (it grants seats and usage), else 0.",
            value=int(stats.quorum),
        ),
        GaugeMetricFamily(
            "meterbox_cluster_members",
            "Nodes seen alive in the last membership read (0 without quorum).",
            value=stats.members,
        ),
        CounterMetricFamily(
            "meterbox_cluster_quorum_lost",
            "Times this node lost etcd quorum since it started.",
            value=stats.quorum_lost_total,
        ),
        requests,
        held,
        blocks,
        unused,
        *counters,
    ]


class _ServerCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return families(self._snapshot())


def server_registry(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry of one server: its metrics, build info, process and platform."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(snapshot))
    Info("meterbox_build", "The meterbox version serving.", registry=registry).info(
        {"version": __version__, "python": platform.python_version()}
    )
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape body and its content type, in the format the ``Accept`` header asks."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
