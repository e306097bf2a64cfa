"""`meterbox vendor ingest`: verify a report, store its new usage once, write a receipt.

Exit codes: 0 accepted (with or without findings), 1 rejected, 2 unusable input
(missing file, not a report, a report sealed to another vendor's key); the other
errors map as in :mod:`meterbox.vendorkit.cli._common`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from meterbox.errors import ConfigError
from meterbox.vendorkit.cli._common import (
    EXIT_ERROR,
    EXIT_INPUT,
    SEVERITY_STYLE,
    HomeOption,
    StoreOption,
    app,
    cli_errors,
)

if TYPE_CHECKING:
    from meterbox.vendorkit.ingest import IngestOutcome

#: Reports at least this large get a progress bar even when stderr is not a terminal.
PROGRESS_MIN_BYTES: Final = 64 << 20


@contextmanager
def _progress(path: Path, show: bool) -> Iterator[Callable[[int], None] | None]:
    if not show:
        yield None
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("verifying", total=path.stat().st_size)

        def advance(n: int) -> None:
            bar.advance(task, n)

        yield advance


def _print_outcome(outcome: IngestOutcome) -> None:
    out = Console(soft_wrap=True, highlight=False)
    colour = {"accepted": "green", "accepted_with_findings": "yellow"}.get(outcome.status, "red")
    out.print(f"[bold {colour}]{outcome.status}[/]  report {outcome.report_digest[:16]}")
    if outcome.instance_id:
        out.print(f"instance  {outcome.instance_id}")
    if outcome.head is not None:
        out.print(
            f"head      seq {outcome.head.seq}  {outcome.head.hash.hex()[:16]}  "
            f"({outcome.new_records} new of {outcome.records} records)"
        )
    if outcome.totals:
        table = Table(title="accepted units")
        table.add_column("meter")
        table.add_column("units", justify="right")
        for meter, units in outcome.totals.items():
            table.add_row(meter, str(units))
        out.print(table)
    for f in outcome.findings:
        where = f" (seq {f.seq})" if f.seq is not None else ""
        out.print(
            f"[{SEVERITY_STYLE.get(f.severity, '')}]{f.severity:8}[/] {f.code}{where}: {f.message}"
        )
    if outcome.receipt_path is not None:
        out.print(f"receipt   {outcome.receipt_path}  (send it to the site for import)")
    elif outcome.status == "rejected":
        out.print("no receipt: nothing from this report was billed")


@app.command("ingest")
def ingest_command(
    report: Annotated[Path, typer.Argument(help="Report file exported by the server.")],
    *,
    home: HomeOption,
    receipt_out: Annotated[
        Path | None,
        typer.Option("--receipt-out", help="Receipt file to write (default REPORT.receipt)."),
    ] = None,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Verify a report, bill its new usage once, and write a signed receipt."""
    with cli_errors():
        if not report.is_file():
            raise ConfigError(
                "report file not found",
                expected="a report exported by `meterbox server export`",
                found=str(report),
                hint="Check the path",
            )
        size = report.stat().st_size
        # A bar only where someone watches it and only for work long enough to watch;
        # in logs and pipes it would leave control-sequence debris.
        show = not as_json and sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES
        with _progress(report, show) as advance:
            from meterbox.vendorkit.ingest import ingest

            outcome = ingest(
                home,
                report,
                store_url=store,
                receipt_out=receipt_out,
                on_progress=advance,
            )
    if as_json:
        typer.echo(json.dumps(outcome.to_json(), sort_keys=True))
    else:
        _print_outcome(outcome)
    if outcome.status == "unusable":
        if not as_json:
            Console(stderr=True).print(
                "[bold red]error[/]: this file cannot be ingested here: it is not a meterbox "
                "report, or it is sealed to another vendor's key"
            )
        raise typer.Exit(EXIT_INPUT)
    # A rejected report, or one accepted with critical evidence (ADR 0014): the caller's
    # script must notice either.
    if outcome.status == "rejected" or any(f.severity == "critical" for f in outcome.findings):
        raise typer.Exit(EXIT_ERROR)
