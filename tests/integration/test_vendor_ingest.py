"""`meterbox vendor ingest`: the round trip through real files and a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterbox.ledger import Head
from meterbox.licenses import Receipt, VendorPublicBundle
from meterbox.vendorkit import VendorStore
from meterbox.vendorkit.ingest import ingest
from support.vendor_ingest import (
    VENDOR_NOW,
    codes,
    ingest_json,
    issue,
    make_home,
    make_site,
)


def _bundle(home: Path) -> VendorPublicBundle:
    return VendorPublicBundle.from_bytes((home / "vendor.pub").read_bytes())


def _usage_count(home: Path, store: str | None = None) -> int:
    with VendorStore.open(store, home=home) as db:
        with db.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM usage").scalar_one())


def test_accepted_report_bills_usage_and_writes_a_verifiable_receipt(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.use("solver", 5)
    site.use("solver", 7)
    site.refund("solver", 2)
    site.use("exports", 3)
    report = site.export(tmp_path / "r1.mbr")

    code, out = ingest_json(home, report)

    assert code == 0, out
    assert out["status"] == "accepted"
    assert out["findings"] == []
    assert out["totals"] == {"exports": 3, "solver": 10}
    assert out["head"] == {"seq": site.writer.head.seq, "hash": site.writer.head.hash.hex()}
    receipt_path = Path(out["receipt"])
    assert receipt_path == tmp_path / "r1.mbr.receipt"
    receipt = Receipt.from_bytes(receipt_path.read_bytes(), _bundle(home))
    assert receipt.instance_id == site.writer.instance_id.hex() == out["instance_id"]
    assert (receipt.head_seq, receipt.head_hash) == (out["head"]["seq"], out["head"]["hash"])
    assert receipt.previous_head_seq is None
    assert dict(receipt.totals) == {"exports": 3, "solver": 10}
    assert receipt.license_ids == ("lic_acme",)
    assert receipt.report_digest == out["report_digest"]
    assert _usage_count(home) == 4


def test_receipt_out_option_and_human_summary(tmp_path: Path) -> None:
    from support.vendor_ingest import cli

    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.use("solver", 4)
    report = site.export(tmp_path / "r1.mbr")
    target = tmp_path / "out.rcpt"

    code, text = cli("ingest", "--home", str(home), str(report), "--receipt-out", str(target))

    assert code == 0, text
    assert "accepted" in text
    assert "solver" in text
    assert str(target) in text
    assert target.exists()
    assert not (tmp_path / "r1.mbr.receipt").exists()


def test_after_compaction_the_next_report_bills_only_new_records(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    for _ in range(3):
        site.use("solver", 10)
    code, first = ingest_json(home, site.export(tmp_path / "r1.mbr"))
    assert code == 0, first
    acked = Head(first["head"]["seq"], bytes.fromhex(first["head"]["hash"]))
    site.writer.compact(acked)
    site.use("solver", 1)
    site.use("solver", 2)

    code, second = ingest_json(home, site.export(tmp_path / "r2.mbr", acked=acked))

    assert code == 0, second
    assert second["status"] == "accepted"
    assert second["totals"] == {"solver": 3}
    receipt = Receipt.from_bytes(Path(second["receipt"]).read_bytes(), _bundle(home))
    assert receipt.previous_head_seq == acked.seq
    assert _usage_count(home) == 5


def test_reexport_without_compaction_never_bills_a_record_twice(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.use("solver", 10)
    assert ingest_json(home, site.export(tmp_path / "r1.mbr"))[0] == 0
    site.use("solver", 1)
    # No receipt imported on the site: the second report repeats the first's records.
    code, second = ingest_json(home, site.export(tmp_path / "r2.mbr"))
    assert code == 0, second
    assert second["totals"] == {"solver": 1}
    assert _usage_count(home) == 2


def test_missing_file_and_non_report_are_unusable_input(tmp_path: Path) -> None:
    from support.vendor_ingest import cli

    home = make_home(tmp_path)
    code, _ = cli("ingest", "--home", str(home), str(tmp_path / "nope.mbr"))
    assert code == 2
    junk = tmp_path / "junk.mbr"
    junk.write_bytes(b"this is not a report at all")
    code, out = ingest_json(home, junk)
    assert code == 2
    assert out["status"] == "unusable"
    assert "report.malformed" in codes(out)
    assert out["receipt"] is None


def test_license_not_in_this_store_is_a_warning(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    doc = issue(home, record=False)
    site = make_site(home, tmp_path / "ledger", [doc])
    site.use("solver", 1)
    code, out = ingest_json(home, site.export(tmp_path / "r1.mbr"))
    assert code == 0
    assert out["status"] == "accepted_with_findings"
    assert codes(out) == {"license.unknown"}


def test_core_api_returns_outcome_with_receipt(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.use("solver", 2)
    outcome = ingest(home, site.export(tmp_path / "r.mbr"), now=VENDOR_NOW)
    assert outcome.accepted
    assert outcome.receipt is not None
    assert outcome.receipt.vendor_time == VENDOR_NOW


@pytest.mark.usefixtures("fresh_postgres_url")
def test_round_trip_on_postgresql(tmp_path: Path, fresh_postgres_url: str) -> None:
    home = make_home(tmp_path)
    store = fresh_postgres_url
    site = make_site(home, tmp_path / "ledger", [issue(home, store_url=store)])
    site.use("solver", 5)
    site.checkout("L1")
    site.release("L1")
    report = site.export(tmp_path / "r1.mbr")

    code, out = ingest_json(home, report, "--store", store)
    assert code == 0, out
    assert out["status"] == "accepted"
    assert out["totals"] == {"solver": 5}
    code, again = ingest_json(home, report, "--store", store)
    assert code == 1
    assert codes(again) == {"report.replay"}
    assert _usage_count(home, store) == 1
    with VendorStore.open(store, home=home) as db:
        inst = db.get_instance(out["instance_id"])
    assert inst is not None
    assert inst.acked_seq == out["head"]["seq"]


def test_seat_denial_is_stored_against_the_license_it_names(tmp_path: Path) -> None:
    # Regression: a denial of the second customer's seat was stored (and billed)
    # against the report's first license.
    from meterbox.ledger import RecordType

    home = make_home(tmp_path)
    acme = issue(home)
    globex = issue(home, "lic_globex", customer="Globex")
    site = make_site(home, tmp_path / "ledger", [acme, globex])
    site.clock.advance(1000)
    site.writer.append(RecordType.SEAT_DENIED, {"f": "cad", "c": "ws-9", "l": "lic_globex"})
    site.clock.advance(1000)
    site.writer.append(RecordType.SEAT_DENIED, {"f": "cad", "c": "ws-8"})
    code, out = ingest_json(home, site.export(tmp_path / "r1.mbr"))
    assert code == 0, out
    with VendorStore.open(None, home=home) as db:
        with db.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT license_id, client_id FROM seat_events WHERE kind = 'denied' ORDER BY seq"
            ).all()
    # A record written before denials named their license falls back to the report's.
    assert [tuple(r) for r in rows] == [("lic_globex", "ws-9"), ("lic_acme", "ws-8")]
