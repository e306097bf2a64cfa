"""``GET /v1/cluster``: which nodes serve this site, so a client can find them from one.

The JSON contract (ADR 0026)::

    {"mode": "single" | "etcd", "node": "<instance id>",
     "members": [{"node": "<instance id>", "url": "<advertised base URL>", "alive": true}],
     "quorum": true | false}

This module answers for a single server (mode ``single``): the only member is this
node, at its advertised URL. A clustered server replaces the view by setting
``app.state.cluster_view`` to a callable returning the same shape; nothing else here
changes. Like ``/healthz`` it needs no credentials: it names only URLs the clients are
configured with anyway and instance ids every report carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel

from meterbox.server._service import LicenseService


class MemberOut(BaseModel):
    node: str
    url: str
    alive: bool


class ClusterOut(BaseModel):
    mode: Literal["single", "etcd"]
    node: str
    members: list[MemberOut]
    quorum: bool


#: What a clustered server installs as ``app.state.cluster_view``.
ClusterView = Callable[[], ClusterOut]


def own_url(request: Request, advertised: str | None) -> str:
    """This node's base URL: the advertised one, else the one the client reached it by."""
    if advertised:
        return advertised.rstrip("/")
    return str(request.base_url).rstrip("/")


def add_cluster_view(app: FastAPI, service: LicenseService) -> None:
    """Register ``GET /v1/cluster`` on ``app``."""

    @app.get("/v1/cluster")
    async def cluster(request: Request) -> ClusterOut:
        view: ClusterView | None = getattr(app.state, "cluster_view", None)
        if view is not None:
            return view()
        url = own_url(request, getattr(app.state, "advertise_url", None))
        me = MemberOut(node=service.instance_id, url=url, alive=True)
        return ClusterOut(mode="single", node=service.instance_id, members=[me], quorum=True)
