"""Flags and files a user can get wrong: a clear error, the right exit code, nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from meterbox.cli import app
from meterbox.vendorkit import VendorStore
from support.vendor_ingest import make_home

runner = CliRunner()


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty", b""), ("text", b"site-1\n"), ("json", b'{"format": "x"}'), ("short", b"MB")],
)
def test_ingesting_something_that_is_not_a_report_is_unusable_and_stores_nothing(
    tmp_path: Path, name: str, content: bytes
) -> None:
    home = make_home(tmp_path)
    junk = tmp_path / f"{name}.mbr"
    junk.write_bytes(content)
    for _ in range(2):  # twice: the second is not a "replay" of stored junk
        result = runner.invoke(app, ["vendor", "ingest", "--home", str(home), str(junk), "--json"])
        assert result.exit_code == 2, result.output
        assert "report.replay" not in result.output
    with VendorStore.open(None, home=home) as store:
        assert store.list_licenses() == []


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1"])
def test_server_run_refuses_a_port_out_of_range(tmp_path: Path, port: str) -> None:
    result = runner.invoke(app, ["server", "run", "--data", str(tmp_path), "--port", port])
    assert result.exit_code == 2
    assert "1 to 65535" in result.output
