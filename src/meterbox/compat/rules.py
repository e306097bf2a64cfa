"""The decisions every Cryptolens backend shares: node-locked slots and data-object changes.

Pure functions over values, so the production backend (over the server engine) and
the test double decide identically, and the rules are tested once.

Node-locked activation (what Cryptolens does, see docs/spec/cryptolens-compat.md):

- a machine code already activated re-activates without using a slot;
- a code the license lists in ``allowed_machines`` always activates and never uses
  a slot;
- any other code takes one of ``max_no_of_machines`` slots, ``0`` meaning unlimited;
  when every slot is taken the answer is Cryptolens' "limit has been reached".

Data-object changes:

- only a metered object changes; a plain value (the feature template) is read-only;
- ``IntValue`` stays inside Int32, the type the .NET SDK parses, so a reply can never
  break ``LicenseKey.FromResponse``;
- with a bound, an increment may not end above it and a decrement not below it;
- the change in the object's ``charge`` direction is usage of its meter; the opposite
  change gives units back, and never more than the object has charged so far (the
  ``charged`` the caller passes), so a data object can never free quota that other
  clients used or that was never charged.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

from meterbox.compat.backend import CryptolensLicenseView, DataObjectView
from meterbox.compat.errors import BoundExceeded, ReadOnlyDataObject
from meterbox.compat.wire import INT32_MAX, INT32_MIN
from meterbox.errors import NoSeatAvailable

__all__ = [
    "CLIENT_PREFIX",
    "DataObjectPlan",
    "charged_from_records",
    "check_nodelocked",
    "plan_change",
    "slots_used",
]


#: Client id of the usage records a data object writes: ``cryptolens/<object id>``.
CLIENT_PREFIX: Final = "cryptolens/"


def slots_used(view: CryptolensLicenseView, activated: Collection[str]) -> int:
    """Node-locked slots in use: activations of codes the license does not pre-list."""
    allowed = set(view.allowed_machines)
    return sum(1 for code in activated if code not in allowed)


def check_nodelocked(view: CryptolensLicenseView, activated: Collection[str], code: str) -> bool:
    """Whether ``code`` may activate node-locked; ``True`` when it takes a new slot.

    Returns ``False`` for a re-activation or a pre-listed code (nothing new is used).
    Raises :class:`~meterbox.errors.NoSeatAvailable` when every slot is taken.
    """
    if code in activated:
        return False
    if code in view.allowed_machines:
        return False
    limit = view.max_no_of_machines
    used = slots_used(view, activated)
    if limit == 0 or used < limit:
        return True
    raise NoSeatAvailable(
        "every node-locked activation of the license is used",
        expected=f"fewer than {limit} activated machines (besides the license's allowed ones)",
        found=f"{used} activated",
        hint="Deactivate a machine, or ask the vendor for a license with more machines",
    )


@dataclass(frozen=True)
class DataObjectPlan:
    """What a change does: the new value, and the signed units it charges to the meter.

    ``usage > 0`` is usage of the meter; ``usage < 0`` gives that many units back.
    """

    new_value: int
    usage: int


def plan_change(obj: DataObjectView, charged: int, delta: int, bound: int | None) -> DataObjectPlan:
    """Check one ``IntValue`` change of ``obj`` and say what it records; raise to refuse.

    ``charged`` is the net units this object has charged to its meter so far (from
    the ledger the backend keeps); ``delta`` is the signed change of ``IntValue``.
    """
    if not obj.metered:
        raise ReadOnlyDataObject(
            f"Data object {obj.id} ({obj.name!r}) cannot be changed",
            expected="a data object the license binds to a meter",
            found="a plain value (no meter)",
            hint="Nothing was changed; the vendor sets this value in the license",
        )
    new_value = obj.int_value + delta
    sign = "+" if delta >= 0 else "-"
    arithmetic = f"{obj.int_value} {sign} {abs(delta)} = {new_value}"
    if bound is not None and (
        (delta >= 0 and new_value > bound) or (delta < 0 and new_value < bound)
    ):
        raise BoundExceeded(
            f"Data object {obj.id} ({obj.name!r}) would cross its bound",
            expected=f"a value {'at most' if delta >= 0 else 'at least'} {bound}",
            found=arithmetic,
            hint="Nothing was changed; ask for a smaller change or a different Bound",
        )
    if not INT32_MIN <= new_value <= INT32_MAX:
        raise BoundExceeded(
            f"Data object {obj.id} ({obj.name!r}) would leave the Int32 range",
            expected=f"a value from {INT32_MIN} to {INT32_MAX} (the .NET SDK parses Int32)",
            found=arithmetic,
            hint="Nothing was changed; ask for a smaller change",
        )
    usage = delta if obj.charge == "increment" else -delta
    if usage < 0 and charged + usage < 0:
        direction = "a decrement" if obj.charge == "increment" else "an increment"
        raise BoundExceeded(
            f"Data object {obj.id} ({obj.name!r}) cannot give back more than it charged",
            expected=f"{direction} of at most {charged}: it gives back only usage "
            "recorded through this data object",
            found=arithmetic,
            hint="Nothing was changed; change by less",
        )
    return DataObjectPlan(new_value=new_value, usage=usage)


def charged_from_records(
    records: Iterable[tuple[str, dict[str, Any]]],
) -> dict[tuple[str, str, int], int]:
    """Units each data object charged, recomputed from ledger records alone.

    ``records`` are ``(kind, payload)`` pairs in ledger order (``usage`` and
    ``usage.decrement``); the result maps (license id, meter, data-object id) to the
    net units charged, with every give-back capped by what was charged before it, as
    the server enforces. This is what a verifier holding the ledger (the vendor, or
    a rebuild of ``cryptolens.db``) compares the server's claims with.
    """
    charged: dict[tuple[str, str, int], int] = {}
    for kind, payload in records:
        client, lid, meter, amount = (payload.get(k) for k in ("c", "l", "m", "a"))
        if not (
            isinstance(client, str)
            and client.startswith(CLIENT_PREFIX)
            and client[len(CLIENT_PREFIX) :].isdigit()
            and isinstance(lid, str)
            and isinstance(meter, str)
            and isinstance(amount, int)
            and not isinstance(amount, bool)
        ):
            continue
        slot = (lid, meter, int(client[len(CLIENT_PREFIX) :]))
        before = charged.get(slot, 0)
        if kind == "usage":
            charged[slot] = before + amount
        elif kind == "usage.decrement":
            charged[slot] = before - min(amount, before)
    return charged
