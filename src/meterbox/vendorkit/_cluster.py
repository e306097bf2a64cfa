"""Cluster licences at the vendor: members, clones, silent members, seats across nodes.

Pure: activity spans, report times and seat rows in, decisions out. No I/O; the
ingest shell (:mod:`meterbox.vendorkit.ingest`) and ``vendor licenses`` read the store
and call these. ADR 0026 explains the policy.

A license with ``cluster_size`` N is served by up to N server instances at once, each
its own ``server init``'d data directory with its own instance id and its own sealed
chain. Every record is one node's: rows are unique on (instance, seq), so the same
event is never billed twice whichever node's report carries it, and nothing here has
to merge chains.

Invariants:

* clones: at any instant at most N instances of one license may be active; the
  instance whose report shows an N+1th concurrent one is a clone
  (``license.cloned``, critical, as for single-server licenses), N are members;
* a member is *silent* when its last report is past the license's report deadline,
  or lags the newest member report by more than the reporting interval
  (:data:`DEFAULT_LAG_DAYS` without one): ``cluster.member_silent`` (warning);
* seats: the live leases of one feature across every member, at every instant,
  never exceed seats plus overdraft; a lease with no end row ends ``lease_seconds``
  after its last checkout or renewal (what the server's culling does), and at equal
  times ends are counted before starts, so a finding can be missed, never invented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from meterbox.ledger import Finding
from meterbox.licenses import License

CLUSTER_MEMBER_SILENT: Final = "cluster.member_silent"
CLUSTER_SEATS_EXCEEDED: Final = "enforcement.seats_exceeded"
#: How far behind the newest member report another member may fall, without a
#: reporting interval on the license, before it is called silent.
DEFAULT_LAG_DAYS: Final = 30
_DAY_US: Final = 86_400_000_000


# ------------------------------------------------------------------ clones
def peak_concurrent(span: tuple[int, int], others: Iterable[tuple[int, int]]) -> int:
    """How many instances are active at once at the busiest instant of ``span``.

    ``span`` is the reporting instance's own (first, last) activity, and counts as
    one; ``others`` are the other instances' spans. Spans are closed intervals.
    """
    first, last = span
    edges: list[tuple[int, int]] = []
    for start, end in others:
        lo, hi = max(start, first), min(end, last)
        if lo <= hi:
            # Starts sort before ends at one instant: closed intervals that touch overlap.
            edges += [(lo, 0), (hi, 1)]
    edges.sort()
    live = peak = 0
    for _, end in edges:
        live += -1 if end else 1
        peak = max(peak, live)
    return 1 + peak


# ------------------------------------------------------------ silent members
@dataclass(frozen=True, slots=True)
class MemberReport:
    """One instance of a license as the vendor knows it: when it last reported."""

    instance_id: str
    #: Creation time (us) of its latest accepted report; ``None``: never accepted.
    last_report_us: int | None
    acked_seq: int | None = None


@dataclass(frozen=True, slots=True)
class MemberState:
    """A row of the per-node listing: the member, its last report, and whether silent."""

    instance_id: str
    last_report_us: int | None
    acked_seq: int | None
    silent: bool
    why: str


def member_states(lic: License, members: Sequence[MemberReport], now_us: int) -> list[MemberState]:
    """Every member of ``lic`` with its reporting state, oldest report first.

    Silent: past the report deadline (``report_every_days`` plus grace after its last
    report, when the license asks for reports), or more than the reporting interval
    (:data:`DEFAULT_LAG_DAYS` without one) behind the newest member report.
    """
    known = [m.last_report_us for m in members if m.last_report_us is not None]
    newest = max(known, default=None)
    lag_days = lic.report_every_days or DEFAULT_LAG_DAYS
    out: list[MemberState] = []
    for m in sorted(members, key=lambda m: (m.last_report_us or -1, m.instance_id)):
        why = ""
        if m.last_report_us is None:
            why = "no accepted report yet"
        elif (
            lic.report_every_days is not None
            and now_us > m.last_report_us + (lic.report_every_days + lic.grace_days) * _DAY_US
        ):
            why = (
                f"its last report is past the deadline of {lic.report_every_days} days "
                f"plus {lic.grace_days} days' grace"
            )
        elif newest is not None and newest - m.last_report_us > lag_days * _DAY_US:
            behind = (newest - m.last_report_us) // _DAY_US
            why = f"its last report is {behind} days older than the newest member's"
        out.append(MemberState(m.instance_id, m.last_report_us, m.acked_seq, bool(why), why))
    return out


def silent_findings(lic: License, states: Iterable[MemberState], reporter: str) -> list[Finding]:
    """``cluster.member_silent`` for each silent member other than the one reporting."""
    return [
        Finding(
            CLUSTER_MEMBER_SILENT,
            "warning",
            f"license {lic.license_id} (cluster of {lic.cluster_size}): member instance "
            f"{s.instance_id} stopped reporting ({s.why}); its usage since is not billed "
            "until its own report arrives: ask the site to export that node's report",
        )
        for s in states
        if s.silent and s.instance_id != reporter and s.last_report_us is not None
    ]


# ------------------------------------------------------------ seats across nodes
#: (instance, seq, license, feature, ts_us, kind, lease) as ``queries.seat_rows`` returns.
SeatRow = tuple[str, int, str, str, int, str, str | None]
_ENDS: Final = frozenset({"release", "expire", "remove"})


def lease_intervals(
    rows: Iterable[SeatRow], lease_us: Mapping[str, int], window: tuple[int, int]
) -> dict[str, list[tuple[int, int]]]:
    """Per feature, the (start, end) of every lease of any instance inside ``window``.

    ``rows`` are ordered by instance and seq. A lease is keyed by (instance, lease id),
    so two nodes may reuse one id. Its first row in the window opens it (a renewal or
    an end row first: it was live from before the window, so from the window's
    start); a release, expiry or removal ends it; without one it ends ``lease_us`` of
    its feature after its last checkout or renewal.
    """
    start_w, end_w = window
    open_: dict[tuple[str, str], tuple[str, int, int]] = {}
    out: dict[str, list[tuple[int, int]]] = {}
    for instance, _seq, _lic, feature, ts, kind, lease in rows:
        if lease is None or kind == "denied":
            continue
        key = (instance, lease)
        if key not in open_:
            open_[key] = (feature, ts if kind == "checkout" else start_w, ts)
        f, began, _last = open_[key]
        if kind in _ENDS:
            out.setdefault(f, []).append((began, ts))
            del open_[key]
        else:
            open_[key] = (f, began, ts)
    for f, began, last in open_.values():
        out.setdefault(f, []).append((began, min(end_w, last + lease_us.get(f, 0))))
    return out


def peak_leases(intervals: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The most leases live at once and the first instant (us) that many were.

    A lease holds [start, end): one that ends at an instant and one that starts then
    are not counted together, and one released the instant it was taken held nothing.
    """
    edges = sorted(e for lo, hi in intervals if lo < hi for e in ((lo, 1), (hi, 0)))
    live = peak = 0
    at = 0
    for ts, start in edges:
        live += 1 if start else -1
        if live > peak:
            peak, at = live, ts
    return peak, at


def seat_findings(lic: License, rows: Iterable[SeatRow], window: tuple[int, int]) -> list[Finding]:
    """``enforcement.seats_exceeded`` for each feature whose leases across the members
    outnumbered seats plus overdraft at some instant of ``window``."""
    lease_us = {n: f.lease_seconds * 1_000_000 for n, f in lic.features.items()}
    out: list[Finding] = []
    for feature, spans in sorted(lease_intervals(rows, lease_us, window).items()):
        terms = lic.features.get(feature)
        if terms is None:
            continue
        peak, _at = peak_leases(spans)
        if peak > terms.seats + terms.overdraft:
            out.append(
                Finding(
                    CLUSTER_SEATS_EXCEEDED,
                    "warning",
                    f"license {lic.license_id} feature {feature}: {peak} leases were live at "
                    f"once across the cluster's nodes, the license allows {terms.seats} seats "
                    f"plus {terms.overdraft} overdraft; the cluster's shared seat state was "
                    "edited, lost or split (all seat-hours are billed)",
                )
            )
    return out


def max_lease_us(lic: License) -> int:
    """The longest lease of ``lic``: how far before a window a live lease last renewed."""
    return max((f.lease_seconds for f in lic.features.values()), default=0) * 1_000_000
