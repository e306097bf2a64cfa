"""The shared Cryptolens rules: node-locked slots and data-object changes."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.compat import (
    BoundExceeded,
    CryptolensLicenseView,
    DataObjectView,
    ReadOnlyDataObject,
)
from meterbox.compat.rules import charged_from_records, check_nodelocked, plan_change
from meterbox.errors import NoSeatAvailable

VIEW = CryptolensLicenseView(
    license_id="lic", product_id=1, key="K", id=1, created=0,
    max_no_of_machines=2, allowed_machines=("listed",),
)  # fmt: skip
INT32_MAX = 2**31 - 1


def test_first_n_distinct_codes_take_slots_and_listed_or_known_codes_take_none() -> None:
    assert check_nodelocked(VIEW, [], "a") is True
    assert check_nodelocked(VIEW, ["a"], "b") is True
    assert check_nodelocked(VIEW, ["a", "b"], "a") is False
    assert check_nodelocked(VIEW, ["a", "b"], "listed") is False
    assert check_nodelocked(VIEW, ["a", "b", "listed"], "listed") is False
    with pytest.raises(NoSeatAvailable):
        check_nodelocked(VIEW, ["a", "b", "listed"], "c")


def test_zero_machines_is_unlimited() -> None:
    unlimited = dataclasses.replace(VIEW, max_no_of_machines=0)
    codes = [f"m{n}" for n in range(1000)]
    assert check_nodelocked(unlimited, codes, "one-more") is True


def test_a_countdown_charges_on_decrement_and_gives_back_at_most_what_it_charged() -> None:
    credit = DataObjectView(1, "credits", "", 100, charge="decrement")
    plan = plan_change(credit, 0, -30, 0)
    assert (plan.new_value, plan.usage) == (70, 30)
    with pytest.raises(BoundExceeded, match="would cross its bound"):
        plan_change(credit, 0, -101, 0)
    with pytest.raises(BoundExceeded, match="an increment of at most 30"):
        plan_change(dataclasses.replace(credit, int_value=70), 30, 31, None)
    assert plan_change(dataclasses.replace(credit, int_value=70), 30, 30, None).usage == -30


def test_a_plain_value_cannot_change_and_values_stay_inside_int32() -> None:
    template = DataObjectView(3, "cryptolens_features", '["f1"]', 0, metered=False)
    with pytest.raises(ReadOnlyDataObject):
        plan_change(template, 0, 1, None)
    counter = DataObjectView(2, "usage", "", INT32_MAX - 1)
    with pytest.raises(BoundExceeded, match="Int32"):
        plan_change(counter, 0, 2, None)


_changes = st.lists(
    st.tuples(st.sampled_from(["increment", "decrement"]), st.integers(-50, 50)), max_size=40
)


@given(_changes)
def test_charged_never_goes_negative_and_the_ledger_alone_gives_the_same_number(
    changes: list[tuple[str, int]],
) -> None:
    objects = {
        "increment": DataObjectView(1, "usage", "", 0),
        "decrement": DataObjectView(2, "credits", "", 500, charge="decrement"),
    }
    charged = {1: 0, 2: 0}
    records: list[tuple[str, dict[str, object]]] = []
    for which, delta in changes:
        obj = objects[which]
        try:
            plan = plan_change(obj, charged[obj.id], delta, None)
        except BoundExceeded:
            continue
        objects[which] = dataclasses.replace(obj, int_value=plan.new_value)
        charged[obj.id] += plan.usage
        assert charged[obj.id] >= 0
        if plan.usage:
            kind = "usage" if plan.usage > 0 else "usage.decrement"
            payload = {"l": "lic", "m": "m", "a": abs(plan.usage), "c": f"cryptolens/{obj.id}"}
            records.append((kind, payload))
    replayed = charged_from_records(records)
    assert {i: replayed.get(("lic", "m", i), 0) for i in (1, 2)} == charged


def test_a_decrement_beyond_what_the_ledger_shows_charged_counts_only_what_was_charged() -> None:
    # A cache edited to claim 1000 charged units, then a decrement of 1000: judged from
    # the ledger, the object charged 10, so the give-back counts 10.
    records = [
        ("usage", {"l": "lic", "m": "m", "a": 10, "c": "cryptolens/7"}),
        ("usage.decrement", {"l": "lic", "m": "m", "a": 1000, "c": "cryptolens/7"}),
        ("usage", {"l": "lic", "m": "m", "a": 5, "c": "cryptolens/7"}),
        ("usage", {"l": "lic", "m": "m", "a": 99, "c": "other-client"}),
    ]
    assert charged_from_records(records) == {("lic", "m", 7): 5}
