"""Errors specific to the on-site license server, and their HTTP statuses.

The server raises the shared classes of :mod:`meterbox.errors` (``UnknownMeter``,
``LeaseNotFound``, ``IdempotencyConflictError``, ``UnavailableError``,
``UnauthorizedError``, the ``LicenseDenied`` family); they are re-exported here so
server modules import their errors from one place. Only one concept is the
server's own::

    meterbox.errors.StateError
    └── TopupAlreadyAppliedError    the same top-up file was imported a second time
    meterbox.errors.UnavailableError
    └── ClusterUnavailableError     a cluster node without etcd quorum grants nothing

Every class carries a stable ``code``; :data:`HTTP_STATUS` maps codes to the HTTP
status documented in ``docs/api.md``.
"""

from __future__ import annotations

from typing import Final

from meterbox.errors import (
    IdempotencyConflictError,
    LeaseNotFound,
    StateError,
    UnauthorizedError,
    UnavailableError,
    UnknownMeter,
)

__all__ = [
    "HTTP_STATUS",
    "ClusterUnavailableError",
    "IdempotencyConflictError",
    "LeaseNotFound",
    "TopupAlreadyAppliedError",
    "UnauthorizedError",
    "UnavailableError",
    "UnknownMeter",
    "http_status",
]


class TopupAlreadyAppliedError(StateError):
    """A top-up whose id the server has already applied; applying it twice would pay twice."""

    code = "topup_already_applied"


class ClusterUnavailableError(UnavailableError):
    """A cluster node that cannot reach etcd quorum: new seats and usage wait (503).

    Answered with ``Retry-After`` so that clients fail over to another node at once.
    """

    code = "cluster_unavailable"


#: HTTP status for each error code the server can answer with.
HTTP_STATUS: Final[dict[str, int]] = {
    "bad_request": 400,
    "unauthorized": 401,
    "quota_exceeded": 402,
    "forbidden": 403,
    "policy_denied": 403,
    "report_overdue": 403,
    "license_expired": 403,
    "unknown_feature": 404,
    "unknown_meter": 404,
    "lease_not_found": 404,
    "not_found": 404,
    "lease_removed": 410,
    "no_seat": 409,
    "idempotency_conflict": 409,
    "topup_already_applied": 409,
    "too_large": 413,
    "unavailable": 503,
    "cluster_unavailable": 503,
    "insufficient_storage": 507,
}


def http_status(code: str) -> int:
    """The HTTP status for an error code; anything unmapped is a bad request."""
    return HTTP_STATUS.get(code, 400)
