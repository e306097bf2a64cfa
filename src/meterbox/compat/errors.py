"""Errors of the Cryptolens-compatible API.

::

    MeterboxError
    ├── FormatError
    │   └── CryptolensRequestError     a request that is malformed, unknown or too large
    └── LicenseDenied
        ├── NoSeatAvailable            (meterbox.errors) every floating seat is taken
        ├── UnknownLicenseKey          no license with this ProductId and key
        ├── LicenseKeyBlocked          the license is blocked
        ├── MachineNotAllowed          node-locked: the machine code is not an allowed machine
        ├── SignMethodRequired         SignMethod=1 (StringSign) was not asked for
        ├── UnknownDataObject          no data object with this Id (or Name)
        ├── ReadOnlyDataObject         the data object is a plain value, not bound to a meter
        ├── NotFloating                floating activation of a license without floating seats
        ├── DeactivationNotAllowed     the license does not let node-locked machines go
        └── QuotaExceeded
            └── BoundExceeded          the change would cross the caller's Bound

Each error knows the single-line ``wire_message`` that goes into the
``message`` field of a ``{"result": 1}`` reply. For most errors that is the full
rendered text (problem, expected, found, hint); a few messages are matched
byte for byte by applications written against Cryptolens, and those errors
carry the exact historic wording instead.
"""

from __future__ import annotations

from typing import Final

from meterbox.errors import FormatError, LicenseDenied, NoSeatAvailable, QuotaExceeded

#: Exact text the Cryptolens SDKs and the applications built on them expect when
#: every seat is taken. Do not rephrase.
LIMIT_REACHED_MESSAGE: Final = "Cannot activate the new device as the limit has been reached."
#: Exact text for a floating activation without SignMethod=1. Do not rephrase.
SIGN_METHOD_FLOATING_MESSAGE: Final = (
    "License server error: SignMethod=1 is needed to use floating licensing offline."
)

__all__ = [
    "LIMIT_REACHED_MESSAGE",
    "SIGN_METHOD_FLOATING_MESSAGE",
    "BoundExceeded",
    "CryptolensRequestError",
    "LicenseKeyBlocked",
    "MachineNotAllowed",
    "DeactivationNotAllowed",
    "NoSeatAvailable",
    "NotFloating",
    "ReadOnlyDataObject",
    "SignMethodRequired",
    "UnknownDataObject",
    "UnknownLicenseKey",
    "wire_message",
]


class CryptolensRequestError(FormatError):
    """The request does not follow the Cryptolens Web API 3 form the SDKs send."""

    code = "bad_request"


class UnknownLicenseKey(LicenseDenied):
    code = "unknown_license"


class LicenseKeyBlocked(LicenseDenied):
    code = "license_blocked"


class MachineNotAllowed(LicenseDenied):
    """A node-locked activation from a machine the license does not list."""

    code = "machine_not_allowed"


class SignMethodRequired(LicenseDenied):
    code = "sign_method"


class UnknownDataObject(LicenseDenied):
    code = "unknown_data_object"


class ReadOnlyDataObject(LicenseDenied):
    code = "read_only_data_object"


class NotFloating(LicenseDenied):
    """``FloatingTimeInterval > 0`` on a license that grants no floating seats."""

    code = "not_floating"


class DeactivationNotAllowed(LicenseDenied):
    code = "deactivation_not_allowed"


class BoundExceeded(QuotaExceeded):
    code = "bound_exceeded"


def wire_message(error: Exception) -> str:
    """The text for the ``message`` field of an error reply, on one line."""
    if isinstance(error, (NoSeatAvailable, MachineNotAllowed)):
        return LIMIT_REACHED_MESSAGE
    return " ".join(str(error).split())
