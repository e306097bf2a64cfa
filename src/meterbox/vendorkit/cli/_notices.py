"""`meterbox vendor suspend`, `resume` and `revoke`: signed license notices.

Each command numbers the notice one above the license's last (in the vendor store),
signs it and writes the file the site imports like a top-up (``meterbox server
import``). The rules the site applies are in docs/spec/suspension.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from meterbox.errors import ConfigError
from meterbox.licenses import LicenseNotice
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit.cli._common import (
    HomeOption,
    JsonOption,
    StoreOption,
    app,
    cli_errors,
    out,
    print_json,
)
from meterbox.vendorkit.cli._issue import _check_output, _write_output, new_id

LicenseOption = Annotated[
    str, typer.Option("--license", help="Id of the license the notice is for.")
]
OutputOption = Annotated[
    Path, typer.Option("-o", "--output", help="Notice file to write (for `server import`).")
]
ReasonOption = Annotated[
    str | None,
    typer.Option("--reason", help="Why, in words the site administrator will read."),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]


def _issue(
    action: str,
    *,
    home: Path,
    license_id: str,
    output: Path,
    reason: str | None,
    store: str | None,
    force: bool,
    as_json: bool,
) -> None:
    with cli_errors():
        if reason is not None and not reason.strip():
            raise ConfigError(
                "--reason is empty",
                expected="a reason in words, or no --reason",
                found=repr(reason),
            )
        _check_output(output, force)
        keys = vendor_keys.VendorKeys.load(home)
        from meterbox.vendorkit._db.store import VendorStore

        def build(sequence: int) -> tuple[LicenseNotice, bytes]:
            notice = LicenseNotice(
                notice_id=new_id("ntc_"),
                license_id=license_id,
                action=action,  # type: ignore[arg-type]  # one of the three commands
                sequence=sequence,
                issued=datetime.now(UTC).replace(microsecond=0),
                reason=reason,
            )
            document = notice.sign(keys.signer())
            _write_output(output, document, force)
            return notice, document

        with VendorStore.open(store, home=home) as db:
            try:
                notice, _ = db.add_notice(build, license_id)
            except BaseException:
                if output.exists() and not force:
                    output.unlink(missing_ok=True)
                raise
    if as_json:
        print_json(
            {
                "notice_id": notice.notice_id,
                "license_id": notice.license_id,
                "action": notice.action,
                "sequence": notice.sequence,
                "reason": notice.reason,
                "file": str(output),
            }
        )
        return
    out().print(
        f"Issued {notice.notice_id}: {action} {license_id} (notice {notice.sequence}) -> {output}",
        highlight=False,
    )
    out().print(f"Import it at the site: meterbox server import {output}", highlight=False)


#: The three notices and what each command's help says.
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("suspend", "Issue a signed notice suspending a license (reversible with `resume`)."),
    ("resume", "Issue a signed notice ending a license's suspension."),
    ("revoke", "Issue a signed notice revoking a license for good (no later notice applies)."),
)


def _register(action: str, doc: str) -> None:
    def command(
        *,
        home: HomeOption,
        license_id: LicenseOption,
        output: OutputOption,
        reason: ReasonOption = None,
        store: StoreOption = None,
        force: ForceOption = False,
        as_json: JsonOption = False,
    ) -> None:
        _issue(
            action,
            home=home,
            license_id=license_id,
            output=output,
            reason=reason,
            store=store,
            force=force,
            as_json=as_json,
        )

    command.__doc__ = doc
    command.__name__ = f"{action}_command"
    app.command(action)(command)


for _action, _doc in _COMMANDS:
    _register(_action, _doc)
