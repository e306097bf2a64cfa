"""The vendor store behaves the same on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from meterbox.cli import app as root_app
from meterbox.errors import ConfigError, StateError
from meterbox.licenses import Feature, License, Meter, Topup
from meterbox.tpm import TpmPins
from meterbox.vendorkit import Period, VendorStore, bill, ingest_report
from meterbox.vendorkit._db.schema import (
    SCHEMA_VERSION,
    metadata,
    schema_table,
    to_micros,
    usage_table,
)
from meterbox.vendorkit._db.store import (
    FindingRow,
    InstanceRow,
    ReportRow,
    normalise_url,
)
from meterbox.vendorkit._rows import UsageInsert
from meterbox.vendorkit._tpm_check import CredentialState
from meterbox.vendorkit.keys import VendorKeyPair
from support.vendor_ingest import VENDOR_NOW, issue, make_home, make_site

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


def _usage(seq: int, license_id: str = "lic_a", amount: int = 1) -> UsageInsert:
    ts = to_micros(T0 + timedelta(minutes=seq))
    return UsageInsert(INSTANCE, seq, license_id, "runs", ts, amount, "c1", "increment", "ee" * 32)


def _count(store: VendorStore, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


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


def test_reingested_records_are_billed_once(tmp_path: Path, store_url: str) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home, store_url=store_url)])
    for _ in range(3):
        site.use("solver", 10)
    first = site.export(tmp_path / "r1.mbr")
    assert ingest_report(home, first, store_url=store_url, now=VENDOR_NOW).status == "accepted"
    site.use("solver", 1)
    # No receipt imported on the site: the second report repeats the first's records.
    second = ingest_report(
        home, site.export(tmp_path / "r2.mbr"), store_url=store_url, now=VENDOR_NOW
    )
    replay = ingest_report(home, first, store_url=store_url, now=VENDOR_NOW)

    assert (second.status, second.totals) == ("accepted", {"solver": 1})
    assert (replay.status, [f.code for f in replay.findings]) == ("rejected", ["report.replay"])
    statement = bill(home, Period(2026, 1), store_url=store_url)
    assert [(m.meter, m.used) for m in statement.meters if m.meter == "solver"] == [("solver", 31)]
    with VendorStore.open(store_url) as s:
        assert _count(s, "usage") == 4


def test_every_stored_time_is_microseconds(tmp_path: Path, store_url: str) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home, store_url=store_url)])
    site.use("solver", 5)
    first_ms = site.clock.wall_ms()  # the manual clock stands still between records
    site.heartbeat()
    last_ms = site.clock.wall_ms()
    outcome = ingest_report(
        home, site.export(tmp_path / "r1.mbr"), store_url=store_url, now=VENDOR_NOW
    )
    assert outcome.accepted
    engine = sa.create_engine(normalise_url(store_url, None))
    try:
        with engine.connect() as conn:

            def one(sql: str) -> tuple[int, ...]:
                return tuple(int(v) for v in conn.exec_driver_sql(sql).one())

            assert one("SELECT ts FROM usage") == (first_ms * 1000,)
            assert one("SELECT wall_us FROM ledger_events WHERE kind = 'heartbeat'") == (
                last_ms * 1000,
            )
            assert one("SELECT ingested_at FROM reports") == (to_micros(VENDOR_NOW),)
            assert one("SELECT received_us FROM report_meta") == (to_micros(VENDOR_NOW),)
            span = one("SELECT first_wall_us, last_wall_us FROM report_spans")
            activity = one("SELECT first_wall_us, last_wall_us FROM instance_activity")
    finally:
        engine.dispose()
    # The spans cover every new record, from the genesis on: they start at or before
    # the usage record and end at the heartbeat, all in microseconds.
    assert span == activity
    assert span[0] <= first_ms * 1000
    assert span[1] == last_ms * 1000


def test_duplicate_records_are_skipped_by_the_store(store: VendorStore) -> None:
    with store.engine.begin() as conn:
        store.insert_usage([_usage(i) for i in range(100)], conn)
    with store.engine.begin() as conn:
        store.insert_usage([_usage(i, amount=7) for i in range(90, 110)], conn)
    rows = store.usage_between(T0, T0 + timedelta(days=1))
    assert [r.seq for r in rows] == list(range(110))
    assert [r.amount for r in rows[88:92]] == [1, 1, 1, 1]
    assert rows[5].ts == T0 + timedelta(minutes=5)


def test_replayed_report_is_recognised(store: VendorStore) -> None:
    report = ReportRow("ee" * 32, INSTANCE, 0, 99, T0, "accepted", [{"code": "x"}])
    with store.engine.begin() as conn:
        assert store.report_known("ee" * 32, conn) is False
        assert store.record_report(report, conn) is True
        assert store.record_report(report, conn) is False
        assert store.report_known("ee" * 32, conn) is True
    got = store.get_report("ee" * 32)
    assert got is not None
    assert got.findings == ({"code": "x"},)


def test_usage_filters_by_customer_and_window(store: VendorStore) -> None:
    for lid, customer in (("lic_a", "ACME"), ("lic_b", "Beta")):
        lic, doc = _license(lid, customer)
        store.add_license(lic, doc)
    with store.engine.begin() as conn:
        store.insert_usage([_usage(1, "lic_a"), _usage(2, "lic_b"), _usage(3, "lic_a")], conn)
    acme = store.usage_between(T0, T0 + timedelta(hours=1), customer="ACME")
    assert [r.seq for r in acme] == [1, 3]
    window = store.usage_between(T0 + timedelta(minutes=2), T0 + timedelta(minutes=3))
    assert [r.seq for r in window] == [2]


def test_instances_upsert_keeps_first_seen(store: VendorStore) -> None:
    with store.engine.begin() as conn:
        store.upsert_instance(
            InstanceRow(INSTANCE, "lic_a", T0, chain_secret=b"s", chain_epoch=0), conn
        )
    later = T0 + timedelta(days=3)
    with store.engine.begin() as conn:
        store.upsert_instance(
            InstanceRow(
                INSTANCE, "lic_a", later, acked_seq=99, acked_hash="cd" * 32, last_report_at=later
            ),
            conn,
        )
    inst = store.get_instance(INSTANCE)
    assert inst is not None
    assert (inst.first_seen, inst.acked_seq, inst.last_report_at) == (T0, 99, later)
    assert store.get_instance("00" * 16) is None


def test_leases_and_findings(store: VendorStore) -> None:
    def seat(seq: int, kind: str, lease: str) -> tuple[str, int, str, str, int, str, str, str, str]:
        ts = to_micros(T0 + timedelta(seconds=seq))
        return (INSTANCE, seq, "lic_a", "cad", ts, kind, "c", lease, "ee" * 32)

    events = [seat(0, "checkout", "L1"), seat(1, "checkout", "L2"), seat(2, "release", "L1")]
    with store.engine.begin() as conn:
        store.insert_seat_events(events, conn)
        store.insert_seat_events(events, conn)
        store.insert_findings(
            [FindingRow("ee" * 32, INSTANCE, "clock_step", "warning", "jump", 3)], conn
        )
    with store.engine.connect() as conn:
        assert store.open_leases(INSTANCE, conn) == {"L2"}
        assert store.lease_owners(INSTANCE, ["L1", "L9"], conn) == {"L1": ("lic_a", "cad", "c")}
    assert _count(store, "seat_events") == 3
    assert [f.code for f in store.findings_for(instance_id=INSTANCE)] == ["clock_step"]


def test_grouped_writes_share_one_transaction(store: VendorStore) -> None:
    def ingest_that_fails() -> None:
        with store.engine.begin() as conn:
            store.insert_usage([_usage(1)], conn)
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


def test_version_3_store_is_migrated_to_4_keeping_its_rows(store_url: str) -> None:
    """Schema 4 adds tpm_credentials (ADR 0036): a version-3 store gets it, rows kept."""
    with VendorStore.open(store_url) as s, s.engine.begin() as conn:
        s.put_tpm_pins(INSTANCE, TpmPins(b"\x0b\x01", b"\x0b\x02", b"\x0b\x03", 7), conn)
        conn.execute(sa.update(schema_table).values(version=3))
        conn.exec_driver_sql("DROP TABLE tpm_credentials")
    with VendorStore.open(store_url) as s, s.engine.begin() as conn:
        assert conn.execute(sa.select(schema_table.c.version)).scalar_one() == SCHEMA_VERSION == 4
        assert s.tpm_pins(INSTANCE, conn).last_counter == 7
        assert s.tpm_credential(INSTANCE, conn) is None
        state = CredentialState(b"\x0b\x01", b"\x11" * 32, b"challenge", reports=1)
        s.put_tpm_credential(INSTANCE, state, 5, conn)
        assert s.tpm_credential(INSTANCE, conn) == state
        proven = CredentialState(b"\x0b\x01", None, None, proven=True)
        s.put_tpm_credential(INSTANCE, proven, 6, conn)
        assert s.tpm_credential(INSTANCE, conn) == proven


def test_store_of_the_millisecond_schema_is_refused_untouched(store_url: str) -> None:
    # What version 1 wrote: its version row and ingest's tables in milliseconds.
    engine = sa.create_engine(normalise_url(store_url, None))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE meterbox_schema (id INTEGER PRIMARY KEY, version INT)")
        conn.exec_driver_sql("INSERT INTO meterbox_schema VALUES (1, 1)")
        conn.exec_driver_sql(
            "CREATE TABLE report_meta (report_digest VARCHAR(64) PRIMARY KEY, created_ms BIGINT)"
        )
    with pytest.raises(StateError, match="earlier meterbox") as info:
        VendorStore.open(store_url)
    assert (info.value.expected, info.value.found) == (
        f"schema version {SCHEMA_VERSION}",
        "version 1",
    )
    assert "no migration" in (info.value.hint or "")
    with engine.connect() as conn:
        assert sorted(sa.inspect(conn).get_table_names()) == ["meterbox_schema", "report_meta"]
    engine.dispose()


def test_url_normalisation() -> None:
    assert normalise_url("postgresql://u@h/db", None) == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u@h/db", None) == "postgresql+psycopg://u@h/db"
    assert normalise_url(None, Path("/x")) == "sqlite:////x/vendor.db"
    with pytest.raises(ConfigError, match="not supported"):
        normalise_url("mysql://u@h/db", None)
    with pytest.raises(ConfigError, match="no vendor store"):
        normalise_url(None, None)


def test_million_usage_rows_are_stored_in_batches_on_sqlite(tmp_path: Path) -> None:
    rows = [
        UsageInsert(
            INSTANCE, i, "lic_a", "runs", to_micros(T0) + i * 1_000_000, 1, "c1", "increment", "d"
        )
        for i in range(1_000_000)
    ]
    # How fast is measured by bench/ingest_1m.py (docs/benchmarks.md), not here.
    with VendorStore.open(home=tmp_path) as s:
        with s.engine.begin() as conn:
            for at in range(0, len(rows), 50_000):
                s.insert_usage(rows[at : at + 50_000], conn)
        assert _count(s, "usage") == 1_000_000


def test_cli_names_the_way_out_of_a_millisecond_schema_store(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    engine = sa.create_engine(f"sqlite:///{home / 'vendor.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE meterbox_schema (id INTEGER PRIMARY KEY, version INT)")
        conn.exec_driver_sql("INSERT INTO meterbox_schema VALUES (1, 1)")
    engine.dispose()
    result = CliRunner().invoke(root_app, ["vendor", "licenses", "--home", str(home)])
    assert result.exit_code == 4, result.output
    assert "earlier meterbox" in result.stderr
    assert "no migration" in result.stderr


def _schema_2_store(url: str) -> None:
    """A store as schema 2 wrote it: ``usage`` without ``idem_key`` and ``billed``, and
    no ``tpm_credentials`` (schema 4)."""
    md = sa.MetaData()
    for table in metadata.sorted_tables:
        if table.name not in ("usage", "tpm_credentials"):
            table.to_metadata(md)
    sa.Table(
        "usage",
        md,
        *(
            sa.Column(c.name, c.type, nullable=c.nullable)
            for c in usage_table.columns
            if c.name not in ("idem_key", "billed")
        ),
        sa.PrimaryKeyConstraint("instance_id", "seq", name="usage_instance_seq"),
        sa.Index("usage_license_ts", "license_id", "ts"),
    )
    engine = sa.create_engine(normalise_url(url, None))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(schema_table.insert().values(id=1, version=2))
        conn.exec_driver_sql(
            "INSERT INTO usage (instance_id, seq, license_id, meter, ts, amount, client_id, "
            f"kind, report_digest) VALUES ('{INSTANCE}', 1, 'lic_a', 'runs', "
            f"{to_micros(T0)}, 5, 'c1', 'increment', 'd2')"
        )
    engine.dispose()


def test_a_schema_2_store_is_migrated_and_bills_as_before(store_url: str) -> None:
    _schema_2_store(store_url)

    with VendorStore.open(store_url) as s:
        with s.engine.connect() as conn:
            assert conn.execute(sa.select(schema_table.c.version)).scalar_one() == SCHEMA_VERSION
        (row,) = s.usage_between(T0, T0 + timedelta(days=1))
        assert (row.amount, row.idem_key, row.billed) == (5, None, True)
        # The new unique index holds: a second billed row of one key is refused.
        keyed = [
            _usage(2)._replace(idem_key="k1", billed=False),
            _usage(3)._replace(instance_id="cd" * 16, idem_key="k1", billed=False),
        ]
        with s.engine.begin() as conn:
            s.insert_usage(keyed, conn)
            s.bill_rows(INSTANCE, [2], conn)
        with s.engine.connect() as conn:
            assert list(s.billed_copies([("lic_a", "k1")], conn)) == [("lic_a", "k1")]
        with pytest.raises(sa.exc.IntegrityError), s.engine.begin() as conn:
            s.bill_rows("cd" * 16, [3], conn)
        everything = s.usage_between(T0, T0 + timedelta(days=1), billed_only=False)
        assert [(r.seq, r.billed) for r in everything] == [(1, True), (2, True), (3, False)]
    # Opening again finds version 4 and changes nothing.
    with VendorStore.open(store_url) as s:
        assert len(s.usage_between(T0, T0 + timedelta(days=1))) == 2
