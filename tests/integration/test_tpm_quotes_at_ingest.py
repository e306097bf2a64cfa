"""The vendor's ingest against real attestations from swtpm: good, replayed, foreign, forged.

The server is a real instance in this process on a real swtpm; every report is exported by
it and ingested by the real vendor store. The attacks are what a customer with root (and
so the instance key, see support.report_surgery) can do to a report: swap in an older
attestation, one from another TPM, alter one, or drop it. Each has its own finding code,
each is rejected, and none moves the vendor's pins: a good report afterwards verifies.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterbox.crypto import ed25519_private_from_raw
from meterbox.server._instance import ServerInstance
from meterbox.tpm import AttestationBundle, TpmAnchor, TpmDevice, report_nonce
from meterbox.vendorkit import IngestOutcome, VendorStore, ingest_report
from support import report_surgery
from support.server_proc import Data, make_data
from support.tpm import Swtpm, SwtpmFactory


@pytest.fixture
def site(tmp_path: Path, swtpm: Swtpm) -> Iterator[tuple[Data, ServerInstance]]:
    data = make_data(tmp_path, tpm_tcti=swtpm.tcti)
    inst = ServerInstance.open(data.data)
    try:
        yield data, inst
    finally:
        inst.close()


def _ingest(data: Data, report: bytes, name: str) -> IngestOutcome:
    path = data.home.parent / f"{name}.mbr"
    path.write_bytes(report)
    return ingest_report(data.home, path)


def _tpm(outcome: IngestOutcome) -> set[str]:
    return {f.code for f in outcome.findings if f.code.startswith("tpm.")}


def _accept(data: Data, inst: ServerInstance, name: str) -> IngestOutcome:
    asyncio.run(inst.service.usage("runs", 1, "c1"))
    outcome = _ingest(data, inst.export_bytes(), name)
    assert outcome.accepted and _tpm(outcome) == {"tpm.quote.ok"}, outcome.to_json()
    assert outcome.receipt_path is not None
    asyncio.run(inst.import_bytes(outcome.receipt_path.read_bytes()))
    return outcome


def _with_bundle(data: Data, report: bytes, bundle: bytes | None) -> bytes:
    parts = report_surgery.split(report)
    extra = dict(parts.header["extra"])
    if bundle is None:
        extra.pop("tpm")
    else:
        extra["tpm"] = bundle
    parts.header["extra"] = extra
    key = ed25519_private_from_raw((data.data / "ledger" / "instance.key").read_bytes())
    return report_surgery.join(parts, key)


def _pins(data: Data, instance_id: str) -> object:
    with VendorStore.open(None, home=data.home) as store, store.engine.connect() as conn:
        return store.tpm_pins(instance_id, conn)


def test_good_replayed_foreign_forged_and_missing_attestations(
    site: tuple[Data, ServerInstance], swtpm_factory: SwtpmFactory
) -> None:
    data, inst = site
    first = _accept(data, inst, "first")
    iid = inst.writer.instance_id.hex()
    old_report = inst.export_bytes()
    old_bundle = report_surgery.split(old_report).header["extra"]["tpm"]
    _accept(data, inst, "second")
    pinned = _pins(data, iid)
    assert first.instance_id == iid

    asyncio.run(inst.service.usage("runs", 1, "c1"))
    report = inst.export_bytes()
    parts = report_surgery.split(report)
    head = parts.trailer["head_hash"]
    acked = parts.header["acked"]
    nonce = report_nonce(inst.writer.instance_id, bytes(acked[1]))

    # Replayed: an attestation from an earlier report (older counter, other head).
    replayed = _ingest(data, _with_bundle(data, report, old_bundle), "replayed")
    # Foreign: a genuine attestation of this very head and nonce, from another TPM.
    other = swtpm_factory()
    with TpmDevice(other.tcti) as dev:
        foreign_bundle = TpmAnchor.initialise(dev, b"k" * 32).attest(head, nonce)
    foreign = _ingest(data, _with_bundle(data, report, foreign_bundle), "foreign")
    # Forged: the right TPM's attestation with the counter it signed changed.
    good = AttestationBundle.from_bytes(parts.header["extra"]["tpm"])
    attest = bytearray(good.attest)
    attest[-1] ^= 0x01
    forged_bundle = dataclasses.replace(good, attest=bytes(attest)).to_bytes()
    forged = _ingest(data, _with_bundle(data, report, forged_bundle), "forged")
    # Missing: the attestation dropped from the report of an enrolled instance.
    missing = _ingest(data, _with_bundle(data, report, None), "missing")

    for outcome, code in (
        (replayed, "tpm.quote.replayed"),
        (foreign, "tpm.quote.foreign"),
        (forged, "tpm.quote.forged"),
        (missing, "tpm.missing"),
    ):
        assert outcome.status == "rejected", (code, outcome.to_json())
        assert _tpm(outcome) == {code}, (code, outcome.to_json())
    # None of them moved the pins; the untouched report still verifies after them all.
    assert _pins(data, iid) == pinned
    ok = _ingest(data, report, "untouched")
    assert ok.accepted and _tpm(ok) == {"tpm.quote.ok"}, ok.to_json()
