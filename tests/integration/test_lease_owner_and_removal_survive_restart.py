"""What the ledger keeps about a lease beyond its seat: the API key that owns it, and why
an administrator removed it. Both survive kill -9 and a deleted or edited ``state.db``.

Real ``meterbox server run`` processes on real files. Before checkout records named the
key, a lease rebuilt from the ledger had no owner: its holder's renewals were refused
and anyone without a key could renew or release it. Before removals were in the ledger's
STATE, a removed client's heartbeat after a restart got a bare 404 instead of who
removed its seat and why.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
from tests.support.server_proc import Data, ServerProcess, make_data

from meterbox.ledger import RecordType, SeatCheckout, parse_payload
from meterbox.ledger.records import StateRebuilt


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    return subprocess.run(
        [sys.executable, "-m", "meterbox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def remove_state(data: Path) -> None:
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (data / name).unlink(missing_ok=True)


def export(site: Data, server: ServerProcess) -> tuple[list[object], list[StateRebuilt]]:
    r = httpx.post(f"{server.url}/v1/admin/export", headers=bearer(site.token), timeout=30)
    assert r.status_code == 200, r.text
    records, result = site.verify(r.content)
    assert not [
        f for f in result.findings if f.code != "state.rebuilt" and f.severity == "critical"
    ]
    checkouts = [
        parse_payload(x.type, x.payload) for x in records if x.type == RecordType.SEAT_CHECKOUT
    ]
    rebuilt = [
        StateRebuilt.from_map(x.payload) for x in records if x.type == RecordType.STATE_REBUILT
    ]
    return checkouts, rebuilt


def test_a_lease_rebuilt_from_the_ledger_keeps_its_owner(tmp_path: Path) -> None:
    site = make_data(tmp_path, seats=2, overdraft=0)
    server = ServerProcess(site.data, tmp_path / "server.log")
    server.start()
    try:
        key = json.loads(
            cli("server", "keys", "create", "--data", str(site.data), "--name", "cad-ws",
                "--json").stdout
        )  # fmt: skip
        token, key_id = str(key["token"]), str(key["key_id"])
        got = httpx.post(
            f"{server.url}/v1/seats/checkout",
            json={"feature": "cad", "client_id": "ws1"},
            headers=bearer(token),
        )
        assert got.status_code == 200, got.text
        lease_id = got.json()["lease_id"]
        [checkout], _ = export(site, server)
        assert isinstance(checkout, SeatCheckout) and checkout.key_id == key_id

        for attack in ("delete", "strip the owner"):
            server.stop()
            if attack == "delete":
                remove_state(site.data)
            else:
                with closing(sqlite3.connect(site.data / "state.db")) as db, db:
                    db.execute("UPDATE leases SET key_id = NULL WHERE lease_id = ?", (lease_id,))
            server.start()
            beat = {"lease_id": lease_id}
            # A neighbour without the key cannot renew or release it ...
            anon = httpx.post(f"{server.url}/v1/seats/heartbeat", json=beat)
            assert anon.status_code == 404, (attack, anon.text)
            anon = httpx.post(f"{server.url}/v1/seats/release", json=beat)
            assert anon.status_code in (200, 404) and anon.json().get("released") is not True
            # ... and its holder still can.
            mine = httpx.post(f"{server.url}/v1/seats/heartbeat", json=beat, headers=bearer(token))
            assert mine.status_code == 200, (attack, mine.text)
        _, rebuilt = export(site, server)
        assert [(r.reason, r.less) for r in rebuilt] == [("missing", True), ("differed", True)]
        assert any(f"key {key_id} in the ledger" in line for line in rebuilt[1].items)
    finally:
        server.stop()


def test_a_removed_client_is_told_why_after_kill_9_and_a_deleted_state(tmp_path: Path) -> None:
    site = make_data(tmp_path, seats=1, overdraft=0)
    server = ServerProcess(site.data, tmp_path / "server.log")
    server.start()
    try:
        got = httpx.post(
            f"{server.url}/v1/seats/checkout", json={"feature": "cad", "client_id": "stuck@ws4"}
        )
        lease_id = got.json()["lease_id"]
        done = httpx.post(
            f"{server.url}/v1/admin/seats/remove",
            json={"client_id": "stuck@ws4", "by": "facilities", "reason": "needed at 10:00"},
            headers=bearer(site.token),
        )
        assert [x["lease_id"] for x in done.json()["removed"]] == [lease_id]
        for restart in ("kill -9", "state.db deleted"):
            server.kill9()
            if restart == "state.db deleted":
                remove_state(site.data)
            server.start()
            told = httpx.post(f"{server.url}/v1/seats/heartbeat", json={"lease_id": lease_id})
            assert told.status_code == 410, (restart, told.text)
            error = told.json()["error"]
            assert error["code"] == "lease_removed"
            assert "removed by facilities" in error["message"], restart
            assert "needed at 10:00" in error["message"], restart
    finally:
        server.stop()
