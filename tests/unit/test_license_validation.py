"""Documents cannot be built in an invalid state, and hostile envelopes are refused early."""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta

import pytest

from meterbox import crypto
from meterbox.errors import FormatError, VerificationError
from meterbox.licenses import (
    DOCUMENT_MAX_BYTES,
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

CLOCK = datetime(2025, 1, 1, tzinfo=UTC)
PAIR = VendorKeyPair.from_raw(b"\x05" * 32, b"\x06" * 32, CLOCK)
BUNDLE = VendorPublicBundle((PAIR.public,), PAIR.key_id)


def _license(**overrides: object) -> License:
    fields: dict[str, object] = {
        "license_id": "lic_0000000000000001",
        "customer": "ACME",
        "product": "Solver",
        "issued": CLOCK,
        "vendor_key_id": PAIR.key_id.hex(),
        "features": {"cad": Feature(2)},
        "meters": {"runs": Meter(10)},
    }
    fields.update(overrides)
    return License(**fields)  # type: ignore[arg-type]


def test_license_defaults_follow_keygen_relay_lease() -> None:
    assert _license().features["cad"].lease_seconds == 60
    assert _license().grace_days == 0


def test_license_granting_nothing_is_refused() -> None:
    with pytest.raises(FormatError, match="grants nothing"):
        _license(features={}, meters={})


def test_license_expiring_before_issue_is_refused() -> None:
    with pytest.raises(FormatError, match="expires before"):
        _license(expires=CLOCK - timedelta(seconds=1))


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(FormatError, match="timezone-aware"):
        _license(issued=datetime(2025, 1, 1))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Feature(-1), "out of range"),
        (lambda: Feature(1, lease_seconds=1), "out of range"),
        (lambda: Feature(True), "must be an integer"),
        (lambda: Meter(0), "out of range"),
        (lambda: Meter(5, period="week"), "unknown value"),
        (lambda: Meter(5, over_limit="maybe"), "unknown value"),
        (lambda: Topup("top_1", "lic_1", "runs", 0, CLOCK), "out of range"),
        (lambda: CryptolensSection(1, "abcde-FGHIJ-KLMNO-PQRST"), "cryptolens key"),
        (lambda: DataObject(0, "n", "runs"), "out of range"),
    ],
)
def test_invalid_parts_are_refused(make: object, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        make()  # type: ignore[operator]


def test_cryptolens_section_must_point_at_declared_feature_and_meter() -> None:
    with pytest.raises(FormatError, match="feature the license does not grant"):
        _license(cryptolens=CryptolensSection(1, "ABCDE-FGHIJ-KLMNO-PQRST", feature="other"))
    with pytest.raises(FormatError, match="unknown meter"):
        _license(
            cryptolens=CryptolensSection(
                1, "ABCDE-FGHIJ-KLMNO-PQRST", data_objects=(DataObject(1, "u", "nope"),)
            )
        )


def test_receipt_previous_head_after_head_is_refused() -> None:
    with pytest.raises(FormatError, match="out of range"):
        Receipt("r1", "00" * 16, (), 5, "00" * 32, 6, CLOCK, "00" * 32)


def test_license_mappings_are_read_only() -> None:
    lic = _license()
    with pytest.raises(TypeError):
        lic.features["x"] = Feature(1)  # type: ignore[index]


def test_oversized_document_is_refused_before_parsing() -> None:
    with pytest.raises(FormatError, match="too large") as info:
        License.from_bytes(b"{" * (DOCUMENT_MAX_BYTES + 1), BUNDLE)
    assert info.value.expected == f"at most {DOCUMENT_MAX_BYTES} bytes"


def test_duplicate_json_key_in_envelope_is_refused() -> None:
    doc = _license().sign(PAIR.signer())
    dup = doc.replace(b'{"format"', b'{"format":"x","format"', 1)
    with pytest.raises(FormatError, match="duplicate key"):
        License.from_bytes(dup, BUNDLE)


def test_non_canonical_base64_signature_is_refused() -> None:
    doc = json.loads(_license().sign(PAIR.signer()))
    text = doc["signature"]
    # 64 bytes are 86 base64 characters plus "=="; the last character's low 4 bits carry
    # no data, so flipping one gives different text for the same signature bytes.
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    alt = alphabet[alphabet.index(text[-3]) ^ 1]
    doc["signature"] = text[:-3] + alt + "=="
    assert crypto.b64d(doc["signature"]) == crypto.b64d(text)
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with pytest.raises(FormatError, match="canonical base64"):
        License.from_bytes(raw, BUNDLE)


def test_topup_signature_cannot_be_replayed_as_license() -> None:
    topup = Topup("top_1", "lic_1", "runs", 5, CLOCK)
    env = json.loads(topup.sign(PAIR.signer()))
    env["format"] = "meterbox-license/1"
    raw = json.dumps(env, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with pytest.raises(VerificationError, match="signature does not verify"):
        License.from_bytes(raw, BUNDLE)


def test_unknown_version_error_names_expected_and_found() -> None:
    doc = seal("meterbox-topup/9", Topup("t", "l", "m", 1, CLOCK).to_payload(), PAIR.signer())
    with pytest.raises(FormatError) as info:
        Topup.from_bytes(doc, BUNDLE)
    assert info.value.expected == "version 1"
    assert info.value.found == "version 9"


def test_microsecond_times_round_trip_exactly() -> None:
    lic = _license(issued=CLOCK + timedelta(microseconds=7))
    assert License.from_bytes(lic.sign(PAIR.signer()), BUNDLE).issued == lic.issued


def test_bundle_refuses_key_id_that_does_not_match_keys() -> None:
    raw = json.loads(BUNDLE.to_bytes())
    raw["keys"][0]["key_id"] = "00" * 8
    raw["current"] = "00" * 8
    with pytest.raises(FormatError, match="does not match"):
        VendorPublicBundle.from_bytes(json.dumps(raw).encode())


def test_bundle_refuses_current_not_in_list() -> None:
    raw = json.loads(BUNDLE.to_bytes())
    raw["current"] = "11" * 8
    with pytest.raises(FormatError, match="current key"):
        VendorPublicBundle.from_bytes(json.dumps(raw).encode())


def test_public_api_is_exactly_all() -> None:
    import meterbox.licenses as pkg

    public = {n for n in dir(pkg) if not n.startswith("_")} - {"annotations"}
    assert public == set(pkg.__all__)
