"""A license's standing under the vendor's notices: active, suspended or revoked. Pure.

The vendor's notices (docs/spec/suspension.md) are ordered per license by their
``sequence``. :func:`apply` is the whole rule, used by the engine at import and by the
ledger fold when it rebuilds the state, so both reach the same standing:

* a notice whose sequence is not above the last applied one for its license is
  refused (:class:`NoticeOutOfOrder`): an old ``suspend`` replayed after a ``resume``
  never suspends again, and importing the same file twice changes nothing;
* after ``revoke`` every notice is refused (:class:`LicenseAlreadyRevoked`);
* ``suspend`` of a suspended license and ``resume`` of an active one are applied (the
  sequence moves on, the reason is the new one): the vendor's latest word stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from meterbox.server._errors import LicenseAlreadyRevoked, NoticeOutOfOrder

Status = Literal["active", "suspended", "revoked"]
STATUSES: Final[tuple[Status, ...]] = ("active", "suspended", "revoked")
_RESULT: Final[dict[str, Status]] = {
    "suspend": "suspended",
    "resume": "active",
    "revoke": "revoked",
}


@dataclass(frozen=True)
class Standing:
    """The standing of one license after the notice ``notice_id`` (number ``sequence``)."""

    license_id: str
    sequence: int
    status: Status
    notice_id: str
    reason: str | None
    at: datetime

    @property
    def grants(self) -> bool:
        return self.status == "active"

    def explain(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return (
            f"{self.status} by the vendor (notice {self.notice_id}) at {self.at.isoformat()}{why}"
        )


def apply(
    current: Standing | None,
    *,
    license_id: str,
    notice_id: str,
    action: str,
    sequence: int,
    reason: str | None,
    at: datetime,
) -> Standing:
    """The standing after a notice, or an error saying why the notice changes nothing."""
    if action not in _RESULT:
        raise ValueError(f"unknown notice action {action!r}")
    if current is not None:
        if current.status == "revoked":
            raise LicenseAlreadyRevoked(
                f"License {license_id!r} was revoked; no later notice applies",
                expected="no notice after a revocation",
                found=f"notice {notice_id} ({action}, sequence {sequence}) after revocation "
                f"by notice {current.notice_id}",
                hint="A revoked license needs a new license file from the vendor",
            )
        if sequence <= current.sequence:
            raise NoticeOutOfOrder(
                f"Notice {notice_id} is not newer than the last notice applied to "
                f"license {license_id!r}",
                expected=f"a notice with a sequence above {current.sequence} "
                f"(notice {current.notice_id})",
                found=f"sequence {sequence} ({action})",
                hint="Import only the vendor's latest notice; an old one changes nothing",
            )
    return Standing(license_id, sequence, _RESULT[action], notice_id, reason, at)


__all__ = [
    "STATUSES",
    "LicenseAlreadyRevoked",
    "NoticeOutOfOrder",
    "Standing",
    "Status",
    "apply",
]
