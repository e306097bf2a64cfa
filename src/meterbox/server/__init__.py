"""meterbox.server: the on-site license server.

Exported for the command line, for embedding and for tests:

* :class:`ServerInstance` (a data directory opened: identity, ledger, state,
  service) and :func:`build_server`, which assembles an instance with the HTTP API,
  the Cryptolens-compatible API and the site dashboard into one ASGI app
  (:class:`BuiltServer`);
* :func:`build_app`, the FastAPI app of ``docs/api.md`` over a :class:`LicenseService`
  (which orders, records and persists decisions over a :class:`StateStore`);
* the event sinks :class:`EventSink`, :class:`LedgerEventSink` and the test/debug
  :class:`FileEventSink`;
* the license policy types and :func:`policy_from_license`;
* the tunables :class:`ServiceConfig` and :class:`HttpLimitsConfig`.

The pure decision cores live in ``meterbox.server._core`` and are internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> (module, attribute). Names are imported on first use (PEP 562), so the
# ``meterbox server`` command group loads the web framework and the state store only
# for the commands that use them, not for ``--help`` or ``status``.
_HOMES: dict[str, tuple[str, str]] = {
    "HttpLimitsConfig": ("meterbox.server._app", "HttpLimitsConfig"),
    "build_app": ("meterbox.server._app", "build_app"),
    "FeaturePolicy": ("meterbox.server._core.policy", "FeaturePolicy"),
    "LicensePolicy": ("meterbox.server._core.policy", "LicensePolicy"),
    "MeterPolicy": ("meterbox.server._core.policy", "MeterPolicy"),
    "policy_from_license": ("meterbox.server._core.policy", "policy_from_license"),
    "ServerInstance": ("meterbox.server._instance", "ServerInstance"),
    "BuiltServer": ("meterbox.server._runtime", "BuiltServer"),
    "build_server": ("meterbox.server._runtime", "build_server"),
    "LicenseService": ("meterbox.server._service", "LicenseService"),
    "ServiceConfig": ("meterbox.server._service", "ServiceConfig"),
    "EventSink": ("meterbox.server._sinks", "EventSink"),
    "FileEventSink": ("meterbox.server._sinks", "FileEventSink"),
    "LedgerEventSink": ("meterbox.server._sinks", "LedgerEventSink"),
    "StateStore": ("meterbox.server._state", "StateStore"),
}

if TYPE_CHECKING:
    from meterbox.server._app import HttpLimitsConfig, build_app
    from meterbox.server._core.policy import (
        FeaturePolicy,
        LicensePolicy,
        MeterPolicy,
        policy_from_license,
    )
    from meterbox.server._instance import ServerInstance
    from meterbox.server._runtime import BuiltServer, build_server
    from meterbox.server._service import LicenseService, ServiceConfig
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
    "BuiltServer",
    "EventSink",
    "FeaturePolicy",
    "FileEventSink",
    "HttpLimitsConfig",
    "LedgerEventSink",
    "LicensePolicy",
    "LicenseService",
    "MeterPolicy",
    "ServerInstance",
    "ServiceConfig",
    "StateStore",
    "build_app",
    "build_server",
    "policy_from_license",
]
