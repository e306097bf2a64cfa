"""License format 2: the Cryptolens fields, and which version a license is written in."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from meterbox import crypto
from meterbox.errors import FormatError
from meterbox.licenses import (
    CryptolensSection,
    DataObject,
    License,
    Meter,
    VendorPublicBundle,
    open_document,
)
from meterbox.licenses._envelope import seal
from meterbox.vendorkit.keys import VendorKeyPair

CLOCK = datetime(2025, 1, 1, tzinfo=UTC)
PAIR = VendorKeyPair.from_raw(b"\x03" * 32, b"\x04" * 32, CLOCK)
BUNDLE = VendorPublicBundle((PAIR.public,), PAIR.key_id)
KEY = "ABCDE-FGHIJ-KLMNO-PQRST"


def _license(section: CryptolensSection) -> License:
    return License(
        license_id="lic-v2",
        customer="ACME",
        product="P",
        issued=CLOCK,
        vendor_key_id=PAIR.key_id.hex(),
        meters={"runs": Meter(limit=10)},
        cryptolens=section,
    )


def _format(document: bytes) -> str:
    value: str = json.loads(document)["format"]
    return value


def test_a_license_without_version_2_fields_is_still_written_as_version_1() -> None:
    plain = _license(CryptolensSection(1, KEY, data_objects=(DataObject(1, "u", "runs"),)))
    assert plain.format_version == 1
    document = plain.sign(PAIR.signer())
    assert _format(document) == "meterbox-license/1"
    assert "max_machines" not in crypto.b64d(json.loads(document)["payload"]).decode()
    assert open_document(document, BUNDLE) == plain


@pytest.mark.parametrize(
    "section",
    [
        CryptolensSection(1, KEY, max_machines=0),
        CryptolensSection(1, KEY, block=True),
        CryptolensSection(1, KEY, trial_activation=True),
        CryptolensSection(1, KEY, allow_deactivation=False),
        CryptolensSection(1, KEY, data_objects=(DataObject(1, "c", "runs", "", 5, "decrement"),)),
        CryptolensSection(1, KEY, data_objects=(DataObject(1, "cryptolens_features", None, "[]"),)),
    ],
    ids=["max-machines", "block", "trial", "no-deactivation", "countdown", "unmetered"],
)
def test_each_version_2_field_makes_a_version_2_document_that_round_trips(
    section: CryptolensSection,
) -> None:
    lic = _license(section)
    document = lic.sign(PAIR.signer())
    assert _format(document) == "meterbox-license/2"
    assert open_document(document, BUNDLE) == lic
    assert License.from_payload(lic.to_payload()) == lic


def test_a_version_2_document_that_version_1_could_express_is_refused() -> None:
    plain = _license(CryptolensSection(1, KEY))
    payload = plain.to_payload()
    payload["cryptolens"].update(
        max_machines=None, block=False, trial_activation=False, allow_deactivation=True
    )
    document = seal("meterbox-license/2", payload, PAIR.signer())
    with pytest.raises(FormatError, match="higher format version than it needs"):
        open_document(document, BUNDLE)


@pytest.mark.parametrize(
    "template",
    ["", "not json", "{}", '["f1", 2]', '["a.b"]', '[["f2"]]', '[["f2", "voice"]]'],
)
def test_a_feature_template_the_sdks_cannot_read_is_refused(template: str) -> None:
    with pytest.raises(FormatError, match="feature template"):
        DataObject(1, "cryptolens_features", None, template)


def test_data_object_values_stay_inside_int32_and_countdowns_need_a_meter() -> None:
    with pytest.raises(FormatError, match="out of range"):
        DataObject(1, "u", "runs", "", 2**31)
    with pytest.raises(FormatError, match="without a meter"):
        DataObject(1, "c", None, "", 5, "decrement")
    assert DataObject(1, "u", "runs", "", -(2**31)).int_value == -(2**31)
