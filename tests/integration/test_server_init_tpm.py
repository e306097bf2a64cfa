"""`meterbox server init --tpm auto|require|off` against swtpm: config, genesis, refusals."""

from __future__ import annotations

import io
import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meterbox.cli import app as cli_app
from meterbox.clock import ManualClock
from meterbox.errors import ConfigError
from meterbox.ledger import LedgerWriter, RecordType, ReportVerifier, export_report
from meterbox.licenses import Feature, License
from meterbox.server._instance import init_server
from meterbox.tpm import TpmAnchor, TpmDevice, TpmMode
from meterbox.vendorkit import keys as vendor_keys
from support.tpm import Swtpm
from support.vendor_ingest import make_home

START_MS = 1_767_225_600_000


def _license(tmp_path: Path) -> tuple[Path, Path]:
    home = make_home(tmp_path)
    keys = vendor_keys.VendorKeys.load(home)
    lic = License(
        license_id="lic_tpm",
        customer="ACME",
        product="Solver",
        issued=datetime(2026, 1, 1, tzinfo=UTC),
        vendor_key_id=keys.signer().key_id.hex(),
        features={"cad": Feature(1, 0, 60)},
        report_every_days=30,
        grace_days=5,
    )
    path = tmp_path / "lic.lic"
    path.write_bytes(lic.sign(keys.signer()))
    return home, path


def _genesis(home: Path, data: Path, lic: Path) -> dict[str, Any]:
    clock = ManualClock(wall_ms=START_MS + 10_000)
    writer = LedgerWriter.open(data / "ledger", clock=clock)
    buf = io.BytesIO()
    try:
        export_report(writer, buf, clock=clock, licenses=[lic.read_bytes()], acked=None)
    finally:
        writer.close()
    pair = vendor_keys.VendorKeys.load(home).pair()
    verifier = ReportVerifier({pair.key_id: pair.ledger_private})
    for record, _ in verifier.records(io.BytesIO(buf.getvalue())):
        if record.type is RecordType.GENESIS:
            return record.payload
    raise AssertionError("no GENESIS record in the report")


def test_init_with_tpm_records_identity_and_counter_in_genesis(
    tmp_path: Path, swtpm: Swtpm
) -> None:
    home, lic = _license(tmp_path)
    data = tmp_path / "srv"
    result = init_server(
        data,
        vendor_pub=home / "vendor.pub",
        license_files=[lic],
        clock=ManualClock(wall_ms=START_MS),
        fingerprint="site",
        tpm=TpmMode.REQUIRE,
        tpm_tcti=swtpm.tcti,
    )
    assert "TPM found" in result.tpm
    config = json.loads((data / "tpm.json").read_text())
    assert stat.S_IMODE((data / "tpm.json").stat().st_mode) == 0o600
    assert config["mode"] == "require"
    assert len(bytes.fromhex(config["counter_auth"])) == 32
    genesis = _genesis(home, data, lic)["tpm"]
    assert genesis["ak_name"] == config["identity"]["ak_name"]
    assert genesis["counter"] == config["counter_at_init"]
    # The stored auth opens the anchor the genesis names.
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor(dev, bytes.fromhex(config["counter_auth"]))
        assert anchor.identity()["nv_name"] == genesis["nv_name"]
        assert anchor.read() == genesis["counter"]


def test_require_without_a_tpm_refuses_and_writes_nothing(tmp_path: Path) -> None:
    home, lic = _license(tmp_path)
    data = tmp_path / "srv"
    with pytest.raises(ConfigError, match="required but none answered"):
        init_server(
            data,
            vendor_pub=home / "vendor.pub",
            license_files=[lic],
            fingerprint="site",
            tpm=TpmMode.REQUIRE,
            tpm_tcti=f"device:{tmp_path / 'no-tpm'}",
        )
    assert not data.exists()


def test_auto_without_a_tpm_records_why_in_genesis(tmp_path: Path) -> None:
    home, lic = _license(tmp_path)
    data = tmp_path / "srv"
    init_server(
        data,
        vendor_pub=home / "vendor.pub",
        license_files=[lic],
        clock=ManualClock(wall_ms=START_MS),
        fingerprint="site",
        tpm=TpmMode.AUTO,
        tpm_tcti=f"device:{tmp_path / 'no-tpm'}",
    )
    genesis = _genesis(home, data, lic)["tpm"]
    assert genesis["mode"] == "auto"
    assert genesis["tpm"] == "none"
    assert "no TPM" in genesis["reason"]
    assert json.loads((data / "tpm.json").read_text())["counter_auth"] is None


def test_cli_init_takes_tpm_mode_and_tcti(tmp_path: Path, swtpm: Swtpm) -> None:
    home, lic = _license(tmp_path)
    base = ["server", "init", "--vendor-key", str(home / "vendor.pub"), "--license", str(lic)]
    runner = CliRunner()
    env = {"METERBOX_FINGERPRINT": "site"}
    bad = runner.invoke(cli_app, [*base, "--data", str(tmp_path / "a"), "--tpm", "maybe"], env=env)
    assert bad.exit_code != 0
    assert "unknown TPM mode" in bad.output
    assert not (tmp_path / "a").exists()
    ok = runner.invoke(
        cli_app,
        [*base, "--data", str(tmp_path / "b"), "--tpm", "require", "--tpm-tcti", swtpm.tcti],
        env=env,
    )
    assert ok.exit_code == 0, ok.output
    assert "TPM: TPM found" in ok.output
