"""The credential challenge: the attestation key must live in the TPM whose EK it names.

Real swtpm processes (the genuine ones given EK certificates by ``swtpm_setup
--create-ek-cert`` from a local CA), real server instances opened in-process, real
reports, the vendor's real ingest and store. The attacks are run as a customer who is
root on the server would run them: a patched server that puts a stolen genuine EK (its
public area and certificate, read from the genuine TPM) into its bundles beside an
attestation key of its own TPM, and a server that seals another instance's proof
into its own ledger.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meterbox.ledger import RecordType, ReportVerifier
from meterbox.licenses import License
from meterbox.server._instance import ServerInstance
from meterbox.tpm import TpmDevice
from meterbox.vendorkit import IngestOutcome, VendorStore, ingest_report
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit._tpm_check import UNPROVEN_AFTER_REPORTS
from meterbox.vendorkit.cli import app as vendor_app
from support.crash import Vendor
from support.server_proc import Data, make_data
from support.tpm import SwtpmFactory, manufacture_with_ek_cert

runner = CliRunner()
Patch = Callable[[ServerInstance], None]


class Site:
    """A server instance, the vendor that ingests its reports, and how it is opened."""

    def __init__(self, data: Data, root: Path, patch: Patch | None = None) -> None:
        self.data, self.root, self.patch = data, root, patch
        self.reports = 0
        document = (root / "site.lic").read_bytes()
        bundle = vendor_keys.VendorKeys.load(data.home).bundle
        with VendorStore.open(None, home=data.home) as store:
            store.add_license(License.from_bytes(document, bundle), document)

    def open(self) -> ServerInstance:
        inst = ServerInstance.open(self.data.data)
        if self.patch is not None:
            self.patch(inst)
        return inst

    def report(self) -> tuple[bytes, IngestOutcome]:
        inst = self.open()
        try:
            blob = inst.export_bytes()
        finally:
            inst.close()
        self.reports += 1
        path = self.root / f"report-{self.reports}.mbr"
        path.write_bytes(blob)
        return blob, ingest_report(self.data.home, path)

    def import_receipt(self, outcome: IngestOutcome) -> dict[str, Any]:
        assert outcome.receipt_path is not None, outcome.to_json()
        inst = self.open()
        try:
            return asyncio.run(inst.import_bytes(outcome.receipt_path.read_bytes()))
        finally:
            inst.close()

    def credentials(self, blob: bytes) -> list[dict[str, Any]]:
        verifier = ReportVerifier(Vendor(self.data.home, ()).ledger_keys())
        return [
            dict(r.payload)
            for r, _ in verifier.records(io.BytesIO(blob))
            if r.type == RecordType.TPM_CREDENTIAL
        ]


def _codes(outcome: IngestOutcome) -> dict[str, str]:
    return {f.code: f.severity for f in outcome.findings if f.code.startswith("tpm.")}


def _receipt_format(outcome: IngestOutcome) -> str:
    assert outcome.receipt_path is not None
    return str(json.loads(outcome.receipt_path.read_bytes())["format"])


def _genuine(root: Path, factory: SwtpmFactory, name: str) -> tuple[Any, list[Path]]:
    cas = manufacture_with_ek_cert(root / f"{name}-state", root / f"{name}-ca")
    return factory(root / f"{name}-state"), cas


def _trust(home: Path, cas: list[Path]) -> None:
    for ca in cas:
        result = runner.invoke(vendor_app, ["tpm-ca", "add", str(ca), "--home", str(home)])
        assert result.exit_code == 0, result.output


def _stolen_ek(tcti: str) -> Any:
    with TpmDevice(tcti) as dev:
        return dev.endorsement_key()


def _presenting(ek: Any) -> Patch:
    """The patched server: its bundles carry ``ek`` instead of its own TPM's EK."""

    def patch(inst: ServerInstance) -> None:
        assert inst.tpm is not None
        inst.tpm._anchor._ek = ek

    return patch


def test_genuine_tpm_answers_the_challenge_and_the_key_is_proven(
    tmp_path: Path, swtpm_factory: SwtpmFactory
) -> None:
    tpm, cas = _genuine(tmp_path, swtpm_factory, "genuine")
    site = Site(make_data(tmp_path, tpm_tcti=tpm.tcti, require_tpm=True), tmp_path)
    _trust(site.data.home, cas)
    _, first = site.report()
    assert first.status == "accepted", first.to_json()
    # The first attested report's receipt challenges the AK it pinned.
    assert _receipt_format(first) == "meterbox-receipt/2"
    assert first.receipt is not None and first.receipt.tpm_challenge is not None
    assert site.import_receipt(first)["tpm_credential"] == "answered"
    blob, second = site.report()
    (answer,) = site.credentials(blob)
    assert answer["ri"] == first.receipt.receipt_id and len(answer["p"]) == 32
    assert second.status == "accepted", second.to_json()
    assert _codes(second) == {"tpm.quote.ok": "info"}, second.to_json()
    # Proven: the receipts stop challenging, and later reports are clean.
    assert _receipt_format(second) == "meterbox-receipt/1"
    site.import_receipt(second)
    _, third = site.report()
    assert _codes(third) == {"tpm.quote.ok": "info"}, third.to_json()
    assert _receipt_format(third) == "meterbox-receipt/1"


@pytest.mark.parametrize(
    ("require_tpm", "severity", "status"),
    [(True, "critical", "rejected"), (False, "warning", "accepted_with_findings")],
    ids=["require_tpm", "tpm_optional"],
)
def test_software_key_beside_a_stolen_genuine_ek_cannot_answer(
    tmp_path: Path, swtpm_factory: SwtpmFactory, require_tpm: bool, severity: str, status: str
) -> None:
    genuine, cas = _genuine(tmp_path, swtpm_factory, "genuine")
    own = swtpm_factory()  # the customer's own TPM: the AK and the counter live here
    stolen = _stolen_ek(genuine.tcti)
    assert stolen.cert is not None
    data = make_data(tmp_path, tpm_tcti=own.tcti, require_tpm=require_tpm)
    site = Site(data, tmp_path, patch=_presenting(stolen))
    _trust(site.data.home, cas)
    _, first = site.report()
    # Today's checks pass: the EK certificate is genuine and chains to the trusted CA.
    assert first.status == "accepted", first.to_json()
    assert any(
        "EK certified by a configured manufacturer CA" in f.message
        for f in first.findings
        if f.code == "tpm.quote.ok"
    ), first.to_json()
    imported = site.import_receipt(first)
    assert imported["tpm_credential"] != "answered", imported
    _, second = site.report()
    assert second.status == status, second.to_json()
    assert _codes(second).get("tpm.ak.unproven") == severity, second.to_json()


def test_a_challenge_never_answered_makes_the_key_unproven(
    tmp_path: Path, swtpm_factory: SwtpmFactory
) -> None:
    """The patched server never imports the receipt that challenges it."""
    genuine, cas = _genuine(tmp_path, swtpm_factory, "genuine")
    own = swtpm_factory()
    site = Site(
        make_data(tmp_path, tpm_tcti=own.tcti, require_tpm=True),
        tmp_path,
        patch=_presenting(_stolen_ek(genuine.tcti)),
    )
    _trust(site.data.home, cas)
    _, first = site.report()
    assert first.status == "accepted", first.to_json()
    for _ in range(UNPROVEN_AFTER_REPORTS - 1):
        _, later = site.report()
        assert later.status == "accepted", later.to_json()
        assert _codes(later).get("tpm.ak.outstanding") == "info", later.to_json()
        # Every receipt while the challenge is outstanding carries it again.
        assert _receipt_format(later) == "meterbox-receipt/2"
    _, last = site.report()
    assert last.status == "rejected", last.to_json()
    assert _codes(last).get("tpm.ak.unproven") == "critical", last.to_json()


@pytest.mark.parametrize("edit", ["verbatim", "renamed"])
def test_a_proof_replayed_from_another_instance_is_forged(
    tmp_path: Path, swtpm_factory: SwtpmFactory, edit: str
) -> None:
    genuine, cas = _genuine(tmp_path / "x", swtpm_factory, "genuine")
    # Instance X runs on the genuine TPM and proves its AK.
    x = Site(make_data(tmp_path / "x", tpm_tcti=genuine.tcti), tmp_path / "x")
    _trust(x.data.home, cas)
    _, x_first = x.report()
    x.import_receipt(x_first)
    x_blob, _ = x.report()
    (proof,) = x.credentials(x_blob)
    # Instance Y presents X's EK beside its own AK and seals X's proof instead of an
    # answer of its own (its TPM cannot release a secret sealed to X's EK).
    own = swtpm_factory()
    y = Site(
        make_data(tmp_path / "y", tpm_tcti=own.tcti, require_tpm=True),
        tmp_path / "y",
        patch=_presenting(_stolen_ek(genuine.tcti)),
    )
    _trust(y.data.home, cas)
    _, y_first = y.report()
    assert y_first.status == "accepted", y_first.to_json()
    assert y_first.receipt is not None
    payload = dict(proof)
    if edit == "renamed":
        inst = y.open()
        try:
            assert inst.tpm is not None
            payload["a"] = inst.tpm._anchor._ak.name.hex()
            payload["ri"] = y_first.receipt.receipt_id
        finally:
            inst.close()
    inst = y.open()
    try:
        inst.writer.append(RecordType.TPM_CREDENTIAL, payload)
    finally:
        inst.close()
    _, y_second = y.report()
    assert y_second.status == "rejected", y_second.to_json()
    assert _codes(y_second).get("tpm.ak.forged") == "critical", y_second.to_json()
