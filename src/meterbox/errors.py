"""The error tree shared by every meterbox package.

::

    MeterboxError                  anything meterbox raises on purpose
    ├── FormatError                bytes that do not parse, or an unknown format version
    ├── VerificationError          a signature, tag or chain that does not verify
    ├── StateError                 on-disk state that is missing, locked or inconsistent
    ├── ConfigError                a flag, setting or file argument that is not usable
    └── LicenseDenied              a licensing decision: the request is refused
        ├── NoSeatAvailable
        ├── QuotaExceeded
        ├── ReportOverdue
        └── LicenseExpired

Every error a user can see says what was expected, what was found, and what to do
next. The ``code`` attribute is stable and machine-readable; HTTP and CLI shells
map it to status codes and exit codes.
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
    return (text[:1].upper() + text[1:] + ".") if text else ""


class FormatError(MeterboxError):
    """Input bytes do not follow the format they claim, or claim an unknown version."""

    code = "format"


class VerificationError(MeterboxError):
    """A signature, authentication tag or hash chain does not verify."""

    code = "verification"


class StateError(MeterboxError):
    """Persistent state is missing, locked by another process, or inconsistent."""

    code = "state"


class ConfigError(MeterboxError):
    """A command-line flag, setting or path is not usable."""

    code = "config"


class LicenseDenied(MeterboxError):
    """The license does not allow what was asked."""

    code = "denied"


class NoSeatAvailable(LicenseDenied):
    code = "no_seat"


class QuotaExceeded(LicenseDenied):
    code = "quota_exceeded"


class ReportOverdue(LicenseDenied):
    code = "report_overdue"


class LicenseExpired(LicenseDenied):
    code = "license_expired"


class UnknownFeature(LicenseDenied):
    code = "unknown_feature"


class UnknownVersionError(FormatError):
    """Input names a format version this release does not know: upgrade, do not guess."""

    code = "unknown_version"
