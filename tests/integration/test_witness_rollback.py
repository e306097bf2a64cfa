"""A server restored from a copy, or whose ledger was cut back, meets heads it never had.

Real `meterbox server run` processes on loopback, the real client SDK with its real
spool, the real vendor ingest. Each scenario is what a customer with root on the
server does between two reports: stop the server, put back an older copy of its data
directory (or cut frames off the end of ``ledger.mbl``), start it again, while the
applications keep running. Without witnesses the server and the vendor see nothing
(``docs/threat-model.md``); with them the server records a WITNESS_MISMATCH at the
next request from any client that was active, keeps serving, and the vendor's ingest
of the next report is critical.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from meterbox.client import AsyncClient, Client, LeaseLost
from meterbox.ledger import RecordType
from meterbox.ledger.records import Witness, WitnessMismatch
from meterbox.witness import HEAD_HEADER, WITNESS_HEADER, parse_head
from support.server_proc import Data, ServerProcess, make_data
from support.timing import ManualWaits
from support.vendor_ingest import cli, codes, ingest_json

LEDGER = Path("ledger") / "ledger.mbl"
FILE_HEADER_LEN = 61


def _export(site: Data, server: ServerProcess, to: Path) -> Path:
    resp = httpx.post(
        f"{server.url}/v1/admin/export",
        headers={"Authorization": f"Bearer {site.token}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    to.write_bytes(resp.content)
    return to


def _status(server: ServerProcess) -> dict[str, object]:
    data = httpx.get(f"{server.url}/v1/status", timeout=10).json()
    assert isinstance(data, dict)
    return data


def _metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def _restore(server: ServerProcess, site: Data, copy: Path) -> None:
    server.stop()
    shutil.rmtree(site.data)
    shutil.copytree(copy, site.data)
    server.start()


def _frame_ends(ledger: Path) -> list[int]:
    """The byte offset after each frame of a ledger file (ledger.md: u16 length + body)."""
    data = ledger.read_bytes()
    ends, pos = [], FILE_HEADER_LEN
    while pos + 2 <= len(data):
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        ends.append(pos)
    return ends


def _mismatches_in(site: Data, report: Path) -> list[WitnessMismatch]:
    records, _ = site.verify(report.read_bytes())
    return [
        WitnessMismatch.from_map(r.payload)
        for r in records
        if r.type == RecordType.WITNESS_MISMATCH
    ]


@pytest.fixture
def site(tmp_path: Path) -> Data:
    return make_data(tmp_path, seats=2, overdraft=0)


def test_restored_snapshot_meets_a_usage_client_and_a_seat_client(
    tmp_path: Path, site: Data
) -> None:
    server = ServerProcess(site.data, tmp_path / "server.log")
    server.start()
    usage = Client(server.url, spool=tmp_path / "usage.spool", client_id="ws-usage")
    # The seat's renewal thread runs for real; only its waits between renewals are
    # ended by the test (instead of 20 s each).
    waits = ManualWaits()
    seats = Client(server.url, spool=tmp_path / "seat.spool", client_id="ws-seat", renew_wait=waits)
    try:
        usage.record("runs", 3)
        # The customer takes a copy of the data directory (server stopped, so it is
        # a clean one) and goes on working.
        server.stop()
        snapshot = tmp_path / "snapshot"
        shutil.copytree(site.data, snapshot)
        server.start()
        for _ in range(4):
            assert not usage.record("runs", 10).spooled
        seat = seats.seat("cad").acquire()
        waits.fire()  # one renewal on the live server: a newer head kept
        assert not seat.lost
        before = _status(server)["ledger"]
        assert isinstance(before, dict)

        # Both applications keep running while the copy is put back.
        _restore(server, site, snapshot)
        restored = _status(server)["ledger"]
        assert isinstance(restored, dict) and restored["seq"] < before["seq"]

        # The seat's next renewal and the usage client's next record carry heads the
        # restored ledger never had.
        waits.fire()
        assert seat.lost and isinstance(seat.lost_error, LeaseLost)
        assert not usage.record("runs", 1).spooled
        status = _status(server)
        witness = status["witness"]
        assert isinstance(witness, dict)
        assert witness["mismatches"] == 2
        assert _metric(server, "meterbox_witness_mismatches_total") == 2
        assert "never had" in server.tail()
        # The server keeps serving.
        assert seats.checkout("cad").lease_id

        report = _export(site, server, tmp_path / "after-restore.mbr")
    finally:
        usage.close()
        seats.close()
        server.stop()

    found = _mismatches_in(site, report)
    # The renewal names a lease the restored server does not hold, so that mismatch
    # names no client (its SEAT_UNKNOWN record names the lease); the new checkout
    # names the seat client.
    assert sorted(str(m.client_id) for m in found) == ["None", "ws-seat", "ws-usage"]
    assert all(m.reason == "ahead" and m.seq > m.server_seq for m in found)
    code, out = ingest_json(site.home, report)
    assert code == 1, out
    assert out["status"] == "accepted_with_findings"
    assert "witness.mismatch" in codes(out)
    code, text = cli("findings", "--home", str(site.home), "--code", "witness.mismatch", "--json")
    listed = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert code == 0 and len(listed) == 3, listed
    assert {f["severity"] for f in listed} == {"critical"}


def test_cut_ledger_meets_a_client_after_it_restarts_and_the_ledger_regrew(
    tmp_path: Path, site: Data
) -> None:
    server = ServerProcess(site.data, tmp_path / "server.log")
    server.start()
    spool = tmp_path / "app.spool"
    app = Client(server.url, spool=spool, client_id="ws-app")
    for _ in range(3):
        app.record("runs", 7)
    app.close()
    held = parse_head(_first_head(tmp_path / "app.spool", server.url))
    server.stop()

    # Cut the usage records off the end of the ledger, at a frame boundary inside the
    # current epoch: no key needed.
    ledger = site.data / LEDGER
    ends = _frame_ends(ledger)
    with ledger.open("r+b") as f:
        f.truncate(ends[-6])
    server.start()
    # Other traffic (with no witness) grows the ledger back past the head the
    # application holds, so its seq exists again, with another chain hash.
    for i in range(12):
        resp = httpx.post(
            f"{server.url}/v1/usage",
            json={
                "meter": "runs",
                "amount": 1,
                "client_id": "ws-other",
                "idempotency_key": f"o{i}",
            },
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
    status = _status(server)["ledger"]
    assert isinstance(status, dict) and status["seq"] > held.seq

    # The application restarts: the head survived in its spool.
    app = Client(server.url, spool=spool, client_id="ws-app")
    try:
        assert not app.record("runs", 1).spooled
        report = _export(site, server, tmp_path / "after-cut.mbr")
    finally:
        app.close()
        server.stop()

    found = _mismatches_in(site, report)
    assert [(m.client_id, m.reason, m.seq, m.head_hash) for m in found] == [
        ("ws-app", "differs", held.seq, held.hash)
    ]
    code, out = ingest_json(site.home, report)
    assert code == 1 and out["status"] == "accepted_with_findings", out
    assert "witness.mismatch" in codes(out)


def test_witnessed_heads_are_sealed_once_per_client_and_new_head(
    tmp_path: Path, site: Data
) -> None:
    server = ServerProcess(site.data, tmp_path / "server.log")
    server.start()
    try:
        app = Client(server.url, spool=tmp_path / "app.spool", client_id="ws-app")
        for _ in range(5):
            app.record("runs", 1)
        app.close()
        head = _first_head(tmp_path / "app.spool", server.url)
        # The same head handed back again seals nothing more; a malformed one is a 400
        # that writes nothing.
        seq_before = _status(server)["ledger"]
        for _ in range(3):
            r = httpx.post(
                f"{server.url}/v1/seats/release",
                json={"lease_id": "no-such-lease"},
                headers={WITNESS_HEADER: head},
                timeout=10,
            )
            assert r.status_code == 200 and HEAD_HEADER in r.headers
        bad = httpx.post(
            f"{server.url}/v1/usage",
            json={"meter": "runs", "amount": 1, "client_id": "ws-x"},
            headers={WITNESS_HEADER: head.replace(":", ";", 1)},
            timeout=10,
        )
        after_bad = _status(server)["ledger"]
        report = _export(site, server, tmp_path / "r.mbr")
    finally:
        server.stop()
    assert bad.status_code == 400
    assert "Expected" in bad.json()["error"]["message"]
    assert isinstance(seq_before, dict) and isinstance(after_bad, dict)
    records, result = site.verify(report.read_bytes())
    assert not result.critical
    sealed = [Witness.from_map(r.payload) for r in records if r.type == RecordType.WITNESS]
    # The four records after the first each carried a new head; one WITNESS for the
    # client per 10 s is sealed (every head is judged). The three releases carried one
    # head, sealed once (for an unknown lease: no client named).
    assert [w.client_id for w in sealed] == ["ws-app", None]
    assert not any(r.type == RecordType.WITNESS_MISMATCH for r in records)
    code, out = ingest_json(site.home, report)
    assert code == 0, out
    assert not {"witness.mismatch", "witness.head_missing"} & codes(out)


def _first_head(spool: Path, url: str) -> str:
    import sqlite3

    with sqlite3.connect(spool) as db:
        instance, seq, hash_hex = db.execute(
            "SELECT instance, seq, hash FROM heads WHERE url=?", (url,)
        ).fetchone()
    return f"1:{instance}:{seq}:{hash_hex}"


def test_async_client_witnesses_across_its_own_restart(tmp_path: Path, site: Data) -> None:
    server = ServerProcess(site.data, tmp_path / "server.log")
    server.start()
    spool = tmp_path / "async.spool"

    async def record(n: int) -> None:
        async with AsyncClient(server.url, spool=spool, client_id="ws-async") as app:
            for _ in range(n):
                assert not (await app.record("runs", 2)).spooled

    try:
        server.stop()
        snapshot = tmp_path / "snapshot"
        shutil.copytree(site.data, snapshot)
        server.start()
        asyncio.run(record(3))
        _restore(server, site, snapshot)
        asyncio.run(record(1))
        witness = _status(server)["witness"]
        report = _export(site, server, tmp_path / "r.mbr")
    finally:
        server.stop()
    assert isinstance(witness, dict) and witness["mismatches"] == 1
    assert [m.client_id for m in _mismatches_in(site, report)] == ["ws-async"]
