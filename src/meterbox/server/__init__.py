"""meterbox.server: the on-site license server.

Public entry points: :class:`Engine` (pure decisions), :class:`StateStore` (SQLite),
:class:`LicenseService` (the shell that orders, records and persists decisions),
:func:`create_app` (the FastAPI app of ``docs/api.md``), the :class:`EventSink`
protocol with :class:`LedgerEventSink` and the test/debug :class:`FileEventSink`,
and the license policy types with :func:`policy_from_license`.
"""

from __future__ import annotations

from meterbox.server._app import Limits, create_app
from meterbox.server._core.clock import ClockStep, LicenseClock
from meterbox.server._core.engine import Engine, ReceiptInfo
from meterbox.server._core.policy import (
    FeaturePolicy,
    LicensePolicy,
    MeterPolicy,
    policy_from_license,
)
from meterbox.server._service import LicenseService, Settings
from meterbox.server._sinks import EventSink, FileEventSink, LedgerEventSink
from meterbox.server._state import StateStore

__all__ = [
    "ClockStep",
    "Engine",
    "EventSink",
    "FeaturePolicy",
    "FileEventSink",
    "LedgerEventSink",
    "LicenseClock",
    "LicensePolicy",
    "LicenseService",
    "Limits",
    "MeterPolicy",
    "ReceiptInfo",
    "Settings",
    "StateStore",
    "create_app",
    "policy_from_license",
]
