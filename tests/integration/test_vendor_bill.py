"""`meterbox vendor bill` over a real store filled by real ingests."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from meterbox.licenses import Meter
from support.vendor_ingest import (
    cli,
    days,
    ingest_json,
    issue,
    make_home,
    make_site,
)


def _bill(home: Path, *extra: str) -> tuple[int, str]:
    return cli("bill", "--home", str(home), *extra)


def test_statement_from_ingested_reports(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    meters = {"solver": Meter(10, "month"), "exports": Meter(5, "total")}
    site = make_site(home, tmp_path / "ledger", [issue(home, meters=meters)])
    site.use("solver", 8)
    site.use("solver", 6)
    site.refund("solver", 1)
    site.use("exports", 7)
    site.checkout("L1")
    site.checkout("L2")
    site.release("L1")
    site.clock.advance(days(30))  # into February
    site.use("solver", 4)
    site.use("exports", 1)
    code, out = ingest_json(home, site.export(tmp_path / "r1.mbr"))
    assert code == 0, out

    code, text = _bill(home, "--period", "2026-01", "--format", "json")
    assert code == 0, text
    jan = json.loads(text)
    lines = {m["meter"]: m for m in jan["meters"]}
    assert (lines["solver"]["used"], lines["solver"]["overage"]) == (13, 3)
    # The refund is itemised, not only netted (docs/spec/license.md).
    assert (lines["solver"]["increments"], lines["solver"]["decrements"]) == (14, 1)
    assert (lines["exports"]["used"], lines["exports"]["overage"]) == (7, 2)
    assert {s["peak"] for s in jan["seats"]} == {2, 1}  # both held in the first hour
    assert max(s["peak"] for s in jan["seats"]) == 2

    code, text = _bill(home, "--period", "2026-02", "--format", "csv")
    assert code == 0, text
    rows = {r["meter"]: r for r in csv.DictReader(io.StringIO(text))}
    assert (rows["solver"]["used"], rows["solver"]["overage"]) == ("4", "0")
    assert (rows["exports"]["used_to_date"], rows["exports"]["overage"]) == ("8", "1")

    code, text = _bill(home, "--period", "2026-01")
    assert code == 0
    assert "lic_acme" in text


def test_findings_of_rejected_reports_show_in_the_period(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.use("solver", 1)
    data = site.export(tmp_path / "r.mbr").read_bytes()
    cut = tmp_path / "cut.mbr"
    cut.write_bytes(data[:-10])
    assert ingest_json(home, cut)[0] == 1

    code, text = _bill(home, "--period", "2026-01", "--format", "json")

    assert code == 0, text
    statement = json.loads(text)
    assert all(m["used"] == 0 for m in statement["meters"])
    assert "report.truncated" in {f["code"] for f in statement["findings"]}


def test_bad_period_format_and_unknown_customer_are_input_errors(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    issue(home)
    assert _bill(home, "--period", "2026-13")[0] == 2
    assert _bill(home, "--period", "2026-01", "--format", "xml")[0] == 2
    assert _bill(home, "--period", "2026-01", "--customer", "Nobody")[0] == 2
    code, text = _bill(home, "--period", "2026-01", "--customer", "ACME", "--format", "csv")
    assert code == 0
    assert text.count("lic_acme") == 2


def test_lease_live_at_export_is_held_to_the_report_time_and_continues(tmp_path: Path) -> None:
    # Regression: a 10-minute lease still live at export filled every hour to the end of
    # the month; it is held up to the report's creation time and continues next report.
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.checkout("L1")
    site.clock.advance(10 * 60_000)
    code, out = ingest_json(home, site.export(tmp_path / "r1.mbr"))
    assert code == 0, out
    code, text = _bill(home, "--period", "2026-01", "--format", "json")
    assert code == 0, text
    first = json.loads(text)
    assert [s["hour"] for s in first["seats"]] == ["2026-01-05T00:00Z"]
    [line] = first["seat_lines"]
    assert (line["seat_ms"], line["live_leases"]) == (10 * 60_000, 1)

    site.clock.advance(60 * 60_000)
    site.release("L1", step_ms=0)
    code, out = ingest_json(home, site.export(tmp_path / "r2.mbr"))
    assert code == 0, out
    code, text = _bill(home, "--period", "2026-01", "--format", "json")
    second = json.loads(text)
    assert [s["hour"] for s in second["seats"]] == ["2026-01-05T00:00Z", "2026-01-05T01:00Z"]
    [line] = second["seat_lines"]
    assert (line["seat_ms"], line["live_leases"]) == (70 * 60_000, 0)
