"""Each attack on the report round trip is rejected with its own code and bills nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meterbox.ledger import LedgerWriter
from meterbox.vendorkit import VendorStore
from support.report_surgery import frame_offsets
from support.vendor_ingest import (
    SITE_START_MS,
    Site,
    codes,
    ingest_json,
    issue,
    make_home,
    make_other_home,
    make_site,
)


def _billed(home: Path) -> int:
    with VendorStore.open(None, home=home) as db, db.engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT coalesce(sum(amount), 0) FROM usage").scalar_one()
    return int(total)


def _site_with_usage(tmp_path: Path, home: Path, units: list[int]) -> Site:
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    for u in units:
        site.use("solver", u)
    return site


def test_replay_of_an_ingested_report(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = _site_with_usage(tmp_path, home, [5, 6])
    report = site.export(tmp_path / "r1.mbr")
    assert ingest_json(home, report)[0] == 0
    copy = tmp_path / "copy-of-r1.mbr"
    shutil.copy(report, copy)

    code, out = ingest_json(home, copy)

    assert code == 1
    assert out["status"] == "rejected"
    assert codes(out) == {"report.replay"}
    assert out["receipt"] is None
    assert _billed(home) == 11


@pytest.mark.parametrize(
    ("extra_records", "expected"), [(0, "ledger.rollback"), (5, "ledger.fork")]
)
def test_restore_of_a_backup_older_than_the_last_receipt(
    tmp_path: Path, extra_records: int, expected: str
) -> None:
    home = make_home(tmp_path)
    site = _site_with_usage(tmp_path, home, [1, 2])
    backup = site.backup(tmp_path / "backup")
    for u in (10, 20, 30):
        site.use("solver", u)
    code, first = ingest_json(home, site.export(tmp_path / "r1.mbr"))
    assert code == 0, first
    billed = _billed(home)
    # The customer restores the old copy and keeps going from there.
    site.writer.close()
    shutil.rmtree(site.directory)
    shutil.move(backup, site.directory)
    site.writer = LedgerWriter.open(site.directory, clock=site.clock)
    for _ in range(extra_records):
        site.use("solver", 100)

    code, out = ingest_json(home, site.export(tmp_path / "r2.mbr"))

    assert code == 1, out
    assert out["status"] == "rejected"
    assert expected in codes(out)
    assert out["receipt"] is None
    assert _billed(home) == billed


def test_two_servers_running_one_license_at_the_same_time(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    doc = issue(home)
    first = make_site(home, tmp_path / "a", [doc])
    clone = make_site(home, tmp_path / "b", [doc], start_ms=SITE_START_MS + 1500)
    for _ in range(3):
        first.use("solver", 1)
        clone.use("solver", 50)
    code, a = ingest_json(home, first.export(tmp_path / "a.mbr"))
    assert code == 0, a

    code, b = ingest_json(home, clone.export(tmp_path / "b.mbr"))

    assert code == 1, b
    assert "license.cloned" in codes(b)
    assert _billed(home) == 3
    with VendorStore.open(None, home=home) as db:
        flagged = db.findings_for(instance_id=a["instance_id"])
    assert [f.code for f in flagged] == ["license.cloned"]
    assert flagged[0].severity == "warning"
    # The original keeps reporting while the clone runs: the overlap stays visible.
    first.use("solver", 1)
    code, again = ingest_json(home, first.export(tmp_path / "a2.mbr"))
    assert code == 1
    assert "license.cloned" in codes(again)


def test_a_server_that_replaced_another_is_only_warned(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    doc = issue(home)
    old = make_site(home, tmp_path / "a", [doc])
    old.use("solver", 1)
    assert ingest_json(home, old.export(tmp_path / "a.mbr"))[0] == 0
    new = make_site(home, tmp_path / "b", [doc], start_ms=SITE_START_MS + 86_400_000)
    new.use("solver", 2)

    code, out = ingest_json(home, new.export(tmp_path / "b.mbr"))

    assert code == 0, out
    assert out["status"] == "accepted_with_findings"
    assert codes(out) == {"license.instance_replaced"}
    assert _billed(home) == 3


def test_truncated_report(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = _site_with_usage(tmp_path, home, [3] * 20)
    data = site.export(tmp_path / "full.mbr").read_bytes()
    cut = tmp_path / "cut.mbr"
    cut.write_bytes(data[: len(data) // 2])

    code, out = ingest_json(home, cut)

    assert code == 1
    assert "report.truncated" in codes(out)
    assert _billed(home) == 0


def test_edited_report_byte_flip(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = _site_with_usage(tmp_path, home, [3] * 5)
    report = site.export(tmp_path / "r.mbr")
    data = bytearray(report.read_bytes())
    start, end = frame_offsets(bytes(data))[-2]  # a usage record
    # A byte of its ciphertext (its last 16 bytes may be the batch seal instead).
    data[(start + end) // 2] ^= 0x01
    edited = tmp_path / "edited.mbr"
    edited.write_bytes(bytes(data))

    code, out = ingest_json(home, edited)

    assert code == 1
    # The signature is checked before any record is opened: the edit is named once, as
    # a changed file, and nothing inside it is read (ADR 0016).
    assert codes(out) == {"report.signature_invalid"}
    assert out["records"] == 0
    assert _billed(home) == 0
    # The rejection left no trace that would block the honest report.
    code, good = ingest_json(home, report)
    assert code == 0, good
    assert _billed(home) == 15


def test_another_vendors_report_is_unusable_input(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    other = make_other_home(tmp_path)
    site = make_site(other, tmp_path / "ledger", [issue(other)])
    site.use("solver", 9)

    code, out = ingest_json(home, site.export(tmp_path / "r.mbr"))

    assert code == 2
    assert out["status"] == "unusable"
    assert "report.wrong_vendor_key" in codes(out)
    assert _billed(home) == 0


def test_report_carrying_another_vendors_license(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    other = make_other_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(other, record=False)])
    site.use("solver", 9)

    code, out = ingest_json(home, site.export(tmp_path / "r.mbr"))

    assert code == 1
    assert "license.invalid" in codes(out)
    assert _billed(home) == 0
