"""The checked-in vectors verify as the manifest says, and regenerate byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meterbox import errors
from meterbox.licenses import License, Receipt, Topup, VendorPublicBundle, open_document
from vectors import data_files
from vectors.licenses import generate

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "licenses"
MANIFEST = json.loads((VECTORS / "manifest.json").read_bytes())
KINDS: dict[str, type[License] | type[Topup] | type[Receipt]] = {
    "license": License,
    "topup": Topup,
    "receipt": Receipt,
}


def _bundle(name: str) -> VendorPublicBundle:
    return VendorPublicBundle.from_bytes((VECTORS / name).read_bytes())


@pytest.mark.parametrize("case", MANIFEST["valid"], ids=lambda c: c["file"])
def test_valid_vector_verifies_to_its_payload(case: dict[str, object]) -> None:
    data = (VECTORS / str(case["file"])).read_bytes()
    doc = KINDS[str(case["kind"])].from_bytes(data, _bundle(str(case["bundle"])))
    assert doc.to_payload() == case["payload"]
    assert open_document(data, _bundle(str(case["bundle"]))) == doc


@pytest.mark.parametrize("case", MANIFEST["invalid"], ids=lambda c: c["file"])
def test_invalid_vector_fails_with_its_error_class(case: dict[str, object]) -> None:
    data = (VECTORS / str(case["file"])).read_bytes()
    expected = getattr(errors, str(case["error"]))
    with pytest.raises(expected) as info:
        KINDS[str(case["kind"])].from_bytes(data, _bundle(str(case["bundle"])))
    assert type(info.value) is expected
    assert info.value.expected is not None
    assert info.value.found is not None


def test_vectors_regenerate_byte_for_byte() -> None:
    fresh = generate.build()
    checked_in = data_files(VECTORS)
    assert sorted(fresh) == sorted(checked_in)
    for rel, data in fresh.items():
        assert data == checked_in[rel], f"{rel} drifted; rerun python -m vectors.licenses.generate"
