"""The license document (formats ``meterbox-license/1`` to ``/4``): what a site may use.

A :class:`License` is immutable and valid by construction: every constructor argument
is checked in ``__post_init__``, and ``from_payload`` only ever builds one through the
constructor. Cross-field rules: at least one feature or meter; ``expires`` after
``issued``; the Cryptolens section may only point at features and meters the license
declares. See docs/spec/license.md for the field table and the Cryptolens mapping.

Versions: version 2 adds Cryptolens fields (node-locked machine limit, block, trial
activation, deactivation policy, unmetered data objects and credit countdowns). A
license is always written in the lowest version that can express it, so a license
that uses none of the version-2 fields stays a version-1 file that older servers
read; a version-2 file that version 1 could express is refused, so that one license
has exactly one encoding. Version 3 adds ``require_tpm``; version 4 adds
``max_borrow_hours`` (seat borrowing, ADR 0028) and ``cluster_size`` (several server
instances serving one license, ADR 0026), and carries ``require_tpm`` as a plain
boolean; a license is written in version 4 when it borrows or is a cluster.
"""

from __future__ import annotations

import json
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
LICENSE_FORMAT_V2: Final = "meterbox-license/2"
#: Version 3 adds ``require_tpm`` (docs/adr/0011-tpm-anchor.md).
LICENSE_FORMAT_V3: Final = "meterbox-license/3"
#: Version 4 adds ``max_borrow_hours`` (docs/adr/0028-seat-borrowing.md) and
#: ``cluster_size`` (docs/adr/0026-cluster-licences-and-client-failover.md).
LICENSE_FORMAT_V4: Final = "meterbox-license/4"
#: Every license format this code reads, oldest first.
LICENSE_FORMATS: Final = (LICENSE_FORMAT, LICENSE_FORMAT_V2, LICENSE_FORMAT_V3, LICENSE_FORMAT_V4)
#: Longest borrow a license may allow: 366 days, in hours.
MAX_BORROW_HOURS: Final = 366 * 24
#: How many server instances (cluster nodes) one license may run on at once. A bound
#: keeps the vendor's per-license work (one ledger per member) small; an etcd cluster
#: serves far fewer meterbox nodes than this in practice.
MAX_CLUSTER_SIZE: Final = 256
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
#: The .NET SDK parses ``IntValue``, ``MaxNoOfMachines`` and ids as Int32: every value a
#: license hands to Cryptolens SDKs stays inside it.
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
#: Which change of a data object is usage of its meter: ``increment`` (a counter that
#: counts up, as version 1) or ``decrement`` (a credit countdown).
CHARGES: Final = ("increment", "decrement")
#: The data object the SDKs' ``Helpers.HasFeature`` reads its feature template from.
FEATURES_TEMPLATE_NAME: Final = "cryptolens_features"


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
    """A Cryptolens data object; with a ``meter``, changes of ``IntValue`` are its usage.

    ``charge`` says which direction is usage: ``increment`` (version 1's only kind) or
    ``decrement`` (a credit countdown: the value starts at ``int_value`` and each
    decrement uses that many units). Without a ``meter`` (version 2) the object is a
    plain value, such as the ``cryptolens_features`` template, that the API serves but
    does not let clients change.
    """

    id: int
    name: str
    meter: str | None
    string_value: str = ""
    int_value: int = 0
    charge: str = "increment"

    def __post_init__(self) -> None:
        check_int(self.id, "data object id", minimum=1, maximum=INT32_MAX)
        check_text(self.name, "data object name")
        if self.meter is not None:
            check_name(self.meter, "data object meter")
        check_text(self.string_value, "data object string_value", allow_empty=True)
        check_int(self.int_value, "data object int_value", minimum=INT32_MIN, maximum=INT32_MAX)
        check_choice(self.charge, "data object charge", CHARGES)
        if self.meter is None and self.charge != "increment":
            raise FormatError(
                f"data object {self.id} counts down credit without a meter",
                expected="a meter for charge 'decrement'",
                found="meter null",
                hint="Name the meter the credit is drawn from",
            )
        if self.name == FEATURES_TEMPLATE_NAME:
            check_features_template(self.string_value)

    @property
    def needs_v2(self) -> bool:
        return self.meter is None or self.charge != "increment"

    def to_json(self, version: int = 1) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "meter": self.meter,
            "string_value": self.string_value,
            "int_value": self.int_value,
        }
        if version >= 2:
            out["charge"] = self.charge
        return out

    @classmethod
    def from_json(cls, value: object, version: int = 1) -> DataObject:
        f = Fields(value, "data object")
        object_id = f.integer("id", minimum=1, maximum=INT32_MAX)
        name = f.text("name")
        if version >= 2:
            raw_meter = f.raw("meter")
            meter = None if raw_meter is None else check_name(raw_meter, "data object meter")
        else:
            meter = f.name("meter")
        string_value = f.text("string_value", allow_empty=True)
        int_value = f.integer("int_value", minimum=INT32_MIN, maximum=INT32_MAX)
        charge = f.choice("charge", CHARGES) if version >= 2 else "increment"
        f.done()
        return cls(object_id, name, meter, string_value, int_value, charge)


def check_features_template(text: str) -> str:
    """Refuse a ``cryptolens_features`` value that ``Helpers.HasFeature`` cannot read.

    The grammar (help.cryptolens.io, feature templates): a JSON array whose items are
    feature names (strings) or ``[name, [items...]]`` pairs, nested to any depth, e.g.
    ``["f1", ["f2", ["voice", "image"]]]``. The SDKs ``json.loads`` it on every
    ``HasFeature`` call and crash on anything else.
    """
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not _template_items(value, depth=0):
        raise FormatError(
            f"the {FEATURES_TEMPLATE_NAME} data object is not a feature template",
            expected='a JSON array of names or [name, [...]] pairs, e.g. ["f1", ["f2", ["voice"]]]',
            found=repr(text)[:80],
            hint="Write the template as the Cryptolens feature-template grammar",
        )
    return text


def _template_items(items: list[Any], depth: int) -> bool:
    if depth > 16:
        return False
    for item in items:
        if isinstance(item, str):
            if not item or "." in item:
                return False
        elif isinstance(item, list):
            if len(item) != 2 or not isinstance(item[0], str) or not item[0] or "." in item[0]:
                return False
            if not isinstance(item[1], list) or not _template_items(item[1], depth + 1):
                return False
        else:
            return False
    return True


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
    #: Node-locked limit (``MaxNoOfMachines``): the first this many distinct machine
    #: codes activate, ``0`` is unlimited; ``None`` (version 1) derives it from the
    #: floating feature's seats, else the number of allowed machines.
    max_machines: int | None = None
    block: bool = False
    trial_activation: bool = False
    #: Whether ``key/deactivate`` of a node-locked machine frees its slot.
    allow_deactivation: bool = True

    def __post_init__(self) -> None:
        check_int(self.product_id, "cryptolens product_id", minimum=1, maximum=INT32_MAX)
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
        if self.max_machines is not None:
            check_int(self.max_machines, "cryptolens max_machines", maximum=MAX_SEATS)
        for flag, what in (
            (self.block, "block"),
            (self.trial_activation, "trial_activation"),
            (self.allow_deactivation, "allow_deactivation"),
        ):
            if not isinstance(flag, bool):
                raise FormatError(
                    f"cryptolens {what} must be a boolean",
                    expected="true or false",
                    found=repr(flag),
                )

    @property
    def needs_v2(self) -> bool:
        """Whether any field only version 2 of the format can carry is in use."""
        return (
            self.max_machines is not None
            or self.block
            or self.trial_activation
            or not self.allow_deactivation
            or any(o.needs_v2 for o in self.data_objects)
        )

    def to_json(self, version: int = 1) -> dict[str, Any]:
        out: dict[str, Any] = {
            "product_id": self.product_id,
            "key": self.key,
            "feature": self.feature,
            "notes": self.notes,
            "allowed_machines": list(self.allowed_machines),
            "data_objects": [o.to_json(version) for o in self.data_objects],
        }
        out.update(zip(_FLAGS, self.flags, strict=True))
        if version >= 2:
            out["max_machines"] = self.max_machines
            out["block"] = self.block
            out["trial_activation"] = self.trial_activation
            out["allow_deactivation"] = self.allow_deactivation
        return out

    @classmethod
    def from_json(cls, value: object, version: int = 1) -> CryptolensSection:
        f = Fields(value, "cryptolens section")
        product_id = f.integer("product_id", minimum=1, maximum=INT32_MAX)
        key = f.text("key")
        feature_raw = f.raw("feature")
        feature = None if feature_raw is None else check_name(feature_raw, "cryptolens feature")
        b = [f.boolean(n) for n in _FLAGS]
        flags = (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7])
        notes = f.text("notes", allow_empty=True)
        machines = tuple(
            check_text(m, "cryptolens machine code") for m in f.array("allowed_machines")
        )
        objects = tuple(DataObject.from_json(o, version) for o in f.array("data_objects"))
        if version >= 2:
            max_machines = f.opt_integer("max_machines", maximum=MAX_SEATS)
            block = f.boolean("block")
            trial = f.boolean("trial_activation")
            allow_deactivation = f.boolean("allow_deactivation")
        else:
            max_machines, block, trial, allow_deactivation = None, False, False, True
        f.done()
        return cls(
            product_id,
            key,
            feature,
            flags,
            notes,
            machines,
            objects,
            max_machines,
            block,
            trial,
            allow_deactivation,
        )


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
    #: The server must run anchored to a TPM, and every report must carry an attestation.
    require_tpm: bool = False
    #: Longest a client may borrow a seat for use with no server; 0: no borrowing.
    max_borrow_hours: int = 0
    #: How many server instances may serve this license together (a cluster): the
    #: vendor expects up to this many instance ledgers and calls only one more a clone.
    cluster_size: int = 1

    def __post_init__(self) -> None:
        check_name(self.license_id, "license_id")
        check_int(self.max_borrow_hours, "max_borrow_hours", maximum=MAX_BORROW_HOURS)
        if not isinstance(self.require_tpm, bool):
            raise FormatError(
                "require_tpm has the wrong type",
                expected="a boolean",
                found=type(self.require_tpm).__name__,
            )
        check_int(self.cluster_size, "cluster_size", minimum=1, maximum=MAX_CLUSTER_SIZE)
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
            if obj.meter is not None and obj.meter not in self.meters:
                raise FormatError(
                    f"cryptolens data object {obj.id} is bound to an unknown meter",
                    expected="one of " + (", ".join(self.meters) or "(no meters)"),
                    found=repr(obj.meter),
                )

    def is_expired(self, now: datetime) -> bool:
        return self.expires is not None and check_utc(now, "now") >= self.expires

    @property
    def format_version(self) -> int:
        """The lowest license format version that expresses this license."""
        if self.max_borrow_hours or self.cluster_size > 1:
            return 4
        if self.require_tpm:
            return 3
        return 2 if self.cryptolens is not None and self.cryptolens.needs_v2 else 1

    def to_payload(self) -> dict[str, Any]:
        version = self.format_version
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
            "cryptolens": None if self.cryptolens is None else self.cryptolens.to_json(version),
        } | self._late_fields(version)

    def _late_fields(self, version: int) -> dict[str, Any]:
        """Fields later versions add: version 3 ``require_tpm`` (always true there),
        version 4 ``require_tpm`` (either value), ``max_borrow_hours`` and
        ``cluster_size``."""
        if version >= 4:
            return {
                "require_tpm": self.require_tpm,
                "max_borrow_hours": self.max_borrow_hours,
                "cluster_size": self.cluster_size,
            }
        return {"require_tpm": True} if version == 3 else {}

    @classmethod
    def from_payload(cls, value: object, version: int | None = None) -> License:
        """Build a license from the payload of a format-``version`` document.

        Without ``version`` (a payload kept apart from its envelope) it is read from
        the payload: version 2 when the Cryptolens section carries version-2 fields.
        """
        if version is None:
            section = value.get("cryptolens") if isinstance(value, dict) else None
            version = 2 if isinstance(section, dict) and "max_machines" in section else 1
            if isinstance(value, dict) and "require_tpm" in value:
                version = 3
            if isinstance(value, dict) and ("cluster_size" in value or "max_borrow_hours" in value):
                version = 4
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
        cryptolens = None if cl_raw is None else CryptolensSection.from_json(cl_raw, version)
        require_tpm = f.boolean("require_tpm") if version >= 3 else False
        max_borrow = f.integer("max_borrow_hours", maximum=MAX_BORROW_HOURS) if version >= 4 else 0
        cluster_size = (
            f.integer("cluster_size", minimum=1, maximum=MAX_CLUSTER_SIZE) if version >= 4 else 1
        )
        f.done()
        lic = cls(
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
            require_tpm=require_tpm,
            max_borrow_hours=max_borrow,
            cluster_size=cluster_size,
        )
        if lic.format_version != version:
            raise FormatError(
                "license is written in a higher format version than it needs",
                expected=f"format version {lic.format_version} for this content",
                found=f"version {version}",
                hint="A license has one encoding; re-issue it with `meterbox vendor issue`",
            )
        return lic

    def sign(self, signer: DocumentSigner) -> bytes:
        """The signed license file. The signer must be the key the license names."""
        if signer.key_id.hex() != self.vendor_key_id:
            raise FormatError(
                "license names a different vendor key than the one signing it",
                expected=self.vendor_key_id,
                found=signer.key_id.hex(),
            )
        return seal(LICENSE_FORMATS[self.format_version - 1], self.to_payload(), signer)

    @classmethod
    def from_bytes(cls, data: bytes, bundle: VendorPublicBundle) -> License:
        """Verify a license file against the vendor bundle and return the license."""
        opened = unseal(data, LICENSE_FORMATS, bundle)
        lic = cls.from_payload(opened.payload, opened.version)
        if lic.vendor_key_id != opened.key_id.hex():
            raise VerificationError(
                "license payload names a different key than the one that signed it",
                expected=opened.key_id.hex(),
                found=lic.vendor_key_id,
                hint="The file was assembled from parts of different documents",
            )
        return lic
