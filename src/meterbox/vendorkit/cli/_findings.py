"""`meterbox vendor findings`: every finding of every ingested report, as stored.

Rejected and unusable reports keep their findings (they are the evidence the vendor
acts on), so this lists them too; ``vendor anomalies`` re-runs the detectors over the
accepted history instead. Filters narrow by severity, customer and code; a report's
customer is the customer of any license it carried.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from meterbox.errors import ConfigError
from meterbox.vendorkit.cli._common import SEVERITY_STYLE, HomeOption, StoreOption, app, cli_errors

if TYPE_CHECKING:
    # The store is imported inside the command: `vendor --help` needs no database layer.
    from meterbox.vendorkit._db.store import VendorStore

SEVERITIES = ("critical", "warning", "info")


def stored_findings(store: VendorStore) -> list[dict[str, object]]:
    """Every stored finding with its report's status, licenses and customers."""
    from meterbox.vendorkit._db import queries as db

    with store.engine.connect() as conn:
        customers = {lic: cust for lic, cust, _ in db.licenses(conn, None)}
        rows = db.all_findings(conn)
    out: list[dict[str, object]] = []
    for digest, inst, status, lics, code, severity, message, seq in rows:
        license_ids = [x for x in lics.split(",") if x]
        out.append(
            {
                "report_digest": digest,
                "instance_id": inst,
                "status": status,
                "license_ids": license_ids,
                "customers": sorted({customers[x] for x in license_ids if x in customers}),
                "code": code,
                "severity": severity,
                "message": message,
                "seq": seq,
            }
        )
    return out


@app.command("findings")
def findings_command(
    home: HomeOption,
    store_url: StoreOption = None,
    severity: Annotated[
        str | None, typer.Option("--severity", help="Only critical, warning or info.")
    ] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    code: Annotated[str | None, typer.Option("--code", help="Only this finding code.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per finding.")] = False,
) -> None:
    """Every finding of every ingested report, rejected ones included."""
    with cli_errors():
        if severity is not None and severity not in SEVERITIES:
            raise ConfigError(
                "--severity is not a known severity",
                expected="one of " + ", ".join(SEVERITIES),
                found=repr(severity),
                hint="Leave --severity out to see every finding",
            )
        from meterbox.vendorkit._db.store import VendorStore

        with VendorStore.open(store_url, home=home) as store:
            found = stored_findings(store)
    shown = [
        f
        for f in found
        if (severity is None or f["severity"] == severity)
        and (code is None or f["code"] == code)
        and (customer is None or customer in f["customers"])  # type: ignore[operator]
    ]
    if as_json:
        for f in shown:
            typer.echo(json.dumps(f, sort_keys=True))
        return
    console = Console(soft_wrap=True, highlight=False)
    reports = len({f["report_digest"] for f in found})
    if not shown:
        console.print(f"no findings match, of {len(found)} finding(s) in {reports} report(s)")
        return
    table = Table("report", "status", "customer", "code", "severity", "explanation")
    for f in shown:
        sev = str(f["severity"])
        table.add_row(
            str(f["report_digest"])[:12],
            str(f["status"]),
            ", ".join(f["customers"]),  # type: ignore[arg-type]
            str(f["code"]),
            f"[{SEVERITY_STYLE.get(sev, '')}]{sev}[/]",
            str(f["message"]),
        )
    console.print(table)
