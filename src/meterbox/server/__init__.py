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
