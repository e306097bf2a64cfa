"""The checked-in Cryptolens vectors match a fresh run and verify with the real SDK."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from licensing.internal import HelperMethods
from licensing.models import LicenseKey, Response, RSAPublicKey

from meterbox.compat import LIMIT_REACHED_MESSAGE, SIGN_METHOD_FLOATING_MESSAGE
from vectors import data_files
from vectors.cryptolens import generate

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "cryptolens"
LICENSE_FIELDS = [
    "ProductId", "ID", "Key", "Created", "Expires", "Period",
    "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8",
    "Notes", "Block", "GlobalId", "Customer", "ActivatedMachines", "TrialActivation",
    "MaxNoOfMachines", "AllowedMachines", "DataObjects", "SignDate", "Reseller",
]  # fmt: skip


def _vector(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def test_checked_in_vectors_match_a_fresh_generation() -> None:
    generated = generate.generate(VECTORS)
    on_disk = data_files(VECTORS)
    del on_disk[generate.KEY_FILE]  # the generator's input, not its output
    assert sorted(on_disk) == sorted(generated)
    for name, data in generated.items():
        assert on_disk[name] == data, f"{name} drifted; rerun python -m vectors.cryptolens.generate"


def _signed_vectors() -> list[str]:
    return sorted(
        p.name for p in VECTORS.glob("*.json") if "licenseKey" in _vector(p.name)["reply"]
    )


@pytest.mark.parametrize("name", _signed_vectors())
def test_signed_vectors_verify_with_the_sdk_and_carry_every_field(name: str) -> None:
    vector = _vector(name)
    public = RSAPublicKey.from_string((VECTORS / "public-key.xml").read_text().strip())
    response = Response.from_string(json.dumps(vector["reply"]))
    assert HelperMethods.verify_signature(response, public)
    obj = json.loads(base64.b64decode(vector["reply"]["licenseKey"]))
    assert list(obj) == LICENSE_FIELDS
    assert obj == vector["license_key_json"]
    assert obj["SignDate"] == vector["now"]
    assert isinstance(obj["ActivatedMachines"], list)
    for machine in obj["ActivatedMachines"]:
        assert list(machine) == ["IP", "Mid", "Time", "FriendlyName", "FloatingExpires"]
    for data_object in obj["DataObjects"]:
        assert list(data_object) == ["Id", "Name", "StringValue", "IntValue"]
    assert LicenseKey.from_response(response).key == obj["Key"]
    if "metadata" in vector["reply"]:
        ok, data = HelperMethods.verify_signature_metadata(
            vector["reply"]["metadata"]["signature"], public
        )
        assert ok
        assert set(json.loads(data)) == {
            "ActivatedMachines",
            "LicenseStatus",
            "UsedFloatingMachines",
        }


def test_vector_replies_pin_the_protocol_quirks() -> None:
    assert _vector("activate-limit-reached.json")["reply"] == {
        "result": 1,
        "message": LIMIT_REACHED_MESSAGE,
    }
    assert _vector("activate-sign-method-0.json")["reply"] == {
        "result": 1,
        "message": SIGN_METHOD_FLOATING_MESSAGE,
    }
    mids = [
        m["Mid"]
        for m in _vector("activate-overdraft.json")["license_key_json"]["ActivatedMachines"]
    ]
    assert mids == ["floating:overdraft:m-3"]
    listed = _vector("list-data-objects.json")["reply"]["dataObjects"]
    assert listed[0] == {"id": 7, "name": "usage", "stringValue": "", "intValue": 8}
    getkey = _vector("getkey.json")["license_key_json"]
    assert {d["Id"]: d["IntValue"] for d in getkey["DataObjects"]} == {7: 8, 8: 0}
    assert len(getkey["ActivatedMachines"]) == 3
    assert _vector("activate-node-locked.json")["license_key_json"]["AllowedMachines"] == "a1b2c3"
