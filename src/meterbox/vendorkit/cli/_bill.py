"""`meterbox vendor bill`: one month's billing statement as a table, CSV or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from meterbox.errors import ConfigError
from meterbox.vendorkit.cli._common import SEVERITY_STYLE, HomeOption, StoreOption, app, cli_errors

if TYPE_CHECKING:
    from meterbox.vendorkit.billing import Statement


def _print_statement(st: Statement) -> None:
    # The terminal's real width (80 columns when not a terminal): rich folds the
    # cells to fit instead of drawing rows that wrap.
    out = Console(highlight=False)
    table = Table(title=f"usage {st.period}")
    id_width = max((len(m.license_id) for m in st.meters), default=7)
    cols = ("customer", "license", "meter", "period", "units", "given back", "used", "prepaid")
    for col in (*cols, "overage", "to date"):
        # License ids stay on one line (to be copied and grepped); the rest folds to fit.
        table.add_column(
            col,
            justify="left" if col in cols[:4] or col == "to date" else "right",
            overflow="fold",
            no_wrap=col == "license",
            min_width=id_width if col == "license" else None,
        )
    for m in st.meters:
        table.add_row(
            m.customer,
            m.license_id,
            m.meter,
            m.period_kind,
            str(m.increments),
            str(m.decrements),
            str(m.used),
            "unlimited" if m.prepaid is None else str(m.prepaid),
            str(m.overage),
            "" if m.used_to_date is None else str(m.used_to_date),
        )
    out.print(table)
    if st.seat_lines:
        seats = Table(title="seats (hourly peaks: --format json)")
        for col in ("license", "feature", "seat-hours", "peak", "denials", "live"):
            seats.add_column(
                col,
                justify="left" if col in ("license", "feature") else "right",
                overflow="fold",
            )
        for x in st.seat_lines:
            # Display only: the statement keeps seat time as exact milliseconds.
            hours = f"{x.seat_ms / 3_600_000:.2f}"
            seats.add_row(
                x.license_id, x.feature, hours, str(x.peak), str(x.denials), str(x.live_leases)
            )
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
        from meterbox.vendorkit.billing import Period, bill, to_json_text

        statement = bill(home, Period.parse(period), customer=customer, store_url=store)
    if output_format == "json":
        typer.echo(to_json_text(statement))
    elif output_format == "csv":
        typer.echo(statement.to_csv(), nl=False)
    else:
        _print_statement(statement)
