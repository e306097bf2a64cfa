"""The license document (format ``meterbox-license/1``): what a site may use.

A :class:`License` is immutable and valid by construction: every constructor argument
is checked in ``__post_init__``, and ``from_payload`` only ever builds one through the
constructor. Cross-field rules: at least one feature or meter; ``expires`` after
``issued``; the Cryptolens section may only point at features and meters the license
declares. See docs/spec/license.md for the field table and the Cryptolens mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from meterbox import crypto
from meterbox.errors import FormatError, VerificationError
from meterbox.licenses._bundle import VendorPublicBundle
from meterbox.licenses._codec import (
    Fields,
    check_choice,
    check_hex,
    check_int,
    check_name,
    check_text,
    check_utc,
    format_time,
    freeze_mapping,
)
from meterbox.licenses._envelope import DocumentSigner, seal, unseal

LICENSE_FORMAT: Final = "meterbox-license/1"
#: Keygen Relay's lease; short enough that a killed client frees its seat within a minute.
DEFAULT_LEASE_SECONDS: Final = 60
MIN_LEASE_SECONDS: Final = 5
MAX_LEASE_SECONDS: Final = 86_400
MAX_SEATS: Final = 1_000_000
MAX_UNITS: Final = 2**62
MAX_DAYS: Final = 3660
PERIODS: Final = ("total", "month")
OVER_LIMIT: Final = ("refuse", "allow")
CRYPTOLENS_KEY_RE: Final = re.compile(r"[A-Z]{5}(-[A-Z]{5}){3}")


@dataclass(frozen=True)
class Feature:
    """A floating feature: ``seats`` concurrent leases plus ``overdraft`` flagged extras."""

    seats: int
    overdraft: int = 0
    lease_seconds: int = DEFAULT_LEASE_SECONDS

    def __post_init__(self) -> None:
        check_int(self.seats, "feature seats", maximum=MAX_SEATS)
        check_int(self.overdraft, "feature overdraft", maximum=MAX_SEATS)
        check_int(
            self.lease_seconds,
            "feature lease_seconds",
            minimum=MIN_LEASE_SECONDS,
            maximum=MAX_LEASE_SECONDS,
        )

    def to_json(self) -> dict[str, int]:
        return {
            "seats": self.seats,
            "overdraft": self.overdraft,
            "lease_seconds": self.lease_seconds,
        }

    @classmethod
    def from_json(cls, value: object) -> Feature:
        f = Fields(value, "feature")
        out = cls(f.integer("seats"), f.integer("overdraft"), f.integer("lease_seconds"))
        f.done()
        return out


@dataclass(frozen=True)
class Meter:
    """A metered quantity: ``limit`` units per ``period`` (``None`` is unlimited)."""

    limit: int | None
    period: str = "total"
    over_limit: str = "refuse"

    def __post_init__(self) -> None:
        if self.limit is not None:
            check_int(self.limit, "meter limit", minimum=1, maximum=MAX_UNITS)
        check_choice(self.period, "meter period", PERIODS)
        check_choice(self.over_limit, "meter over_limit", OVER_LIMIT)

    def to_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "period": self.period, "over_limit": self.over_limit}

    @classmethod
    def from_json(cls, value: object) -> Meter:
        f = Fields(value, "meter")
        limit = f.opt_integer("limit", minimum=1, maximum=MAX_UNITS)
        out = cls(limit, f.choice("period", PERIODS), f.choice("over_limit", OVER_LIMIT))
        f.done()
        return out


@dataclass(frozen=True)
class DataObject:
    """A Cryptolens data object whose ``IntValue`` follows usage of ``meter``."""

    id: int
    name: str
    meter: str
    string_value: str = ""
    int_value: int = 0

    def __post_init__(self) -> None:
        check_int(self.id, "data object id", minimum=1, maximum=2**31 - 1)
        check_text(self.name, "data object name")
        check_name(self.meter, "data object meter")
        check_text(self.string_value, "data object string_value", allow_empty=True)
        check_int(self.int_value, "data object int_value", minimum=-(2**62), maximum=MAX_UNITS)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "meter": self.meter,
            "string_value": self.string_value,
            "int_value": self.int_value,
        }

    @classmethod
    def from_json(cls, value: object) -> DataObject:
        f = Fields(value, "data object")
        out = cls(
            f.integer("id", minimum=1, maximum=2**31 - 1),
            f.text("name"),
            f.name("meter"),
            f.text("string_value", allow_empty=True),
            f.integer("int_value", minimum=-(2**62), maximum=MAX_UNITS),
        )
        f.done()
        return out


_FLAGS: Final = ("f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8")


@dataclass(frozen=True)
class CryptolensSection:
    """How the license appears to Cryptolens SDKs (see the mapping in docs/spec/license.md)."""

    product_id: int
    key: str
    feature: str | None = None
    flags: tuple[bool, bool, bool, bool, bool, bool, bool, bool] = (False,) * 8
    notes: str = ""
    allowed_machines: tuple[str, ...] = ()
    data_objects: tuple[DataObject, ...] = ()

    def __post_init__(self) -> None:
        check_int(self.product_id, "cryptolens product_id", minimum=1, maximum=2**31 - 1)
        if not isinstance(self.key, str) or not CRYPTOLENS_KEY_RE.fullmatch(self.key):
            raise FormatError(
                "cryptolens key is malformed",
                expected="four groups of five capital letters, e.g. ABCDE-FGHIJ-KLMNO-PQRST",
                found=repr(self.key)[:40],
            )
        if self.feature is not None:
            check_name(self.feature, "cryptolens feature")
        flags = tuple(self.flags)
        if len(flags) != 8 or not all(isinstance(b, bool) for b in flags):
            raise FormatError(
                "cryptolens flags are malformed", expected="8 booleans f1..f8", found=repr(flags)
            )
        object.__setattr__(self, "flags", flags)
        check_text(self.notes, "cryptolens notes", allow_empty=True)
        machines = tuple(self.allowed_machines)
        for m in machines:
            check_text(m, "cryptolens machine code")
        if len(set(machines)) != len(machines):
            raise FormatError(
                "cryptolens machine codes repeat",
                expected="each machine code once",
                found=", ".join(machines)[:200],
            )
        object.__setattr__(self, "allowed_machines", machines)
        objects = tuple(self.data_objects)
        for obj in objects:
            if not isinstance(obj, DataObject):
                raise FormatError(
                    "cryptolens data object has the wrong type",
                    expected="DataObject",
                    found=type(obj).__name__,
                )
        ids = [o.id for o in objects]
        if len(set(ids)) != len(ids):
            raise FormatError(
                "cryptolens data object ids repeat",
                expected="unique ids",
                found=", ".join(map(str, ids)),
            )
        object.__setattr__(self, "data_objects", objects)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "product_id": self.product_id,
            "key": self.key,
            "feature": self.feature,
            "notes": self.notes,
            "allowed_machines": list(self.allowed_machines),
            "data_objects": [o.to_json() for o in self.data_objects],
        }
        out.update(zip(_FLAGS, self.flags, strict=True))
        return out

    @classmethod
    def from_json(cls, value: object) -> CryptolensSection:
        f = Fields(value, "cryptolens section")
        product_id = f.integer("product_id", minimum=1, maximum=2**31 - 1)
        key = f.text("key")
        feature_raw = f.raw("feature")
        feature = None if feature_raw is None else check_name(feature_raw, "cryptolens feature")
        b = [f.boolean(n) for n in _FLAGS]
        flags = (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7])
        notes = f.text("notes", allow_empty=True)
        machines = tuple(
            check_text(m, "cryptolens machine code") for m in f.array("allowed_machines")
        )
        objects = tuple(DataObject.from_json(o) for o in f.array("data_objects"))
        f.done()
        return cls(product_id, key, feature, flags, notes, machines, objects)


def _check_mapping(value: object, what: str, item_type: type) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FormatError(f"{what} must be a mapping", expected="name -> value", found=repr(value))
    for name, item in value.items():
        check_name(name, f"{what} name")
        if not isinstance(item, item_type):
            raise FormatError(
                f"{what} entry {name!r} has the wrong type",
                expected=item_type.__name__,
                found=type(item).__name__,
            )
    return freeze_mapping(value)


@dataclass(frozen=True)
class License:
    """A signed grant of floating features and metered quotas to one customer site."""

    license_id: str
    customer: str
    product: str
    issued: datetime
    vendor_key_id: str
    features: Mapping[str, Feature] = field(default_factory=dict)
    meters: Mapping[str, Meter] = field(default_factory=dict)
    expires: datetime | None = None
    report_every_days: int | None = None
    grace_days: int = 0
    site_fingerprint: str | None = None
    cryptolens: CryptolensSection | None = None

    def __post_init__(self) -> None:
        check_name(self.license_id, "license_id")
        check_text(self.customer, "customer")
        check_text(self.product, "product")
        object.__setattr__(self, "issued", check_utc(self.issued, "issued"))
        check_hex(self.vendor_key_id, "vendor_key_id", nbytes=crypto.KEY_ID_LEN)
        object.__setattr__(self, "features", _check_mapping(self.features, "feature", Feature))
        object.__setattr__(self, "meters", _check_mapping(self.meters, "meter", Meter))
        if not self.features and not self.meters:
            raise FormatError(
                "license grants nothing",
                expected="at least one feature or meter",
                found="neither",
                hint="Pass --seats or --meter when issuing",
            )
        if self.expires is not None:
            expires = check_utc(self.expires, "expires")
            object.__setattr__(self, "expires", expires)
            if expires <= self.issued:
                raise FormatError(
                    "license expires before it is issued",
                    expected=f"expires after {format_time(self.issued)}",
                    found=format_time(expires),
                )
        if self.report_every_days is not None:
            check_int(self.report_every_days, "report_every_days", minimum=1, maximum=MAX_DAYS)
        check_int(self.grace_days, "grace_days", maximum=MAX_DAYS)
        if self.site_fingerprint is not None:
            check_text(self.site_fingerprint, "site_fingerprint")
        if self.cryptolens is not None:
            self._check_cryptolens(self.cryptolens)

    def _check_cryptolens(self, section: CryptolensSection) -> None:
        if not isinstance(section, CryptolensSection):
            raise FormatError(
                "cryptolens section has the wrong type",
                expected="CryptolensSection",
                found=type(section).__name__,
            )
        if section.feature is not None and section.feature not in self.features:
            raise FormatError(
                "cryptolens section names a feature the license does not grant",
                expected="one of " + (", ".join(self.features) or "(no features)"),
                found=repr(section.feature),
            )
        for obj in section.data_objects:
            if obj.meter not in self.meters:
                raise FormatError(
                    f"cryptolens data object {obj.id} is bound to an unknown meter",
                    expected="one of " + (", ".join(self.meters) or "(no meters)"),
                    found=repr(obj.meter),
                )

    def is_expired(self, now: datetime) -> bool:
        return self.expires is not None and check_utc(now, "now") >= self.expires

    def to_payload(self) -> dict[str, Any]:
        return {
            "license_id": self.license_id,
            "customer": self.customer,
            "product": self.product,
            "issued": format_time(self.issued),
            "expires": None if self.expires is None else format_time(self.expires),
            "vendor_key_id": self.vendor_key_id,
            "features": {n: f.to_json() for n, f in self.features.items()},
            "meters": {n: m.to_json() for n, m in self.meters.items()},
            "report_every_days": self.report_every_days,
            "grace_days": self.grace_days,
            "site_fingerprint": self.site_fingerprint,
            "cryptolens": None if self.cryptolens is None else self.cryptolens.to_json(),
        }

    @classmethod
    def from_payload(cls, value: object) -> License:
        f = Fields(value, "license")
        license_id = f.name("license_id")
        customer = f.text("customer")
        product = f.text("product")
        issued = f.time("issued")
        expires = f.opt_time("expires")
        vendor_key_id = f.hex("vendor_key_id", nbytes=crypto.KEY_ID_LEN)
        features = {
            check_name(k, "feature name"): Feature.from_json(v)
            for k, v in f.obj("features").items()
        }
        meters = {
            check_name(k, "meter name"): Meter.from_json(v) for k, v in f.obj("meters").items()
        }
        report_every = f.opt_integer("report_every_days", minimum=1, maximum=MAX_DAYS)
        grace = f.integer("grace_days", maximum=MAX_DAYS)
        site = f.opt_text("site_fingerprint")
        cl_raw = f.raw("cryptolens")
        cryptolens = None if cl_raw is None else CryptolensSection.from_json(cl_raw)
        f.done()
        return cls(
            license_id=license_id,
            customer=customer,
            product=product,
            issued=issued,
            vendor_key_id=vendor_key_id,
            features=features,
            meters=meters,
            expires=expires,
            report_every_days=report_every,
            grace_days=grace,
            site_fingerprint=site,
            cryptolens=cryptolens,
        )

    def sign(self, signer: DocumentSigner) -> bytes:
        """The signed license file. The signer must be the key the license names."""
        if signer.key_id.hex() != self.vendor_key_id:
            raise FormatError(
                "license names a different vendor key than the one signing it",
                expected=self.vendor_key_id,
                found=signer.key_id.hex(),
            )
        return seal(LICENSE_FORMAT, self.to_payload(), signer)

    @classmethod
    def from_bytes(cls, data: bytes, bundle: VendorPublicBundle) -> License:
        """Verify a license file against the vendor bundle and return the license."""
        opened = unseal(data, LICENSE_FORMAT, bundle)
        lic = cls.from_payload(opened.payload)
        if lic.vendor_key_id != opened.key_id.hex():
            raise VerificationError(
                "license payload names a different key than the one that signed it",
                expected=opened.key_id.hex(),
                found=lic.vendor_key_id,
                hint="The file was assembled from parts of different documents",
            )
        return lic
