"""meterbox.server: the on-site license server.

Public entry points: :class:`Engine` (pure decisions), :class:`StateStore` (SQLite),
:class:`LicenseService` (the shell that orders, records and persists decisions),
:func:`create_app` (the FastAPI app of ``docs/api.md``), the :class:`EventSink`
protocol with :class:`LedgerEventSink` and the test/debug :class:`FileEventSink`,
and the license policy types with :func:`policy_from_license`.
"""

from __future__ import annotations

from ._clock import ClockStep, LicenseClock
from .app import Limits, create_app
from .engine import Engine, ReceiptInfo
from .policy import FeaturePolicy, LicensePolicy, MeterPolicy, policy_from_license
from .service import LicenseService, Settings
from .sinks import EventSink, FileEventSink, LedgerEventSink
from .state import StateStore

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
