"""`meterbox vendor dashboard`: the vendor's local, read-only web dashboard.

The web stack (uvicorn, the dashboard app) is imported only when the command runs, so
that every other vendor command starts without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meterbox.errors import ConfigError
from meterbox.vendorkit.cli._common import HomeOption, StoreOption, app, cli_errors


@app.command("dashboard")
def dashboard_command(
    home: HomeOption,
    host: Annotated[
        str, typer.Option("--host", help="Loopback address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on.")] = 8090,
    store: StoreOption = None,
) -> None:
    """Serve the vendor dashboard (read-only) on this machine's loopback."""
    import uvicorn

    from meterbox.vendorkit.dashboard import Source, build_vendor_dashboard, is_loopback
    from meterbox.vendorkit.keys import VendorKeys

    with cli_errors():
        if not is_loopback(host):
            raise ConfigError(
                "the vendor dashboard serves this machine only",
                expected="a loopback --host such as 127.0.0.1, ::1 or localhost",
                found=host,
                hint="Reach it from elsewhere through an SSH tunnel "
                "(ssh -L 8090:127.0.0.1:8090 vendor-host)",
            )
        VendorKeys.load(Path(home))  # fail now, with the keys' own message, not per page
        web = build_vendor_dashboard(Source(Path(home), store))
    typer.echo(f"vendor dashboard on http://{host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(web, host=host, port=port, log_level="warning")
