"""The vendor store: one schema (:mod:`.schema`), its access class (:mod:`.store`) and
the read queries of billing, the anomaly detectors and the dashboard (:mod:`.queries`).

Invariant: every table is in :data:`.schema.metadata` under one
:data:`.schema.SCHEMA_VERSION`, and every time in it is integer microseconds.
"""

from __future__ import annotations

from meterbox.vendorkit._db.schema import SCHEMA_VERSION, from_micros, to_micros
from meterbox.vendorkit._db.store import (
    Activity,
    FindingRow,
    InstanceRow,
    LicenseRow,
    ReceiptRow,
    ReportMeta,
    ReportRow,
    ReportSpan,
    TopupRow,
    UsageRow,
    VendorStore,
    normalise_url,
)

__all__ = [
    "SCHEMA_VERSION",
    "Activity",
    "FindingRow",
    "InstanceRow",
    "LicenseRow",
    "ReceiptRow",
    "ReportMeta",
    "ReportRow",
    "ReportSpan",
    "TopupRow",
    "UsageRow",
    "VendorStore",
    "from_micros",
    "normalise_url",
    "to_micros",
]
