"""The site admin's activity log on the real server, and `meterbox server activity`."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tests.support.server_proc import ServerProcess, make_data

from meterbox.client import Client
from meterbox.client.errors import NoSeatAvailable, PolicyDenied


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    env["COLUMNS"] = "80"
    return subprocess.run(
        [sys.executable, "-m", "meterbox", *args],
        capture_output=True, text=True, timeout=120, check=True, env=env,
    )  # fmt: skip


def test_who_had_which_seat_is_in_the_activity_log(tmp_path: Path) -> None:
    site = make_data(tmp_path, seats=1, overdraft=0)
    (site.data / "options.toml").write_text(
        'version = 1\n[feature.cad]\nexclude_users = ["mallory"]\n'
    )
    server = ServerProcess(site.data, tmp_path / "server.log")
    server.start()
    try:
        with Client(server.url, client_id="alice@ws1", hostname="ws1", user="alice",
                    spool=tmp_path / "a.db") as alice:  # fmt: skip
            lease = alice.checkout("cad")
            alice.heartbeat(lease.lease_id)  # coalesced: too soon for a ledger record
            with Client(server.url, client_id="bob@ws2", hostname="ws2", user="bob",
                        spool=tmp_path / "b.db") as bob:  # fmt: skip
                with pytest.raises(NoSeatAvailable):
                    bob.checkout("cad", wait=1)
            with Client(server.url, client_id="m@ws3", user="mallory",
                        spool=tmp_path / "m.db") as mallory:  # fmt: skip
                with pytest.raises(PolicyDenied):
                    mallory.checkout("cad")
            alice.release(lease.lease_id)
            again = alice.checkout("cad")
        admin = {"Authorization": f"Bearer {site.token}"}
        httpx.post(f"{server.url}/v1/admin/seats/remove", headers=admin,
                   json={"lease_id": again.lease_id, "by": "ops", "reason": "audit"})  # fmt: skip
    finally:
        server.stop()
    lines = [json.loads(x) for x in (site.data / "activity.jsonl").read_text().splitlines()]
    events = [(e["event"], e.get("client_id") or e.get("license_id")) for e in lines]
    assert events == [
        ("license", "lic-site"),
        ("checkout", "alice@ws1"),
        ("queue.wait", "bob@ws2"),
        ("queue.leave", "bob@ws2"),
        ("deny", "bob@ws2"),
        ("deny", "m@ws3"),
        ("release", "alice@ws1"),
        ("checkout", "alice@ws1"),
        ("remove", "alice@ws1"),
    ]
    first = lines[1]
    assert (first["user"], first["host"], first["feature"]) == ("alice", "ws1", "cad")
    # Lease ids are the holders' secrets: only a prefix is written.
    assert lease.lease_id not in (site.data / "activity.jsonl").read_text()
    assert first["lease"] == lease.lease_id[:8]
    assert lines[4]["reason"].startswith("no seat") and lines[5]["reason"].startswith("policy")
    assert (lines[-1]["by"], lines[-1]["reason"]) == ("ops", "audit")

    rows = list(csv.DictReader(io.StringIO(
        cli("server", "activity", "--data", str(site.data), "--client", "alice@ws1",
            "--format", "csv").stdout)))  # fmt: skip
    assert [r["event"] for r in rows] == ["checkout", "release", "checkout", "remove"]
    denied = cli("server", "activity", "--data", str(site.data), "--event", "deny",
                 "--format", "json").stdout.splitlines()  # fmt: skip
    assert [json.loads(x)["client_id"] for x in denied] == ["bob@ws2", "m@ws3"]
    table = cli("server", "activity", "--data", str(site.data)).stdout
    assert "alice@ws1" in table and all(len(x) <= 80 for x in table.splitlines())
    assert cli("server", "activity", "--data", str(site.data), "--since",
               "2999-01-01").stdout == ""  # fmt: skip
