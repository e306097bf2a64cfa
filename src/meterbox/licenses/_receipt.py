"""The receipt document (format ``meterbox-receipt/1``): the vendor's acknowledgement.

A receipt says "the vendor has seen this instance's ledger up to ``head_seq`` whose
record hash is ``head_hash``", covering the report whose SHA-256 is ``report_digest``.
Once a server imports it, nothing at or before ``head_seq`` can change undetectably.
Invariants: ``previous_head_seq`` (the head of the receipt before, ``None`` for the
first) is not after ``head_seq``; status is one of two values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from meterbox import crypto
from meterbox.errors import FormatError
from meterbox.licenses._bundle import VendorPublicBundle
from meterbox.licenses._codec import (
    Fields,
    check_choice,
    check_hex,
    check_int,
    check_name,
    check_utc,
    format_time,
    freeze_mapping,
)
from meterbox.licenses._envelope import DocumentSigner, seal, unseal
from meterbox.licenses._license import MAX_UNITS

RECEIPT_FORMAT: Final = "meterbox-receipt/1"
RECEIPT_STATUSES: Final = ("accepted", "accepted_with_findings")
INSTANCE_ID_LEN: Final = 16
_MAX_SEQ: Final = 2**63 - 1


@dataclass(frozen=True)
class Receipt:
    """The vendor's signed acknowledgement of one report from one server instance."""

    receipt_id: str
    instance_id: str
    license_ids: tuple[str, ...]
    head_seq: int
    head_hash: str
    previous_head_seq: int | None
    vendor_time: datetime
    report_digest: str
    totals: Mapping[str, int] = field(default_factory=dict)
    status: str = "accepted"
    finding_codes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.receipt_id, "receipt_id")
        check_hex(self.instance_id, "instance_id", nbytes=INSTANCE_ID_LEN)
        ids = tuple(self.license_ids)
        for lid in ids:
            check_name(lid, "receipt license id")
        if len(set(ids)) != len(ids):
            raise FormatError(
                "receipt lists a license twice", expected="unique ids", found=", ".join(ids)
            )
        object.__setattr__(self, "license_ids", ids)
        check_int(self.head_seq, "head_seq", maximum=_MAX_SEQ)
        check_hex(self.head_hash, "head_hash", nbytes=crypto.HASH_LEN)
        if self.previous_head_seq is not None:
            check_int(self.previous_head_seq, "previous_head_seq", maximum=self.head_seq)
        object.__setattr__(self, "vendor_time", check_utc(self.vendor_time, "vendor_time"))
        check_hex(self.report_digest, "report_digest", nbytes=crypto.HASH_LEN)
        if not isinstance(self.totals, Mapping):
            raise FormatError(
                "receipt totals must be a mapping",
                expected="meter -> units",
                found=repr(self.totals),
            )
        for meter, units in self.totals.items():
            check_name(meter, "receipt totals meter")
            check_int(units, f"receipt total for {meter!r}", maximum=MAX_UNITS)
        object.__setattr__(self, "totals", freeze_mapping(self.totals))
        check_choice(self.status, "receipt status", RECEIPT_STATUSES)
        codes = tuple(self.finding_codes)
        for code in codes:
            check_name(code, "finding code")
        object.__setattr__(self, "finding_codes", codes)

    def to_payload(self) -> dict[str, Any]:
        return {
            "receipt_id": self.receipt_id,
            "instance_id": self.instance_id,
            "license_ids": list(self.license_ids),
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "previous_head_seq": self.previous_head_seq,
            "vendor_time": format_time(self.vendor_time),
            "report_digest": self.report_digest,
            "totals": dict(self.totals),
            "status": self.status,
            "finding_codes": list(self.finding_codes),
        }

    @classmethod
    def from_payload(cls, value: object) -> Receipt:
        f = Fields(value, "receipt")
        out = cls(
            receipt_id=f.name("receipt_id"),
            instance_id=f.hex("instance_id", nbytes=INSTANCE_ID_LEN),
            license_ids=tuple(check_name(x, "receipt license id") for x in f.array("license_ids")),
            head_seq=f.integer("head_seq", maximum=_MAX_SEQ),
            head_hash=f.hex("head_hash", nbytes=crypto.HASH_LEN),
            previous_head_seq=f.opt_integer("previous_head_seq", maximum=_MAX_SEQ),
            vendor_time=f.time("vendor_time"),
            report_digest=f.hex("report_digest", nbytes=crypto.HASH_LEN),
            totals={
                check_name(k, "receipt totals meter"): check_int(
                    v, "receipt total", maximum=MAX_UNITS
                )
                for k, v in f.obj("totals").items()
            },
            status=f.choice("status", RECEIPT_STATUSES),
            finding_codes=tuple(check_name(c, "finding code") for c in f.array("finding_codes")),
        )
        f.done()
        return out

    def sign(self, signer: DocumentSigner) -> bytes:
        return seal(RECEIPT_FORMAT, self.to_payload(), signer)

    @classmethod
    def from_bytes(cls, data: bytes, bundle: VendorPublicBundle) -> Receipt:
        return cls.from_payload(unseal(data, RECEIPT_FORMAT, bundle).payload)
