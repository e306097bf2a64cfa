"""The vendor toolkit: keys, the vendor store, report ingest and billing.

The narrow public API; everything else is reached through the ``meterbox vendor``
command group (:mod:`meterbox.vendorkit.cli`)::

    init_keys(home), rotate_keys(home), VendorKeys, VendorKeyPair   the vendor's keys
    VendorStore, DB_FILE                                            the vendor store
    ingest(home, report_path, ...) -> IngestOutcome                 verify, store, receipt
    bill(home, Period.parse("2026-01"), ...) -> Statement           a month's statement
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> (module, attribute). Names are imported on first use (PEP 562), so the
# command group in :mod:`meterbox.vendorkit.cli` can be imported (for ``--help``)
# without the database layer or the numerical libraries behind ingest.
_HOMES: dict[str, tuple[str, str]] = {
    "DB_FILE": ("meterbox.vendorkit._db.store", "DB_FILE"),
    "VendorStore": ("meterbox.vendorkit._db.store", "VendorStore"),
    "Period": ("meterbox.vendorkit.billing", "Period"),
    "Statement": ("meterbox.vendorkit.billing", "Statement"),
    "bill": ("meterbox.vendorkit.billing", "bill"),
    "IngestOutcome": ("meterbox.vendorkit.ingest", "IngestOutcome"),
    "ingest": ("meterbox.vendorkit.ingest", "ingest"),
    "VendorKeyPair": ("meterbox.vendorkit.keys", "VendorKeyPair"),
    "VendorKeys": ("meterbox.vendorkit.keys", "VendorKeys"),
    "init_keys": ("meterbox.vendorkit.keys", "init"),
    "rotate_keys": ("meterbox.vendorkit.keys", "rotate"),
}

if TYPE_CHECKING:
    from meterbox.vendorkit._db.store import DB_FILE, VendorStore
    from meterbox.vendorkit.billing import Period, Statement, bill
    from meterbox.vendorkit.ingest import IngestOutcome, ingest
    from meterbox.vendorkit.keys import VendorKeyPair, VendorKeys
    from meterbox.vendorkit.keys import init as init_keys
    from meterbox.vendorkit.keys import rotate as rotate_keys


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'meterbox.vendorkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(home[0]), home[1])
    globals()[name] = value
    return value


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
