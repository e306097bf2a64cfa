"""`meterbox vendor anomalies` over a vendor store, registered onto a Typer app."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from meterbox.vendor.anomaly.cli import register
from meterbox.vendor.store import VendorStore


def app() -> typer.Typer:
    a = typer.Typer()
    register(a)

    @a.command("noop")
    def _noop() -> None:  # a second command keeps Typer in multi-command mode
        pass

    return a


def test_empty_store_reports_no_anomalies(tmp_path: Path) -> None:
    VendorStore.open(home=tmp_path).close()
    result = CliRunner().invoke(app(), ["anomalies", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no anomalies in 0 report(s)" in result.output


def test_nonpositive_interval_is_refused_with_a_hint(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app(), ["anomalies", "--home", str(tmp_path), "--report-every-days", "0"]
    )
    assert result.exit_code == 2
    assert "--report-every-days must be positive" in result.output
