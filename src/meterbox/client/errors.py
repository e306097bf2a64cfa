"""Errors the client SDK raises, placed in the shared meterbox error tree.

Every class except ``SpoolError`` and ``LeaseLost`` is the shared
one from :mod:`meterbox.errors`, re-exported so SDK users import from one place.

::

    MeterboxError
    ├── FormatError
    │   └── ProtocolError          the server answered, not as docs/api.md says (meterbox.errors)
    ├── StateError
    │   └── SpoolError             the local spool file cannot be opened or written
    ├── ConfigError                no server URL, bad spool path, bad option
    ├── BadRequestError                 the request itself is wrong (local check or HTTP 400/413)
    ├── UnauthorizedError               HTTP 401: no valid site API key (or admin token)
    │   └── ForbiddenError              HTTP 403 forbidden: the key does not allow it
    ├── IdempotencyConflictError        HTTP 409: key reused with a different request
    ├── ServerUnreachableError          no server answered (connection error, timeout, 503)
    └── LicenseDenied
        ├── NoSeatAvailable        HTTP 409 no_seat          (meterbox.errors)
        ├── PolicyDenied           HTTP 403 policy_denied    (meterbox.errors)
        ├── BorrowRefused          HTTP 409 borrow_refused   (meterbox.errors)
        ├── QuotaExceeded          HTTP 402 quota_exceeded   (meterbox.errors)
        ├── ReportOverdue          HTTP 403 report_overdue   (meterbox.errors)
        ├── LicenseExpired         HTTP 403 license_expired  (meterbox.errors)
        ├── LicenseSuspended       HTTP 403 license_suspended (meterbox.errors)
        ├── LicenseRevoked         HTTP 403 license_revoked  (meterbox.errors)
        ├── UnknownFeature         HTTP 404 unknown_feature  (meterbox.errors)
        ├── UnknownMeter           HTTP 404 unknown_meter    (meterbox.errors)
        └── LeaseNotFound                                    (meterbox.errors)
            └── LeaseLost          the lease is gone (HTTP 404 lease_not_found on renewal)

Two roots matter to callers: ``LicenseDenied`` (the server decided; retrying will not
help) and ``ServerUnreachableError`` (transport; usage is spooled, seats are not).
"""

from __future__ import annotations

from meterbox.errors import (
    BadRequestError,
    BorrowRefused,
    ConfigError,
    ForbiddenError,
    IdempotencyConflictError,
    LeaseNotFound,
    LicenseDenied,
    LicenseExpired,
    LicenseRevoked,
    LicenseSuspended,
    MeterboxError,
    NoSeatAvailable,
    PolicyDenied,
    ProtocolError,
    QuotaExceeded,
    ReportOverdue,
    ServerUnreachableError,
    StateError,
    UnauthorizedError,
    UnknownFeature,
    UnknownMeter,
)

__all__ = [
    "BadRequestError",
    "BorrowRefused",
    "ConfigError",
    "ForbiddenError",
    "IdempotencyConflictError",
    "LeaseLost",
    "LeaseNotFound",
    "LicenseDenied",
    "LicenseExpired",
    "LicenseRevoked",
    "LicenseSuspended",
    "MeterboxError",
    "NoSeatAvailable",
    "PolicyDenied",
    "ProtocolError",
    "QuotaExceeded",
    "ReportOverdue",
    "ServerUnreachableError",
    "SpoolError",
    "UnauthorizedError",
    "UnknownFeature",
    "UnknownMeter",
]


class SpoolError(StateError):
    """The local usage spool cannot be opened, read or written."""

    code = "spool"


class LeaseLost(LeaseNotFound):
    """A seat's lease expired or was released on the server while the client held it.

    A subclass rather than :class:`LeaseNotFound` itself because the client raises
    it for a lease it *held*: the application has been running without a seat
    since the server dropped it, which callers handle differently from a release
    of an unknown id.
    """

    code = "lease_lost"
