"""Attacks on the server's cache files: the ledger is the truth (issue 14, ADR 0014).

A customer with root on the server stops it, edits or deletes ``state.db`` or
``cryptolens.db``, and starts it again. Each test runs the real ``meterbox server
run`` process on real files, does the attack, and checks that the server still
enforces what its ledger holds, and that the exported report carries a
``state.rebuilt`` finding of the right severity, while the usage it bills is never
less than what the server acknowledged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from meterbox.ledger import Record, RecordType, ReportResult
from meterbox.ledger.records import StateRebuilt, Usage
from meterbox.vendorkit.ingest import ingest
from support.cryptolens_site import KEY, PRODUCT, make_site
from support.server_proc import Data, ServerProcess, make_data


def _remove_state(data: Path) -> None:
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (data / name).unlink(missing_ok=True)


def _export(url: str, token: str) -> bytes:
    r = httpx.post(
        f"{url}/v1/admin/export", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    return r.content


def _rebuilt(records: list[Record]) -> list[StateRebuilt]:
    return [StateRebuilt.from_map(r.payload) for r in records if r.type == RecordType.STATE_REBUILT]


def _billed(records: list[Record], meter: str) -> int:
    total = 0
    for r in records:
        if r.type in (RecordType.USAGE, RecordType.USAGE_DECREMENT):
            u = Usage.from_map(r.payload)
            if u.meter == meter:
                total += -u.amount if r.type == RecordType.USAGE_DECREMENT else u.amount
    return total


def _severity(result: ReportResult, code: str = "state.rebuilt") -> set[str]:
    return {f.severity for f in result.findings if f.code == code}


@pytest.fixture
def one_seat(tmp_path: Path) -> Iterator[tuple[Data, ServerProcess]]:
    site = make_data(tmp_path, seats=1, overdraft=0, meter_limit=10)
    server = ServerProcess(site.data, tmp_path / "server.log")
    try:
        yield site, server
    finally:
        server.stop()


def test_deleting_state_db_does_not_free_a_leased_seat(
    one_seat: tuple[Data, ServerProcess],
) -> None:
    site, server = one_seat
    server.start()
    first = httpx.post(f"{server.url}/v1/seats/checkout", json={"feature": "cad", "client_id": "a"})
    assert first.status_code == 200, first.text
    server.stop()
    _remove_state(site.data)
    server.start()
    second = httpx.post(
        f"{server.url}/v1/seats/checkout", json={"feature": "cad", "client_id": "b"}
    )
    assert second.status_code == 409, second.text
    # The lease granted before the attack is still the server's: its holder renews it.
    renewed = httpx.post(
        f"{server.url}/v1/seats/heartbeat", json={"lease_id": first.json()["lease_id"]}
    )
    assert renewed.status_code == 200, renewed.text
    records, result = site.verify(_export(server.url, site.token))
    rebuilt = _rebuilt(records)
    assert [(r.cache, r.reason, r.less) for r in rebuilt] == [("state.db", "missing", True)]
    assert any("lease" in line for line in rebuilt[0].items)
    assert _severity(result) == {"critical"}


def test_resetting_used_quota_in_state_db_still_refuses_a_full_meter(
    one_seat: tuple[Data, ServerProcess],
) -> None:
    site, server = one_seat
    server.start()
    body = {"meter": "runs", "amount": 10, "client_id": "app", "idempotency_key": "k-1"}
    assert httpx.post(f"{server.url}/v1/usage", json=body).status_code == 200
    over = {**body, "amount": 1, "idempotency_key": "k-2"}
    assert httpx.post(f"{server.url}/v1/usage", json=over).status_code == 402
    server.stop()
    with closing(sqlite3.connect(site.data / "state.db")) as db:
        db.execute("UPDATE usage SET used = 0")
        db.commit()
    server.start()
    again = {**over, "idempotency_key": "k-3"}
    refused = httpx.post(f"{server.url}/v1/usage", json=again)
    assert refused.status_code == 402, refused.text
    balance = httpx.get(f"{server.url}/v1/status").json()["quota"]
    assert next(iter(balance.values()))["used"] == 10
    report = _export(server.url, site.token)
    records, result = site.verify(report)
    rebuilt = _rebuilt(records)
    assert [(r.cache, r.reason, r.less) for r in rebuilt] == [("state.db", "differed", True)]
    assert "cache 0, ledger 10" in rebuilt[0].items[0]
    assert _severity(result) == {"critical"}
    # Refused requests sealed no usage; the report holds the 10 units acknowledged.
    assert _billed(records, "runs") == 10
    # The vendor's ingest bills the ledger's units and flags the edit as critical.
    path = site.data.parent / "report.mbr"
    path.write_bytes(report)
    outcome = ingest(site.home, path)
    assert outcome.status == "accepted_with_findings"
    assert ("state.rebuilt", "critical") in {(f.code, f.severity) for f in outcome.findings}


def test_a_cache_only_the_crash_replay_completes_is_not_rebuilt(
    one_seat: tuple[Data, ServerProcess],
) -> None:
    site, server = one_seat
    server.start()
    body = {"meter": "runs", "amount": 3, "client_id": "app", "idempotency_key": "k-1"}
    assert httpx.post(f"{server.url}/v1/usage", json=body).status_code == 200
    server.kill9()
    server.start()
    records, result = site.verify(_export(server.url, site.token))
    assert _rebuilt(records) == []
    assert not result.critical


def test_an_extra_lease_in_state_db_is_only_a_warning_and_is_dropped(
    one_seat: tuple[Data, ServerProcess],
) -> None:
    site, server = one_seat
    server.start()
    server.stop()
    with closing(sqlite3.connect(site.data / "state.db")) as db:
        db.execute(
            "INSERT INTO leases (lease_id, feature, client_id, license_id, issued_at, "
            "expires_at, lease_seconds, overdraft, hostname, recorded_at, ended) "
            "VALUES ('forged', 'cad', 'x', 'lic-site', 0, ?, 60, 0, NULL, NULL, 0)",
            (2**52,),
        )
        db.commit()
    server.start()
    taken = httpx.post(f"{server.url}/v1/seats/checkout", json={"feature": "cad", "client_id": "b"})
    assert taken.status_code == 200, taken.text
    report = _export(server.url, site.token)
    records, result = site.verify(report)
    assert [(r.reason, r.less) for r in _rebuilt(records)] == [("differed", False)]
    assert _severity(result) == {"warning"}
    path = site.data.parent / "report.mbr"
    path.write_bytes(report)
    outcome = ingest(site.home, path)
    assert ("state.rebuilt", "warning") in {(f.code, f.severity) for f in outcome.findings}


# ------------------------------------------------------------------ Cryptolens
_INC = "/api/data/IncrementIntValueToKey"
_DEC = "/api/data/DecrementIntValueToKey"


def _change(url: str, path: str, amount: int, object_id: int = 2) -> dict[str, object]:
    form = {"ProductId": str(PRODUCT), "Key": KEY, "Id": str(object_id), "IntValue": str(amount)}
    reply = httpx.post(f"{url}{path}", data=form, timeout=30)
    assert reply.status_code == 200, reply.text
    out: dict[str, object] = reply.json()
    return out


def test_editing_cryptolens_db_does_not_let_a_decrement_give_back_more_than_was_used(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path)
    server = ServerProcess(site.data, tmp_path / "server.log")
    try:
        server.start()
        assert _change(server.url, _INC, 30)["result"] == 0
        server.stop()
        with closing(sqlite3.connect(site.data / "cryptolens.db")) as db:
            db.execute("UPDATE data_net SET net = 50 WHERE object_id = 2")
            db.commit()
        server.start()
        refused = _change(server.url, _DEC, 31)
        assert refused["result"] == 1, refused
        assert _change(server.url, _DEC, 30)["result"] == 0
        records = site.records(site.export(server.url))
        rebuilt = _rebuilt(records)
        assert [(r.cache, r.reason) for r in rebuilt] == [("cryptolens.db", "differed")]
        assert "cache 50, ledger 30" in rebuilt[0].items[0]
        # What the object charged, net, is never below zero on the bill.
        assert _billed(records, "runs") == 0
    finally:
        server.stop()


def test_an_intvalue_near_2_to_the_63_is_refused_and_nothing_is_sealed(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    server = ServerProcess(site.data, tmp_path / "server.log")
    try:
        server.start()
        head = httpx.get(f"{server.url}/v1/status").json()["ledger"]["seq"]
        for path in (_INC, _DEC):
            for value in (2**63 - 1, 2**63, 2**64):
                reply = _change(server.url, path, value)
                assert reply["result"] == 1, reply
        assert httpx.get(f"{server.url}/v1/status").json()["ledger"]["seq"] == head
        records = site.records(site.export(server.url))
        assert _billed(records, "runs") == 0
    finally:
        server.stop()


def test_deleting_cryptolens_db_does_not_free_node_locked_slots(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    server = ServerProcess(site.data, tmp_path / "server.log")
    form = {"ProductId": str(PRODUCT), "Key": KEY, "SignMethod": "1"}
    try:
        server.start()
        for n in range(5):  # max_machines is 5
            r = httpx.post(f"{server.url}/api/key/activate", data={**form, "MachineCode": f"m{n}"})
            assert r.json()["result"] == 0, r.text
        server.stop()
        for name in ("cryptolens.db", "cryptolens.db-wal", "cryptolens.db-shm"):
            (site.data / name).unlink(missing_ok=True)
        server.start()
        sixth = httpx.post(f"{server.url}/api/key/activate", data={**form, "MachineCode": "m5"})
        assert sixth.json()["result"] == 1, sixth.text
        again = httpx.post(f"{server.url}/api/key/activate", data={**form, "MachineCode": "m0"})
        assert again.json()["result"] == 0, again.text
        report = site.export(server.url)
    finally:
        server.stop()
    records, result = Data(site.home, site.data, site.admin_token).verify(report)
    rebuilt = _rebuilt(records)
    assert [(r.cache, r.reason, r.less) for r in rebuilt] == [("cryptolens.db", "missing", True)]
    assert _severity(result) == {"critical"}
