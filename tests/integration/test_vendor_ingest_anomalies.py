"""Ingest runs the anomaly detectors; `meterbox vendor anomalies` reads what ingest stored.

Reports are written by the real LedgerWriter under a manual clock, with attacks a
customer could make (clock set back, a silence while a seat was out, a restored
snapshot), ingested through the real CLI into SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from meterbox.ledger import LedgerWriter
from meterbox.licenses import Feature, License, Meter
from meterbox.vendorkit import VendorStore
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit.anomaly import (
    INGEST_MIN_REPORTS,
    INGEST_REPORTS,
    INGEST_WINDOW_MS,
    ingest_view,
    instance_history,
)
from support.vendor_ingest import (
    SITE_START_MS,
    Site,
    cli,
    codes,
    days,
    ingest_json,
    make_home,
    make_site,
)

MIN = 60_000


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vendor.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


def issue_weekly(home: Path, store: str) -> bytes:
    """A license that asks for a report every 7 days (2 days grace)."""
    signer = vendor_keys.VendorKeys.load(home).signer()
    lic = License(
        license_id="lic_acme",
        customer="ACME",
        product="Solver",
        issued=datetime(2025, 12, 1, tzinfo=UTC),
        vendor_key_id=signer.key_id.hex(),
        features={"cad": Feature(5)},
        meters={"solver": Meter(None, "total")},
        report_every_days=7,
        grace_days=2,
    )
    document = lic.sign(signer)
    with VendorStore.open(store, home=home) as s:
        s.add_license(lic, document)
    return document


def busy_hour(site: Site, lease: str | None = None) -> None:
    """An hour of honest work: a seat out, heartbeats every minute, usage between."""
    if lease is not None:
        site.checkout(lease)
    for _ in range(60):
        site.use("solver", 3, step_ms=20_000)
        site.heartbeat(40_000)
    if lease is not None:
        site.release(lease)


def anomalies(home: Path, store: str, *extra: str) -> list[dict[str, Any]]:
    code, out = cli("anomalies", "--home", str(home), "--store", store, "--json", *extra)
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def ingest_ok(home: Path, report: Path, store: str) -> dict[str, Any]:
    code, out = ingest_json(home, report, "--store", store)
    assert code == 0, out
    assert out["status"] in ("accepted", "accepted_with_findings"), out
    return out


def test_clean_history_has_no_anomaly_findings(tmp_path: Path, store_url: str) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue_weekly(home, store_url)])
    for n in range(4):
        busy_hour(site, f"L{n}")
        out = ingest_ok(home, site.export(tmp_path / f"r{n}.mbr"), store_url)
        assert out["status"] == "accepted", out["findings"]
        site.reopen()  # a clean restart between reports is the customer's right
    assert anomalies(home, store_url) == []
    engine = sa.create_engine(store_url)
    tables = sa.MetaData()
    tables.reflect(engine, only=["ledger_events", "report_meta"])
    with engine.connect() as conn:
        kinds = {r[0] for r in conn.execute(sa.select(tables.tables["ledger_events"].c.kind))}
        meta = conn.execute(sa.select(tables.tables["report_meta"])).all()
    engine.dispose()
    assert {"heartbeat", "boot", "shutdown"} <= kinds
    assert len(meta) == 4
    assert {(m.report_every_days, m.grace_days) for m in meta} == {(7, 2)}
    # Microseconds since the epoch, like every time in the store: site clocks start in
    # 2026, and the ledger's millisecond times scale by exactly 1000.
    assert all(m.created_us >= SITE_START_MS * 1000 and m.created_us % 1000 == 0 for m in meta)
    assert all(m.received_us % 1000 == 0 for m in meta)


def test_clock_set_back_while_running_is_seen_at_ingest_and_on_demand(
    tmp_path: Path, store_url: str
) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue_weekly(home, store_url)])
    busy_hour(site, "L1")
    ingest_ok(home, site.export(tmp_path / "r1.mbr"), store_url)
    site.checkout("L2")
    site.clock.step_wall(-days(3))  # the customer sets the clock back three days
    busy_hour(site)
    out = ingest_ok(home, site.export(tmp_path / "r2.mbr"), store_url)
    clock_codes = {"clock.step_recorded", "clock.wall_step"}
    assert codes(out) & clock_codes, out["findings"]
    assert out["status"] == "accepted_with_findings"
    found = anomalies(home, store_url, "--customer", "ACME")
    assert {a["code"] for a in found} & clock_codes
    assert all(a["report"] == out["report_digest"] for a in found)


def test_silence_while_a_seat_was_out_is_a_heartbeat_gap(tmp_path: Path, store_url: str) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue_weekly(home, store_url)])
    busy_hour(site, "L1")
    ingest_ok(home, site.export(tmp_path / "r1.mbr"), store_url)
    site.checkout("L2")
    busy_hour(site)
    site.clock.advance(2 * 3_600_000)  # two hours in which nothing was written
    busy_hour(site)
    site.release("L2")
    out = ingest_ok(home, site.export(tmp_path / "r2.mbr"), store_url)
    assert "heartbeat.gap" in codes(out)
    assert "heartbeat.gap" in {a["code"] for a in anomalies(home, store_url)}


def test_restored_snapshot_is_found_by_the_detectors_ingest_runs(
    tmp_path: Path, store_url: str
) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue_weekly(home, store_url)])
    busy_hour(site, "L1")
    ingest_ok(home, site.export(tmp_path / "r1.mbr"), store_url)
    busy_hour(site)
    snapshot = site.backup(tmp_path / "snapshot")
    site.checkout("L2")  # handed out after the snapshot: the restore erases it
    busy_hour(site)
    site.writer.close()
    site.clock.advance(5 * MIN)
    site.writer = LedgerWriter.open(snapshot, clock=site.clock)
    site.directory = snapshot
    busy_hour(site)
    site.release("L2")  # the client still held the seat and gives it back
    out = ingest_ok(home, site.export(tmp_path / "r2.mbr"), store_url)
    assert "anomaly.lease_unknown" in codes(out), out["findings"]
    finding = next(f for f in out["findings"] if f["code"] == "anomaly.lease_unknown")
    assert finding["severity"] == "warning"
    assert "anomaly.lease_unknown" in {a["code"] for a in anomalies(home, store_url)}


def test_interval_override_and_license_interval_for_lateness(
    tmp_path: Path, store_url: str
) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue_weekly(home, store_url)])
    busy_hour(site, "L1")
    ingest_ok(home, site.export(tmp_path / "r1.mbr"), store_url)
    busy_hour(site, "L2")
    ingest_ok(home, site.export(tmp_path / "r2.mbr"), store_url)
    # Received seconds apart: on time for the license's 7 days ...
    assert anomalies(home, store_url) == []
    # ... and an override of the interval is still honoured (1 day: still on time).
    assert anomalies(home, store_url, "--report-every-days", "1") == []


@pytest.mark.parametrize(("every_days", "reports"), [(30, 11), (7, 12)])
def test_ingest_reads_the_window_the_evaluation_cuts(
    tmp_path: Path, store_url: str, every_days: int, reports: int
) -> None:
    """The store's bounded read is the pure window of the whole history (one truth).

    A monthly reporter's eight weeks hold two reports; the window keeps the last
    INGEST_MIN_REPORTS whole, as eight weeks do for a weekly one. A lease checked out
    before the window and released in the judged report is known, never lost.
    """
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue_weekly(home, store_url)])
    site.checkout("held")
    for n in range(reports - 1):
        busy_hour(site, f"L{n}")
        ingest_ok(home, site.export(tmp_path / f"r{n}.mbr"), store_url)
        site.clock.advance(days(every_days))
    first_wall = site.clock.wall_ms()
    busy_hour(site, "last")
    site.release("held")
    last = ingest_ok(home, site.export(tmp_path / "last.mbr"), store_url)
    assert "anomaly.lease_unknown" not in codes(last)
    with VendorStore.open(store_url, home=home) as s, s.engine.connect() as conn:
        iid = site.writer.instance_id.hex()
        whole = instance_history(conn, iid, license_id="lic_acme")
        read = instance_history(
            conn, iid, license_id="lic_acme", window=True, first_wall_ms=first_wall
        )
    assert read == ingest_view(whole, first_wall)
    assert len(read.reports) == min(reports, INGEST_REPORTS + 1)
    with_usage = [any(e.kind == "usage" for e in r.events) for r in read.reports]
    # The last INGEST_MIN_REPORTS before the judged one keep their records, older
    # ones lose them (for the monthly reporter eight weeks alone would keep two).
    kept = INGEST_MIN_REPORTS + 1
    assert with_usage[-kept:] == [True] * kept
    assert with_usage[:-kept] == [False] * (len(read.reports) - kept)
    assert (
        min(e.wall_ms for r in read.reports for e in r.events)
        >= min(first_wall - INGEST_WINDOW_MS, read.reports[-kept - 1].created_ms) - MIN
    )
    assert "held" in read.known_leases
    assert "held" not in whole.known_leases
