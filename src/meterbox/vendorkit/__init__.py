"""The vendor toolkit: keys, the vendor store, report ingest and billing.

The narrow public API; everything else is reached through the ``meterbox vendor``
command group (:mod:`meterbox.vendorkit.cli`)::

    init_keys(home), rotate_keys(home), VendorKeys, VendorKeyPair   the vendor's keys
    VendorStore, DB_FILE                                            the vendor store
    ingest(home, report_path, ...) -> IngestOutcome                 verify, store, receipt
    bill(home, Period.parse("2026-01"), ...) -> Statement           a month's statement
"""

from __future__ import annotations

from meterbox.vendorkit._db.store import DB_FILE, VendorStore
from meterbox.vendorkit.billing import Period, Statement, bill
from meterbox.vendorkit.ingest import IngestOutcome, ingest
from meterbox.vendorkit.keys import VendorKeyPair, VendorKeys
from meterbox.vendorkit.keys import init as init_keys
from meterbox.vendorkit.keys import rotate as rotate_keys

__all__ = [
    "DB_FILE",
    "IngestOutcome",
    "Period",
    "Statement",
    "VendorKeyPair",
    "VendorKeys",
    "VendorStore",
    "bill",
    "ingest",
    "init_keys",
    "rotate_keys",
]
