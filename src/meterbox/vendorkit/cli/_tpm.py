"""`meterbox vendor tpm-ca add|list`: the TPM manufacturer CAs EK certificates must chain to.

With at least one CA configured, every attested report's EK certificate is checked
against the set at ingest (``tpm.ek.untrusted``, ``tpm.ek.missing``; docs/adr/0031).
A file is refused whole, and nothing is stored, unless every certificate in it is a
CA certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meterbox.clock import SystemClock
from meterbox.errors import ConfigError
from meterbox.vendorkit.cli._common import (
    HomeOption,
    JsonOption,
    StoreOption,
    app,
    cli_errors,
    out,
    print_json,
)

tpm_ca_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="TPM manufacturer CA certificates that EK certificates must chain to.",
)
app.add_typer(tpm_ca_app, name="tpm-ca")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}",
            expected="a readable PEM or DER certificate file",
            found=exc.strerror or str(exc),
            hint="check the path",
        ) from None


@tpm_ca_app.command("add")
def add_command(
    file: Annotated[Path, typer.Argument(help="PEM (one or more certificates) or DER file.")],
    home: HomeOption,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Trust the CA certificates in FILE for TPM endorsement-key certificates."""
    with cli_errors():
        # Imported here: `vendor --help` must not pull in the store or the TPM stack.
        from meterbox.tpm import parse_ca_file
        from meterbox.vendorkit._db import VendorStore, to_micros

        cas = parse_ca_file(_read(file))
        now = to_micros(SystemClock().now())
        with VendorStore.open(store, home=home) as db:
            added = [ca for ca in cas if db.add_tpm_ca(ca.sha256, ca.subject, ca.der, now)]
        if as_json:
            print_json(
                {
                    "added": [{"sha256": c.sha256, "subject": c.subject} for c in added],
                    "known": len(cas) - len(added),
                }
            )
            return
        for ca in cas:
            state = "added" if ca in added else "already trusted"
            out().print(f"{state}: {ca.subject} (sha256 {ca.sha256[:16]}...)")


@tpm_ca_app.command("list")
def list_command(home: HomeOption, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """The trusted TPM manufacturer CAs."""
    from meterbox.vendorkit._db import VendorStore

    with cli_errors():
        with VendorStore.open(store, home=home) as db:
            cas = db.tpm_cas()
        if as_json:
            print_json({"cas": [{"sha256": h, "subject": s} for h, s, _ in cas]})
            return
        if not cas:
            out().print("no TPM manufacturer CAs: EK certificates are not checked")
        for sha, subject, _ in cas:
            out().print(f"{subject} (sha256 {sha[:16]}...)")
