"""Generate the signed-document test vectors in tests/vectors/licenses/.

Fixed private keys and a fixed clock make every byte reproducible (Ed25519 signatures
are deterministic), so tests/unit/test_license_vectors.py builds the vectors afresh
and compares them byte for byte with the checked-in files.

Usage, from ``tests/`` (``make vectors`` regenerates every vector set):
``python -m vectors.licenses.generate [--out DIR]`` (default: this directory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meterbox.licenses import (
    CryptolensSection,
    DataObject,
    Feature,
    License,
    Meter,
    Receipt,
    Topup,
    VendorPublicBundle,
)
from meterbox.licenses._envelope import seal
from meterbox.vendorkit.keys import VendorKeyPair

#: The checked-in vectors live beside this generator.
HERE = Path(__file__).resolve().parent
CLOCK = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
KEY_A = VendorKeyPair.from_raw(bytes(range(32)), bytes(range(32, 64)), CLOCK)
KEY_B = VendorKeyPair.from_raw(
    bytes(range(64, 96)), bytes(range(96, 128)), CLOCK + timedelta(days=1)
)
#: Never in any bundle: documents it signs must be refused.
KEY_STRANGER = VendorKeyPair.from_raw(b"\x42" * 32, b"\x43" * 32, CLOCK)


def _json(value: object) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"


def build() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    bundle_a = VendorPublicBundle((KEY_A.public,), KEY_A.key_id)
    bundle_ab = bundle_a.with_key(KEY_B.public)
    files["vendor.pub"] = bundle_a.to_bytes()
    files["vendor-rotated.pub"] = bundle_ab.to_bytes()

    basic = License(
        license_id="lic_00112233445566aa",
        customer="ACME Labs",
        product="Solver Pro",
        issued=CLOCK,
        vendor_key_id=KEY_A.key_id.hex(),
        features={"cad": Feature(seats=5, overdraft=1)},
        meters={"solver-runs": Meter(limit=1000, period="month", over_limit="refuse")},
        expires=CLOCK + timedelta(days=365),
        report_every_days=30,
        grace_days=7,
    )
    cryptolens = License(
        license_id="lic_00112233445566bb",
        customer="Factory Nord",
        product="Inspector",
        issued=CLOCK,
        vendor_key_id=KEY_B.key_id.hex(),
        features={"inspect": Feature(seats=3, lease_seconds=120)},
        meters={"scans": Meter(limit=None, over_limit="allow")},
        site_fingerprint="site-7f3a",
        cryptolens=CryptolensSection(
            product_id=1234,
            key="ABCDE-FGHIJ-KLMNO-PQRST",
            feature="inspect",
            flags=(True, False, False, False, False, False, False, True),
            notes="line 3",
            allowed_machines=("machine-code-1",),
            data_objects=(DataObject(7, "usagecount", "scans", "", 0),),
        ),
    )
    # Format version 2: node-locked limit, block/trial flags, a credit countdown and an
    # unmetered feature template.
    cryptolens_v2 = License(
        license_id="lic_00112233445566ee",
        customer="Studio Süd",
        product="Renderer",
        issued=CLOCK,
        vendor_key_id=KEY_A.key_id.hex(),
        meters={"frames": Meter(limit=10_000)},
        cryptolens=CryptolensSection(
            product_id=4321,
            key="QWERT-YUIOP-ASDFG-HJKLZ",
            flags=(False, True, False, False, False, False, False, False),
            notes="v2",
            allowed_machines=("build-server",),
            data_objects=(
                DataObject(1, "credits", "frames", "", 500, "decrement"),
                DataObject(2, "cryptolens_features", None, '["f1",["f2",["voice","image"]]]'),
            ),
            max_machines=5,
            trial_activation=True,
            allow_deactivation=False,
        ),
    )
    # Format 3: a license that requires a TPM-anchored server (docs/adr/0011).
    require_tpm = License(**{**_fields(basic), "require_tpm": True})
    # Format 4: seats may be borrowed for up to two weeks (docs/adr/0028).
    borrowing = License(**{**_fields(basic), "max_borrow_hours": 336})
    # Format 4: a license three cluster nodes serve together (docs/adr/0026).
    cluster = License(**{**_fields(basic), "license_id": "lic_00112233445566ff", "cluster_size": 3})
    topup = Topup("top_00112233445566cc", basic.license_id, "solver-runs", 500, CLOCK)
    receipt = Receipt(
        receipt_id="rcpt_00112233445566dd",
        instance_id="0f" * 16,
        license_ids=(basic.license_id,),
        head_seq=4242,
        head_hash="ab" * 32,
        previous_head_seq=1000,
        vendor_time=CLOCK + timedelta(hours=3, microseconds=250),
        report_digest="cd" * 32,
        totals={"solver-runs": 812},
        status="accepted_with_findings",
        finding_codes=("clock_step",),
    )
    receipt_v2 = dataclasses.replace(receipt, tpm_challenge=bytes(range(64)))

    valid = [
        ("valid/license.lic", "vendor.pub", basic.sign(KEY_A.signer()), basic.to_payload()),
        (
            "valid/license-cryptolens.lic",
            "vendor-rotated.pub",
            cryptolens.sign(KEY_B.signer()),
            cryptolens.to_payload(),
        ),
        (
            "valid/license-cryptolens-v2.lic",
            "vendor.pub",
            cryptolens_v2.sign(KEY_A.signer()),
            cryptolens_v2.to_payload(),
        ),
        (
            "valid/license-require-tpm-v3.lic",
            "vendor.pub",
            require_tpm.sign(KEY_A.signer()),
            require_tpm.to_payload(),
        ),
        (
            "valid/license-borrow-v4.lic",
            "vendor.pub",
            borrowing.sign(KEY_A.signer()),
            borrowing.to_payload(),
        ),
        (
            "valid/license-cluster-v4.lic",
            "vendor.pub",
            cluster.sign(KEY_A.signer()),
            cluster.to_payload(),
        ),
        ("valid/topup.top", "vendor.pub", topup.sign(KEY_A.signer()), topup.to_payload()),
        ("valid/receipt.rcpt", "vendor.pub", receipt.sign(KEY_A.signer()), receipt.to_payload()),
        # Format 2: a receipt carrying a TPM credential challenge (docs/adr/0036).
        (
            "valid/receipt-tpm-challenge-v2.rcpt",
            "vendor.pub",
            receipt_v2.sign(KEY_A.signer()),
            receipt_v2.to_payload(),
        ),
        # An old document still verifies after rotation: old keys stay in the bundle.
        (
            "valid/license-old-key.lic",
            "vendor-rotated.pub",
            basic.sign(KEY_A.signer()),
            basic.to_payload(),
        ),
    ]
    kinds = {".lic": "license", ".top": "topup", ".rcpt": "receipt"}
    manifest: dict[str, list[dict[str, object]]] = {"valid": [], "invalid": []}
    for name, bundle, data, payload in valid:
        files[name] = data
        manifest["valid"].append(
            {"file": name, "bundle": bundle, "kind": kinds[Path(name).suffix], "payload": payload}
        )

    good = files["valid/license.lic"]
    env = json.loads(good)
    flipped = bytearray(good)
    sig_at = good.index(b'"signature":"') + len(b'"signature":"') + 5
    flipped[sig_at] = ord("A") if flipped[sig_at] != ord("A") else ord("B")
    with_foreign_key_id = dict(env, key_id=KEY_STRANGER.key_id.hex())

    def canon(obj: dict[str, object]) -> bytes:
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"

    invalid = [
        ("invalid/bad-signature.lic", "license", bytes(flipped), "VerificationError"),
        (
            "invalid/unknown-version.lic",
            "license",
            seal("meterbox-license/2", basic.to_payload(), KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/unknown-version-5.lic",
            "license",
            seal("meterbox-license/5", cluster.to_payload(), KEY_A.signer()),
            "FormatError",
        ),
        (
            # A version-4 envelope around a version-3 payload: max_borrow_hours and
            # cluster_size are required in version 4.
            "invalid/v4-without-max-borrow-hours.lic",
            "license",
            seal("meterbox-license/4", require_tpm.to_payload(), KEY_A.signer()),
            "FormatError",
        ),
        (
            # A version-4 envelope around a license that neither lends seats nor runs on
            # a cluster: such a license is written in a lower version.
            "invalid/v4-needs-neither.lic",
            "license",
            seal(
                "meterbox-license/4",
                {
                    **basic.to_payload(),
                    "require_tpm": False,
                    "max_borrow_hours": 0,
                    "cluster_size": 1,
                },
                KEY_A.signer(),
            ),
            "FormatError",
        ),
        (
            # cluster_size under version 3: the version-3 reader refuses the extra key.
            "invalid/cluster-size-as-v3.lic",
            "license",
            seal(
                "meterbox-license/3",
                {**cluster.to_payload(), "require_tpm": True},
                KEY_A.signer(),
            ),
            "FormatError",
        ),
        (
            "invalid/cluster-size-0.lic",
            "license",
            seal("meterbox-license/4", {**cluster.to_payload(), "cluster_size": 0}, KEY_A.signer()),
            "FormatError",
        ),
        (
            # max_borrow_hours under version 3: the version-3 reader refuses the extra key.
            "invalid/borrow-as-v3.lic",
            "license",
            seal("meterbox-license/3", borrowing.to_payload(), KEY_A.signer()),
            "FormatError",
        ),
        (
            # A version-3 envelope around a payload without require_tpm: the field is
            # required in version 3, and a license that does not need it is version 1.
            "invalid/v3-without-require-tpm.lic",
            "license",
            seal("meterbox-license/3", cryptolens_v2.to_payload(), KEY_A.signer()),
            "FormatError",
        ),
        (
            # require_tpm under version 2: the version-2 reader refuses the extra key.
            "invalid/require-tpm-as-v2.lic",
            "license",
            seal("meterbox-license/2", require_tpm.to_payload(), KEY_A.signer()),
            "FormatError",
        ),
        (
            # Version-2 fields under version 1: the version-1 reader refuses the extra keys.
            "invalid/v2-fields-as-v1.lic",
            "license",
            seal("meterbox-license/1", cryptolens_v2.to_payload(), KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/wrong-key.lic",
            "license",
            License(**{**_fields(basic), "vendor_key_id": KEY_STRANGER.key_id.hex()}).sign(
                KEY_STRANGER.signer()
            ),
            "VerificationError",
        ),
        ("invalid/key-id-swapped.lic", "license", canon(with_foreign_key_id), "VerificationError"),
        ("invalid/truncated.lic", "license", good[: len(good) // 2], "FormatError"),
        ("invalid/topup-as-license.lic", "license", files["valid/topup.top"], "FormatError"),
        ("invalid/reformatted.lic", "license", _json(env), "FormatError"),
        (
            "invalid/payload-key-mismatch.lic",
            "license",
            seal(
                "meterbox-license/1",
                {**basic.to_payload(), "vendor_key_id": KEY_B.key_id.hex()},
                KEY_A.signer(),
            ),
            "VerificationError",
        ),
        (
            "invalid/unknown-field.top",
            "topup",
            seal("meterbox-topup/1", {**topup.to_payload(), "bonus": 1}, KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/zero-units.top",
            "topup",
            seal("meterbox-topup/1", {**topup.to_payload(), "units": 0}, KEY_A.signer()),
            "FormatError",
        ),
        (
            # One encoding per receipt: version 2 without its field is refused.
            "invalid/v2-without-challenge.rcpt",
            "receipt",
            seal("meterbox-receipt/2", receipt.to_payload(), KEY_A.signer()),
            "FormatError",
        ),
        (
            # A version-1 reader knows no tpm_challenge: the field is refused, not dropped.
            "invalid/v1-with-challenge.rcpt",
            "receipt",
            seal("meterbox-receipt/1", receipt_v2.to_payload(), KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/bad-status.rcpt",
            "receipt",
            seal("meterbox-receipt/1", {**receipt.to_payload(), "status": "ok"}, KEY_A.signer()),
            "FormatError",
        ),
    ]
    for name, kind, data, error in invalid:
        files[name] = data
        manifest["invalid"].append(
            {"file": name, "bundle": "vendor.pub", "kind": kind, "error": error}
        )
    files["manifest.json"] = _json(manifest)
    return files


def _fields(lic: License) -> dict[str, object]:
    return {name: getattr(lic, name) for name in lic.__dataclass_fields__}


def write(out: Path) -> None:
    for name, data in build().items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    write(parser.parse_args().out)


if __name__ == "__main__":
    main()
