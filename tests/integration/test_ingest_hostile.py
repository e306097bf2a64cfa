"""Hostile reports (issue 15, ADR 0016): each answered with a clear finding, at bounded cost.

Real vendor store (SQLite file), real ledger writer and exporter, real ingest. Each case
checks the verdict and its findings, that nothing of the report was stored but its
findings and digest, that the store did not grow with the attacker's input, and that
the time taken stays within the stated bound (docs/spec/report.md "Limits"). The
worst case per class is measured by bench/ingest_hostile.py (docs/benchmarks.md).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from meterbox.vendorkit import DB_FILE
from meterbox.vendorkit.ingest import IngestConfig, ingest
from support.hostile import BUILDERS, build, too_many_records, world
from support.vendor_ingest import VENDOR_NOW

#: The stated bound on time per MiB of report, with generous room for a loaded CI core.
SECONDS_PER_MIB = 2.0
SECONDS_FLOOR = 3.0


def _rows(home: Path, table: str, digest: str) -> int:
    with sqlite3.connect(home / DB_FILE) as db:
        (n,) = db.execute(
            f"SELECT count(*) FROM {table} WHERE report_digest = ?",
            (digest,),
        ).fetchone()
    return int(n)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_hostile_report_is_answered_with_a_finding_at_bounded_cost(
    tmp_path: Path, name: str
) -> None:
    w, case = build(tmp_path, name)
    size = case.path.stat().st_size
    billed_before = _billed(w.home)

    start = time.perf_counter()
    out = ingest(w.home, case.path, now=VENDOR_NOW)
    elapsed = time.perf_counter() - start

    found = {f.code for f in out.findings}
    assert out.status == case.status, out.to_json()
    assert case.codes <= found, found
    assert not (case.absent & found), found
    assert out.receipt is None
    assert elapsed <= SECONDS_FLOOR + SECONDS_PER_MIB * size / (1 << 20), (elapsed, size)
    # Findings are capped per code and per report, whatever the attacker repeats.
    per_code: dict[str, int] = {}
    for f in out.findings:
        per_code[f.code] = per_code.get(f.code, 0) + 1
    assert max(per_code.values()) <= 50, per_code
    assert len(out.findings) <= 500
    # Nothing of a refused report is stored but its verdict: no usage, seats or events.
    for table in ("usage", "seat_events", "ledger_events"):
        assert _rows(w.home, table, out.report_digest) == 0, table
    assert _billed(w.home) == billed_before
    if out.status == "rejected":
        assert _rows(w.home, "findings", out.report_digest) == len(out.findings)


def test_the_issues_junk_license_file_stores_one_finding_and_leaves_the_store_small(
    tmp_path: Path,
) -> None:
    w, case = build(tmp_path, "junk_licenses")
    db = w.home / DB_FILE
    before = db.stat().st_size

    out = ingest(w.home, case.path, now=VENDOR_NOW)

    assert [f.code for f in out.findings] == ["report.malformed"]
    assert "at most 256" in out.findings[0].message
    assert db.stat().st_size - before < 256 << 10


def test_licenses_at_the_limit_keep_fifty_findings_and_count_the_rest(tmp_path: Path) -> None:
    w, case = build(tmp_path, "licenses_at_limit")

    out = ingest(w.home, case.path, now=VENDOR_NOW)

    invalid = [f for f in out.findings if f.code == "license.invalid"]
    omitted = [f for f in out.findings if f.code == "findings.omitted"]
    assert len(invalid) == 50
    assert [f.message for f in omitted] == ["206 further 'license.invalid' findings were not kept"]


def test_a_report_with_more_records_than_the_bound_is_refused_without_reading_on(
    tmp_path: Path,
) -> None:
    w = world(tmp_path)
    case = too_many_records(w)

    out = ingest(w.home, case.path, now=VENDOR_NOW, config=IngestConfig(max_records=5))

    assert out.status == "rejected"
    assert "report.limit_exceeded" in {f.code for f in out.findings}
    assert out.records == 5
    assert _rows(w.home, "usage", out.report_digest) == 0


def test_a_report_larger_than_the_bound_is_refused_before_its_header_is_read(
    tmp_path: Path,
) -> None:
    w = world(tmp_path)
    _, path = w.report("big")

    out = ingest(w.home, path, now=VENDOR_NOW, config=IngestConfig(max_report_bytes=100))

    assert out.status == "rejected"
    assert [f.code for f in out.findings] == ["report.limit_exceeded"]
    assert "expected at most 100" in out.findings[0].message


def test_after_a_hostile_report_the_honest_one_is_still_accepted(tmp_path: Path) -> None:
    w, case = build(tmp_path, "forged_epochs")
    assert ingest(w.home, case.path, now=VENDOR_NOW).status == "rejected"
    _, honest = w.report("honest")

    out = ingest(w.home, honest, now=VENDOR_NOW)

    assert out.accepted, out.to_json()
    assert _billed(w.home) == 7


def _billed(home: Path) -> int:
    with sqlite3.connect(home / DB_FILE) as db:
        (n,) = db.execute("SELECT coalesce(sum(amount), 0) FROM usage").fetchone()
    return int(n)
