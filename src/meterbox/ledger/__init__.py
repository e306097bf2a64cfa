"""The sealed usage ledger: tamper-evident, encrypted to the vendor, crash-safe.

Public API::

    LedgerWriter       append records durably (group commit), recover, compact
    export_report      write a signed report of the ledger
    ReportVerifier     stream-verify a report with the vendor's keys, yielding records
    Known, ChainState  what the vendor acknowledged before (for extension checks)
    Finding            one problem, with a stable code (see _findings)
    RecordType, Record, Head, LedgerConfig
"""

from meterbox.ledger import _findings as findings
from meterbox.ledger._findings import Finding
from meterbox.ledger._format import RecordType
from meterbox.ledger._frames import Record
from meterbox.ledger._report import (
    ChainState,
    ExportInfo,
    Known,
    ReportResult,
    ReportVerifier,
    export_report,
)
from meterbox.ledger._seal import Head
from meterbox.ledger._writer import Appended, LedgerConfig, LedgerWriter, Recovery

__all__ = [
    "Appended",
    "ChainState",
    "ExportInfo",
    "Finding",
    "Head",
    "Known",
    "LedgerConfig",
    "LedgerWriter",
    "Record",
    "RecordType",
    "Recovery",
    "ReportResult",
    "ReportVerifier",
    "export_report",
    "findings",
]
