"""EK certificates against the vendor's manufacturer CAs, and re-enrolment on a new TPM.

Real swtpm processes (one given a real EK certificate by ``swtpm_setup
--create-ek-cert`` from a local CA in a temporary directory), real server instances
opened in-process on them, real reports, the vendor's real ingest and store, and the
real CLIs for ``vendor tpm-ca add`` and ``server tpm reenrol``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from meterbox.errors import FormatError
from meterbox.ledger import RecordType, TpmReenrolled
from meterbox.licenses import License
from meterbox.server._instance import ServerInstance
from meterbox.server._tpm import prepare_tpm, read_tpm_config, write_tpm_config
from meterbox.server.cli import app as server_app
from meterbox.tpm import (
    AttestationBundle,
    TpmAnchor,
    TpmDevice,
    TpmMode,
    TpmPins,
    TpmQuoteForged,
    parse_ca_file,
    verify_attestation,
)
from meterbox.vendorkit import IngestOutcome, VendorStore, ingest_report
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit.cli import app as vendor_app
from support.server_proc import Data, make_data
from support.tpm import Swtpm, SwtpmFactory, manufacture_with_ek_cert

runner = CliRunner()
AUTH = b"\x42" * 32
HEAD = b"\xa1" * 32
NONCE = b"\x51" * 32


class Site:
    """A server instance on one swtpm and the vendor that ingests its reports."""

    def __init__(self, data: Data, root: Path) -> None:
        self.data, self.root = data, root
        self.reports = 0
        self.instance_id = ""
        # The vendor issued the site's license from this store, as in production.
        document = (root / "site.lic").read_bytes()
        bundle = vendor_keys.VendorKeys.load(data.home).bundle
        with VendorStore.open(None, home=data.home) as store:
            store.add_license(License.from_bytes(document, bundle), document)

    def report(self) -> IngestOutcome:
        inst = ServerInstance.open(self.data.data)
        try:
            blob = inst.export_bytes()
        finally:
            inst.close()
        self.reports += 1
        path = self.root / f"report-{self.reports}.mbr"
        path.write_bytes(blob)
        outcome = ingest_report(self.data.home, path)
        self.instance_id = outcome.instance_id or ""
        return outcome

    def round_trip(self) -> IngestOutcome:
        outcome = self.report()
        assert outcome.accepted, outcome.to_json()
        assert outcome.receipt_path is not None
        inst = ServerInstance.open(self.data.data)
        try:
            asyncio.run(inst.import_bytes(outcome.receipt_path.read_bytes()))
        finally:
            inst.close()
        return outcome

    def pins(self) -> TpmPins:
        with VendorStore.open(None, home=self.data.home) as store, store.engine.connect() as c:
            return store.tpm_pins(self.instance_id, c)


def _tpm_codes(outcome: IngestOutcome) -> dict[str, str]:
    return {f.code: f.severity for f in outcome.findings if f.code.startswith("tpm.")}


def _add_ca(home: Path, path: Path) -> None:
    result = runner.invoke(vendor_app, ["tpm-ca", "add", str(path), "--home", str(home)])
    assert result.exit_code == 0, result.output


def _manufactured(root: Path, name: str, factory: SwtpmFactory) -> tuple[Swtpm, list[Path]]:
    cas = manufacture_with_ek_cert(root / f"{name}-state", root / f"{name}-ca")
    return factory(root / f"{name}-state"), cas


# ------------------------------------------------------------ EK certificates
@pytest.mark.parametrize("require_tpm", [True, False], ids=["require_tpm", "tpm_optional"])
def test_ek_certificate_chaining_to_a_configured_ca_is_trusted(
    tmp_path: Path, swtpm_factory: SwtpmFactory, require_tpm: bool
) -> None:
    tpm, cas = _manufactured(tmp_path, "genuine", swtpm_factory)
    site = Site(make_data(tmp_path, tpm_tcti=tpm.tcti, require_tpm=require_tpm), tmp_path)
    for ca in cas:
        _add_ca(site.data.home, ca)
    outcome = site.report()
    assert outcome.status == "accepted", outcome.to_json()
    ok = [f for f in outcome.findings if f.code == "tpm.quote.ok"]
    assert ok and "EK certified by a configured manufacturer CA" in ok[0].message


@pytest.mark.parametrize(
    ("require_tpm", "severity", "status"),
    [(True, "critical", "rejected"), (False, "warning", "accepted_with_findings")],
    ids=["require_tpm", "tpm_optional"],
)
def test_ek_certificate_from_an_unknown_ca_is_untrusted(
    tmp_path: Path, swtpm_factory: SwtpmFactory, require_tpm: bool, severity: str, status: str
) -> None:
    tpm, _ = _manufactured(tmp_path, "genuine", swtpm_factory)
    # The vendor trusts another manufacturer only (a CA made the same way, not this one).
    other_cas = manufacture_with_ek_cert(tmp_path / "other-state", tmp_path / "other-ca")
    site = Site(make_data(tmp_path, tpm_tcti=tpm.tcti, require_tpm=require_tpm), tmp_path)
    for ca in other_cas:
        _add_ca(site.data.home, ca)
    outcome = site.report()
    assert outcome.status == status, outcome.to_json()
    codes = _tpm_codes(outcome)
    assert codes.get("tpm.ek.untrusted") == severity, codes
    if require_tpm:
        # A rejected report moves no pins: the TPM is not enrolled.
        assert not site.pins().enrolled
    else:
        assert site.pins().enrolled


@pytest.mark.parametrize(
    ("require_tpm", "severity"), [(True, "critical"), (False, "warning")], ids=["req", "opt"]
)
def test_tpm_without_an_ek_certificate_is_missing_once_cas_are_configured(
    tmp_path: Path, swtpm: Swtpm, require_tpm: bool, severity: str
) -> None:
    cas = manufacture_with_ek_cert(tmp_path / "unused-state", tmp_path / "ca")
    site = Site(make_data(tmp_path, tpm_tcti=swtpm.tcti, require_tpm=require_tpm), tmp_path)
    # Before any CA is configured a TPM without a certificate raises nothing.
    first = site.round_trip()
    assert "tpm.ek.missing" not in _tpm_codes(first), first.to_json()
    for ca in cas:
        _add_ca(site.data.home, ca)
    outcome = site.report()
    assert _tpm_codes(outcome).get("tpm.ek.missing") == severity, outcome.to_json()
    assert outcome.accepted is (not require_tpm)


def test_ek_certificate_of_another_tpm_is_forged(
    tmp_path: Path, swtpm_factory: SwtpmFactory
) -> None:
    """A bundle carrying a genuine certificate that certifies some other TPM's EK."""
    tpm, cas = _manufactured(tmp_path, "a", swtpm_factory)
    other, _ = _manufactured(tmp_path, "b", swtpm_factory)
    roots = [x509.load_pem_x509_certificate(p.read_bytes()) for p in cas]
    with TpmDevice(other.tcti) as dev:
        other_cert = TpmAnchor.initialise(dev, AUTH).attest(HEAD, NONCE)
    stolen = AttestationBundle.from_bytes(other_cert).ek_cert
    assert stolen is not None
    with TpmDevice(tpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        value = anchor.advance(HEAD)
        own = AttestationBundle.from_bytes(anchor.attest(HEAD, NONCE))
    swapped = dataclasses.replace(own, ek_cert=stolen)
    with pytest.raises(TpmQuoteForged, match="does not certify the bundle's endorsement key"):
        verify_attestation(
            swapped.to_bytes(),
            head=HEAD,
            pins=TpmPins(),
            required=True,
            ledger_counter=value,
            ek_roots=roots,
        )


def test_tpm_ca_add_refuses_a_leaf_and_stores_nothing(tmp_path: Path, swtpm: Swtpm) -> None:
    data = make_data(tmp_path, tpm_tcti=swtpm.tcti)
    cas = manufacture_with_ek_cert(tmp_path / "state", tmp_path / "ca")
    # An EK certificate is a leaf: trusting it would vouch for nothing.
    other = ek_certificate_of_a_new_tpm(tmp_path)
    leaf = tmp_path / "leaf.der"
    leaf.write_bytes(other)
    for bad, words in [
        (leaf, "cA = FALSE"),
        (tmp_path / "junk.pem", "PEM text without a CERTIFICATE block"),
        (tmp_path / "empty.der", "an empty file"),
    ]:
        if bad.name == "junk.pem":
            bad.write_bytes(b"-----BEGIN NOTHING-----\n")
        elif bad.name == "empty.der":
            bad.write_bytes(b"")
        result = runner.invoke(vendor_app, ["tpm-ca", "add", str(bad), "--home", str(data.home)])
        assert result.exit_code == 2, result.output
        assert words in result.output, result.output
    listed = runner.invoke(vendor_app, ["tpm-ca", "list", "--home", str(data.home), "--json"])
    assert json.loads(listed.output) == {"cas": []}
    # A file with the CA and a leaf is refused whole.
    mixed = tmp_path / "mixed.pem"
    pem = b"".join(p.read_bytes() for p in cas)
    leaf_pem = x509.load_der_x509_certificate(other).public_bytes(Encoding.PEM)
    mixed.write_bytes(pem + leaf_pem)
    result = runner.invoke(vendor_app, ["tpm-ca", "add", str(mixed), "--home", str(data.home)])
    assert result.exit_code == 2
    listed = runner.invoke(vendor_app, ["tpm-ca", "list", "--home", str(data.home), "--json"])
    assert json.loads(listed.output) == {"cas": []}
    # The CAs alone go in, and adding them again changes nothing.
    for path in cas:
        _add_ca(data.home, path)
    again = runner.invoke(
        vendor_app, ["tpm-ca", "add", str(cas[0]), "--home", str(data.home), "--json"]
    )
    assert json.loads(again.output) == {"added": [], "known": 1}
    listed = runner.invoke(vendor_app, ["tpm-ca", "list", "--home", str(data.home), "--json"])
    assert len(json.loads(listed.output)["cas"]) == len(cas)


def ek_certificate_of_a_new_tpm(root: Path) -> bytes:
    """The DER EK certificate of a freshly manufactured TPM state (a leaf)."""
    manufacture_with_ek_cert(root / "leaf-state", root / "leaf-ca")
    tpm = Swtpm(root / "leaf-state").start()
    try:
        with TpmDevice(tpm.tcti) as dev:
            cert = dev.endorsement_key().cert
    finally:
        tpm.stop()
    assert cert is not None
    return cert


def test_ca_file_parser_accepts_pem_bundles_and_der(tmp_path: Path) -> None:
    cas = manufacture_with_ek_cert(tmp_path / "state", tmp_path / "ca")
    bundle = b"".join(p.read_bytes() for p in cas)
    parsed = parse_ca_file(bundle)
    assert len(parsed) == len(cas)
    der = parsed[0].der
    assert parse_ca_file(der) == [parsed[0]]
    with pytest.raises(FormatError, match="neither PEM nor DER"):
        parse_ca_file(der[:-1])


# ---------------------------------------------------------------- re-enrolment
def _reenrol(data: Path, tcti: str, *extra: str) -> tuple[int, str]:
    args = ["tpm", "reenrol", "--data", str(data), "--tpm-tcti", tcti, *extra]
    result = runner.invoke(server_app, args)
    return result.exit_code, result.output


def test_reenrolment_on_a_new_tpm_is_a_warning_and_pins_the_new_tpm(
    tmp_path: Path, swtpm_factory: SwtpmFactory
) -> None:
    old, new = swtpm_factory(), swtpm_factory()
    site = Site(make_data(tmp_path, tpm_tcti=old.tcti, require_tpm=True), tmp_path)
    site.round_trip()
    old_pins = site.pins()
    old.stop()  # the mainboard is gone
    code, output = _reenrol(site.data.data, new.tcti, "--reason", "mainboard replaced")
    assert code == 0, output
    outcome = site.report()
    codes = _tpm_codes(outcome)
    assert outcome.status == "accepted_with_findings", outcome.to_json()
    assert codes == {"tpm.reenrolled": "warning", "tpm.quote.ok": "info"}, codes
    message = next(f.message for f in outcome.findings if f.code == "tpm.reenrolled")
    assert "mainboard replaced" in message
    pins = site.pins()
    assert pins.ak_name != old_pins.ak_name and pins.ek_name != old_pins.ek_name
    # The receipt acknowledges the move: later reports are clean on the new TPM.
    assert outcome.receipt_path is not None
    inst = ServerInstance.open(site.data.data)
    try:
        asyncio.run(inst.import_bytes(outcome.receipt_path.read_bytes()))
    finally:
        inst.close()
    later = site.report()
    assert later.status == "accepted", later.to_json()
    assert _tpm_codes(later) == {"tpm.quote.ok": "info"}


def test_new_tpm_without_the_record_stays_foreign(
    tmp_path: Path, swtpm_factory: SwtpmFactory
) -> None:
    """Setting the new TPM up by hand (tpm.json rewritten, no record) is not a way in."""
    old, new = swtpm_factory(), swtpm_factory()
    site = Site(make_data(tmp_path, tpm_tcti=old.tcti), tmp_path)
    site.round_trip()
    old_pins = site.pins()
    config = read_tpm_config(site.data.data)
    write_tpm_config(site.data.data, prepare_tpm(TpmMode.REQUIRE, new.tcti), keep=config)
    outcome = site.report()
    codes = _tpm_codes(outcome)
    assert outcome.status == "rejected", outcome.to_json()
    assert codes.get("tpm.quote.foreign") == "critical", codes
    assert "tpm.reenrolled" not in codes
    assert site.pins() == old_pins


def test_a_restore_followed_by_a_reenrolment_is_rejected(
    tmp_path: Path, swtpm_factory: SwtpmFactory
) -> None:
    """Restore a copy the vendor has seen past, then "replace" the TPM to hide it."""
    old, new = swtpm_factory(), swtpm_factory()
    site = Site(make_data(tmp_path, tpm_tcti=old.tcti), tmp_path)
    site.round_trip()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(site.data.data, snapshot)
    # The vendor sees the site move on: report 2 is accepted and pins a higher counter.
    assert site.report().accepted
    pinned = site.pins()
    shutil.rmtree(site.data.data)
    shutil.copytree(snapshot, site.data.data)
    code, output = _reenrol(site.data.data, new.tcti, "--reason", "new host")
    assert code == 0, output
    outcome = site.report()
    codes = {f.code: f.severity for f in outcome.findings}
    assert outcome.status == "rejected", outcome.to_json()
    # The records the vendor saw in report 2 differ: a fork, whatever the TPM says; the
    # re-enrolment sits inside the part the vendor already holds, so it moves nothing.
    assert codes.get("ledger.fork") == "critical", codes
    assert codes.get("tpm.quote.foreign") == "critical", codes
    assert site.pins() == pinned


def test_reenrolment_is_refused_without_a_change_and_writes_nothing(
    tmp_path: Path, swtpm: Swtpm
) -> None:
    site = Site(make_data(tmp_path, tpm_tcti=swtpm.tcti), tmp_path)
    before = {p.name: p.read_bytes() for p in site.data.data.rglob("*") if p.is_file()}
    code, output = _reenrol(site.data.data, swtpm.tcti)
    assert code == 2, output
    assert "is the one the instance is enrolled with" in output
    code, output = _reenrol(site.data.data, f"device:{tmp_path / 'no-tpm'}")
    assert code != 0, output
    assert "required but none answered" in output, output
    after = {p.name: p.read_bytes() for p in site.data.data.rglob("*") if p.is_file()}
    assert after == before


def test_reenrolment_needs_an_instance_with_a_tpm(tmp_path: Path, swtpm: Swtpm) -> None:
    data = make_data(tmp_path)
    code, output = _reenrol(data.data, swtpm.tcti)
    assert code == 2, output
    assert "no TPM to re-enrol from" in output


def test_reenrolled_record_keeps_its_keys() -> None:
    moved = TpmReenrolled(
        old_ek_name="0b01",
        old_ak_name="0b02",
        old_nv_name="0b03",
        old_counter=7,
        new_ek_name="0b11",
        new_ak_name="0b12",
        new_nv_name="0b13",
        new_counter=1,
        reason="swap",
    )
    assert moved.to_map() == {
        "oe": "0b01", "oa": "0b02", "on": "0b03", "oc": 7,
        "ne": "0b11", "na": "0b12", "nn": "0b13", "nc": 1, "r": "swap",
    }  # fmt: skip
    assert int(RecordType.TPM_REENROLLED) == 39
    assert RecordType.TPM_REENROLLED.kind == "tpm.reenrolled"
    assert TpmReenrolled.from_map(moved.to_map()) == moved
