"""What the engine needs to know about a license, independent of the license file format.

The engine consumes :class:`LicensePolicy` values only, so it stays pure and does not
depend on how licenses are signed or parsed. :func:`policy_from_license` converts a
``meterbox.licenses.License`` (or anything with the same attribute names) into one.

Invariants (checked at construction): seat counts, overdraft and lease lengths are
non-negative (lease length positive), meter limits are non-negative or ``None``
(unlimited), periods are ``"total"`` or ``"month"``, over-limit behaviour is
``"refuse"`` or ``"allow"``, and every datetime is timezone-aware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from meterbox.errors import ConfigError

Period = Literal["total", "month"]
OverLimit = Literal["refuse", "allow"]

#: Longest lease a license may set for a feature: a day. Longer leases defeat the purpose
#: of leases.
MAX_LEASE_SECONDS = 86_400
#: Longest lease a caller may ask for explicitly on one checkout: 30 days, the range of
#: the Cryptolens ``FloatingTimeInterval`` (an offline floating seat borrowed for a
#: trip). Such a lease is still a lease: it ends early on release and is culled when it
#: runs out.
MAX_REQUESTED_LEASE_SECONDS = 30 * 86_400


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise ConfigError(
            f"License field {name!r} has no timezone",
            expected="a timezone-aware datetime (UTC)",
            found=value.isoformat(),
            hint="Reissue the license with UTC timestamps",
        )


@dataclass(frozen=True)
class FeaturePolicy:
    """Floating seats of one feature granted by one license."""

    seats: int
    overdraft: int = 0
    lease_seconds: int = 60

    def __post_init__(self) -> None:
        if self.seats < 0 or self.overdraft < 0:
            raise ConfigError(
                "Seat counts must not be negative",
                expected="seats >= 0 and overdraft >= 0",
                found=f"seats={self.seats}, overdraft={self.overdraft}",
            )
        if not 1 <= self.lease_seconds <= MAX_LEASE_SECONDS:
            raise ConfigError(
                "Lease length out of range",
                expected=f"1..{MAX_LEASE_SECONDS} seconds",
                found=str(self.lease_seconds),
            )


@dataclass(frozen=True)
class MeterPolicy:
    """A metered quantity granted by one license: prepaid limit per period."""

    limit: int | None = None
    period: Period = "total"
    over_limit: OverLimit = "refuse"

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ConfigError(
                "Meter limit must not be negative",
                expected="limit >= 0 or no limit",
                found=str(self.limit),
            )
        if self.period not in ("total", "month"):
            raise ConfigError(
                "Unknown meter period", expected="'total' or 'month'", found=repr(self.period)
            )
        if self.over_limit not in ("refuse", "allow"):
            raise ConfigError(
                "Unknown over-limit behaviour",
                expected="'refuse' or 'allow'",
                found=repr(self.over_limit),
            )


@dataclass(frozen=True)
class LicensePolicy:
    """Everything the engine enforces for one installed license."""

    license_id: str
    customer: str
    product: str
    issued: datetime
    expires: datetime | None = None
    features: Mapping[str, FeaturePolicy] = field(default_factory=dict)
    meters: Mapping[str, MeterPolicy] = field(default_factory=dict)
    report_every_days: int | None = None
    grace_days: int = 0
    #: Longest a seat of this license may be borrowed for use with no server; 0: never.
    max_borrow_hours: int = 0

    def __post_init__(self) -> None:
        _aware("issued", self.issued)
        if self.max_borrow_hours < 0:
            raise ConfigError(
                "Borrow limit must not be negative",
                expected="max_borrow_hours >= 0",
                found=str(self.max_borrow_hours),
            )
        _aware("expires", self.expires)
        if self.report_every_days is not None and self.report_every_days < 1:
            raise ConfigError(
                "Report interval must be at least one day",
                expected="report_every_days >= 1 or none",
                found=str(self.report_every_days),
            )
        if self.grace_days < 0:
            raise ConfigError(
                "Grace days must not be negative", expected=">= 0", found=str(self.grace_days)
            )
        # Freeze the mappings so a policy cannot change under the engine.
        object.__setattr__(self, "features", MappingProxyType(dict(self.features)))
        object.__setattr__(self, "meters", MappingProxyType(dict(self.meters)))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description, as served by ``GET /v1/licenses``."""
        return {
            "license_id": self.license_id,
            "customer": self.customer,
            "product": self.product,
            "issued": self.issued.isoformat(),
            "expires": self.expires.isoformat() if self.expires else None,
            "report_every_days": self.report_every_days,
            "grace_days": self.grace_days,
            "max_borrow_hours": self.max_borrow_hours,
            "features": {
                name: {"seats": f.seats, "overdraft": f.overdraft, "lease_seconds": f.lease_seconds}
                for name, f in sorted(self.features.items())
            },
            "meters": {
                name: {"limit": m.limit, "period": m.period, "over_limit": m.over_limit}
                for name, m in sorted(self.meters.items())
            },
        }


def policy_from_license(lic: Any) -> LicensePolicy:
    """Build a :class:`LicensePolicy` from a ``meterbox.licenses.License``.

    Written against attribute names only (``license_id``, ``customer``, ``product``,
    ``issued``, ``expires``, ``features[name].seats/overdraft/lease_seconds``,
    ``meters[name].limit/period/over_limit``, ``report_every_days``, ``grace_days``,
    ``max_borrow_hours``)
    so the server does not import the license parser.
    """
    return LicensePolicy(
        license_id=str(lic.license_id),
        customer=str(lic.customer),
        product=str(lic.product),
        issued=lic.issued,
        expires=lic.expires,
        features={
            str(name): FeaturePolicy(
                seats=int(f.seats), overdraft=int(f.overdraft), lease_seconds=int(f.lease_seconds)
            )
            for name, f in lic.features.items()
        },
        meters={
            str(name): MeterPolicy(limit=m.limit, period=m.period, over_limit=m.over_limit)
            for name, m in lic.meters.items()
        },
        report_every_days=lic.report_every_days,
        grace_days=int(lic.grace_days),
        max_borrow_hours=int(getattr(lic, "max_borrow_hours", 0)),
    )
