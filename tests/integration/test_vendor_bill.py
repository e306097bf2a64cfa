"""`meterbox vendor bill` over a real store filled by real ingests."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from meterbox.cli import app as root_app
from meterbox.licenses import Meter
from support.vendor_ingest import (
    cli,
    days,
    ingest_json,
    issue,
    make_home,
    make_site,
    runner,
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


def test_borrowed_seat_hours_are_on_the_bill(tmp_path: Path) -> None:
    # A borrow is seat time like a checkout, shown apart as borrowed_ms; its return ends
    # it early. An ordinary lease beside it counts in seat_ms only.
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.borrow("B1", hours=48, step_ms=0)
    site.checkout("L1", step_ms=0)
    site.clock.advance(30 * 60_000)
    site.release("L1", step_ms=0)
    site.clock.advance(5 * 3_600_000 - 30 * 60_000)
    site.give_back("B1", step_ms=0)
    code, out = ingest_json(home, site.export(tmp_path / "r1.mbr"))
    assert code == 0, out
    code, text = _bill(home, "--period", "2026-01", "--format", "json")
    assert code == 0, text
    bill = json.loads(text)
    assert bill["format"] == "meterbox-bill/3"
    [line] = bill["seat_lines"]
    hour = 3_600_000
    assert (line["seat_ms"], line["borrowed_ms"]) == (5 * hour + hour // 2, 5 * hour)
    assert (line["peak"], line["live_leases"]) == (2, 0)
    code, table = _bill(home, "--period", "2026-01")
    assert code == 0 and "borrowed-h" in table and "5.00" in table


PRICES = """\
format = "meterbox-prices/1"
currency = "EUR"

[default.meters]
solver = 0.125      # per unit of overage
exports = 2

[products.Solver.seat_hours]
cad = 1.50          # per seat-hour
"""


def test_price_file_adds_charges_in_minor_units(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    meters = {"solver": Meter(10, "month"), "exports": Meter(5, "total")}
    site = make_site(home, tmp_path / "ledger", [issue(home, meters=meters)])
    site.use("solver", 15)
    site.use("exports", 6)
    site.checkout("L1")
    site.clock.advance(90 * 60_000)
    site.release("L1", step_ms=0)
    assert ingest_json(home, site.export(tmp_path / "r1.mbr"))[0] == 0
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)

    code, text = _bill(home, "--period", "2026-01", "--format", "json", "--prices", str(prices))
    assert code == 0, text
    charges = json.loads(text)["charges"]
    lines = {x["item"]: x for x in charges["lines"]}
    # 5 units of overage at 0.125 = 0.625 EUR: 62.5 cents, half to even -> 62.
    assert (lines["solver"]["quantity"], lines["solver"]["amount_minor"]) == (5, 62)
    assert (lines["exports"]["quantity"], lines["exports"]["amount_minor"]) == (1, 200)
    # 1.5 seat-hours at 1.50 = 2.25 EUR, from the product's price.
    assert (lines["cad"]["quantity"], lines["cad"]["amount_minor"]) == (90 * 60_000, 225)
    assert charges["total_minor"] == 62 + 200 + 225
    assert charges["totals"] == [{"customer": "ACME", "amount_minor": 487}]

    code, text = _bill(home, "--period", "2026-01", "--format", "csv", "--prices", str(prices))
    assert code == 0, text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [
        "period", "customer", "license_id", "product", "kind", "item", "quantity", "unit",
        "unit_price", "currency", "minor_units", "amount_minor",
    ]  # fmt: skip
    assert sum(int(r["amount_minor"]) for r in rows) == 487
    assert {r["currency"] for r in rows} == {"EUR"}

    code, text = _bill(home, "--period", "2026-01", "--prices", str(prices))
    assert code == 0, text
    assert "total ACME: 4.87 EUR" in text


def test_bad_price_file_is_an_input_error_and_prints_no_statement(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    issue(home)
    bad = tmp_path / "prices.toml"
    bad.write_text(PRICES.replace("solver = 0.125", 'solver = "0.125"'))
    result = runner.invoke(
        root_app, ["vendor", "bill", "--home", str(home), "--period", "2026-01",
                   "--format", "csv", "--prices", str(bad)]
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "default.meters.solver is not a number" in result.stderr
    for path in (tmp_path / "missing.toml", tmp_path):
        code, out = _bill(home, "--period", "2026-01", "--prices", str(path))
        assert (code, out) == (2, "")
