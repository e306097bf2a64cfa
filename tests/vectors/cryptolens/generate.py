"""Generate the Cryptolens-compatibility test vectors in tests/vectors/cryptolens/.

Fixed inputs: the RSA-2048 key in ``signing-key.xml`` (checked in; created
once with ``--new-key``), a fixed clock and fixed licenses. RSASSA-PKCS1-v1_5
is deterministic, so every run produces identical files; the test
``tests/unit/test_cryptolens_vectors.py`` builds them afresh and fails on any drift.

Usage, from ``tests/`` (``make vectors`` regenerates every vector set):
``python -m vectors.cryptolens.generate [--new-key]``; the files are written beside
this generator.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

from meterbox.clock import ManualClock
from meterbox.compat import (
    CryptolensLicenseView,
    CryptolensService,
    CryptolensSigner,
    CustomerView,
    DataObjectView,
)
from meterbox.compat.memory import InMemoryBackend

#: The checked-in vectors live beside this generator.
OUT = Path(__file__).resolve().parent
KEY_FILE = "signing-key.xml"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
VERSION = 1

LICENSES = [
    (
        CryptolensLicenseView(
            license_id="lic-vector-floating",
            product_id=3349,
            key="MBXV-FLOAT-0001",
            id=1001,
            created=NOW - 10 * 86_400,
            expires=NOW + 355 * 86_400,
            features=(True, False, False, True, False, False, False, False),
            notes="vector",
            customer=CustomerView(12, "Ada Lovelace", "ada@example.org", "Analytical Ltd", NOW),
            max_no_of_machines=2,
            max_overdraft=1,
            floating=True,
        ),
        [DataObjectView(7, "usage", "", 3), DataObjectView(8, "exports", "csv", 0)],
    ),
    (
        CryptolensLicenseView(
            license_id="lic-vector-node",
            product_id=3349,
            key="MBXV-NODE-0001",
            id=1002,
            created=NOW - 86_400,
            max_no_of_machines=1,
            allowed_machines=("a1b2c3",),
        ),
        [],
    ),
    (
        # Node-locked for the first 2 distinct machines, a credit countdown and a
        # feature template (the license format-2 fields).
        CryptolensLicenseView(
            license_id="lic-vector-credit",
            product_id=3349,
            key="MBXV-CREDIT-0001",
            id=1003,
            created=NOW - 86_400,
            max_no_of_machines=2,
            trial_activation=True,
            allow_deactivation=False,
        ),
        [
            DataObjectView(1, "credits", "", 100, charge="decrement"),
            DataObjectView(
                2, "cryptolens_features", '["f1",["f2",["voice","image"]]]', 0, metered=False
            ),
        ],
    ),
]
#: The Node SDK's machine code (SHA-256 hex) used by the node-locked vectors.
NODE_CODE = "5c1f4a7b9e2d8c3f6a0b1e4d7c2f5a8b3e6d9c0f1a4b7e2d5c8f3a6b9e0d1c4f"

#: (file name, path, form body) run in order against one backend.
CASES = [
    (
        "activate-floating.json",
        "/api/key/activate",
        "token=t&ProductId=3349&key=MBXV-FLOAT-0001&MachineCode=m-1&FieldsToReturn=0"
        "&metadata=False&FloatingTimeInterval=100&MaxOverdraft=0&FriendlyName=bob"
        "&ModelVersion=3&Sign=True&SignMethod=1",
    ),
    (
        "activate-floating-metadata.json",
        "/api//key/activate/",
        "token=t&v=1&ProductId=3349&Key=MBXV-FLOAT-0001&MachineCode=m-2&metadata=True"
        "&FloatingTimeInterval=100&MaxOverdraft=0&FriendlyName=None&Sign=True"
        "&SignMethod=StringSign&modelversion=3",
    ),
    (
        "activate-overdraft.json",
        "/api/key/activate",
        "ProductId=3349&key=MBXV-FLOAT-0001&MachineCode=m-3&FloatingTimeInterval=100"
        "&MaxOverdraft=4&Sign=True&SignMethod=1",
    ),
    (
        "activate-limit-reached.json",
        "/api/key/activate",
        "ProductId=3349&key=MBXV-FLOAT-0001&MachineCode=m-4&FloatingTimeInterval=100"
        "&MaxOverdraft=4&Sign=True&SignMethod=1",
    ),
    (
        "activate-sign-method-0.json",
        "/api/key/activate",
        "ProductId=3349&key=MBXV-FLOAT-0001&MachineCode=m-4&FloatingTimeInterval=100",
    ),
    (
        "increment.json",
        "/api//data/IncrementIntValueToKey/",
        "token=t&ProductId=3349&Key=MBXV-FLOAT-0001&Id=7&Name=&IntValue=5"
        "&EnableBound=False&Bound=0",
    ),
    (
        "increment-bound-exceeded.json",
        "/api//data/IncrementIntValueToKey/",
        "ProductId=3349&Key=MBXV-FLOAT-0001&Id=7&IntValue=5&EnableBound=True&Bound=10",
    ),
    (
        "list-data-objects.json",
        "/api//data/ListDataObjectsToKey/",
        "token=t&ProductId=3349&Key=MBXV-FLOAT-0001&Contains=",
    ),
    (
        "getkey.json",
        "/api/key/getkey",
        "token=t&ProductId=3349&key=MBXV-FLOAT-0001&FieldsToReturn=0&metadata=False"
        "&FloatingTimeInterval=0&Sign=True&ModelVersion=3&SignMethod=1",
    ),
    (
        "activate-node-locked.json",
        "/api/key/activate",
        "ProductId=3349&key=MBXV-NODE-0001&MachineCode=a1b2c3&Sign=True&SignMethod=1",
    ),
    ("unknown-method.json", "/api/key/createkey", "ProductId=3349"),
    # Node SDK shape (npm cryptolens 1.0.11 Key.Activate): a first machine takes a slot.
    (
        "activate-node-locked-first-code.json",
        "/api/key/Activate",
        f"token=t&ProductId=3349&Key=MBXV-CREDIT-0001&MachineCode={NODE_CODE}"
        "&FieldsToReturn=0&Metadata=false&FloatingTimeInterval=0&MaxOverdraft=0"
        "&Sign=true&SignMethod=1",
    ),
    # .NET shape with its default empty MachineCode: a code like any other.
    (
        "activate-node-locked-empty-code.json",
        "/api//key/activate/",
        "token=t&ProductId=3349&Key=MBXV-CREDIT-0001&MachineCode=&FriendlyName=&Sign=True"
        "&SignMethod=StringSign&FloatingTimeInterval=0&MaxOverdraft=0&Metadata=False"
        "&OSInfo=&ModelVersion=3&v=1",
    ),
    (
        "activate-node-locked-limit-reached.json",
        "/api/key/Activate",
        "token=t&ProductId=3349&Key=MBXV-CREDIT-0001&MachineCode=third&FieldsToReturn=0"
        "&Metadata=false&FloatingTimeInterval=0&MaxOverdraft=0&Sign=true&SignMethod=1",
    ),
    # The .NET models' default SignMethod=LinqSign is not served (see the compat spec).
    (
        "activate-linqsign-floating.json",
        "/api//key/activate/",
        "token=t&ProductId=3349&Key=MBXV-FLOAT-0001&MachineCode=m-9&FloatingTimeInterval=100"
        "&MaxOverdraft=0&Sign=True&SignMethod=LinqSign&Metadata=False&ModelVersion=3&v=1",
    ),
    (
        "activate-linqsign-node-locked.json",
        "/api//key/activate/",
        "token=t&ProductId=3349&Key=MBXV-CREDIT-0001&MachineCode=m-9&Sign=True"
        "&SignMethod=LinqSign&ModelVersion=3&v=1",
    ),
    (
        "activate-not-floating.json",
        "/api/key/activate",
        "ProductId=3349&Key=MBXV-CREDIT-0001&MachineCode=m-9&FloatingTimeInterval=100&SignMethod=1",
    ),
    (
        "decrement-credit.json",
        "/api//data/DecrementIntValueToKey/",
        "token=t&ProductId=3349&Key=MBXV-CREDIT-0001&Id=1&Name=&IntValue=10"
        "&EnableBound=True&Bound=0",
    ),
    (
        "decrement-credit-bound.json",
        "/api//data/DecrementIntValueToKey/",
        "token=t&ProductId=3349&Key=MBXV-CREDIT-0001&Id=1&IntValue=91&EnableBound=True&Bound=0",
    ),
    (
        "increment-read-only.json",
        "/api//data/IncrementIntValueToKey/",
        "token=t&ProductId=3349&Key=MBXV-CREDIT-0001&Name=cryptolens_features&IntValue=1",
    ),
    (
        "deactivate-not-allowed.json",
        "/api/key/Deactivate",
        f"token=t&ProductId=3349&Key=MBXV-CREDIT-0001&MachineCode={NODE_CODE}"
        "&Floating=false&OSInfo=null",
    ),
    (
        "getkey-credit.json",
        "/api/key/GetKey",
        "token=t&ProductId=3349&Key=MBXV-CREDIT-0001&FieldsToReturn=0&Metadata=true"
        "&Sign=true&SignMethod=1",
    ),
]


def generate(out: Path = OUT) -> dict[str, bytes]:
    """Every vector file name and its exact bytes."""
    signer = CryptolensSigner.from_xml((out / KEY_FILE).read_text())
    backend = InMemoryBackend(LICENSES, ManualClock(wall_ms=NOW * 1000))
    service = CryptolensService(backend, signer, ManualClock(wall_ms=NOW * 1000))
    files: dict[str, bytes] = {
        "public-key.xml": (signer.public_key_xml() + "\n").encode(),
    }
    for name, path, body in CASES:
        reply = asyncio.run(service.handle("POST", path, body.encode(), "", "192.0.2.10"))
        vector: dict[str, object] = {
            "version": VERSION,
            "now": NOW,
            "client_ip": "192.0.2.10",
            "path": path,
            "body": body,
            "reply": reply,
        }
        if "licenseKey" in reply:
            vector["license_key_json"] = json.loads(base64.b64decode(reply["licenseKey"]))
        files[name] = (json.dumps(vector, indent=2, ensure_ascii=False) + "\n").encode()
    return files


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    if "--new-key" in sys.argv:
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (OUT / KEY_FILE).write_text(CryptolensSigner(key).private_key_xml() + "\n")
    for name, data in generate().items():
        (OUT / name).write_bytes(data)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
