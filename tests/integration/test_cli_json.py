"""`--json` on every command that prints a result: one JSON document, the documented keys.

Real vendor homes, real server data directories and, for the client commands, a real
`meterbox server run` on loopback. The keys checked are those docs/api.md lists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from meterbox.cli import app
from support.server_proc import LICENSE_ID, ServerProcess, make_data

runner = CliRunner()


def _json(*args: str, env: dict[str, str] | None = None) -> Any:
    result = runner.invoke(app, [*args, "--json"], env=env)
    assert result.exit_code == 0, (args, result.output)
    # Exactly one JSON document on stdout (json.loads refuses anything after it).
    return json.loads(result.stdout)


def test_vendor_commands_print_documented_json(tmp_path: Path) -> None:
    home = tmp_path / "vendor"
    keys = _json("vendor", "init", "--home", str(home))
    assert set(keys) == {"key_id", "keys", "vendor_pub"} and keys["keys"] == 1
    rotated = _json("vendor", "rotate-key", "--home", str(home))
    assert rotated["keys"] == 2 and rotated["key_id"] != keys["key_id"]

    issued = _json(
        "vendor", "issue", "--home", str(home), "--customer", "ACME", "--product", "Solver",
        "--seats", "cad=2", "--meter", "runs=100/month", "-o", str(tmp_path / "a.lic"),
    )  # fmt: skip
    assert set(issued) == {"license", "file"}
    lic = issued["license"]
    assert lic["customer"] == "ACME" and lic["issued"].endswith("Z")
    topup = _json(
        "vendor", "topup", "--home", str(home), "--license", lic["license_id"],
        "--meter", "runs=50", "-o", str(tmp_path / "t.top"),
    )  # fmt: skip
    assert set(topup) == {"topup_id", "license_id", "meter", "units", "file"}
    assert (topup["meter"], topup["units"]) == ("runs", 50)

    listed = _json("vendor", "licenses", "--home", str(home))
    [entry] = listed["licenses"]
    assert set(entry) == {"license", "topups", "machines_activated", "nodes"}
    assert entry["nodes"] == []  # no report ingested yet
    assert entry["license"] == lic and entry["topups"] == {"runs": 50}

    bill = _json("vendor", "bill", "--home", str(home), "--period", "2026-01")
    assert bill["format"] == "meterbox-bill/3" and bill["charges"] is None
    for command in ("findings", "anomalies"):
        result = runner.invoke(app, ["vendor", command, "--home", str(home), "--json"])
        assert result.exit_code == 0, result.output
        # One JSON object per finding, and there are none yet.
        assert result.stdout.strip() in ("", "[]")


def test_server_commands_print_documented_json(tmp_path: Path) -> None:
    site = make_data(tmp_path)  # a vendor home, a license, `server init` done
    report = tmp_path / "r.mbr"
    exported = _json("server", "export", "--data", str(site.data), "-o", str(report))
    assert set(exported) == {"report", "bytes", "sha256"}
    assert exported["bytes"] == report.stat().st_size
    status = _json("server", "status", "--data", str(site.data))
    assert {"instance_id", "ledger", "last_receipt", "seats_in_use"} <= set(status)
    assert _json("server", "fingerprint")["fingerprint"]
    assert _json("server", "cryptolens-key", "--data", str(site.data))["public_key_xml"].startswith(
        "<RSAKeyValue>"
    )

    fresh = tmp_path / "fresh"
    created = _json(
        "server", "init", "--data", str(fresh), "--vendor-key", str(site.home / "vendor.pub"),
        "--license", str(tmp_path / "site.lic"), "--tpm", "off",
    )  # fmt: skip
    assert set(created) == {"instance_id", "data", "licenses", "tpm", "admin_token_file"}
    assert created["licenses"] == [LICENSE_ID]
    # The admin token stays in its file; JSON output ends up in logs.
    token = Path(created["admin_token_file"]).read_text().strip()
    assert token and token not in json.dumps(created)


def test_client_commands_accept_json_against_a_real_server(tmp_path: Path) -> None:
    site = make_data(tmp_path, meter_limit=10)
    proc = ServerProcess(site.data, tmp_path / "server.log")
    proc.start()
    try:
        env = {**os.environ, "METERBOX_URL": proc.url, "METERBOX_SPOOL": str(tmp_path / "sp")}
        recorded = _json("client", "record", "runs", "3", "--key", "job-1", env=env)
        assert (recorded["receipt"]["used"], recorded["spooled"]) == (3, False)
        assert recorded["idempotency_key"] == "job-1"
        balance = _json("client", "balance", "runs", env=env)
        assert balance["used"] == 3
        assert isinstance(_json("client", "balance", env=env), list)
        lease = _json("client", "checkout", "cad", env=env)
        assert {"lease_id", "feature", "expires_at"} <= set(lease)
        assert lease["expires_at"].endswith("Z") and "T" in lease["expires_at"]
        renewed = _json("client", "heartbeat", lease["lease_id"], env=env)
        assert renewed["lease_id"] == lease["lease_id"]
        assert _json("client", "release", lease["lease_id"], env=env) == {"released": True}
        flushed = _json("client", "flush", env=env)
        assert flushed["pending"] == 0
    finally:
        proc.stop()
