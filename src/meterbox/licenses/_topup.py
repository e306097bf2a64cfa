"""The top-up document (format ``meterbox-topup/1``): extra units for one meter.

A top-up adds ``units`` to the limit of ``meter`` in license ``license_id``. Its id is
unique, so a server that imports the same top-up twice counts it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from meterbox.licenses._bundle import VendorPublicBundle
from meterbox.licenses._codec import Fields, check_int, check_name, check_utc, format_time
from meterbox.licenses._envelope import DocumentSigner, seal, unseal
from meterbox.licenses._license import MAX_UNITS

TOPUP_FORMAT: Final = "meterbox-topup/1"


@dataclass(frozen=True)
class Topup:
    """``units`` more of ``meter`` for ``license_id``, granted at ``issued``."""

    topup_id: str
    license_id: str
    meter: str
    units: int
    issued: datetime

    def __post_init__(self) -> None:
        check_name(self.topup_id, "topup_id")
        check_name(self.license_id, "license_id")
        check_name(self.meter, "meter")
        check_int(self.units, "top-up units", minimum=1, maximum=MAX_UNITS)
        object.__setattr__(self, "issued", check_utc(self.issued, "issued"))

    def to_payload(self) -> dict[str, Any]:
        return {
            "topup_id": self.topup_id,
            "license_id": self.license_id,
            "meter": self.meter,
            "units": self.units,
            "issued": format_time(self.issued),
        }

    @classmethod
    def from_payload(cls, value: object) -> Topup:
        f = Fields(value, "top-up")
        out = cls(
            topup_id=f.name("topup_id"),
            license_id=f.name("license_id"),
            meter=f.name("meter"),
            units=f.integer("units", minimum=1, maximum=MAX_UNITS),
            issued=f.time("issued"),
        )
        f.done()
        return out

    def sign(self, signer: DocumentSigner) -> bytes:
        return seal(TOPUP_FORMAT, self.to_payload(), signer)

    @classmethod
    def from_bytes(cls, data: bytes, bundle: VendorPublicBundle) -> Topup:
        return cls.from_payload(unseal(data, TOPUP_FORMAT, bundle).payload)
