"""Build the signed ``licenseKey`` and ``metadata`` parts of a Cryptolens reply.

Pure: a license view, the machines to list, the data objects and a time in;
bytes out. The JSON is produced once, compactly, as UTF-8, and the signature
is made over exactly those bytes; the reply carries their base64, so no
re-serialisation can ever break the signature.

Every field the SDKs read is always present (the Python SDK raises KeyError
on a missing one), ``ActivatedMachines`` and ``DataObjects`` are always arrays
(the .NET SDK crashes on null), every date is whole Unix seconds, and every
number the .NET model types declare as ``int`` is inside Int32
(:func:`check_dotnet_ranges`): one value outside makes ``LicenseKey.FromResponse``
throw for every later reply of that license, so such a reply is refused instead.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meterbox.compat.backend import (
    NEVER_EXPIRES,
    ActivatedMachine,
    CryptolensLicenseView,
    DataObjectView,
)
from meterbox.compat.signer import CryptolensSigner
from meterbox.compat.wire import INT32_MAX, INT32_MIN
from meterbox.errors import ConfigError

__all__ = [
    "SignedLicense",
    "check_dotnet_ranges",
    "license_key_object",
    "license_status",
    "metadata_object",
    "sign_license",
]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _machine(m: ActivatedMachine) -> dict[str, Any]:
    return {
        "IP": m.ip,
        "Mid": m.mid,
        "Time": m.time,
        "FriendlyName": m.friendly_name,
        # Node-locked activations have no lease; 0 keeps the field an integer for .NET.
        "FloatingExpires": m.floating_expires if m.floating_expires is not None else 0,
    }


def license_key_object(
    view: CryptolensLicenseView,
    machines: Sequence[ActivatedMachine],
    data_objects: Sequence[DataObjectView],
    sign_date: int,
) -> dict[str, Any]:
    """The LicenseKey object, PascalCase, every field present, in Cryptolens' field order."""
    customer = view.customer
    out: dict[str, Any] = {
        "ProductId": view.product_id,
        "ID": view.id,
        "Key": view.key,
        "Created": view.created,
        "Expires": view.expires,
        "Period": view.period,
    }
    for index, flag in enumerate(view.features, start=1):
        out[f"F{index}"] = flag
    out.update(
        {
            "Notes": view.notes,
            "Block": view.block,
            "GlobalId": view.global_id,
            "Customer": None
            if customer is None
            else {
                "Id": customer.id,
                "Name": customer.name,
                "Email": customer.email,
                "CompanyName": customer.company_name,
                "Created": customer.created,
            },
            "ActivatedMachines": [_machine(m) for m in machines],
            "TrialActivation": view.trial_activation,
            "MaxNoOfMachines": view.max_no_of_machines,
            # A newline-separated string, as the .NET and Java SDKs declare it.
            "AllowedMachines": "\n".join(view.allowed_machines),
            "DataObjects": [
                {
                    "Id": o.id,
                    "Name": o.name,
                    "StringValue": o.string_value,
                    "IntValue": o.int_value,
                }
                for o in data_objects
            ],
            "SignDate": sign_date,
            "Reseller": None,
        }
    )
    return out


def license_status(view: CryptolensLicenseView, now: int) -> dict[str, Any]:
    """The metadata ``LicenseStatus``. ReasonForInvalidity: 0 valid, 1 expired, 2 blocked."""
    expired = now > view.expires
    reason = 2 if view.block else (1 if expired else 0)
    return {
        "IsValid": reason == 0,
        "ReasonForInvalidity": reason,
        "Trial": view.trial_activation,
        "TimeLimited": view.expires != NEVER_EXPIRES,
        "TimeLeft": max(0, (view.expires - now) // 86_400),
    }


def metadata_object(
    signer: CryptolensSigner,
    view: CryptolensLicenseView,
    activated_machines: int,
    used_floating_machines: int,
    now: int,
) -> dict[str, Any]:
    """The ``metadata`` reply field with its signed ``signature`` envelope.

    The Python SDK reads only ``metadata["signature"]``: base64 of JSON
    ``{"Data": b64(data), "Signature": b64(SHA-512 PKCS#1 v1.5 over data)}``,
    and returns ``json.loads(data)`` to the application once it verifies.
    """
    status = license_status(view, now)
    data = _dumps(
        {
            "ActivatedMachines": activated_machines,
            "LicenseStatus": status,
            "UsedFloatingMachines": used_floating_machines,
        }
    )
    envelope = _dumps({"Data": _b64(data), "Signature": _b64(signer.sign_metadata(data))})
    return {
        "activatedMachines": activated_machines,
        "licenseStatus": {k[0].lower() + k[1:]: v for k, v in status.items()},
        "usedFloatingMachines": used_floating_machines,
        "signature": _b64(envelope),
    }


#: LicenseKey fields the .NET SDK declares ``int`` (Int32); dates and GlobalId are longs.
_INT32_FIELDS = ("ProductId", "ID", "Period", "MaxNoOfMachines")


def check_dotnet_ranges(obj: dict[str, Any]) -> None:
    """Refuse a LicenseKey object the .NET SDK's model types cannot hold."""
    found: list[str] = [f"{k}={obj[k]}" for k in _INT32_FIELDS if not _int32(obj[k])]
    customer = obj["Customer"]
    if customer is not None and not _int32(customer["Id"]):
        found.append(f"Customer.Id={customer['Id']}")
    for o in obj["DataObjects"]:
        if not (_int32(o["Id"]) and _int32(o["IntValue"])):
            found.append(f"DataObjects[{o['Id']}].IntValue={o['IntValue']}")
    if found:
        raise ConfigError(
            "the license cannot be signed for the Cryptolens SDKs",
            expected=f"every Int32 field from {INT32_MIN} to {INT32_MAX}",
            found=", ".join(found)[:200],
            hint="The vendor must reissue the license with values inside Int32",
        )


def _int32(value: object) -> bool:
    return isinstance(value, int) and INT32_MIN <= value <= INT32_MAX


@dataclass(frozen=True)
class SignedLicense:
    license_key: str
    signature: str


def sign_license(
    signer: CryptolensSigner,
    view: CryptolensLicenseView,
    machines: Sequence[ActivatedMachine],
    data_objects: Sequence[DataObjectView],
    sign_date: int,
) -> SignedLicense:
    """Serialise once, sign those exact bytes, return both as base64."""
    obj = license_key_object(view, machines, data_objects, sign_date)
    check_dotnet_ranges(obj)
    data = _dumps(obj)
    return SignedLicense(license_key=_b64(data), signature=_b64(signer.sign_license(data)))
