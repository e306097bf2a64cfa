"""The site admin's dashboard, served by the license server at ``/``.

``build_site_dashboard(app, instance)`` returns an ASGI app that answers the dashboard's
own paths (``/``, ``/login``, ``/logout``, ``/ui/...``) and hands every other request,
and the lifespan, to ``app`` unchanged: the JSON API under ``/v1/``, the
Cryptolens-compatible API under ``/api/``, ``/healthz``, ``/metrics`` and the OpenAPI
pages behave exactly as without the dashboard.

Security (docs/adr/0008-dashboards.md):

* every page but the login form needs a session (see :mod:`._auth`); the admin token
  is posted once in a form body, never put in a URL or cookie;
* state-changing requests (login, logout, export, import) are POSTs that need the
  session's CSRF token; the cookie is ``SameSite=Strict`` and ``HttpOnly``;
* no CORS headers are ever sent; a strict Content-Security-Policy allows only the
  package's own static files (no inline script, no external origin);
* an import goes through :meth:`ServerInstance.import_bytes`, which verifies the
  document before anything changes, with the same size bound as the admin API.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from jinja2 import Environment, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from meterbox._web import dashboard_loader, dashboard_static
from meterbox.errors import MeterboxError
from meterbox.server._dashboard._auth import COOKIE, Session, Sessions, csrf_ok
from meterbox.server._dashboard._history import HISTORY_DB, UsageHistory
from meterbox.server._dashboard._views import cluster_context, seats_context, site_context
from meterbox.server._instance import MAX_IMPORT_BYTES, ServerInstance, read_admin_token

__all__ = ["SECURITY_HEADERS", "build_site_dashboard"]

#: Sent with every dashboard response. ``img-src data:`` is not needed: charts are inline SVG.
SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}

_UI_EXACT: Final = frozenset({"/", "/login", "/logout"})
_UI_PREFIX: Final = "/ui/"


def _is_ui(path: str) -> bool:
    return path in _UI_EXACT or path.startswith(_UI_PREFIX)


#: Paths that belong to the API (and its docs): a miss there stays the API's JSON 404.
_API_PREFIXES: Final = ("/v1/", "/api/", "/docs", "/redoc", "/openapi.json", "/healthz", "/metrics")


def _is_page_request(scope: Scope) -> bool:
    """A browser asking for a page outside the API: a miss gets the dashboard's own 404."""
    if scope["method"] != "GET" or scope["path"].startswith(_API_PREFIXES):
        return False
    accept = dict(scope.get("headers") or ()).get(b"accept", b"")
    return b"text/html" in accept


def _env() -> Environment:
    env = Environment(
        loader=dashboard_loader("meterbox.server._dashboard"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["number"] = lambda v: "—" if v is None else f"{int(v):,}"
    return env


def _when(value: object) -> str:
    if value is None:
        return "—"
    t = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


class _Router:
    """Dashboard paths to the dashboard, everything else (and the lifespan) to the API."""

    def __init__(self, api: ASGIApp, ui: ASGIApp, after_write: Any) -> None:
        self.api = api
        self.ui = ui
        self.after_write = after_write

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (_is_ui(scope["path"]) or _is_page_request(scope)):
            await self.ui(scope, receive, send)
            return
        await self.api(scope, receive, send)
        if scope["type"] == "http" and scope["method"] == "POST":
            self.after_write()


def build_site_dashboard(app: ASGIApp, instance: ServerInstance) -> ASGIApp:
    """Serve the admin dashboard at ``/`` in front of ``app`` (see the module docstring)."""
    dashboard = _SiteDashboard(instance)
    return _Router(app, dashboard.routes(), dashboard.after_write)


class _SiteDashboard:
    """The dashboard's pages and forms over one server instance."""

    def __init__(self, instance: ServerInstance) -> None:
        self.instance = instance
        self.sessions = Sessions(read_admin_token(instance.data), clock=instance.clock)
        self.history = UsageHistory(Path(instance.data) / HISTORY_DB)
        self.env = _env()
        self.service = instance.service
        self.pending: list[asyncio.Future[None]] = []

    def write_sample(self, at: datetime, balances: list[dict[str, Any]]) -> None:
        try:
            self.history.record(at, balances)
        except Exception:  # the chart's history must never break an API answer
            logging.getLogger("meterbox.server").exception("usage history sample failed")

    def after_write(self) -> None:
        # Read the balances here, on the event loop that owns the engine; write them to
        # disk in a worker thread, so no API answer waits for the chart's file.
        if self.pending and not self.pending[0].done():
            return
        mono = self.instance.clock.mono_ms() / 1000
        if not self.history.due(mono):
            return
        at = self.service.now()
        balances = self.service.engine.balances(at)
        self.pending[:] = [
            asyncio.get_running_loop().run_in_executor(None, self.write_sample, at, balances)
        ]

    def page(self, name: str, http_status: int = 200, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(**ctx)
        return HTMLResponse(html, status_code=http_status, headers=SECURITY_HEADERS)

    def session_of(self, request: Request) -> tuple[str | None, Session | None]:
        sid = request.cookies.get(COOKIE)
        return sid, self.sessions.get(sid)

    def to_login(self, request: Request) -> Response:
        return RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)

    async def index(self, request: Request) -> Response:
        _, session = self.session_of(request)
        if session is None:
            return self.to_login(request)
        flash, session.flash = session.flash, []
        return self.page(
            "index.html",
            csrf=session.csrf,
            flash=flash,
            **site_context(self.instance, self.history),
        )

    async def seats_fragment(self, request: Request) -> Response:
        _, session = self.session_of(request)
        if session is None:
            return Response("session expired", status_code=401, headers=SECURITY_HEADERS)
        return self.page(
            "_seats.html",
            csrf=session.csrf,
            **seats_context(self.instance, self.service.now()),
        )

    async def cluster_fragment(self, request: Request) -> Response:
        _, session = self.session_of(request)
        if session is None:
            return Response("session expired", status_code=401, headers=SECURITY_HEADERS)
        return self.page("_cluster.html", **cluster_context(self.instance))

    async def login_form(self, request: Request) -> Response:
        _, session = self.session_of(request)
        if session is not None:
            return RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        return self.page("login.html", error=None)

    async def login(self, request: Request) -> Response:
        async with request.form(max_files=0, max_fields=4, max_part_size=4096) as form:
            token = form.get("token")
        if not isinstance(token, str) or not self.sessions.check_token(token):
            return self.page(
                "login.html",
                http_status=401,
                error="That is not this server's admin token. Paste the contents of "
                "DATA/admin.token (printed by 'meterbox server init').",
            )
        sid, _ = self.sessions.create()
        response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            sid,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        sid, session = self.session_of(request)
        async with request.form(max_files=0, max_fields=4, max_part_size=4096) as form:
            given = form.get("csrf")
        if session is not None and csrf_ok(session, given):
            self.sessions.drop(sid)
        response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def forbidden(self) -> Response:
        return self.page(
            "error.html",
            http_status=403,
            message="This form has expired or did not come from this dashboard. "
            "Reload the dashboard and try again.",
        )

    async def export(self, request: Request) -> Response:
        _, session = self.session_of(request)
        if session is None:
            return self.to_login(request)
        async with request.form(max_files=0, max_fields=4, max_part_size=4096) as form:
            if not csrf_ok(session, form.get("csrf")):
                return self.forbidden()
        try:
            blob = self.instance.export_bytes()
        except MeterboxError as exc:
            session.flash.append(("error", f"Export failed: {exc.render()}"))
            return RedirectResponse("/#report", status_code=303, headers=SECURITY_HEADERS)
        head = self.instance.writer.head
        name = f"report-{self.instance.writer.instance_id.hex()[:8]}-{head.seq}.mbr"
        return Response(
            blob,
            media_type="application/octet-stream",
            headers={
                **SECURITY_HEADERS,
                "content-disposition": f'attachment; filename="{quote(name)}"',
            },
        )

    async def import_(self, request: Request) -> Response:
        _, session = self.session_of(request)
        if session is None:
            return self.to_login(request)
        # One part of at most the import limit: a bigger upload is refused while parsing.
        async with request.form(
            max_files=1, max_fields=4, max_part_size=MAX_IMPORT_BYTES + 1
        ) as form:
            if not csrf_ok(session, form.get("csrf")):
                return self.forbidden()
            upload = form.get("file")
            blob = await upload.read() if isinstance(upload, UploadFile) else b""
            filename = upload.filename if isinstance(upload, UploadFile) else None
        if not blob:
            session.flash.append(
                (
                    "error",
                    "Nothing imported: choose a receipt, top-up, notice or license file first.",
                )
            )
        else:
            try:
                result = await self.instance.import_bytes(blob)
            except MeterboxError as exc:
                session.flash.append(("error", f"Nothing imported from {filename}: {exc.render()}"))
            else:
                session.flash.append(("ok", _imported(result, filename)))
        return RedirectResponse("/#import", status_code=303, headers=SECURITY_HEADERS)

    async def remove(self, request: Request) -> Response:
        """The Remove button of a seat: recorded as removed by the dashboard's admin."""
        _, session = self.session_of(request)
        if session is None:
            return self.to_login(request)
        async with request.form(max_files=0, max_fields=4, max_part_size=4096) as form:
            if not csrf_ok(session, form.get("csrf")):
                return self.forbidden()
            lease_id = form.get("lease_id")
        if not isinstance(lease_id, str) or not 0 < len(lease_id) <= 64:
            session.flash.append(("error", "Nothing removed: the form named no lease."))
        else:
            try:
                removed = await self.service.remove("admin via dashboard", lease_id=lease_id)
            except MeterboxError as exc:
                session.flash.append(("error", f"Nothing removed: {exc.render()}"))
            else:
                if removed:
                    x = removed[0].lease
                    session.flash.append(
                        ("ok", f"Removed the {x.feature} seat of {x.client_id}; its next "
                         "heartbeat is told why.")
                    )  # fmt: skip
                else:
                    session.flash.append(("error", "Nothing removed: that seat is no longer held."))
        return RedirectResponse("/#seats", status_code=303, headers=SECURITY_HEADERS)

    async def not_found(self, request: Request, exc: Exception) -> Response:
        del exc
        return self.page(
            "error.html",
            http_status=404,
            heading="Page not found",
            message="There is no dashboard page at this address. "
            "Use the links above, or go back to the dashboard.",
        )

    def routes(self) -> Starlette:
        """The dashboard's own Starlette app (only dashboard paths reach it)."""
        return Starlette(
            exception_handlers={404: self.not_found},
            routes=[
                Route("/", self.index, methods=["GET"]),
                Route("/login", self.login_form, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/ui/seats", self.seats_fragment, methods=["GET"]),
                Route("/ui/cluster", self.cluster_fragment, methods=["GET"]),
                Route("/ui/export", self.export, methods=["POST"]),
                Route("/ui/import", self.import_, methods=["POST"]),
                Route("/ui/remove", self.remove, methods=["POST"]),
                Mount("/ui/static", dashboard_static("meterbox.server._dashboard"), name="static"),
            ],
        )


def _imported(result: dict[str, Any], filename: str | None) -> str:
    what = result.get("imported")
    source = f" from {filename}" if filename else ""
    if what == "receipt":
        return (
            f"Receipt {result.get('receipt_id')} imported{source}: the vendor acknowledged the "
            f"ledger up to record {result.get('head_seq')}; "
            f"{result.get('compacted_bytes', 0):,} bytes compacted."
        )
    if what == "topup":
        return f"Top-up {result.get('topup_id')} imported{source}: {result.get('units'):,} units."
    if what == "notice":
        ended = int(result.get("leases_ended", 0))
        return (
            f"Notice {result.get('notice_id')} imported{source}: license "
            f"{result.get('license_id')} is now {result.get('standing')}"
            + (f"; {ended} seat(s) in use were ended." if ended else ".")
        )
    return f"License {result.get('license_id')} installed{source}."
