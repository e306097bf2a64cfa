"""The receipt document (format ``meterbox-receipt/1`` or ``/2``): the vendor's acknowledgement.

A receipt says "the vendor has seen this instance's ledger up to ``head_seq`` whose
record hash is ``head_hash``", covering the report whose SHA-256 is ``report_digest``.
Once a server imports it, nothing at or before ``head_seq`` can change undetectably.
Invariants: ``previous_head_seq`` (the head of the receipt before, ``None`` for the
first) is not after ``head_seq``; status is one of two values.

Version 2 adds ``tpm_challenge``: a TPM credential challenge
(``meterbox-tpm-credential/1``) the server answers with its TPM (docs/adr/0036). A
receipt is written in the lowest version that expresses it, so one without a challenge
stays a version-1 file older servers import; a version-2 file without one is refused,
so that a receipt has exactly one encoding.
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
RECEIPT_FORMAT_V2: Final = "meterbox-receipt/2"
RECEIPT_FORMATS: Final = (RECEIPT_FORMAT, RECEIPT_FORMAT_V2)
#: A credential challenge is a few hundred bytes (docs/spec/tpm-attestation.md).
MAX_TPM_CHALLENGE: Final = 4096
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
    #: Version 2: the TPM credential challenge for the instance's attestation key.
    tpm_challenge: bytes | None = None

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
        if self.tpm_challenge is not None and (
            not isinstance(self.tpm_challenge, bytes)
            or not 0 < len(self.tpm_challenge) <= MAX_TPM_CHALLENGE
        ):
            raise FormatError(
                "receipt tpm_challenge is malformed",
                expected=f"1 to {MAX_TPM_CHALLENGE} bytes of a meterbox-tpm-credential/1 challenge",
                found=repr(self.tpm_challenge)[:80],
            )

    @property
    def format_version(self) -> int:
        """The lowest receipt format version that expresses this receipt."""
        return 2 if self.tpm_challenge is not None else 1

    def to_payload(self) -> dict[str, Any]:
        payload = {
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
        if self.tpm_challenge is not None:
            payload["tpm_challenge"] = crypto.b64e(self.tpm_challenge)
        return payload

    @classmethod
    def from_payload(cls, value: object, version: int | None = None) -> Receipt:
        """Build a receipt from the payload of a format-``version`` document.

        Without ``version`` (a payload kept apart from its envelope) it is read from the
        payload: version 2 when it carries ``tpm_challenge``.
        """
        if version is None:
            version = 2 if isinstance(value, dict) and "tpm_challenge" in value else 1
        f = Fields(value, "receipt")
        challenge: bytes | None = None
        if version >= 2:
            text = f.text("tpm_challenge")
            challenge = crypto.b64d(text, "receipt tpm_challenge")
            if crypto.b64e(challenge) != text:
                raise FormatError(
                    "receipt tpm_challenge is not canonical base64",
                    expected=crypto.b64e(challenge)[:40],
                    found=text[:40],
                    hint="the receipt was altered after it was signed, or not written by meterbox",
                )
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
            tpm_challenge=challenge,
        )
        f.done()
        return out

    def sign(self, signer: DocumentSigner) -> bytes:
        return seal(RECEIPT_FORMATS[self.format_version - 1], self.to_payload(), signer)

    @classmethod
    def from_bytes(cls, data: bytes, bundle: VendorPublicBundle) -> Receipt:
        opened = unseal(data, RECEIPT_FORMATS, bundle)
        return cls.from_payload(opened.payload, opened.version)
