"""`meterbox vendor bill`: one month's billing statement as a table, CSV or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from meterbox.errors import ConfigError
from meterbox.vendorkit.cli._common import (
    SEVERITY_STYLE,
    HomeOption,
    StoreOption,
    app,
    cli_errors,
)

if TYPE_CHECKING:
    from meterbox.vendorkit.billing import Statement
    from meterbox.vendorkit.prices import PriceList


def _money(minor: int, digits: int) -> str:
    """Minor units as major-unit text for display (``1234``, 2 digits -> ``12.34``)."""
    sign, value = ("-" if minor < 0 else ""), abs(minor)
    if digits == 0:
        return f"{sign}{value}"
    whole, frac = divmod(value, 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


def _read_prices(path: Path) -> PriceList:
    from meterbox.vendorkit.prices import MAX_FILE_BYTES, parse_prices

    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        raise ConfigError(
            "--prices names a directory",
            expected="a price file (TOML, docs/spec/bill.md)",
            found=f"{path} is a directory",
            hint="pass the file inside it",
        ) from None
    except OSError as exc:
        raise ConfigError(
            "cannot read the price file",
            expected="a readable TOML file",
            found=f"{path}: {exc.strerror or exc}",
            hint="check the path and its permissions",
        ) from None
    return parse_prices(data, source=f"the price file {path}")


def _print_charges(out: Console, st: Statement) -> None:
    c = st.charges
    if c is None:
        return
    table = Table(title=f"charges {st.period} ({c.currency})")
    for col in ("license", "item", "quantity", "unit price", "amount"):
        table.add_column(
            col,
            justify="left" if col in ("license", "item") else "right",
            overflow="fold",
            no_wrap=col == "license",
        )
    for x in c.lines:
        qty = f"{x.quantity / 3_600_000:.2f} h" if x.unit == "ms" else str(x.quantity)
        table.add_row(
            x.license_id, x.item, qty, x.unit_price, _money(x.amount_minor, c.minor_units)
        )
    out.print(table)
    for customer, total in sorted(c.totals().items()):
        out.print(f"total {customer}: {_money(total, c.minor_units)} {c.currency}")
    for u in c.unpriced:
        out.print(
            f"[yellow]unpriced[/] {u.license_id} {u.kind} {u.item}: "
            f"quantity {u.quantity} has no price in the price file"
        )


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
        for col in ("license", "feature", "seat-hours", "borrowed-h", "peak", "denials", "live"):
            seats.add_column(
                col,
                justify="left" if col in ("license", "feature") else "right",
                overflow="fold",
            )
        for x in st.seat_lines:
            # Display only: the statement keeps seat time as exact milliseconds.
            hours = f"{x.seat_ms / 3_600_000:.2f}"
            lent = f"{x.borrowed_ms / 3_600_000:.2f}"
            seats.add_row(
                x.license_id,
                x.feature,
                hours,
                lent,
                str(x.peak),
                str(x.denials),
                str(x.live_leases),
            )
        out.print(seats)
    if st.findings:
        out.print(f"[bold]{len(st.findings)} finding(s) in reports touching {st.period}[/]")
        for f in st.findings:
            style = SEVERITY_STYLE.get(f.severity, "")
            out.print(f"[{style}]{f.severity:8}[/] {f.license_id} {f.code}: {f.message}")
    _print_charges(out, st)


@app.command("bill")
def bill_command(
    *,
    home: HomeOption,
    period: Annotated[str, typer.Option("--period", help="UTC month, YYYY-MM.")],
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    store: StoreOption = None,
    prices: Annotated[
        Path | None,
        typer.Option(
            "--prices",
            help="Price file (TOML, docs/spec/bill.md): adds charges in minor units.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Same as --format json (docs/spec/bill.md).")
    ] = False,
) -> None:
    """Billing statement for one month: units, prepaid, overage, peak seats, findings."""
    with cli_errors():
        if as_json and output_format not in ("table", "json"):
            raise ConfigError(
                "--json and --format disagree",
                expected="--json alone, or one --format",
                found=f"--json with --format {output_format}",
                hint="Drop one of them",
            )
        output_format = "json" if as_json else output_format
        if output_format not in ("table", "csv", "json"):
            raise ConfigError(
                "--format is not usable",
                expected="table, csv or json",
                found=repr(output_format),
                hint="For example --format csv",
            )
        from meterbox.vendorkit.billing import Period, bill, to_json_text

        the_period = Period.parse(period)
        price_list = None if prices is None else _read_prices(prices)
        statement = bill(home, the_period, customer=customer, store_url=store, prices=price_list)
    if output_format == "json":
        typer.echo(to_json_text(statement))
    elif output_format == "csv":
        typer.echo(statement.to_csv(), nl=False)
    else:
        _print_statement(statement)
