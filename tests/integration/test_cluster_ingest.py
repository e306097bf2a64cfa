"""A cluster licence at the vendor: N member ledgers, billed once, clones beyond N, gaps.

Every node is its own ledger (its own instance id and chain), written with the real
LedgerWriter under a manual clock and exported as the server exports; the vendor
ingests each through the real ingest into a real SQLite store (ADR 0026).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from meterbox.ledger import LedgerWriter
from meterbox.licenses import Feature, Meter
from meterbox.vendorkit import Period, VendorStore, bill
from meterbox.vendorkit.ingest import IngestOutcome, ingest
from support.vendor_ingest import (
    SITE_START_MS,
    VENDOR_NOW,
    Site,
    cli,
    days,
    issue,
    make_home,
    make_site,
)

LIC = "lic_cluster"


def _billed(home: Path) -> int:
    with VendorStore.open(None, home=home) as db, db.engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT coalesce(sum(amount), 0) FROM usage").scalar_one()
    return int(total)


def _codes(outcome: IngestOutcome) -> set[str]:
    return {f.code for f in outcome.findings}


def _nodes(
    tmp_path: Path,
    *,
    n: int,
    cluster_size: int = 3,
    seats: int = 5,
    starts: list[int] | None = None,
    store_url: str | None = None,
    **terms: Any,
) -> tuple[Path, list[Site]]:
    """A vendor, a cluster licence, and ``n`` nodes started 100 ms apart (or at ``starts``)."""
    home = make_home(tmp_path)
    doc = issue(
        home,
        LIC,
        features={"cad": Feature(seats, lease_seconds=60)},
        meters={"solver": Meter(None)},
        cluster_size=cluster_size,
        store_url=store_url,
        **terms,
    )
    at = starts or [SITE_START_MS + i * 100 for i in range(n)]
    sites = [
        make_site(home, tmp_path / f"node{i}", [doc], license_id=LIC, start_ms=at[i])
        for i in range(n)
    ]
    return home, sites


def _ingest(home: Path, site: Site, path: Path, *, now_days: float = 0) -> IngestOutcome:
    return ingest(home, site.export(path), now=VENDOR_NOW + timedelta(days=now_days))


def test_three_members_are_billed_once_each_and_none_is_a_clone(tmp_path: Path) -> None:
    home, nodes = _nodes(tmp_path, n=3)
    for k, node in enumerate(nodes):
        for _ in range(4):
            node.use("solver", 10**k)

    outcomes = [_ingest(home, node, tmp_path / f"r{k}.mbr") for k, node in enumerate(nodes)]

    for out in outcomes:
        assert out.status == "accepted", out.findings
        assert "license.cloned" not in _codes(out)
    assert [o.totals for o in outcomes] == [{"solver": 4}, {"solver": 40}, {"solver": 400}]
    assert _billed(home) == 444
    assert len({o.instance_id for o in outcomes}) == 3


def test_the_instance_beyond_the_cluster_size_is_a_clone(tmp_path: Path) -> None:
    home, nodes = _nodes(tmp_path, n=4)
    for node in nodes:
        node.use("solver", 5)
        node.heartbeat()
    members = [_ingest(home, node, tmp_path / f"r{k}.mbr") for k, node in enumerate(nodes[:3])]
    assert all(m.accepted for m in members)

    fourth = _ingest(home, nodes[3], tmp_path / "r3.mbr")

    assert fourth.status == "rejected"
    assert "license.cloned" in _codes(fourth)
    clone = next(f for f in fourth.findings if f.code == "license.cloned")
    assert "4 servers share a license for a cluster of 3" in clone.message
    assert fourth.receipt is None
    assert _billed(home) == 15
    with VendorStore.open(None, home=home) as db:
        flagged = {m.instance_id: db.findings_for(instance_id=m.instance_id) for m in members}
    assert all([f.code for f in fs] == ["license.cloned"] for fs in flagged.values())


def test_members_that_follow_one_another_are_not_counted_together(tmp_path: Path) -> None:
    # Cluster of 2: node 0 runs all along; node 1 runs early, node 2 only after node 1
    # stopped. Never more than two at once, so node 2 is no clone, only a replacement.
    later = SITE_START_MS + days(2)
    home, nodes = _nodes(
        tmp_path, n=3, cluster_size=2, starts=[SITE_START_MS, SITE_START_MS + 100, later]
    )
    nodes[0].use("solver", 1)
    nodes[1].use("solver", 1)
    nodes[2].use("solver", 1)
    nodes[0].clock.advance(days(3))
    nodes[0].use("solver", 1)
    assert _ingest(home, nodes[0], tmp_path / "a.mbr").accepted
    assert _ingest(home, nodes[1], tmp_path / "b.mbr").accepted

    third = _ingest(home, nodes[2], tmp_path / "c.mbr")

    assert third.accepted, third.findings
    assert "license.cloned" not in _codes(third)
    assert "license.instance_replaced" in _codes(third)


def test_the_same_records_offered_again_or_through_a_copied_node_bill_nothing_twice(
    tmp_path: Path,
) -> None:
    home, nodes = _nodes(tmp_path, n=2)
    a, b = nodes
    copy = a.backup(tmp_path / "node0-copy")
    for _ in range(3):
        a.use("solver", 7)
        b.use("solver", 2)
    first = _ingest(home, a, tmp_path / "a1.mbr")
    assert first.accepted
    assert _ingest(home, b, tmp_path / "b1.mbr").accepted
    assert _billed(home) == 27

    # The same report file again, under another name: a replay.
    again = tmp_path / "a1-again.mbr"
    shutil.copy(tmp_path / "a1.mbr", again)
    assert _codes(ingest(home, again, now=VENDOR_NOW)) == {"report.replay"}
    # A full export of node A (its acknowledged records included) with one new record:
    # only the new one is billed.
    a.use("solver", 7)
    full = _ingest(home, a, tmp_path / "a2.mbr")
    assert full.accepted
    assert full.totals == {"solver": 7}
    # A copy of node A's data directory run as one more node: it has node A's instance
    # id and forks its chain; its records are never billed as another node's.
    a.writer.close()
    twin = Site(LedgerWriter.open(copy, clock=a.clock), a.clock, copy, a.licenses, LIC)
    twin.use("solver", 7)
    forked = _ingest(home, twin, tmp_path / "twin.mbr")
    assert forked.status == "rejected"
    assert forked.instance_id == first.instance_id
    assert _billed(home) == 34


def test_seats_are_counted_across_members(tmp_path: Path) -> None:
    # Two seats for the whole cluster: each node alone stays within them, together
    # they held three at once.
    home, nodes = _nodes(tmp_path, n=2, seats=2)
    a, b = nodes
    a.checkout("a-1", step_ms=1000)
    a.checkout("a-2", step_ms=1000)
    b.checkout("b-1", step_ms=1500)
    b.release("b-1", step_ms=1000)
    a.release("a-1", step_ms=3000)
    a.release("a-2", step_ms=1000)
    first = _ingest(home, a, tmp_path / "a.mbr")
    assert "enforcement.seats_exceeded" not in _codes(first)

    second = _ingest(home, b, tmp_path / "b.mbr")

    assert second.status == "accepted_with_findings"
    exceeded = [f for f in second.findings if f.code == "enforcement.seats_exceeded"]
    assert len(exceeded) == 1
    assert "3 leases were live at once across the cluster's nodes" in exceeded[0].message


def test_seats_one_after_another_across_members_are_no_finding(tmp_path: Path) -> None:
    home, nodes = _nodes(tmp_path, n=2, seats=2)
    a, b = nodes
    a.checkout("a-1")
    a.checkout("a-2")
    a.release("a-1")
    a.release("a-2")
    b.clock.advance(10_000)
    b.checkout("b-1")
    b.checkout("b-2")
    b.release("b-1")
    assert _ingest(home, a, tmp_path / "a.mbr").status == "accepted"

    second = _ingest(home, b, tmp_path / "b.mbr")

    assert second.status == "accepted", second.findings


def test_a_member_that_stopped_reporting_is_a_finding_and_shown_in_the_listing(
    tmp_path: Path,
) -> None:
    # Dated from today: `vendor licenses` judges the members against the real clock.
    today = datetime.now(UTC).replace(microsecond=0)
    start = today - timedelta(days=50)
    base_ms = int(start.timestamp() * 1000)
    home, nodes = _nodes(
        tmp_path, n=3, report_every_days=30, grace_days=7, starts=[base_ms + i for i in range(3)]
    )
    for k, node in enumerate(nodes):
        node.use("solver", 1)
        out = ingest(home, node.export(tmp_path / f"r{k}.mbr"), now=start + timedelta(hours=1))
        assert out.status == "accepted", out.findings
    # Forty-five days on, two members report again; the third never does.
    later: list[IngestOutcome] = []
    for k, node in enumerate(nodes[:2]):
        node.clock.advance(days(45))
        node.use("solver", 1)
        report = node.export(tmp_path / f"late{k}.mbr")
        later.append(ingest(home, report, now=start + timedelta(days=45, hours=1)))

    silent = [f for f in later[-1].findings if f.code == "cluster.member_silent"]
    assert later[-1].status == "accepted_with_findings"
    assert len(silent) == 1
    assert nodes[2].writer.instance_id.hex() in silent[0].message
    code, text = cli("licenses", "--home", str(home), "--json")
    assert code == 0, text
    (doc,) = json.loads(text)["licenses"]
    rows = {n["instance_id"]: n for n in doc["nodes"]}
    assert len(rows) == 3
    assert [iid for iid, n in rows.items() if n["silent"]] == [nodes[2].writer.instance_id.hex()]
    assert "past the deadline" in rows[nodes[2].writer.instance_id.hex()]["why"]
    assert all(n["last_report"] for n in rows.values())


# ------------------------------------------- an event redelivered to a second node (ADR 0033)
@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("fresh_postgres_url"))


def _usage_rows(home: Path, url: str | None) -> list[tuple[str, int, str | None, bool]]:
    with VendorStore.open(url, home=home) as db, db.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT instance_id, amount, idem_key, billed FROM usage ORDER BY instance_id, seq"
        )
        return [(str(i), int(a), k, bool(b)) for i, a, k, b in rows]


def _used(home: Path, url: str | None) -> int:
    statement = bill(home, Period(2026, 1), store_url=url)
    return sum(m.used for m in statement.meters if m.license_id == LIC)


def test_an_event_on_two_ledgers_is_billed_once(tmp_path: Path, store_url: str | None) -> None:
    # Node A committed the event and died before answering; the client resent it to B
    # with the same key and B recorded it too: both ledgers hold it.
    home, (a, b) = _nodes(tmp_path, n=2, store_url=store_url)
    a.use("solver", 7, k="evt-1")
    a.use("solver", 3)  # no key: counted on its own, as always
    b.use("solver", 7, k="evt-1")
    b.use("solver", 2, k="evt-2")
    a.heartbeat()
    b.heartbeat()

    first = ingest(home, a.export(tmp_path / "a.mbr"), store_url=store_url, now=VENDOR_NOW)
    second = ingest(home, b.export(tmp_path / "b.mbr"), store_url=store_url, now=VENDOR_NOW)

    assert first.accepted and second.accepted, (first.findings, second.findings)
    assert "usage.redelivered" not in _codes(first)
    found = [f for f in second.findings if f.code == "usage.redelivered"]
    assert [f.severity for f in found] == ["info"]
    assert "1 usage events (7 units)" in found[0].message
    assert str(first.instance_id)[:16] in found[0].message
    # Each ledger's receipt acknowledges what that node recorded.
    assert (first.totals, second.totals) == ({"solver": 10}, {"solver": 9})
    # Both copies are stored (evidence), one is billed: 7 + 3 + 2.
    rows = _usage_rows(home, store_url)
    assert sorted((amount, key, billed) for _, amount, key, billed in rows) == [
        (2, "evt-2", True),
        (3, None, True),
        (7, "evt-1", False),
        (7, "evt-1", True),
    ]
    assert _used(home, store_url) == 12
    statement = bill(home, Period(2026, 1), store_url=store_url)
    assert "usage.redelivered" in {f.code for f in statement.findings}


def test_a_key_reused_with_another_amount_is_billed_once_as_first_stored(
    tmp_path: Path,
) -> None:
    home, (a, b) = _nodes(tmp_path, n=2)
    a.use("solver", 5, k="evt-1")
    b.use("solver", 50, k="evt-1")
    a.heartbeat()
    b.heartbeat()
    # B's report reaches the vendor first: its copy is the one billed.
    second = _ingest(home, b, tmp_path / "b.mbr")
    first = _ingest(home, a, tmp_path / "a.mbr")

    assert second.accepted and first.accepted
    warning = next(f for f in first.findings if f.code == "usage.redelivered_mismatch")
    assert warning.severity == "warning"
    assert "(increment solver 5) vs billed" in warning.message
    assert "increment solver 50" in warning.message
    assert "usage.redelivered" not in _codes(first)
    assert _used(home, None) == 50


def test_a_later_report_of_the_same_nodes_keeps_the_bill(tmp_path: Path) -> None:
    home, (a, b) = _nodes(tmp_path, n=2)
    a.use("solver", 4, k="evt-1")
    b.use("solver", 4, k="evt-1")
    a.heartbeat()
    b.heartbeat()
    _ingest(home, a, tmp_path / "a1.mbr")
    _ingest(home, b, tmp_path / "b1.mbr")
    # Without the receipts imported the next reports repeat every record.
    a.use("solver", 1, k="evt-2")
    b.use("solver", 1, k="evt-2")
    later_b = _ingest(home, b, tmp_path / "b2.mbr")
    later_a = _ingest(home, a, tmp_path / "a2.mbr")
    assert later_b.accepted and later_a.accepted
    assert "usage.redelivered" not in _codes(later_b)
    assert "1 usage events (1 units)" in next(
        f.message for f in later_a.findings if f.code == "usage.redelivered"
    )
    assert _used(home, None) == 5
