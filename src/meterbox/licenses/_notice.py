"""The license notice (format ``meterbox-license-notice/1``): suspend, resume or revoke.

A notice is the vendor's signed word on the standing of one license at a site. It is
imported like a top-up and takes effect at import (docs/spec/suspension.md):

* ``suspend``: the license grants no new seat, renewal or usage until a later ``resume``;
* ``resume``: a suspension ends; the license grants again as its own terms say;
* ``revoke``: final; no later notice of the license is applied.

``sequence`` orders the notices of one license: a site applies a notice only when its
sequence is above the last one it applied for that license, so an old ``suspend``
replayed after a ``resume`` (or an old ``resume`` after a later ``suspend``) changes
nothing. Which notice wins is decided by :func:`meterbox.server._core.standing.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from meterbox.licenses._bundle import VendorPublicBundle
from meterbox.licenses._codec import (
    Fields,
    check_choice,
    check_int,
    check_name,
    check_text,
    check_utc,
    format_time,
)
from meterbox.licenses._envelope import DocumentSigner, seal, unseal

NOTICE_FORMAT: Final = "meterbox-license-notice/1"
Action = Literal["suspend", "resume", "revoke"]
ACTIONS: Final[tuple[Action, ...]] = ("suspend", "resume", "revoke")
#: Notices per license a vendor can ever issue; far beyond need, and fits a signed 32-bit int.
MAX_SEQUENCE: Final = 2**31 - 1


@dataclass(frozen=True)
class LicenseNotice:
    """``action`` on license ``license_id``, the ``sequence``-th notice of that license."""

    notice_id: str
    license_id: str
    action: Action
    sequence: int
    issued: datetime
    reason: str | None = None

    def __post_init__(self) -> None:
        check_name(self.notice_id, "notice_id")
        check_name(self.license_id, "license_id")
        check_choice(self.action, "action", ACTIONS)
        check_int(self.sequence, "notice sequence", minimum=1, maximum=MAX_SEQUENCE)
        object.__setattr__(self, "issued", check_utc(self.issued, "issued"))
        if self.reason is not None:
            check_text(self.reason, "reason")

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action,
            "issued": format_time(self.issued),
            "license_id": self.license_id,
            "notice_id": self.notice_id,
            "sequence": self.sequence,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_payload(cls, value: object) -> LicenseNotice:
        f = Fields(value, "license notice")
        action = f.choice("action", ACTIONS)
        out = cls(
            notice_id=f.name("notice_id"),
            license_id=f.name("license_id"),
            action=action,  # type: ignore[arg-type]  # checked by choice()
            sequence=f.integer("sequence", minimum=1, maximum=MAX_SEQUENCE),
            issued=f.time("issued"),
            reason=f.text("reason") if f.has("reason") else None,
        )
        f.done()
        return out

    def sign(self, signer: DocumentSigner) -> bytes:
        return seal(NOTICE_FORMAT, self.to_payload(), signer)

    @classmethod
    def from_bytes(cls, data: bytes, bundle: VendorPublicBundle) -> LicenseNotice:
        return cls.from_payload(unseal(data, NOTICE_FORMAT, bundle).payload)
