"""Map a meterbox :class:`~meterbox.licenses.License` onto the Cryptolens view.

The license's ``cryptolens`` section names the product id, key, flags, notes,
block and trial flags, allowed machines, the node-locked limit and data objects;
the floating feature it names supplies the floating seats and the overdraft cap
(its overdraft). ``MaxNoOfMachines`` is the section's ``max_machines`` when set,
else the floating feature's seats, else the number of allowed machines. The
backend adapter calls :func:`view_from_license` and :func:`initial_data_objects`
so that every deployment maps licenses identically.
"""

from __future__ import annotations

from meterbox.compat.backend import (
    NEVER_EXPIRES,
    CryptolensLicenseView,
    CustomerView,
    DataObjectView,
    numeric_license_id,
)
from meterbox.errors import ConfigError
from meterbox.licenses import License

__all__ = ["initial_data_objects", "max_machines", "view_from_license"]


def view_from_license(license: License) -> CryptolensLicenseView:  # noqa: A002 - domain name
    section = license.cryptolens
    if section is None:
        raise ConfigError(
            f"license {license.license_id} has no cryptolens section",
            expected="a license issued with Cryptolens compatibility",
            found="no cryptolens section",
            hint="reissue the license with a cryptolens product id and key",
        )
    feature = license.features.get(section.feature) if section.feature else None
    created = int(license.issued.timestamp())
    return CryptolensLicenseView(
        license_id=license.license_id,
        product_id=section.product_id,
        key=section.key,
        id=numeric_license_id(license.license_id),
        created=created,
        expires=NEVER_EXPIRES if license.expires is None else int(license.expires.timestamp()),
        features=section.flags,
        notes=section.notes,
        block=section.block,
        customer=CustomerView(
            id=0, name=license.customer, email="", company_name=license.customer, created=created
        ),
        max_no_of_machines=max_machines(license),
        max_overdraft=feature.overdraft if feature else 0,
        allowed_machines=section.allowed_machines,
        trial_activation=section.trial_activation,
        floating=feature is not None,
        allow_deactivation=section.allow_deactivation,
    )


def max_machines(license: License) -> int:  # noqa: A002 - domain name
    """``MaxNoOfMachines`` of a license with a cryptolens section (``0`` is unlimited)."""
    section = license.cryptolens
    if section is None:
        return 0
    if section.max_machines is not None:
        return section.max_machines
    feature = license.features.get(section.feature) if section.feature else None
    return feature.seats if feature else len(section.allowed_machines)


def initial_data_objects(license: License) -> list[DataObjectView]:  # noqa: A002 - domain name
    """The data objects as issued; the backend then tracks their values in meters."""
    if license.cryptolens is None:
        return []
    return [
        DataObjectView(
            o.id, o.name, o.string_value, o.int_value, charge=o.charge, metered=o.meter is not None
        )
        for o in sorted(license.cryptolens.data_objects, key=lambda o: o.id)
    ]
