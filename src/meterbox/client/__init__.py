"""meterbox.client: the SDK applications embed for floating seats and metered usage.

Public names are listed in ``__all__``; everything in modules starting with ``_`` is
internal. ``Client`` (blocking) and ``AsyncClient`` (asyncio) drive the same sans-I/O
core, so they send the same requests and raise the same errors (see ``errors``).
Usage is written ahead to a durable SQLite spool and deleted only once the server
acknowledges it, so no unit is lost when the server is unreachable or the process dies.
"""

from meterbox.client._async import AsyncClient, AsyncSeat
from meterbox.client._core import (
    Balance,
    DeadLetter,
    FlushResult,
    Lease,
    RecordResult,
    RetryConfig,
    UsageEvent,
    UsageReceipt,
)
from meterbox.client._spool import Spool, SpooledEvent
from meterbox.client._sync import Client, Seat
from meterbox.client.errors import (
    BadRequestError,
    IdempotencyConflictError,
    LeaseLost,
    LicenseExpired,
    NoSeatAvailable,
    ProtocolError,
    QuotaExceeded,
    ReportOverdue,
    ServerUnreachableError,
    SpoolError,
    UnknownFeature,
    UnknownMeter,
)

__all__ = [
    "AsyncClient",
    "AsyncSeat",
    "BadRequestError",
    "Balance",
    "Client",
    "DeadLetter",
    "FlushResult",
    "IdempotencyConflictError",
    "Lease",
    "LeaseLost",
    "LicenseExpired",
    "NoSeatAvailable",
    "ProtocolError",
    "QuotaExceeded",
    "RecordResult",
    "ReportOverdue",
    "RetryConfig",
    "Seat",
    "ServerUnreachableError",
    "Spool",
    "SpoolError",
    "SpooledEvent",
    "UnknownFeature",
    "UnknownMeter",
    "UsageEvent",
    "UsageReceipt",
]
