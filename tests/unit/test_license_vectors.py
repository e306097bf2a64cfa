"""The checked-in vectors verify as the manifest says, and regenerate byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meterbox import errors
from meterbox.licenses import License, Receipt, Topup, VendorPublicBundle, open_document

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "licenses"
ROOT = VECTORS.parent.parent.parent
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


def test_vectors_regenerate_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_vectors_licenses.py"), "--out", str(tmp_path)],
        check=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    checked_in = sorted(p.relative_to(VECTORS) for p in VECTORS.rglob("*") if p.is_file())
    assert fresh == checked_in
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (VECTORS / rel).read_bytes(), rel
