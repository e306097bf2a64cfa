"""The error tree shared by every meterbox package.

Each concept has exactly one class, defined here; a package error module adds a
subclass only where its concept is genuinely narrower (and says why there).

::

    MeterboxError                        anything meterbox raises on purpose
    ├── FormatError                      bytes that do not parse, or an unknown format version
    │   ├── ProtocolError                a server answered, but not as docs/api.md says
    │   └── compat.CryptolensRequestError  a Cryptolens form that is malformed or too large
    ├── VerificationError                a signature, tag or chain that does not verify
    ├── StateError                       on-disk state that is missing, locked or inconsistent
    │   ├── DiskFullError                no space left for durable state (HTTP 507)
    │   ├── client.SpoolError            the client's local usage spool is not usable
    │   └── server.TopupAlreadyAppliedError  the same top-up file imported a second time
    ├── ConfigError                      a flag, setting or file argument that is not usable
    ├── BadRequestError                  a request that is wrong as written (HTTP 400/413)
    ├── UnauthorizedError                a request without the right bearer token or API key
    │   └── ForbiddenError               a valid API key not allowed this feature or meter
    ├── IdempotencyConflictError         an idempotency key reused for a different request
    ├── UnavailableError                 the server cannot accept records right now (HTTP 503)
    ├── ServerUnreachableError           no server answered (connection error, timeout, 503)
    └── LicenseDenied                    a licensing decision: the request is refused
        ├── NoSeatAvailable
        ├── PolicyDenied                 the site's seat options refuse this requester (HTTP 403)
        ├── BorrowRefused                a borrow or return the license or the lease does not allow
        ├── QuotaExceeded
        │   └── compat.BoundExceeded     the change would cross the caller's Bound
        ├── ReportOverdue
        ├── LicenseExpired
        ├── LicenseSuspended             the vendor suspended the license (HTTP 403)
        ├── LicenseRevoked               the vendor revoked the license (HTTP 403)
        ├── UnknownFeature
        ├── UnknownMeter                 the meter is named by no installed license
        ├── LeaseNotFound                the lease expired, was released, or never existed
        │   ├── LeaseRemoved             the site administrator removed the lease (HTTP 410)
        │   └── client.LeaseLost         a lease the client held is gone on the server
        ├── compat.UnknownLicenseKey, compat.LicenseKeyBlocked, compat.MachineNotAllowed,
        └── compat.SignMethodRequired, compat.UnknownDataObject

Every error a user can see says what was expected, what was found, and what to do
next. The ``code`` attribute is stable and machine-readable; HTTP and CLI shells
map it to status codes (``meterbox.server._errors.HTTP_STATUS``) and exit codes
(``meterbox._cli_support.exit_code_for``).
"""

from __future__ import annotations


class MeterboxError(Exception):
    """Base of every error meterbox raises on purpose."""

    code = "error"

    def __init__(
        self,
        problem: str,
        *,
        expected: str | None = None,
        found: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.expected = expected
        self.found = found
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        parts = [self.problem.rstrip(".") + "."]
        if self.expected is not None:
            parts.append(f"Expected {self.expected.rstrip('.')}.")
        if self.found is not None:
            parts.append(f"Found {self.found.rstrip('.')}.")
        if self.hint is not None:
            parts.append(_sentence(self.hint))
        return " ".join(parts)

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.render()}
        if self.hint:
            out["hint"] = self.hint
        return out


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    if not text:
        return ""
    # A hint may be a question ("did you mean 'port'?"); it keeps its own mark.
    end = "" if text.endswith(("?", "!")) else "."
    return text[:1].upper() + text[1:] + end


class FormatError(MeterboxError):
    """Input bytes do not follow the format they claim, or claim an unknown version."""

    code = "format"


class ProtocolError(FormatError):
    """A server answered with a status or body that docs/api.md does not allow."""

    code = "protocol"


class VerificationError(MeterboxError):
    """A signature, authentication tag or hash chain does not verify."""

    code = "verification"


class StateError(MeterboxError):
    """Persistent state is missing, locked by another process, or inconsistent."""

    code = "state"


class DiskFullError(StateError):
    """The disk that holds durable state has no space left (or the quota is used up).

    Narrower than StateError because the cure is different: nothing is damaged or
    inconsistent, and the same request succeeds once space is freed. HTTP 507.
    """

    code = "insufficient_storage"


class ConfigError(MeterboxError):
    """A command-line flag, setting or path is not usable."""

    code = "config"


class BadRequestError(MeterboxError):
    """The request is malformed; sending it again unchanged will fail again."""

    code = "bad_request"


class UnauthorizedError(MeterboxError):
    """A request without a valid credential: the admin token, or a site API key."""

    code = "unauthorized"


class ForbiddenError(UnauthorizedError):
    """A valid site API key that is not allowed what it asked for (HTTP 403).

    Narrower than :class:`UnauthorizedError`: the caller is known, so presenting
    another credential of the same kind will not help; the admin must widen the key.
    """

    code = "forbidden"


class IdempotencyConflictError(MeterboxError):
    """An idempotency key was reused for a different request."""

    code = "idempotency_conflict"


class UnavailableError(MeterboxError):
    """The server's event sink (its ledger) cannot accept records right now."""

    code = "unavailable"


class ServerUnreachableError(MeterboxError):
    """No configured server answered (connection refused, timeout, or HTTP 503)."""

    code = "unreachable"


class LicenseDenied(MeterboxError):
    """The license does not allow what was asked."""

    code = "denied"


class UnknownMeter(LicenseDenied):
    """No installed license defines the meter."""

    code = "unknown_meter"


class LeaseNotFound(LicenseDenied):
    """The seat lease expired, was released, or never existed."""

    code = "lease_not_found"


class LeaseRemoved(LeaseNotFound):
    """The site administrator removed the lease; the message says who, when and why.

    Narrower than :class:`LeaseNotFound` because the holder should not simply check
    out again in a loop: someone decided the seat was needed elsewhere.
    """

    code = "lease_removed"


class NoSeatAvailable(LicenseDenied):
    code = "no_seat"
    #: The license the denial belongs to: the first, highest-priority license that
    #: offers the feature, because that is the seat the client would have been given.
    #: ``None`` only when no license was tried.
    license_id: str | None = None


class PolicyDenied(LicenseDenied):
    """The site's options file refuses the requester a seat (excluded, at its maximum,
    or the free seats are reserved for others). The site's decision, not the license's:
    counted apart from ``no_seat`` and not recorded as a denial for the vendor."""

    code = "policy_denied"


class BorrowRefused(LicenseDenied):
    """A seat cannot be borrowed (or returned) as asked: the license allows no borrowing
    or not that long, the client holds a borrow on another machine, or a return names
    another machine. Narrower than :class:`LicenseDenied` because retrying the same
    request will not help, unlike :class:`NoSeatAvailable`."""

    code = "borrow_refused"


class QuotaExceeded(LicenseDenied):
    code = "quota_exceeded"


class ReportOverdue(LicenseDenied):
    code = "report_overdue"


class LicenseExpired(LicenseDenied):
    code = "license_expired"


class LicenseSuspended(LicenseDenied):
    """The vendor suspended the license (a signed notice imported at the site): nothing
    new is granted until the vendor resumes it. Its own class because, unlike an expiry
    or an overdue report, the site cannot clear it: only the vendor can."""

    code = "license_suspended"


class LicenseRevoked(LicenseDenied):
    """The vendor revoked the license for good; only a new license file grants again."""

    code = "license_revoked"


class UnknownFeature(LicenseDenied):
    code = "unknown_feature"


class UnknownVersionError(FormatError):
    """Input names a format version this release does not know: upgrade, do not guess."""

    code = "unknown_version"
