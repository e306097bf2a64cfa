"""The vendor store behaves the same on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from meterbox.errors import ConfigError, StateError
from meterbox.licenses import Feature, License, Meter, Topup
from meterbox.vendorkit.keys import VendorKeyPair
from meterbox.vendorkit.store import (
    FindingRow,
    InstanceRow,
    ReceiptRow,
    ReportRow,
    SeatEventRow,
    UsageRow,
    VendorStore,
    normalise_url,
    schema_table,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)
PAIR = VendorKeyPair.from_raw(b"\x09" * 32, b"\x0a" * 32, T0)
INSTANCE = "ab" * 16


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vendor.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[VendorStore]:
    with VendorStore.open(store_url) as s:
        yield s


def _license(license_id: str, customer: str) -> tuple[License, bytes]:
    lic = License(
        license_id=license_id,
        customer=customer,
        product="Solver",
        issued=T0,
        vendor_key_id=PAIR.key_id.hex(),
        features={"cad": Feature(2)},
        meters={"runs": Meter(100)},
    )
    return lic, lic.sign(PAIR.signer())


def _usage(seq: int, license_id: str = "lic_a", amount: int = 1) -> UsageRow:
    return UsageRow(INSTANCE, seq, license_id, "runs", T0 + timedelta(minutes=seq), amount, "c1")


def test_licenses_and_topups_round_trip(store: VendorStore) -> None:
    lic, doc = _license("lic_a", "ACME")
    store.add_license(lic, doc)
    row = store.get_license("lic_a")
    assert row is not None
    assert (row.customer, row.issued, row.document) == ("ACME", T0, doc)
    assert store.get_license("lic_missing") is None
    with pytest.raises(StateError, match="already exists"):
        store.add_license(lic, doc)
    topup = Topup("top_1", "lic_a", "runs", 50, T0)
    store.add_topup(topup, topup.sign(PAIR.signer()))
    assert [t.units for t in store.list_topups("lic_a")] == [50]
    with pytest.raises(StateError, match="does not hold"):
        store.add_topup(Topup("top_2", "lic_zz", "runs", 1, T0), b"x")


def test_same_usage_records_never_bill_twice(store: VendorStore) -> None:
    assert store.insert_usage_rows(_usage(i) for i in range(100)) == 100
    assert store.insert_usage_rows([_usage(i) for i in range(90, 110)]) == 10
    rows = store.usage_between(T0, T0 + timedelta(days=1))
    assert [r.seq for r in rows] == list(range(110))
    assert rows[5].ts == T0 + timedelta(minutes=5)


def test_replayed_report_is_recognised(store: VendorStore) -> None:
    report = ReportRow("ee" * 32, INSTANCE, 0, 99, T0, "accepted", [{"code": "x"}])
    assert store.record_report(report) is True
    assert store.record_report(report) is False
    got = store.get_report("ee" * 32)
    assert got is not None
    assert got.findings == ({"code": "x"},)


def test_usage_filters_by_customer_and_window(store: VendorStore) -> None:
    for lid, customer in (("lic_a", "ACME"), ("lic_b", "Beta")):
        lic, doc = _license(lid, customer)
        store.add_license(lic, doc)
    store.insert_usage_rows([_usage(1, "lic_a"), _usage(2, "lic_b"), _usage(3, "lic_a")])
    acme = store.usage_between(T0, T0 + timedelta(hours=1), customer="ACME")
    assert [r.seq for r in acme] == [1, 3]
    window = store.usage_between(T0 + timedelta(minutes=2), T0 + timedelta(minutes=3))
    assert [r.seq for r in window] == [2]


def test_instances_upsert_keeps_first_seen(store: VendorStore) -> None:
    store.upsert_instance(InstanceRow(INSTANCE, "lic_a", T0, chain_secret=b"s", chain_epoch=0))
    later = T0 + timedelta(days=3)
    store.upsert_instance(
        InstanceRow(
            INSTANCE, "lic_a", later, acked_seq=99, acked_hash="cd" * 32, last_report_at=later
        )
    )
    inst = store.get_instance(INSTANCE)
    assert inst is not None
    assert (inst.first_seen, inst.acked_seq, inst.last_report_at) == (T0, 99, later)
    assert store.get_instance("00" * 16) is None


def test_seat_events_findings_and_receipts(store: VendorStore) -> None:
    events = [
        SeatEventRow(INSTANCE, i, "lic_a", "cad", T0 + timedelta(seconds=i), "checkout", "c", "L1")
        for i in range(5)
    ]
    assert store.insert_seat_events(events) == 5
    assert store.insert_seat_events(events) == 0
    assert len(store.seat_events_between(T0, T0 + timedelta(minutes=1), license_id="lic_a")) == 5
    store.insert_findings([FindingRow("ee" * 32, INSTANCE, "clock_step", "warning", "jump", 3)])
    assert [f.code for f in store.findings_for(instance_id=INSTANCE)] == ["clock_step"]
    store.add_receipt(ReceiptRow("rcpt_1", INSTANCE, "ee" * 32, 4, T0, b"doc"))
    assert [r.head_seq for r in store.receipts_for(INSTANCE)] == [4]


def test_grouped_writes_share_one_transaction(store: VendorStore) -> None:
    def ingest_that_fails() -> None:
        with store.begin() as conn:
            store.insert_usage_rows([_usage(1)], conn)
            store.record_report(ReportRow("ff" * 32, INSTANCE, 0, 1, T0, "accepted"), conn)
            raise RuntimeError("ingest failed half way")

    with pytest.raises(RuntimeError):
        ingest_that_fails()
    assert store.usage_between(T0, T0 + timedelta(days=1)) == []
    assert store.get_report("ff" * 32) is None


def test_newer_schema_version_is_refused(store_url: str) -> None:
    with VendorStore.open(store_url) as s, s.engine.begin() as conn:
        conn.execute(sa.update(schema_table).values(version=99))
    with pytest.raises(StateError, match="unknown schema version") as info:
        VendorStore.open(store_url)
    assert info.value.found == "version 99"


def test_url_normalisation() -> None:
    assert normalise_url("postgresql://u@h/db", None) == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u@h/db", None) == "postgresql+psycopg://u@h/db"
    assert normalise_url(None, Path("/x")) == "sqlite:////x/vendor.db"
    with pytest.raises(ConfigError, match="not supported"):
        normalise_url("mysql://u@h/db", None)
    with pytest.raises(ConfigError, match="no vendor store"):
        normalise_url(None, None)


def test_million_usage_rows_ingest_quickly_on_sqlite(tmp_path: Path) -> None:
    rows = (
        UsageRow(INSTANCE, i, "lic_a", "runs", T0 + timedelta(seconds=i), 1, "c1")
        for i in range(1_000_000)
    )
    with VendorStore.open(home=tmp_path) as s:
        start = time.perf_counter()
        assert s.insert_usage_rows(rows) == 1_000_000
        elapsed = time.perf_counter() - start
    assert elapsed < 20, f"1,000,000 rows took {elapsed:.1f} s"
