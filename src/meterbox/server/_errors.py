"""Errors specific to the on-site license server.

::

    meterbox.errors.LicenseDenied
    ├── NoSeatAvailable, QuotaExceeded, ReportOverdue, LicenseExpired, UnknownFeature
    ├── UnknownMeter           the meter is named by no installed license
    └── LeaseNotFound          the lease expired, was released, or never existed
    meterbox.errors.MeterboxError
    ├── IdempotencyConflictError    an idempotency key was reused for a different request
    ├── TopupAlreadyAppliedError    the same top-up file was imported a second time
    ├── UnavailableError           the event sink (ledger) cannot accept records right now
    └── UnauthorizedError          an admin request without the right bearer token

Every class carries a stable ``code``; :data:`HTTP_STATUS` maps codes to the HTTP
status documented in ``docs/api.md``.
"""

from __future__ import annotations

from typing import Final

from meterbox.errors import LicenseDenied, MeterboxError, StateError


class UnknownMeter(LicenseDenied):
    code = "unknown_meter"


class LeaseNotFound(LicenseDenied):
    code = "lease_not_found"


class IdempotencyConflictError(MeterboxError):
    code = "idempotency_conflict"


class TopupAlreadyAppliedError(StateError):
    code = "topup_already_applied"


class UnavailableError(MeterboxError):
    code = "unavailable"


class UnauthorizedError(MeterboxError):
    code = "unauthorized"


#: HTTP status for each error code the server can answer with.
HTTP_STATUS: Final[dict[str, int]] = {
    "bad_request": 400,
    "unauthorized": 401,
    "quota_exceeded": 402,
    "report_overdue": 403,
    "license_expired": 403,
    "unknown_feature": 404,
    "unknown_meter": 404,
    "lease_not_found": 404,
    "not_found": 404,
    "no_seat": 409,
    "idempotency_conflict": 409,
    "topup_already_applied": 409,
    "too_large": 413,
    "unavailable": 503,
}


def http_status(code: str) -> int:
    """The HTTP status for an error code; anything unmapped is a bad request."""
    return HTTP_STATUS.get(code, 400)
