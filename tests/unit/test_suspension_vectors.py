"""The license notice vectors verify as the manifest says, the apply cases hold, and the
set regenerates byte for byte."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meterbox import errors
from meterbox.licenses import LicenseNotice, VendorPublicBundle, open_document
from meterbox.server._core.standing import Standing, apply
from meterbox.server._errors import LicenseAlreadyRevoked, NoticeOutOfOrder
from vectors import data_files
from vectors.suspension import generate

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "suspension"
MANIFEST = json.loads((VECTORS / "manifest.json").read_bytes())
APPLY = json.loads((VECTORS / "apply.json").read_bytes())
BUNDLE = VendorPublicBundle.from_bytes((VECTORS / "vendor.pub").read_bytes())
AT = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("case", MANIFEST["valid"], ids=lambda c: c["file"])
def test_valid_notice_verifies_to_its_payload(case: dict[str, Any]) -> None:
    data = (VECTORS / case["file"]).read_bytes()
    notice = LicenseNotice.from_bytes(data, BUNDLE)
    assert notice.to_payload() == case["payload"]
    assert open_document(data, BUNDLE) == notice


@pytest.mark.parametrize("case", MANIFEST["invalid"], ids=lambda c: c["file"])
def test_invalid_notice_fails_with_its_error_class(case: dict[str, Any]) -> None:
    data = (VECTORS / case["file"]).read_bytes()
    expected = getattr(errors, case["error"])
    with pytest.raises(expected) as info:
        LicenseNotice.from_bytes(data, BUNDLE)
    assert type(info.value) is expected
    assert info.value.expected is not None and info.value.found is not None


@pytest.mark.parametrize("case", APPLY["cases"], ids=lambda c: c["name"])
def test_apply_cases(case: dict[str, Any]) -> None:
    standing: Standing | None = None
    outcomes = {"out_of_order": NoticeOutOfOrder, "revoked": LicenseAlreadyRevoked}
    for sequence, action, outcome in case["imports"]:
        kwargs = {
            "license_id": APPLY["license_id"],
            "notice_id": f"ntc-{sequence}",
            "action": action,
            "sequence": sequence,
            "reason": None,
            "at": AT,
        }
        if outcome == "applied":
            standing = apply(standing, **kwargs)
            assert standing.sequence == sequence
        else:
            before = standing
            with pytest.raises(outcomes[outcome]):
                apply(standing, **kwargs)
            assert standing is before
    assert standing is not None and standing.status == case["final"]


def test_vectors_regenerate_byte_for_byte() -> None:
    fresh = generate.build()
    checked_in = data_files(VECTORS)
    assert sorted(fresh) == sorted(checked_in)
    for rel, data in fresh.items():
        assert data == checked_in[rel], f"{rel} drifted; run python -m vectors.suspension.generate"
