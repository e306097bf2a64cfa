"""`meterbox vendor anomalies` over a vendor store, a command of the vendor app."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from meterbox.vendorkit import VendorStore
from meterbox.vendorkit.cli import app as vendor_app


def app() -> typer.Typer:
    return vendor_app


def test_empty_store_reports_no_anomalies(tmp_path: Path) -> None:
    VendorStore.open(home=tmp_path).close()
    result = CliRunner().invoke(app(), ["anomalies", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no anomalies in 0 accepted report(s)" in result.output


def test_nonpositive_interval_is_refused_with_a_hint(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app(), ["anomalies", "--home", str(tmp_path), "--report-every-days", "0"]
    )
    assert result.exit_code == 2
    assert "--report-every-days must be positive" in result.output
