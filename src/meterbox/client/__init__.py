"""meterbox.client: the SDK applications embed for floating seats and metered usage.

Public names are listed in ``__all__``; everything in modules starting with ``_`` is
internal. ``Client`` (blocking) and ``AsyncClient`` (asyncio) drive the same sans-I/O
core, so they send the same requests and raise the same errors (see ``errors``).
Usage is written ahead to a durable SQLite spool and deleted only once the server
acknowledges it, so no unit is lost when the server is unreachable or the process dies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> (module, attribute). Names are imported on first use (PEP 562), so
# ``import meterbox.client`` and the ``meterbox client`` commands load the blocking
# client without the asynchronous driver and asyncio unless they are used.
_HOMES: dict[str, tuple[str, str]] = {
    "AsyncClient": ("meterbox.client._async", "AsyncClient"),
    "AsyncSeat": ("meterbox.client._async", "AsyncSeat"),
    "Balance": ("meterbox.client._core", "Balance"),
    "Borrow": ("meterbox.client._borrow", "Borrow"),
    "DeadLetter": ("meterbox.client._core", "DeadLetter"),
    "FlushResult": ("meterbox.client._core", "FlushResult"),
    "Lease": ("meterbox.client._core", "Lease"),
    "RecordResult": ("meterbox.client._core", "RecordResult"),
    "RetryConfig": ("meterbox.client._core", "RetryConfig"),
    "UsageEvent": ("meterbox.client._core", "UsageEvent"),
    "UsageReceipt": ("meterbox.client._core", "UsageReceipt"),
    "Spool": ("meterbox.client._spool", "Spool"),
    "SpooledEvent": ("meterbox.client._spool", "SpooledEvent"),
    "Client": ("meterbox.client._sync", "Client"),
    "Seat": ("meterbox.client._sync", "Seat"),
    "BadRequestError": ("meterbox.client.errors", "BadRequestError"),
    "BorrowRefused": ("meterbox.client.errors", "BorrowRefused"),
    "IdempotencyConflictError": ("meterbox.client.errors", "IdempotencyConflictError"),
    "LeaseLost": ("meterbox.client.errors", "LeaseLost"),
    "LicenseExpired": ("meterbox.client.errors", "LicenseExpired"),
    "NoSeatAvailable": ("meterbox.client.errors", "NoSeatAvailable"),
    "ProtocolError": ("meterbox.client.errors", "ProtocolError"),
    "QuotaExceeded": ("meterbox.client.errors", "QuotaExceeded"),
    "ReportOverdue": ("meterbox.client.errors", "ReportOverdue"),
    "ServerUnreachableError": ("meterbox.client.errors", "ServerUnreachableError"),
    "SpoolError": ("meterbox.client.errors", "SpoolError"),
    "UnknownFeature": ("meterbox.client.errors", "UnknownFeature"),
    "UnknownMeter": ("meterbox.client.errors", "UnknownMeter"),
}

if TYPE_CHECKING:
    from meterbox.client._async import AsyncClient, AsyncSeat
    from meterbox.client._borrow import Borrow
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
        BorrowRefused,
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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'meterbox.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(home[0]), home[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names plus submodules already imported; not this module's helpers.
    helpers = {"importlib", "TYPE_CHECKING", "Any"}
    return sorted({*globals(), *_HOMES} - helpers)


__all__ = [
    "AsyncClient",
    "AsyncSeat",
    "BadRequestError",
    "Balance",
    "Borrow",
    "BorrowRefused",
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
