"""Sums over stored usage never overflow (issue 15): SQLite and PostgreSQL alike.

One report holds at most IngestConfig.max_records records of at most MAX_AMOUNT units,
so a report's sum fits a signed 64-bit integer; history does not: three reports at that
bound sum to more than 2^63. Before the fix SQLite raised "integer overflow" inside the
billing and anomaly queries, so nothing could be billed or ingested again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meterbox.ledger.records import MAX_AMOUNT
from meterbox.vendorkit import VendorStore
from meterbox.vendorkit._db import queries
from meterbox.vendorkit._ingest_core import IngestConfig
from meterbox.vendorkit._rows import UsageInsert

INSTANCE = "cd" * 16
#: The most one report can sum to, per meter.
PER_REPORT = IngestConfig().max_records * MAX_AMOUNT
TS_US = 1_767_225_600_000_000  # 2026-01-01 00:00 UTC


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VendorStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vendor.db'}"
    else:
        url = str(request.getfixturevalue("fresh_postgres_url"))
    with VendorStore.open(url) as s:
        yield s


def test_three_reports_at_the_per_report_bound_sum_exactly(store: VendorStore) -> None:
    assert PER_REPORT < 1 << 63 < 3 * PER_REPORT
    rows = [
        UsageInsert(
            INSTANCE, n, "lic_a", "solver", TS_US + n, PER_REPORT, "c", "increment", f"r{n}"
        )
        for n in range(3)
    ]
    with store.engine.begin() as conn:
        store.insert_usage(rows, conn)

    with store.engine.connect() as conn:
        sums = queries.usage_sums(conn, start_us=None, end_us=TS_US + 10**9, license_ids=None)
        minutes = queries.usage_per_minute(conn, INSTANCE, 0, 10, None)

    assert sums == {("lic_a", "solver"): 3 * PER_REPORT}
    assert [(m[2], m[3], m[4]) for m in minutes] == [("solver", 3, 3 * PER_REPORT)]
