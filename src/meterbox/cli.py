"""The single ``meterbox`` command, with one sub-command group per role."""

from __future__ import annotations

import typer

from meterbox._cli_support import EXIT_CODES_HELP
from meterbox.client.cli import app as client_app
from meterbox.server.cli import app as server_app
from meterbox.vendorkit.cli import app as vendor_app

app = typer.Typer(
    help="meterbox: offline metered and floating licensing.",
    no_args_is_help=True,
    add_completion=False,
    epilog=EXIT_CODES_HELP,
)
app.add_typer(vendor_app, name="vendor", help="Vendor toolkit: keys, licenses, ingest, billing.")
app.add_typer(server_app, name="server", help="On-site license server.")
app.add_typer(client_app, name="client", help="Client commands for shell scripts.")


def main() -> None:
    app()
