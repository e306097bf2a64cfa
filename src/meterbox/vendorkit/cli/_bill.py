"""`meterbox vendor bill`: one month's billing statement as a table, CSV or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from meterbox.errors import ConfigError
from meterbox.vendorkit.billing import Period, Statement, bill, to_json_text
from meterbox.vendorkit.cli._common import SEVERITY_STYLE, HomeOption, StoreOption, app, cli_errors


def _print_statement(st: Statement) -> None:
    out = Console(soft_wrap=False, highlight=False, width=200)
    table = Table(title=f"usage {st.period}")
    for col in ("customer", "license", "meter", "period", "used", "prepaid", "overage", "to date"):
        table.add_column(col, justify="right" if col in ("used", "prepaid", "overage") else "left")
    for m in st.meters:
        table.add_row(
            m.customer,
            m.license_id,
            m.meter,
            m.period_kind,
            str(m.used),
            "unlimited" if m.prepaid is None else str(m.prepaid),
            str(m.overage),
            "" if m.used_to_date is None else str(m.used_to_date),
        )
    out.print(table)
    if st.seats:
        peaks: dict[tuple[str, str], int] = {}
        for s in st.seats:
            peaks[(s.license_id, s.feature)] = max(peaks.get((s.license_id, s.feature), 0), s.peak)
        seats = Table(title="peak concurrent seats (hourly detail: --format json)")
        for col in ("license", "feature", "peak", "denials"):
            seats.add_column(col)
        for (lic, feat), peak in sorted(peaks.items()):
            seats.add_row(lic, feat, str(peak), str(st.denials.get((lic, feat), 0)))
        out.print(seats)
    if st.findings:
        out.print(f"[bold]{len(st.findings)} finding(s) in reports touching {st.period}[/]")
        for f in st.findings:
            style = SEVERITY_STYLE.get(f.severity, "")
            out.print(f"[{style}]{f.severity:8}[/] {f.license_id} {f.code}: {f.message}")


@app.command("bill")
def bill_command(
    *,
    home: HomeOption,
    period: Annotated[str, typer.Option("--period", help="UTC month, YYYY-MM.")],
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    store: StoreOption = None,
) -> None:
    """Billing statement for one month: units, prepaid, overage, peak seats, findings."""
    with cli_errors():
        if output_format not in ("table", "csv", "json"):
            raise ConfigError(
                "--format is not usable",
                expected="table, csv or json",
                found=repr(output_format),
                hint="For example --format csv",
            )
        statement = bill(home, Period.parse(period), customer=customer, store_url=store)
    if output_format == "json":
        typer.echo(to_json_text(statement))
    elif output_format == "csv":
        typer.echo(statement.to_csv(), nl=False)
    else:
        _print_statement(statement)
