"""The sealed usage ledger: tamper-evident, encrypted to the vendor, crash-safe.

Public API::

    LedgerWriter       append records durably (group commit), recover, compact
    export_report      write a signed report of the ledger
    ReportVerifier     stream-verify a report with the vendor's keys, step by step:
                       read_header() -> ReportHeader, records(), then result
    Known, ChainState  what the vendor acknowledged before (for extension checks)
    Finding            one problem, with a stable code (see _findings)
    RecordType, Record, Head, LedgerConfig
    ClockSteps         the wall-clock steps a writer sealed (count and last step)
    read_head          a ledger's head, read without writing (queries on a stopped server)
    recent_heads       the chain hashes of a ledger's last records (heads a witness may name)
    hash_at            the chain hash of one record of a ledger, recomputed from its frames
    records            typed record payloads (Usage, SeatCheckout, ...) and parse_payload
"""

from meterbox.ledger import _findings as findings
from meterbox.ledger import records
from meterbox.ledger._findings import Finding
from meterbox.ledger._format import RecordType
from meterbox.ledger._frames import Record
from meterbox.ledger._heads import hash_at, recent_heads
from meterbox.ledger._peek import read_head
from meterbox.ledger._recovery import Recovery
from meterbox.ledger._report import ExportInfo, export_report
from meterbox.ledger._seal import Head
from meterbox.ledger._verify import ChainState, Known, ReportHeader, ReportResult, ReportVerifier
from meterbox.ledger._writer import Appended, ClockSteps, LedgerConfig, LedgerWriter
from meterbox.ledger.records import (
    Boot,
    Checkpoint,
    ClockStep,
    ClusterMember,
    ClusterQuorum,
    Genesis,
    Heartbeat,
    LicenseInstalled,
    LicenseRevoked,
    LicenseSuspended,
    MachineActivated,
    MachineDeactivated,
    ReceiptImported,
    RecordPayload,
    SeatBorrowed,
    SeatCheckout,
    SeatDenied,
    SeatExpire,
    SeatRelease,
    SeatRemoved,
    SeatRenew,
    SeatReturned,
    SeatUnknown,
    Shutdown,
    TopupImported,
    TpmAnchor,
    TpmCredential,
    TpmReenrolled,
    TpmRollback,
    Usage,
    UsageDecrement,
    UsageDenied,
    Witness,
    WitnessMismatch,
    parse_payload,
)
from meterbox.ledger.records import Recovery as RecoveryRecord

__all__ = [
    "Appended",
    "Boot",
    "ChainState",
    "Checkpoint",
    "ClockStep",
    "ClockSteps",
    "ExportInfo",
    "Finding",
    "Genesis",
    "Head",
    "Heartbeat",
    "Known",
    "LedgerConfig",
    "LedgerWriter",
    "LicenseInstalled",
    "LicenseRevoked",
    "LicenseSuspended",
    "MachineActivated",
    "MachineDeactivated",
    "ReceiptImported",
    "Record",
    "RecordPayload",
    "RecordType",
    "Recovery",
    "RecoveryRecord",
    "ReportHeader",
    "ReportResult",
    "ReportVerifier",
    "SeatCheckout",
    "SeatDenied",
    "SeatExpire",
    "SeatRelease",
    "SeatRemoved",
    "SeatBorrowed",
    "SeatReturned",
    "SeatRenew",
    "SeatUnknown",
    "Shutdown",
    "TopupImported",
    "TpmAnchor",
    "TpmCredential",
    "TpmReenrolled",
    "TpmRollback",
    "ClusterMember",
    "ClusterQuorum",
    "Usage",
    "UsageDecrement",
    "UsageDenied",
    "Witness",
    "WitnessMismatch",
    "export_report",
    "findings",
    "hash_at",
    "parse_payload",
    "read_head",
    "recent_heads",
    "records",
]
