"""`meterbox vendor findings`: every stored finding, rejected reports included, filtered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from meterbox.ledger import LedgerWriter
from support.vendor_ingest import cli, ingest_json, issue, make_home, make_site


def _findings(home: Path, *extra: str) -> tuple[int, list[dict[str, object]]]:
    code, text = cli("findings", "--home", str(home), "--json", *extra)
    return code, [json.loads(line) for line in text.splitlines() if line.strip()]


def test_findings_of_a_rejected_report_are_listed_and_filtered(tmp_path: Path) -> None:
    # Regression: `vendor anomalies` said "no anomalies" right after reports were
    # rejected with critical findings; the stored findings were nowhere on the CLI.
    home = make_home(tmp_path)
    issue(home, "lic_globex", customer="Globex")
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.use("solver", 5)
    backup = site.backup(tmp_path / "backup")
    site.use("solver", 6)
    assert ingest_json(home, site.export(tmp_path / "r1.mbr"))[0] == 0
    # The customer restores the older copy: its next report forks the acknowledged ledger, rejected.
    site.writer.close()
    shutil.rmtree(site.directory)
    shutil.move(backup, site.directory)
    site.writer = LedgerWriter.open(site.directory, clock=site.clock)
    code, out = ingest_json(home, site.export(tmp_path / "r2.mbr"))
    assert (code, out["status"]) == (1, "rejected"), out

    code, every = _findings(home)
    assert code == 0
    rollback = [f for f in every if f["code"] == "ledger.fork"]
    assert [(f["status"], f["customers"], f["severity"]) for f in rollback] == [
        ("rejected", ["ACME"], "critical")
    ]
    assert _findings(home, "--severity", "critical", "--customer", "ACME")[1] == rollback
    assert _findings(home, "--customer", "Globex")[1] == []
    assert _findings(home, "--code", "ledger.fork")[1] == rollback

    code, text = cli("findings", "--home", str(home))
    assert code == 0 and "ledger.fork" in text and "rejected" in text
    code, _ = cli("findings", "--home", str(home), "--severity", "fatal")
    assert code == 2  # a usage error, before the store is read
    code, text = cli("anomalies", "--home", str(home))
    assert code == 0 and "vendor findings" in text
