"""`meterbox vendor issue`, `topup` and `licenses`: signed documents and the license list.

Thin shells: the flag parsers are pure (each raises a ConfigError naming its flag);
the commands call :mod:`meterbox.vendorkit.keys`, :mod:`meterbox.licenses` and the
vendor store, and print.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from meterbox.errors import ConfigError, FormatError, StateError
from meterbox.licenses import (
    DEFAULT_LEASE_SECONDS,
    MAX_CLUSTER_SIZE,
    MAX_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
    Feature,
    License,
    Meter,
    Topup,
    format_time,
)
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit._cluster import MemberReport, MemberState, member_states
from meterbox.vendorkit._cryptolens_options import CryptolensOptions, build_section
from meterbox.vendorkit._cryptolens_options import describe as describe_cryptolens
from meterbox.vendorkit.cli._common import (
    HomeOption,
    JsonOption,
    StoreOption,
    app,
    bad_flag,
    cli_errors,
    out,
    print_json,
)

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
_SEATS_RE = re.compile(rf"({_NAME})=(\d{{1,7}})(?:\+(\d{{1,7}}))?")
_METER_RE = re.compile(rf"({_NAME})=(\d{{1,19}}|unlimited)(?:/(month|total))?")
_OVERLIMIT_RE = re.compile(rf"({_NAME})=(allow|refuse)")
_UNITS_RE = re.compile(rf"({_NAME})=(\d{{1,19}})")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_seats(value: str, lease_seconds: int) -> tuple[str, Feature]:
    m = _SEATS_RE.fullmatch(value)
    if m is None:
        raise bad_flag(
            "--seats",
            "FEATURE=SEATS or FEATURE=SEATS+OVERDRAFT",
            value,
            "For example --seats cad=5+1",
        )
    try:
        feature = Feature(int(m[2]), int(m[3] or 0), lease_seconds)
    except FormatError as exc:
        raise ConfigError(
            f"--seats {value!r}: {exc.problem}", expected=exc.expected, found=exc.found
        ) from None
    return m[1], feature


def parse_meter(value: str) -> tuple[str, int | None, str]:
    m = _METER_RE.fullmatch(value)
    if m is None or (m[2] != "unlimited" and int(m[2]) == 0):
        raise bad_flag(
            "--meter",
            "NAME=LIMIT, NAME=LIMIT/month or NAME=unlimited with LIMIT > 0",
            value,
            "For example --meter solver-runs=1000/month",
        )
    limit = None if m[2] == "unlimited" else int(m[2])
    return m[1], limit, m[3] or "total"


def parse_overlimit(value: str) -> tuple[str, str]:
    m = _OVERLIMIT_RE.fullmatch(value)
    if m is None:
        raise bad_flag(
            "--meter-overlimit",
            "NAME=allow or NAME=refuse",
            value,
            "For example --meter-overlimit runs=allow",
        )
    return m[1], m[2]


def parse_units(value: str) -> tuple[str, int]:
    m = _UNITS_RE.fullmatch(value)
    if m is None or int(m[2]) == 0:
        raise bad_flag(
            "--meter", "NAME=UNITS with UNITS > 0", value, "For example --meter solver-runs=500"
        )
    return m[1], int(m[2])


def parse_date(value: str) -> datetime:
    """``YYYY-MM-DD`` as 00:00:00 UTC of that day."""
    if _DATE_RE.fullmatch(value):
        try:
            return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            pass
    raise bad_flag(
        "--expires",
        "a date YYYY-MM-DD (the license ends at 00:00 UTC that day)",
        value,
        "For example --expires 2027-01-01",
    )


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise StateError(
            "output file already exists",
            expected="a new file path",
            found=str(path),
            hint="Choose another -o path, or pass --force to replace it",
        )
    if not path.parent.is_dir():
        raise ConfigError(
            "output directory does not exist",
            expected="an existing directory",
            found=str(path.parent),
            hint="Create it first",
        )


def _write_output(path: Path, data: bytes, force: bool) -> None:
    if force:
        vendor_keys.atomic_write(path, data, mode=0o644)
    else:
        vendor_keys.write_new_file(path, data, mode=0o644)


@app.command("issue")
def issue_command(
    *,
    home: HomeOption,
    customer: Annotated[str, typer.Option(help="Customer name.")],
    product: Annotated[str, typer.Option(help="Product name.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="License file to write.")],
    seats: Annotated[
        list[str] | None,
        typer.Option("--seats", help="FEATURE=N or FEATURE=N+OVERDRAFT, repeatable."),
    ] = None,
    lease: Annotated[
        int, typer.Option("--lease", help="Lease length in seconds for every feature.")
    ] = DEFAULT_LEASE_SECONDS,
    meter: Annotated[
        list[str] | None,
        typer.Option("--meter", help="NAME=LIMIT, NAME=LIMIT/month or NAME=unlimited, repeatable."),
    ] = None,
    meter_overlimit: Annotated[
        list[str] | None,
        typer.Option("--meter-overlimit", help="NAME=allow|refuse (default refuse)."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="YYYY-MM-DD; the license ends at 00:00 UTC that day.")
    ] = None,
    report_every: Annotated[
        int | None, typer.Option("--report-every", help="Days between required reports.")
    ] = None,
    grace: Annotated[int, typer.Option("--grace", help="Days of grace after a due report.")] = 0,
    site: Annotated[str | None, typer.Option("--site", help="Site fingerprint to bind to.")] = None,
    require_tpm: Annotated[
        bool,
        typer.Option(
            "--require-tpm",
            help="The server must run anchored to a TPM and every report must attest "
            "(license format 3).",
        ),
    ] = False,
    max_borrow_hours: Annotated[
        int,
        typer.Option(
            "--max-borrow-hours",
            min=0,
            help="Longest a client may borrow a seat for use with no server, in hours "
            "(0: no borrowing; more than 0 writes license format 4).",
        ),
    ] = 0,
    cluster_size: Annotated[
        int,
        typer.Option(
            "--cluster-size",
            help="How many server instances (cluster nodes) serve this license together; "
            "each reports its own ledger (license format 4 when above 1).",
        ),
    ] = 1,
    cryptolens_product_id: Annotated[
        int | None, typer.Option("--cryptolens-product-id", help="Enables the Cryptolens API.")
    ] = None,
    cryptolens_key: Annotated[
        str | None,
        typer.Option("--cryptolens-key", help="AAAAA-BBBBB-CCCCC-DDDDD; random if absent."),
    ] = None,
    cryptolens_feature: Annotated[
        str | None,
        typer.Option("--cryptolens-feature", help="Feature Cryptolens floating activations use."),
    ] = None,
    cryptolens_data_object: Annotated[
        list[str] | None,
        typer.Option(
            "--cryptolens-data-object",
            help="ID:NAME:METER[:INT[:STRING]] (METER '-' for a fixed value), repeatable.",
        ),
    ] = None,
    cryptolens_credit: Annotated[
        list[str] | None,
        typer.Option(
            "--cryptolens-credit",
            help="ID:NAME:METER:CREDIT, a credit countdown (each decrement uses METER).",
        ),
    ] = None,
    cryptolens_features_template: Annotated[
        str | None,
        typer.Option(
            "--cryptolens-features-template",
            help='JSON feature template for HasFeature, e.g. \'["f1",["f2",["voice"]]]\'.',
        ),
    ] = None,
    cryptolens_machine: Annotated[
        list[str] | None,
        typer.Option(
            "--cryptolens-machine", help="Machine code that always activates, repeatable."
        ),
    ] = None,
    cryptolens_max_machines: Annotated[
        int | None,
        typer.Option(
            "--cryptolens-max-machines", help="Node-locked MaxNoOfMachines (0 is unlimited)."
        ),
    ] = None,
    cryptolens_flag: Annotated[
        list[int] | None,
        typer.Option("--cryptolens-flag", help="Feature flag F1..F8 to set (1-8), repeatable."),
    ] = None,
    cryptolens_notes: Annotated[
        str | None, typer.Option("--cryptolens-notes", help="The license's Notes.")
    ] = None,
    cryptolens_block: Annotated[
        bool, typer.Option("--cryptolens-block", help="Issue the key blocked.")
    ] = False,
    cryptolens_trial: Annotated[
        bool, typer.Option("--cryptolens-trial", help="Set TrialActivation.")
    ] = False,
    cryptolens_no_deactivation: Annotated[
        bool,
        typer.Option(
            "--cryptolens-no-deactivation",
            help="Node-locked machines cannot be deactivated to free a slot.",
        ),
    ] = False,
    store: StoreOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output file.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Issue a signed license file and record it in the vendor store."""
    with cli_errors():
        if not seats and not meter:
            raise ConfigError(
                "license would grant nothing",
                expected="at least one --seats or --meter",
                found="neither",
                hint="For example --seats cad=5 or --meter solver-runs=1000/month",
            )
        features: dict[str, Feature] = {}
        for value in seats or []:
            name, feature = parse_seats(value, lease)
            if name in features:
                raise bad_flag(
                    "--seats", "each feature once", value, f"Merge the --seats flags for {name!r}"
                )
            features[name] = feature
        meter_specs: dict[str, tuple[int | None, str]] = {}
        for value in meter or []:
            name, limit, period = parse_meter(value)
            if name in meter_specs:
                raise bad_flag(
                    "--meter", "each meter once", value, f"Merge the --meter flags for {name!r}"
                )
            meter_specs[name] = (limit, period)
        over: dict[str, str] = {}
        for value in meter_overlimit or []:
            name, policy = parse_overlimit(value)
            if name not in meter_specs:
                raise bad_flag(
                    "--meter-overlimit",
                    "a meter declared with --meter: " + (", ".join(meter_specs) or "(none)"),
                    value,
                    "Declare the meter first",
                )
            over[name] = policy
        meters = {
            n: Meter(lim, per, over.get(n, "refuse")) for n, (lim, per) in meter_specs.items()
        }
        now = datetime.now(UTC).replace(microsecond=0)
        expires_at = None
        if expires is not None:
            expires_at = parse_date(expires)
            if expires_at <= now:
                raise bad_flag("--expires", "a date in the future", expires, "Pick a later date")
        _check_numbers(report_every, grace, lease, cluster_size)
        cryptolens = build_section(
            CryptolensOptions(
                product_id=cryptolens_product_id,
                key=cryptolens_key,
                feature=cryptolens_feature,
                data_objects=cryptolens_data_object or (),
                credits=cryptolens_credit or (),
                features_template=cryptolens_features_template,
                machines=cryptolens_machine or (),
                flags=cryptolens_flag or (),
                notes=cryptolens_notes,
                block=cryptolens_block,
                trial=cryptolens_trial,
                max_machines=cryptolens_max_machines,
                no_deactivation=cryptolens_no_deactivation,
            ),
            features,
            meters,
        )
        _check_output(output, force)
        keys = vendor_keys.VendorKeys.load(home)
        signer = keys.signer()
        try:
            lic = License(
                license_id=new_id("lic_"),
                customer=customer,
                product=product,
                issued=now,
                vendor_key_id=signer.key_id.hex(),
                features=features,
                meters=meters,
                expires=expires_at,
                report_every_days=report_every,
                grace_days=grace,
                site_fingerprint=site,
                cryptolens=cryptolens,
                require_tpm=require_tpm,
                max_borrow_hours=max_borrow_hours,
                cluster_size=cluster_size,
            )
        except FormatError as exc:
            raise ConfigError(
                exc.problem, expected=exc.expected, found=exc.found, hint=exc.hint
            ) from None
        document = lic.sign(signer)
        from meterbox.vendorkit._db.store import VendorStore

        with VendorStore.open(store, home=home) as db:
            _write_output(output, document, force)
            try:
                db.add_license(lic, document)
            except BaseException:
                output.unlink(missing_ok=True)
                raise
        _print_issued(lic, output, as_json=as_json)


@app.command("topup")
def topup_command(
    *,
    home: HomeOption,
    license_id: Annotated[str, typer.Option("--license", help="License id to top up.")],
    meter: Annotated[str, typer.Option("--meter", help="NAME=UNITS to add.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Top-up file to write.")],
    store: StoreOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output file.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Issue a signed top-up adding units to one meter of an issued license."""
    with cli_errors():
        name, units = parse_units(meter)
        _check_output(output, force)
        keys = vendor_keys.VendorKeys.load(home)
        from meterbox.vendorkit._db.store import VendorStore

        with VendorStore.open(store, home=home) as db:
            row = db.get_license(license_id)
            if row is None:
                raise ConfigError(
                    "--license names a license this vendor store does not hold",
                    expected="an id listed by `meterbox vendor licenses`",
                    found=repr(license_id),
                    hint="Check the id, or pass the --store the license was issued into",
                )
            lic = License.from_bytes(row.document, keys.bundle)
            if name not in lic.meters:
                raise bad_flag(
                    "--meter",
                    "a meter of this license: " + (", ".join(lic.meters) or "(none)"),
                    meter,
                    "Top-ups add to existing meters",
                )
            topup = Topup(
                new_id("top_"), license_id, name, units, datetime.now(UTC).replace(microsecond=0)
            )
            document = topup.sign(keys.signer())
            _write_output(output, document, force)
            try:
                db.add_topup(topup, document)
            except BaseException:
                output.unlink(missing_ok=True)
                raise
        if as_json:
            print_json(
                {
                    "topup_id": topup.topup_id,
                    "license_id": license_id,
                    "meter": name,
                    "units": units,
                    "file": str(output),
                }
            )
            return
        out().print(f"Issued {topup.topup_id}: +{units} {name} for {license_id} -> {output}")


@app.command("licenses")
def licenses_command(
    home: HomeOption,
    store: StoreOption = None,
    customer: Annotated[str | None, typer.Option(help="Only this customer.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List issued licenses."""
    with cli_errors():
        keys = vendor_keys.VendorKeys.load(home)
        from meterbox.vendorkit._db import queries
        from meterbox.vendorkit._db.store import VendorStore

        with VendorStore.open(store, home=home) as db:
            rows = db.list_licenses(customer)
            topups = db.list_topups()
            machines = db.machine_activations()
            with db.engine.connect() as conn:
                reports = {r.license_id: queries.member_reports(conn, r.license_id) for r in rows}
        now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
        columns = (
            "license", "customer", "product", "issued", "expires", "features", "meters",
            "cryptolens", "machines", "nodes",
        )  # fmt: skip
        lines: list[tuple[str, ...]] = []
        docs: list[dict[str, object]] = []
        for row in rows:
            lic = License.from_bytes(row.document, keys.bundle)
            added: dict[str, int] = {}
            for t in topups:
                if t.license_id == lic.license_id:
                    added[t.meter] = added.get(t.meter, 0) + t.units
            states = member_states(lic, [MemberReport(*m) for m in reports[lic.license_id]], now_us)
            docs.append(
                {
                    # The signed payload, as docs/spec/license.md defines its keys.
                    "license": lic.to_payload(),
                    "topups": dict(sorted(added.items())),
                    "machines_activated": len(machines.get(lic.license_id, ())),
                    "nodes": [_node_json(s) for s in states],
                }
            )
            if as_json:
                continue
            feats = ", ".join(
                f"{n}={f.seats}" + (f"+{f.overdraft}" if f.overdraft else "")
                for n, f in lic.features.items()
            )
            meters = ", ".join(
                f"{n}={'unlimited' if m.limit is None else m.limit}"
                + (f"/{m.period}" if m.period != "total" else "")
                + (f" (+{added[n]})" if n in added else "")
                for n, m in lic.meters.items()
            )
            lines.append(
                (
                    lic.license_id,
                    lic.customer,
                    lic.product,
                    lic.issued.date().isoformat(),
                    "-" if lic.expires is None else lic.expires.date().isoformat(),
                    feats or "-",
                    meters or "-",
                    describe_cryptolens(lic),
                    # Node-locked activations the ingested reports show, against the limit.
                    _machines(lic, len(machines.get(lic.license_id, ()))),
                    _nodes(lic, states),
                )
            )
        if as_json:
            print_json({"licenses": docs})
            return
        console = Console(highlight=False)
        if console.width >= _WIDE_TABLE:
            table = Table(title=f"{len(rows)} license(s)")
            for col in columns:
                # Ids stay on one line (to be copied and grepped); the rest folds to fit.
                if col == "license":
                    width = max((len(r.license_id) for r in rows), default=7)
                    table.add_column(col, no_wrap=True, min_width=width)
                else:
                    table.add_column(col, overflow="fold")
            for line in lines:
                table.add_row(*line)
            console.print(table)
            return
        # Nine columns do not fit a narrow terminal: one block per license, a field a line.
        console.print(f"{len(rows)} license(s)")
        for line in lines:
            console.print()
            for col, value in zip(columns, line, strict=True):
                console.print(f"{col + ':':<12}{value}", overflow="fold")


def _check_numbers(report_every: int | None, grace: int, lease: int, cluster_size: int) -> None:
    """The numeric flags of `vendor issue`, each refused with what it accepts."""
    if report_every is not None and report_every < 1:
        raise bad_flag(
            "--report-every",
            "a number of days >= 1",
            str(report_every),
            "For example --report-every 30",
        )
    if grace < 0:
        raise bad_flag("--grace", "a number of days >= 0", str(grace), "For example --grace 7")
    if not 1 <= cluster_size <= MAX_CLUSTER_SIZE:
        raise bad_flag(
            "--cluster-size",
            f"1 to {MAX_CLUSTER_SIZE} server instances",
            str(cluster_size),
            "For a three-node cluster pass --cluster-size 3; one server needs no flag",
        )
    if not MIN_LEASE_SECONDS <= lease <= MAX_LEASE_SECONDS:
        raise bad_flag(
            "--lease",
            f"{MIN_LEASE_SECONDS} to {MAX_LEASE_SECONDS} seconds",
            str(lease),
            "The default is 60",
        )


def _nodes(lic: License, states: list[MemberState]) -> str:
    """``reporting/cluster size`` and the silent members (ADR 0026), e.g. ``2/3, 1 silent``."""
    silent = [s.instance_id[:8] for s in states if s.silent]
    text = f"{len(states)}/{lic.cluster_size}"
    return text + (f", silent: {' '.join(silent)}" if silent else "")


def _node_json(state: MemberState) -> dict[str, object]:
    last = state.last_report_us
    return {
        "instance_id": state.instance_id,
        "last_report": None
        if last is None
        else format_time(datetime.fromtimestamp(last / 1_000_000, UTC)),
        "acked_seq": state.acked_seq,
        "silent": state.silent,
        "why": state.why or None,
    }


#: Terminal columns from which `vendor licenses` draws one table instead of blocks.
_WIDE_TABLE = 140


def _machines(lic: License, activated: int) -> str:
    """``activated/limit`` of node-locked Cryptolens machines (``-`` without a section)."""
    if lic.cryptolens is None:
        return "-"
    # Imported here: the Cryptolens package pulls in the web stack, which `vendor --help`
    # and the other vendor commands do not need.
    from meterbox.compat.mapping import max_machines

    limit = max_machines(lic)
    return f"{activated}/{limit if limit else 'unlimited'}"


def _print_issued(lic: License, output: Path, *, as_json: bool) -> None:
    if as_json:
        print_json({"license": lic.to_payload(), "file": str(output)})
        return
    out().print(f"Issued {lic.license_id} for {lic.customer} -> {output}")
    if lic.cluster_size > 1:
        out().print(
            f"Cluster of {lic.cluster_size} server instances: each node is `server init`'d "
            "with this license and reports its own ledger"
        )
    if lic.cryptolens is not None:
        # The two values an application built on a Cryptolens SDK is configured with.
        out().print(f"Cryptolens product id {lic.cryptolens.product_id}, key {lic.cryptolens.key}")
