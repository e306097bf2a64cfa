"""Assembles a runnable server: instance + HTTP app + Cryptolens-compatible API."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from meterbox.clock import Clock
from meterbox.server._activity import ACTIVITY_FILE, ActivityLog
from meterbox.server._app import HttpLimitsConfig, build_app
from meterbox.server._cluster import coordinator_for
from meterbox.server._cryptolens import mount_cryptolens
from meterbox.server._dashboard import build_site_dashboard
from meterbox.server._instance import ServerInstance, read_admin_token
from meterbox.server._keys import KeyStore
from meterbox.server._service import LicenseService, ServiceConfig, Sleep
from meterbox.server._site_options import read_options


@dataclass
class BuiltServer:
    app: ASGIApp
    instance: ServerInstance

    def close(self) -> None:
        if self.instance.service.activity is not None:
            self.instance.service.activity.close()
        self.instance.close()


def _note_licenses(service: LicenseService) -> None:
    """The activity log says which licenses this run serves, and until when."""
    if service.activity is None:
        return
    now = service.now()
    for lic in service.engine.ordered():
        deadline = service.engine.report_deadline(lic)
        service.activity.write(
            now,
            "license",
            license_id=lic.license_id,
            expires=lic.expires.isoformat() if lic.expires else None,
            report_deadline=deadline.isoformat() if deadline else None,
            features=sorted(lic.features),
        )


def build_server(  # noqa: PLR0913 - keyword-only wiring of the optional parts
    data: Path,
    *,
    clock: Clock | None = None,
    settings: ServiceConfig | None = None,
    limits: HttpLimitsConfig | None = None,
    force_recover: bool = False,
    sleep: Sleep = asyncio.sleep,
    require_api_key: bool = False,
    activity_log: Path | None = None,
    cluster: str | None = None,
    advertise_url: str = "",
    cluster_tls: tuple[Path | None, Path | None, Path | None] = (None, None, None),
) -> BuiltServer:
    """The app serving ``data``; ``sleep`` paces the housekeeping loop (see LicenseService).

    ``require_api_key`` refuses seat and usage requests without a site API key
    (``server run`` sets it whenever it listens beyond loopback); ``activity_log`` is
    the admin's activity log file (default ``DATA/activity.jsonl``); ``cluster`` is
    ``etcd://...`` to share seats with other nodes (docs/adr/0024), ``advertise_url``
    this node's base URL as ``GET /v1/cluster`` lists it, ``cluster_tls`` the CA bundle,
    client certificate and key for ``etcds://`` (docs/adr/0035). The cluster settings
    are checked, and etcd asked, before the ledger is opened.
    """
    ca, cert, key = cluster_tls
    coordinator = coordinator_for(cluster, url=advertise_url, ca=ca, cert=cert, key=key)
    keys = KeyStore.open(data)
    options = read_options(data)  # a bad options file refuses the start, before the ledger
    instance = ServerInstance.open(
        data, clock=clock, settings=settings, force_recover=force_recover, sleep=sleep
    )

    instance.service.engine.options = options
    instance.service.cluster = coordinator
    instance.service.cluster_sync = instance.sync_cluster
    instance.service.quota_book = lambda: copy.deepcopy(instance.fold.view.quota)
    instance.service.engine.options_on_claim = coordinator.shared
    activity = ActivityLog(activity_log or data / ACTIVITY_FILE)
    instance.service.activity = activity
    _note_licenses(instance.service)

    async def export_handler(_: LicenseService) -> bytes:
        return instance.export_bytes()

    async def import_handler(_: LicenseService, blob: bytes) -> Mapping[str, Any]:
        return await instance.import_bytes(blob)

    app: ASGIApp = build_app(
        instance.service,
        admin_token=read_admin_token(data),
        limits=limits or HttpLimitsConfig(),
        export_report=export_handler,
        import_file=import_handler,
        keys=keys,
        require_api_key=require_api_key,
        reload_options=lambda: read_options(data),
    )
    try:
        # Cryptolens SDKs call /api/...; everything else reaches the meterbox app.
        app = mount_cryptolens(app, instance)
        # The site admin dashboard answers /, /login, /logout and /ui/ only.
        app = build_site_dashboard(app, instance)
    except BaseException:
        instance.close()
        raise
    return BuiltServer(app, instance)
