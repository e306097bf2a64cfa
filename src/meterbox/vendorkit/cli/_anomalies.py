"""`meterbox vendor anomalies`: run every detector over the vendor store's history.

Each accepted report of each instance is judged in turn, with the history before it,
as it would have been at ingest, and with every rule, the clock checks included. The
reporting interval comes from the licenses the reports carried (stored at ingest);
``--report-every-days`` overrides it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from meterbox.errors import ConfigError
from meterbox.vendorkit.cli._common import HomeOption, StoreOption, app, cli_errors

if TYPE_CHECKING:
    from meterbox.vendorkit.anomaly import Anomaly, InstanceHistory


def scan(hists: list[InstanceHistory]) -> list[Anomaly]:
    """Judge every report of every history, each with only what came before it."""
    # The detectors pull in the numerical libraries; `meterbox vendor --help` must not.
    from meterbox.vendorkit.anomaly import detect

    out: list[Anomaly] = []
    for h in hists:
        peers = [p for p in hists if p.license_id == h.license_id and p is not h]
        same_customer = [p for p in hists if p.customer == h.customer and p is not h]
        for i in range(len(h.reports)):
            prefix = replace(h, reports=h.reports[: i + 1])
            cut = h.reports[i].received_ms
            out.extend(
                detect(
                    prefix,
                    [_until(p, cut) for p in peers],
                    [_until(p, cut) for p in same_customer],
                )
            )
    return out


def _until(h: InstanceHistory, cut: int) -> InstanceHistory:
    """``h`` as the vendor had it at ``cut``: the reports received by then."""
    return replace(h, reports=tuple(r for r in h.reports if r.received_ms <= cut))


@app.command("anomalies")
def anomalies_command(
    home: HomeOption,
    store_url: StoreOption = None,
    customer: Annotated[
        str | None, typer.Option("--customer", help="Only this customer's instances.")
    ] = None,
    report_every_days: Annotated[
        int | None,
        typer.Option(
            "--report-every-days",
            help="Override the licenses' reporting interval for the lateness check.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per finding.")] = False,
) -> None:
    """List anomaly and clock-tamper findings over every ingested report."""
    with cli_errors():
        if report_every_days is not None and report_every_days < 1:
            raise ConfigError(
                "--report-every-days must be positive",
                expected="a whole number of days, 1 or more",
                found=str(report_every_days),
                hint="leave it out to use the interval the licenses state",
            )
        from meterbox.vendorkit._db.store import VendorStore
        from meterbox.vendorkit.anomaly import DAY_MS, histories

        every = None if report_every_days is None else report_every_days * DAY_MS
        with VendorStore.open(store_url, home=home) as store:
            hists = histories(store, customer=customer, report_every_ms=every)
        found = scan(hists)
    if as_json:
        for a in found:
            typer.echo(json.dumps(a.to_dict(), sort_keys=True))
        return
    console = Console(soft_wrap=True, highlight=False)
    if not found:
        # The detectors judge accepted reports only; say so, and where the findings of
        # rejected reports are, so an empty list is never read as "nothing found".
        console.print(
            f"no anomalies in {sum(len(h.reports) for h in hists)} accepted report(s); "
            "`meterbox vendor findings` lists every stored finding, rejected reports included"
        )
        return
    table = Table("instance", "report", "code", "severity", "explanation")
    for a in found:
        table.add_row(a.instance_id[:16], a.report_digest[:12], a.code, a.severity, a.message)
    console.print(table)
