"""The ``--cryptolens-*`` options of ``meterbox vendor issue``: parse them into a section.

Pure: option values in, a :class:`~meterbox.licenses.CryptolensSection` out, or a
:class:`~meterbox.errors.ConfigError` naming the option, what was expected and what
was found. The CLI command only passes its options through.

Grammar (docs/spec/cryptolens-compat.md, docs/spec/license.md):

- ``--cryptolens-data-object ID:NAME:METER[:INT[:STRING]]``: a data object counting up
  on ``METER`` (each increment is usage), starting at ``INT`` (default 0) with
  ``StringValue`` ``STRING``; ``METER`` ``-`` makes a plain value clients cannot change;
- ``--cryptolens-credit ID:NAME:METER:CREDIT``: a credit countdown: ``IntValue`` starts
  at ``CREDIT`` and each decrement uses that many units of ``METER``;
- ``--cryptolens-features-template JSON``: the ``cryptolens_features`` data object the
  SDKs' ``HasFeature`` reads (next free id);
- ``--cryptolens-flag N`` (1-8, repeatable), ``--cryptolens-notes``,
  ``--cryptolens-block``, ``--cryptolens-trial``, ``--cryptolens-max-machines N``
  (``0`` unlimited), ``--cryptolens-no-deactivation``.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from meterbox.errors import ConfigError, FormatError
from meterbox.licenses import (
    FEATURES_TEMPLATE_NAME,
    INT32_MAX,
    INT32_MIN,
    CryptolensSection,
    DataObject,
    Feature,
    License,
    Meter,
)

__all__ = ["CryptolensOptions", "build_section", "describe", "new_cryptolens_key"]

_OBJECT_RE: Final = re.compile(r"(\d{1,10}):([^:]+):([^:]+)(?::(-?\d{1,10})(?::(.*))?)?")
_CREDIT_RE: Final = re.compile(r"(\d{1,10}):([^:]+):([^:]+):(\d{1,10})")
_UNMETERED: Final = "-"


@dataclass(frozen=True)
class CryptolensOptions:
    """The ``--cryptolens-*`` option values as typer hands them over."""

    product_id: int | None = None
    key: str | None = None
    feature: str | None = None
    data_objects: Sequence[str] = ()
    credits: Sequence[str] = ()
    features_template: str | None = None
    machines: Sequence[str] = ()
    flags: Sequence[int] = ()
    notes: str | None = None
    block: bool = False
    trial: bool = False
    max_machines: int | None = None
    no_deactivation: bool = False

    def any_given(self) -> bool:
        return bool(
            self.key
            or self.feature
            or self.data_objects
            or self.credits
            or self.features_template is not None
            or self.machines
            or self.flags
            or self.notes
            or self.block
            or self.trial
            or self.max_machines is not None
            or self.no_deactivation
        )


def new_cryptolens_key() -> str:
    return "-".join(
        "".join(secrets.choice(string.ascii_uppercase) for _ in range(5)) for _ in range(4)
    )


def _bad(option: str, expected: str, found: str, hint: str) -> ConfigError:
    return ConfigError(
        f"{option} is not usable", expected=expected, found=repr(found)[:120], hint=hint
    )


def _object(value: str, meters: Mapping[str, Meter]) -> DataObject:
    m = _OBJECT_RE.fullmatch(value)
    if m is None:
        raise _bad(
            "--cryptolens-data-object",
            "ID:NAME:METER[:INT[:STRING]] with a positive integer ID (METER '-' for a plain value)",
            value,
            "For example --cryptolens-data-object 1:usagecount:solver-runs",
        )
    meter = None if m[3] == _UNMETERED else m[3]
    _check_meter("--cryptolens-data-object", meter, meters, value)
    int_value = int(m[4]) if m[4] is not None else 0
    _check_int32("--cryptolens-data-object", int_value, value)
    return _build("--cryptolens-data-object", value, int(m[1]), m[2], meter, m[5] or "", int_value)


def _credit(value: str, meters: Mapping[str, Meter]) -> DataObject:
    m = _CREDIT_RE.fullmatch(value)
    if m is None:
        raise _bad(
            "--cryptolens-credit",
            "ID:NAME:METER:CREDIT with positive integers",
            value,
            "For example --cryptolens-credit 1:credits:solver-runs:100",
        )
    _check_meter("--cryptolens-credit", m[3], meters, value)
    credit = int(m[4])
    _check_int32("--cryptolens-credit", credit, value)
    return _build("--cryptolens-credit", value, int(m[1]), m[2], m[3], "", credit, "decrement")


def _check_meter(option: str, meter: str | None, meters: Mapping[str, Meter], value: str) -> None:
    if meter is not None and meter not in meters:
        raise _bad(
            option,
            "a meter declared with --meter: " + (", ".join(meters) or "(none)"),
            value,
            "Declare the meter first",
        )


def _check_int32(option: str, number: int, value: str) -> None:
    if not INT32_MIN <= number <= INT32_MAX:
        raise _bad(
            option,
            f"a value from {INT32_MIN} to {INT32_MAX} (the .NET SDK parses Int32)",
            value,
            "Pick a smaller value",
        )


def _build(
    option: str,
    value: str,
    object_id: int,
    name: str,
    meter: str | None,
    string_value: str,
    int_value: int,
    charge: str = "increment",
) -> DataObject:
    try:
        return DataObject(object_id, name, meter, string_value, int_value, charge)
    except FormatError as exc:
        raise ConfigError(
            f"{option} {value!r}: {exc.problem}", expected=exc.expected, found=exc.found
        ) from None


def _flags(numbers: Sequence[int]) -> tuple[bool, bool, bool, bool, bool, bool, bool, bool]:
    for n in numbers:
        if not 1 <= n <= 8:
            raise _bad("--cryptolens-flag", "a feature flag number from 1 to 8", str(n), "F1..F8")
    b = [i in numbers for i in range(1, 9)]
    return (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7])


def build_section(
    options: CryptolensOptions, features: Mapping[str, Feature], meters: Mapping[str, Meter]
) -> CryptolensSection | None:
    """The license's Cryptolens section, or ``None`` without ``--cryptolens-product-id``."""
    if options.product_id is None:
        if options.any_given():
            raise ConfigError(
                "Cryptolens options given without a product id",
                expected="--cryptolens-product-id N with the other --cryptolens-* flags",
                found="no --cryptolens-product-id",
                hint="Add --cryptolens-product-id, or drop the --cryptolens-* flags",
            )
        return None
    if not 1 <= options.product_id <= INT32_MAX:
        raise _bad(
            "--cryptolens-product-id",
            f"an integer from 1 to {INT32_MAX}",
            str(options.product_id),
            "Use the product id from Cryptolens",
        )
    feature = options.feature
    if feature is None and len(features) == 1:
        feature = next(iter(features))
    if feature is not None and feature not in features:
        raise _bad(
            "--cryptolens-feature",
            "a feature given with --seats: " + (", ".join(features) or "(none)"),
            feature,
            "Name the floating feature that Cryptolens floating activations use",
        )
    objects = [_object(v, meters) for v in options.data_objects]
    objects += [_credit(v, meters) for v in options.credits]
    if options.features_template is not None:
        free = max((o.id for o in objects), default=0) + 1
        objects.append(
            _build(
                "--cryptolens-features-template",
                options.features_template,
                free,
                FEATURES_TEMPLATE_NAME,
                None,
                options.features_template,
                0,
            )
        )
    if options.max_machines is not None and options.max_machines < 0:
        raise _bad(
            "--cryptolens-max-machines",
            "a number of machines >= 0 (0 is unlimited)",
            str(options.max_machines),
            "For example --cryptolens-max-machines 5",
        )
    try:
        return CryptolensSection(
            product_id=options.product_id,
            key=options.key or new_cryptolens_key(),
            feature=feature,
            flags=_flags(options.flags),
            notes=options.notes or "",
            allowed_machines=tuple(options.machines),
            data_objects=tuple(objects),
            max_machines=options.max_machines,
            block=options.block,
            trial_activation=options.trial,
            allow_deactivation=not options.no_deactivation,
        )
    except FormatError as exc:
        raise ConfigError(
            f"Cryptolens options: {exc.problem}", expected=exc.expected, found=exc.found
        ) from None


def describe(lic: License) -> str:
    """One line naming what Cryptolens SDKs need: product id and key (``-`` without)."""
    section = lic.cryptolens
    if section is None:
        return "-"
    return f"{section.product_id} {section.key}"
