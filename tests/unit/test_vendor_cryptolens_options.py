"""The ``--cryptolens-*`` options of ``vendor issue`` parsed into a license section."""

from __future__ import annotations

import pytest

from meterbox.errors import ConfigError
from meterbox.licenses import Feature, Meter
from meterbox.vendorkit._cryptolens_options import CryptolensOptions, build_section

FEATURES = {"cad": Feature(seats=3)}
METERS = {"runs": Meter(limit=100), "credits": Meter(limit=1000)}


def test_every_option_reaches_the_section() -> None:
    section = build_section(
        CryptolensOptions(
            product_id=3349,
            key="ABCDE-FGHIJ-KLMNO-PQRST",
            data_objects=["1:usage:runs", "2:label:-:7:gold"],
            credits=["3:credits:credits:100"],
            features_template='["f1",["f2",["voice"]]]',
            machines=["M-1"],
            flags=[1, 8],
            notes="line 3",
            block=True,
            trial=True,
            max_machines=0,
            no_deactivation=True,
        ),
        FEATURES,
        METERS,
    )
    assert section is not None
    assert section.feature == "cad"
    assert section.flags == (True, False, False, False, False, False, False, True)
    assert (section.notes, section.block, section.trial_activation) == ("line 3", True, True)
    assert (section.max_machines, section.allow_deactivation) == (0, False)
    objects = {o.id: (o.name, o.meter, o.int_value, o.string_value, o.charge)
               for o in section.data_objects}  # fmt: skip
    assert objects == {
        1: ("usage", "runs", 0, "", "increment"),
        2: ("label", None, 7, "gold", "increment"),
        3: ("credits", "credits", 100, "", "decrement"),
        4: ("cryptolens_features", None, 0, '["f1",["f2",["voice"]]]', "increment"),
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CryptolensOptions(flags=[2]), "without a product id"),
        (CryptolensOptions(product_id=1, flags=[9]), "--cryptolens-flag"),
        (CryptolensOptions(product_id=1, data_objects=["1:u:nometer"]), "--cryptolens-data-object"),
        (CryptolensOptions(product_id=1, data_objects=["1:u:runs:3000000000"]), "Int32"),
        (CryptolensOptions(product_id=1, credits=["1:c:runs"]), "--cryptolens-credit"),
        (CryptolensOptions(product_id=1, features_template="[1]"), "feature template"),
        (CryptolensOptions(product_id=1, max_machines=-1), "--cryptolens-max-machines"),
        (CryptolensOptions(product_id=2**31), "--cryptolens-product-id"),
    ],
)
def test_unusable_options_say_what_was_expected(options: CryptolensOptions, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_section(options, FEATURES, METERS)
    assert message in str(caught.value)
