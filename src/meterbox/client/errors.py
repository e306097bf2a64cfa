"""Errors the client SDK raises, placed in the shared meterbox error tree.

::

    MeterboxError
    ├── FormatError
    │   └── ProtocolError          the server answered, but not as docs/api.md says
    ├── StateError
    │   └── SpoolError             the local spool file cannot be opened or written
    ├── ConfigError                no server URL, bad spool path, bad option
    ├── BadRequestError                 the request itself is wrong (local check or HTTP 400/413)
    ├── UnauthorizedError               HTTP 401 on an admin endpoint
    ├── IdempotencyConflictError        HTTP 409: key reused with a different request
    ├── ServerUnreachableError          no server answered (connection error, timeout, 503)
    └── LicenseDenied
        ├── NoSeatAvailable        HTTP 409 no_seat          (meterbox.errors)
        ├── QuotaExceeded          HTTP 402 quota_exceeded   (meterbox.errors)
        ├── ReportOverdue          HTTP 403 report_overdue   (meterbox.errors)
        ├── LicenseExpired         HTTP 403 license_expired  (meterbox.errors)
        ├── UnknownFeature         HTTP 404 unknown_feature  (meterbox.errors)
        ├── UnknownMeter           HTTP 404 unknown_meter
        └── LeaseLost              the lease is gone (HTTP 404 lease_not_found on renewal)

Two roots matter to callers: ``LicenseDenied`` (the server decided; retrying will not
help) and ``ServerUnreachableError`` (transport; usage is spooled, seats are not).
"""

from __future__ import annotations

from meterbox.errors import (
    ConfigError,
    FormatError,
    LicenseDenied,
    LicenseExpired,
    MeterboxError,
    NoSeatAvailable,
    QuotaExceeded,
    ReportOverdue,
    StateError,
    UnknownFeature,
)

__all__ = [
    "BadRequestError",
    "ConfigError",
    "IdempotencyConflictError",
    "LeaseLost",
    "LicenseDenied",
    "LicenseExpired",
    "MeterboxError",
    "NoSeatAvailable",
    "ProtocolError",
    "QuotaExceeded",
    "ReportOverdue",
    "ServerUnreachableError",
    "SpoolError",
    "UnauthorizedError",
    "UnknownFeature",
    "UnknownMeter",
]


class ProtocolError(FormatError):
    """The server answered with a status or body that docs/api.md does not allow."""

    code = "protocol"


class SpoolError(StateError):
    """The local usage spool cannot be opened, read or written."""

    code = "spool"


class BadRequestError(MeterboxError):
    """The request is malformed; sending it again unchanged will fail again."""

    code = "bad_request"


class UnauthorizedError(MeterboxError):
    """An admin endpoint was called without a valid admin token."""

    code = "unauthorized"


class IdempotencyConflictError(MeterboxError):
    """An idempotency key was reused for a different usage event."""

    code = "idempotency_conflict"


class ServerUnreachableError(MeterboxError):
    """No configured server answered (connection refused, timeout, or HTTP 503)."""

    code = "unreachable"


class UnknownMeter(LicenseDenied):
    """No installed license defines the meter."""

    code = "unknown_meter"


class LeaseLost(LicenseDenied):
    """A seat's lease expired or was released on the server while the client held it."""

    code = "lease_lost"
