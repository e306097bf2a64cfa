"""The vendor checks, from the records alone, what the server should have enforced.

Issue 14 part 6, ADR 0016. Each report is written by the real LedgerWriter as a server
whose state files were edited would write it (grants beyond the license), exported by
the real exporter and ingested into a real SQLite vendor store. Each check names its
own finding, with the severity docs/spec/report.md gives it; a clean report gets none.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from meterbox.ledger import RecordType
from meterbox.licenses import Feature, Meter
from meterbox.vendorkit.ingest import IngestOutcome, ingest
from support.vendor_ingest import SITE_START_MS, VENDOR_NOW, Site, issue, make_home, make_site

ENFORCEMENT = {
    "enforcement.seats_exceeded",
    "enforcement.usage_over_limit",
    "enforcement.granted_after_deadline",
    "enforcement.decrement_uncovered",
}
DAY_MS = 86_400_000


def _site(tmp_path: Path, **terms: object) -> tuple[Path, Site]:
    home = make_home(tmp_path)
    features = terms.pop("features", {"cad": Feature(1, overdraft=1)})
    meters = terms.pop("meters", {"solver": Meter(10, "month", "refuse")})
    doc = issue(home, features=features, meters=meters, **terms)  # type: ignore[arg-type]
    return home, make_site(home, tmp_path / "ledger", [doc])


def _ingest(home: Path, site: Site, name: str) -> IngestOutcome:
    return ingest(home, site.export(home.parent / f"{name}.mbr"), now=VENDOR_NOW)


def _found(out: IngestOutcome) -> dict[str, str]:
    return {f.code: f.severity for f in out.findings if f.code in ENFORCEMENT}


def _decrement(site: Site, amount: int, client: str = "client-1") -> None:
    site.clock.advance(1000)
    payload = {"m": "solver", "a": amount, "c": client, "l": site.license_id}
    site.writer.append(RecordType.USAGE_DECREMENT, payload)


def test_a_clean_report_gets_no_enforcement_finding(tmp_path: Path) -> None:
    home, site = _site(tmp_path)
    site.checkout("a")
    site.checkout("b")  # one seat plus one overdraft: allowed
    site.release("a")
    site.checkout("c")
    site.use("solver", 6)
    _decrement(site, 2)
    site.use("solver", 6)  # 10 counted: at the limit, not beyond

    out = _ingest(home, site, "clean")

    assert out.status == "accepted", out.to_json()
    assert _found(out) == {}


def test_leases_above_seats_plus_overdraft(tmp_path: Path) -> None:
    home, site = _site(tmp_path)
    for lease in ("a", "b", "c"):
        site.checkout(lease)

    out = _ingest(home, site, "seats")

    assert out.status == "accepted_with_findings"
    assert _found(out) == {"enforcement.seats_exceeded": "warning"}
    (f,) = [f for f in out.findings if f.code == "enforcement.seats_exceeded"]
    assert "3 leases were live at once" in f.message
    assert "1 seats plus 1 overdraft" in f.message


def test_leases_live_in_an_earlier_report_count(tmp_path: Path) -> None:
    home, site = _site(tmp_path)
    site.checkout("a")
    site.checkout("b")
    assert _ingest(home, site, "first").status == "accepted"
    site.checkout("c")  # a and b are still live: three at once

    out = _ingest(home, site, "second")

    assert _found(out) == {"enforcement.seats_exceeded": "warning"}


def test_usage_above_the_limit_on_a_refuse_meter_is_billed_and_flagged(tmp_path: Path) -> None:
    home, site = _site(tmp_path)
    site.use("solver", 6)
    site.use("solver", 6)

    out = _ingest(home, site, "over")

    assert out.status == "accepted_with_findings"
    assert _found(out) == {"enforcement.usage_over_limit": "warning"}
    assert out.totals == {"solver": 12}  # every unit the server granted is billed


def test_usage_over_the_limit_across_reports(tmp_path: Path) -> None:
    home, site = _site(tmp_path)
    site.use("solver", 8)
    assert _found(_ingest(home, site, "first")) == {}
    site.use("solver", 5)

    out = _ingest(home, site, "second")

    assert _found(out) == {"enforcement.usage_over_limit": "warning"}


def test_a_top_up_raises_the_limit_from_its_import_on(tmp_path: Path) -> None:
    home, site = _site(tmp_path)
    site.use("solver", 8)
    site.writer.append(
        RecordType.TOPUP_IMPORTED, {"t": "tu_1", "l": site.license_id, "m": "solver", "a": 5}
    )
    site.use("solver", 6)  # 14 of 10 + 5

    out = _ingest(home, site, "topup")

    assert _found(out) == {}


def test_an_allow_meter_may_go_over(tmp_path: Path) -> None:
    home, site = _site(tmp_path, meters={"solver": Meter(10, "month", "allow")})
    site.use("solver", 30, f=1)

    assert _found(_ingest(home, site, "allow")) == {}


def test_usage_after_the_report_deadline_plus_grace(tmp_path: Path) -> None:
    home, site = _site(tmp_path, report_every_days=7, grace_days=1)
    vendor_time = datetime.fromtimestamp(SITE_START_MS / 1000, UTC) + timedelta(minutes=1)
    site.writer.append(
        RecordType.RECEIPT_IMPORTED, {"s": 0, "t": vendor_time.isoformat(), "r": "rcpt_1"}
    )
    site.use("solver", 1, step_ms=7 * DAY_MS)  # inside the grace day
    site.use("solver", 1, step_ms=2 * DAY_MS)  # past it
    site.checkout("late")

    out = _ingest(home, site, "late")

    assert _found(out) == {"enforcement.granted_after_deadline": "warning"}
    (f,) = [f for f in out.findings if f.code == "enforcement.granted_after_deadline"]
    assert f.message.startswith("2 grant(s)")
    assert "report deadline plus grace" in f.message


def test_usage_after_the_license_expired(tmp_path: Path) -> None:
    expires = datetime.fromtimestamp(SITE_START_MS / 1000, UTC) + timedelta(days=2)
    home, site = _site(tmp_path, expires=expires)
    site.use("solver", 1)
    site.use("solver", 1, step_ms=3 * DAY_MS)

    out = _ingest(home, site, "expired")

    assert _found(out) == {"enforcement.granted_after_deadline": "warning"}
    assert any("after the license expired" in f.message for f in out.findings)


def test_a_decrement_beyond_what_was_charged_rejects_the_report(tmp_path: Path) -> None:
    home, site = _site(tmp_path)
    site.use("solver", 5)
    _decrement(site, 8)

    out = _ingest(home, site, "refund")

    assert out.status == "rejected"
    assert _found(out) == {"enforcement.decrement_uncovered": "critical"}
    assert out.receipt is None


def test_a_decrement_covered_by_an_earlier_report_is_fine(tmp_path: Path) -> None:
    home, site = _site(tmp_path)
    site.use("solver", 5)
    assert _ingest(home, site, "first").accepted
    _decrement(site, 5)

    out = _ingest(home, site, "second")

    assert out.status == "accepted", out.to_json()


def test_a_data_object_decrement_is_covered_only_by_its_own_increments(tmp_path: Path) -> None:
    # The Cryptolens attack of issue 14: edit cryptolens.db, then decrement another
    # object: the meter as a whole stays positive, the object does not.
    home, site = _site(tmp_path, meters={"solver": Meter(None)})
    site.use("solver", 1000, c="cryptolens/7")
    _decrement(site, 400, client="cryptolens/8")

    out = _ingest(home, site, "objects")

    assert out.status == "rejected"
    (f,) = [f for f in out.findings if f.code == "enforcement.decrement_uncovered"]
    assert "data object 8" in f.message
    assert "400 units" in f.message
