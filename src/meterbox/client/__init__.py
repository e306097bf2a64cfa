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

# Public name -> the module defining it. Names are imported on first use (PEP 562), so
# ``import meterbox.client`` and the ``meterbox client`` commands load the blocking
# client without asyncio's client and the asynchronous driver unless they are used.
_HOMES: dict[str, str] = {
    "AsyncClient": "_async",
    "AsyncSeat": "_async",
    "Balance": "_core",
    "DeadLetter": "_core",
    "FlushResult": "_core",
    "Lease": "_core",
    "RecordResult": "_core",
    "RetryPolicy": "_core",
    "UsageEvent": "_core",
    "UsageReceipt": "_core",
    "Spool": "_spool",
    "SpooledEvent": "_spool",
    "Client": "_sync",
    "Seat": "_sync",
    **dict.fromkeys(
        (
            "BadRequestError",
            "IdempotencyConflictError",
            "LeaseLost",
            "LicenseExpired",
            "NoSeatAvailable",
            "ProtocolError",
            "QuotaExceeded",
            "ReportOverdue",
            "ServerUnreachableError",
            "SpoolError",
            "UnknownFeature",
            "UnknownMeter",
        ),
        "errors",
    ),
}

if TYPE_CHECKING:
    from meterbox.client._async import AsyncClient, AsyncSeat
    from meterbox.client._core import (
        Balance,
        DeadLetter,
        FlushResult,
        Lease,
        RecordResult,
        RetryPolicy,
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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'meterbox.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"meterbox.client.{home}"), name)
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
    "RetryPolicy",
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
