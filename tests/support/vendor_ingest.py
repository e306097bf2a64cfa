"""Builders shared by the ingest, billing and attack tests (no tests of its own).

A real vendor home (fixed keys), licenses signed and stored in a real store, and site
ledgers written with the real LedgerWriter under a manual clock, exported to files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from meterbox.cli import app as root_app
from meterbox.clock import ManualClock
from meterbox.ledger import Head, LedgerWriter, RecordType, export_report
from meterbox.licenses import Feature, License, Meter
from meterbox.vendorkit import VendorStore
from meterbox.vendorkit import keys as vendor_keys

#: The vendor's "now" in core tests: 2026-01-20 00:00 UTC.
VENDOR_NOW = datetime(2026, 1, 20, tzinfo=UTC)
#: Site clocks start 2026-01-05 00:00 UTC.
SITE_START_MS = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)
runner = CliRunner()


def make_home(root: Path) -> Path:
    home = root / "vendor"
    pair = vendor_keys.VendorKeyPair.from_raw(
        bytes(range(32)), bytes(range(32, 64)), datetime(2025, 1, 1, tzinfo=UTC)
    )
    vendor_keys.init(home, pair=pair)
    return home


def make_other_home(root: Path) -> Path:
    home = root / "other-vendor"
    pair = vendor_keys.VendorKeyPair.from_raw(
        bytes(range(64, 96)), bytes(range(96, 128)), datetime(2025, 1, 1, tzinfo=UTC)
    )
    vendor_keys.init(home, pair=pair)
    return home


def issue(
    home: Path,
    license_id: str = "lic_acme",
    *,
    customer: str = "ACME",
    meters: dict[str, Meter] | None = None,
    features: dict[str, Feature] | None = None,
    store_url: str | None = None,
    record: bool = True,
    **terms: Any,
) -> bytes:
    """Sign (and store) a license; ``terms`` are further License fields (expires, ...)."""
    keys = vendor_keys.VendorKeys.load(home)
    signer = keys.signer()
    lic = License(
        license_id=license_id,
        customer=customer,
        product="Solver",
        issued=datetime(2025, 12, 1, tzinfo=UTC),
        vendor_key_id=signer.key_id.hex(),
        features=features if features is not None else {"cad": Feature(5)},
        meters=meters
        if meters is not None
        else {"solver": Meter(1000, "month"), "exports": Meter(50, "total")},
        **terms,
    )
    document = lic.sign(signer)
    if record:
        with VendorStore.open(store_url, home=home) as db:
            db.add_license(lic, document)
    return document


@dataclass
class Site:
    writer: LedgerWriter
    clock: ManualClock
    directory: Path
    licenses: list[bytes]
    license_id: str

    def use(self, meter: str, amount: int, *, step_ms: int = 1000, **extra: Any) -> int:
        self.clock.advance(step_ms)
        payload = {"m": meter, "a": amount, "c": "client-1", "l": self.license_id, **extra}
        return self.writer.append(RecordType.USAGE, payload).seq

    def refund(self, meter: str, amount: int) -> int:
        self.clock.advance(1000)
        payload = {"m": meter, "a": amount, "c": "client-1", "l": self.license_id}
        return self.writer.append(RecordType.USAGE_DECREMENT, payload).seq

    def checkout(self, lease: str, feature: str = "cad", step_ms: int = 1000) -> int:
        self.clock.advance(step_ms)
        payload = {"i": lease, "f": feature, "c": "client-1", "l": self.license_id, "e": 0}
        return self.writer.append(RecordType.SEAT_CHECKOUT, payload).seq

    def borrow(self, lease: str, hours: int, machine: str = "ab" * 32, step_ms: int = 1000) -> int:
        self.clock.advance(step_ms)
        expires = (self.clock.wall_ms() + hours * 3_600_000) // 1000
        payload = {"i": lease, "f": "cad", "c": "client-1", "l": self.license_id}
        payload |= {"e": expires, "h": machine}
        return self.writer.append(RecordType.SEAT_BORROWED, payload).seq

    def give_back(self, lease: str, step_ms: int = 1000) -> int:
        self.clock.advance(step_ms)
        return self.writer.append(RecordType.SEAT_RETURNED, {"i": lease}).seq

    def release(self, lease: str, step_ms: int = 1000) -> int:
        self.clock.advance(step_ms)
        return self.writer.append(RecordType.SEAT_RELEASE, {"i": lease}).seq

    def heartbeat(self, step_ms: int = 60_000) -> int:
        self.clock.advance(step_ms)
        return self.writer.append(RecordType.HEARTBEAT, {}).seq

    def export(self, path: Path, acked: Head | None = None) -> Path:
        with path.open("wb") as f:
            export_report(self.writer, f, clock=self.clock, licenses=self.licenses, acked=acked)
        return path

    def reopen(self) -> None:
        """Restart the server process (SHUTDOWN, then BOOT with a new epoch)."""
        self.writer.close()
        self.clock.advance(5000)
        self.writer = LedgerWriter.open(self.directory, clock=self.clock)

    def backup(self, to: Path) -> Path:
        """Copy the ledger directory as it is on disk now (the server keeps running)."""
        shutil.copytree(self.directory, to, ignore=shutil.ignore_patterns("ledger.lock"))
        return to


def make_site(
    home: Path,
    directory: Path,
    licenses: list[bytes],
    *,
    license_id: str = "lic_acme",
    start_ms: int = SITE_START_MS,
    instance_id: bytes | None = None,
) -> Site:
    keys = vendor_keys.VendorKeys.load(home)
    pair = keys.pair()
    clock = ManualClock(wall_ms=start_ms, mono_ms=1_000)
    writer = LedgerWriter.create(
        directory,
        vendor_ledger_key=pair.ledger_private.public_key(),
        vendor_key_id=pair.key_id,
        clock=clock,
        genesis={"l": [license_id]},
        instance_id=instance_id,
    )
    return Site(writer, clock, directory, licenses, license_id)


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(root_app, ["vendor", *args])
    return result.exit_code, result.stdout


def ingest_json(home: Path, report: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, out = cli("ingest", "--home", str(home), str(report), "--json", *extra)
    return code, json.loads(out)


def codes(outcome_json: dict[str, Any]) -> set[str]:
    return {f["code"] for f in outcome_json["findings"]}


def days(n: float) -> int:
    return int(timedelta(days=n).total_seconds() * 1000)
