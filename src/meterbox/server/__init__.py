"""meterbox.server: the on-site license server.

Public entry points: :class:`Engine` (pure decisions), :class:`StateStore` (SQLite),
:class:`LicenseService` (the shell that orders, records and persists decisions),
:func:`create_app` (the FastAPI app of ``docs/api.md``), the :class:`EventSink`
protocol with :class:`LedgerEventSink` and the test/debug :class:`FileEventSink`,
and the license policy types with :func:`policy_from_license`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> (module, attribute). Names are imported on first use (PEP 562), so the
# ``meterbox server`` command group loads the web framework and the state store only
# for the commands that use them, not for ``--help`` or ``status``.
_HOMES: dict[str, tuple[str, str]] = {
    "Limits": ("meterbox.server._app", "Limits"),
    "create_app": ("meterbox.server._app", "create_app"),
    "ClockStep": ("meterbox.server._core.clock", "ClockStep"),
    "LicenseClock": ("meterbox.server._core.clock", "LicenseClock"),
    "Engine": ("meterbox.server._core.engine", "Engine"),
    "ReceiptInfo": ("meterbox.server._core.engine", "ReceiptInfo"),
    "FeaturePolicy": ("meterbox.server._core.policy", "FeaturePolicy"),
    "LicensePolicy": ("meterbox.server._core.policy", "LicensePolicy"),
    "MeterPolicy": ("meterbox.server._core.policy", "MeterPolicy"),
    "policy_from_license": ("meterbox.server._core.policy", "policy_from_license"),
    "LicenseService": ("meterbox.server._service", "LicenseService"),
    "Settings": ("meterbox.server._service", "Settings"),
    "EventSink": ("meterbox.server._sinks", "EventSink"),
    "FileEventSink": ("meterbox.server._sinks", "FileEventSink"),
    "LedgerEventSink": ("meterbox.server._sinks", "LedgerEventSink"),
    "StateStore": ("meterbox.server._state", "StateStore"),
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'meterbox.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(home[0]), home[1])
    globals()[name] = value
    return value


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
