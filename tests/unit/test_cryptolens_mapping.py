"""A meterbox License maps onto the Cryptolens view the SDKs see."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meterbox.compat import NEVER_EXPIRES, numeric_license_id
from meterbox.compat.mapping import initial_data_objects, view_from_license
from meterbox.errors import ConfigError
from meterbox.licenses import CryptolensSection, DataObject, Feature, License, Meter

ISSUED = datetime(2026, 1, 1, tzinfo=UTC)


def _license(**overrides) -> License:
    fields = {
        "license_id": "acme-cad-1",
        "customer": "ACME Labs",
        "product": "cad",
        "issued": ISSUED,
        "vendor_key_id": "00" * 8,
        "features": {"cad": Feature(seats=5, overdraft=2)},
        "meters": {"solver-runs": Meter(limit=1000)},
        "cryptolens": CryptolensSection(
            product_id=3349,
            key="ABCDE-FGHIJ-KLMNO-PQRST",
            feature="cad",
            flags=(True, False, False, False, False, False, False, True),
            notes="site A",
            allowed_machines=("m1",),
            data_objects=(
                DataObject(9, "runs", "solver-runs", "", 4),
                DataObject(2, "b", "solver-runs"),
            ),
        ),
    }
    fields.update(overrides)
    return License(**fields)


def test_floating_feature_gives_seats_and_overdraft_cap() -> None:
    view = view_from_license(_license(expires=datetime(2027, 1, 1, tzinfo=UTC)))
    assert (view.product_id, view.key) == (3349, "ABCDE-FGHIJ-KLMNO-PQRST")
    assert (view.max_no_of_machines, view.max_overdraft) == (5, 2)
    assert view.features[0]
    assert view.features[7]
    assert view.id == numeric_license_id("acme-cad-1")
    assert view.created == int(ISSUED.timestamp())
    assert view.period == 365
    assert view.customer is not None
    assert view.customer.name == "ACME Labs"
    assert view.allowed_machines == ("m1",)


def test_no_expiry_maps_to_the_largest_date_the_sdk_accepts() -> None:
    assert view_from_license(_license()).expires == NEVER_EXPIRES


def test_data_objects_keep_their_issued_values_in_id_order() -> None:
    assert [(o.id, o.int_value) for o in initial_data_objects(_license())] == [(2, 0), (9, 4)]


def test_license_without_cryptolens_section_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no cryptolens section"):
        view_from_license(_license(cryptolens=None))
