"""The log lines of a real `meterbox server run`: JSON or text, UTC times, no secrets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from support.server_proc import ServerProcess, make_data

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CRYPTOLENS_TOKEN = "WyIxIiwiU0VDUkVUIl0-query-token"
LICENSE_KEY = "ABCDE-FGHIJ-KLMNO-PQRST"


def _exercise(tmp_path: Path, log_format: str) -> tuple[str, list[str]]:
    """Run a server, make requests that carry every kind of secret, return log and secrets."""
    data = make_data(tmp_path)
    proc = ServerProcess(
        data.data, tmp_path / "server.log", args=("--log-level", "info", "--log-format", log_format)
    )
    proc.start()
    try:
        with httpx.Client(base_url=proc.url, timeout=10) as c:
            lease = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "h/1"})
            lease_id = lease.json()["lease_id"]
            c.post("/v1/seats/heartbeat", json={"lease_id": lease_id})
            c.get(f"/api/key/Activate?token={CRYPTOLENS_TOKEN}&Key={LICENSE_KEY}&ProductId=1")
            bad = c.post("/v1/admin/export", headers={"Authorization": "Bearer wrong-token-xyz"})
            assert bad.status_code == 401
            ok = c.post("/v1/admin/export", headers={"Authorization": f"Bearer {data.token}"})
            assert ok.status_code == 200
            c.post("/v1/seats/release", json={"lease_id": lease_id})
    finally:
        proc.stop()
    return proc.log.read_text(), [data.token, lease_id, CRYPTOLENS_TOKEN, LICENSE_KEY,
                                  "wrong-token-xyz"]  # fmt: skip


def test_json_log_lines_parse_with_utc_times_and_integer_durations(tmp_path: Path) -> None:
    text, secrets = _exercise(tmp_path, "json")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "the server wrote no log lines"
    for entry in lines:
        assert ISO_UTC.fullmatch(entry["ts"]), entry
        assert entry["level"] in ("debug", "info", "warning", "error", "critical")
        assert isinstance(entry["logger"], str) and isinstance(entry["msg"], str)
        assert "color_message" not in entry
    requests = [e for e in lines if e["logger"] == "meterbox.http"]
    by_path = {(e["method"], e["path"], e["status"]) for e in requests}
    assert ("POST", "/v1/seats/checkout", 200) in by_path
    assert ("POST", "/v1/admin/export", 401) in by_path
    assert ("GET", "/api/key/Activate", 200) in by_path  # the path, never its query
    for e in requests:
        assert type(e["duration_ms"]) is int and e["duration_ms"] >= 0
        assert e["client"] == "127.0.0.1"
    for secret in secrets:
        assert secret not in text, secret


def test_text_log_lines_start_with_a_utc_time_and_hold_no_secrets(tmp_path: Path) -> None:
    text, secrets = _exercise(tmp_path, "text")
    lines = [line for line in text.splitlines() if line.strip()]
    assert any("meterbox.http: POST /v1/seats/checkout 200" in line for line in lines)
    for line in lines:
        stamp, level, _ = line.split(" ", 2)
        assert ISO_UTC.fullmatch(stamp), line
        assert level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert not line.lstrip().startswith("{")
    for secret in secrets:
        assert secret not in text, secret


@pytest.mark.parametrize("bad", ["xml", "JSON "])
def test_an_unknown_log_format_is_refused_before_start(tmp_path: Path, bad: str) -> None:
    from typer.testing import CliRunner

    from meterbox.cli import app

    data = make_data(tmp_path)
    result = CliRunner().invoke(
        app, ["server", "run", "--data", str(data.data), "--log-format", bad]
    )
    assert result.exit_code == 2
    assert "log_format" in result.stderr and "json or text" in result.stderr
    assert not (data.data / "run.json").exists()
