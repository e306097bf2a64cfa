"""Signed documents exchanged between vendor and site: licenses, top-ups, receipts, notices.

All four share one envelope (Ed25519 over the exact payload bytes, see
docs/spec/license.md) and are verified against a :class:`VendorPublicBundle`.
Each is an immutable dataclass, valid by construction, with ``sign(signer) -> bytes``
and ``from_bytes(data, bundle)``; :func:`open_document` verifies any of them.
The canonical-JSON codec (``canonical_json``, ``strict_loads``, ``format_time``,
``Fields``) is exported for the vendor toolkit, which signs key files the same way.
Errors raised: :class:`meterbox.errors.FormatError` (bytes that do not parse, unknown
version) and :class:`meterbox.errors.VerificationError` (signature or key problems).
"""

from __future__ import annotations

from meterbox.errors import FormatError as _FormatError
from meterbox.licenses._borrow import (
    BORROW_FORMAT,
    BorrowToken,
    check_lease_id,
    instance_key_id,
    machine_digest,
)
from meterbox.licenses._bundle import (
    BUNDLE_FORMAT,
    VendorPublicBundle,
    VendorPublicKey,
    derive_key_id,
)
from meterbox.licenses._codec import Fields, canonical_json, format_time, strict_loads
from meterbox.licenses._envelope import DOCUMENT_MAX_BYTES, DocumentSigner
from meterbox.licenses._envelope import peek_format as _peek_format
from meterbox.licenses._license import (
    CHARGES,
    DEFAULT_LEASE_SECONDS,
    FEATURES_TEMPLATE_NAME,
    INT32_MAX,
    INT32_MIN,
    LICENSE_FORMAT,
    LICENSE_FORMAT_V2,
    LICENSE_FORMAT_V3,
    LICENSE_FORMAT_V4,
    LICENSE_FORMATS,
    MAX_BORROW_HOURS,
    MAX_CLUSTER_SIZE,
    MAX_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
    CryptolensSection,
    DataObject,
    Feature,
    License,
    Meter,
    check_features_template,
)
from meterbox.licenses._notice import ACTIONS, NOTICE_FORMAT, LicenseNotice
from meterbox.licenses._receipt import RECEIPT_FORMAT, Receipt
from meterbox.licenses._topup import TOPUP_FORMAT, Topup

__all__ = [
    "ACTIONS",
    "BORROW_FORMAT",
    "BUNDLE_FORMAT",
    "CHARGES",
    "DEFAULT_LEASE_SECONDS",
    "DOCUMENT_MAX_BYTES",
    "FEATURES_TEMPLATE_NAME",
    "INT32_MAX",
    "INT32_MIN",
    "LICENSE_FORMAT",
    "LICENSE_FORMATS",
    "LICENSE_FORMAT_V2",
    "LICENSE_FORMAT_V3",
    "LICENSE_FORMAT_V4",
    "MAX_BORROW_HOURS",
    "MAX_CLUSTER_SIZE",
    "MAX_LEASE_SECONDS",
    "MIN_LEASE_SECONDS",
    "NOTICE_FORMAT",
    "RECEIPT_FORMAT",
    "TOPUP_FORMAT",
    "BorrowToken",
    "CryptolensSection",
    "DataObject",
    "DocumentSigner",
    "Feature",
    "Fields",
    "License",
    "LicenseNotice",
    "Meter",
    "Receipt",
    "Topup",
    "VendorPublicBundle",
    "VendorPublicKey",
    "canonical_json",
    "check_lease_id",
    "check_features_template",
    "derive_key_id",
    "format_time",
    "instance_key_id",
    "machine_digest",
    "open_document",
    "strict_loads",
]


def open_document(
    data: bytes, bundle: VendorPublicBundle
) -> License | Topup | Receipt | LicenseNotice:
    """Verify a license, top-up, receipt or license notice file, whichever it is."""
    fmt = _peek_format(data)
    name = fmt.split("/")[0]
    for cls, expected in (
        (License, LICENSE_FORMAT_V2),
        (Topup, TOPUP_FORMAT),
        (Receipt, RECEIPT_FORMAT),
        (LicenseNotice, NOTICE_FORMAT),
    ):
        if name == expected.split("/")[0]:
            # from_bytes re-checks the version and everything else from the start.
            return cls.from_bytes(data, bundle)
    raise _FormatError(
        "file is not a meterbox signed document",
        expected=f"format {LICENSE_FORMAT} to /4, {TOPUP_FORMAT}, {RECEIPT_FORMAT} to /2 "
        f"or {NOTICE_FORMAT}",
        found=repr(fmt),
        hint="Import license, top-up, receipt or notice files written by `meterbox vendor`",
    )
