"""The vendor dashboard: a local, read-only web app over the vendor store.

Pages: overview (customers, licenses, instances, ingested reports), one report's
findings by severity with explanations, usage per meter per day and peak seats per
hour, the bill of a month (HTML and CSV), and every finding with its meaning.

Security (docs/adr/0008-dashboards.md): the app only reads, serves loopback only, and
refuses requests whose ``Host`` is not a loopback name, so a web page the vendor
visits cannot read it through DNS rebinding. It needs no token: anyone who can reach
a loopback port on the vendor's machine can already read ``vendor.db``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from jinja2 import Environment, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route

from meterbox._web import dashboard_loader, dashboard_static
from meterbox.clock import Clock, SystemClock
from meterbox.errors import ConfigError, MeterboxError
from meterbox.vendorkit.anomaly import CODES
from meterbox.vendorkit.billing import Period, bill
from meterbox.vendorkit.dashboard import _data
from meterbox.vendorkit.dashboard._data import Source
from meterbox.webcharts import Series, bar_chart, line_chart

SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _env() -> Environment:
    env = Environment(
        loader=dashboard_loader("meterbox.vendorkit.dashboard"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _data.when
    env.filters["number"] = lambda v: "—" if v is None else f"{int(v):,}"
    return env


def _period(request: Request, now: datetime) -> Period:
    text = request.query_params.get("period") or now.strftime("%Y-%m")
    return Period.parse(text)


def _not_found(
    page: Callable[..., HTMLResponse],
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The styled 404 page, for any address the dashboard does not serve."""

    async def not_found(_: Request, exc: Exception) -> Response:
        del exc
        return page(
            "error.html",
            http_status=404,
            nav="",
            heading="Page not found",
            message="There is no page at this address. Use the links above, or go to the overview.",
        )

    return not_found


def build_vendor_dashboard(src: Source, *, clock: Clock | None = None) -> Starlette:
    """Build the dashboard for the vendor data at ``src``; ``clock`` gives the current period."""
    env = _env()
    time_source = clock or SystemClock()

    def now() -> datetime:
        return time_source.now()

    def page(name: str, http_status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(**ctx)
        return HTMLResponse(html, status_code=http_status, headers=SECURITY_HEADERS)

    def problem(exc: MeterboxError) -> HTMLResponse:
        return page("error.html", http_status=400, message=exc.render(), nav="")

    async def index(_: Request) -> Response:
        return page("overview.html", nav="overview", **_data.overview(src))

    async def report(request: Request) -> Response:
        row = _data.report_detail(src, request.path_params["digest"])
        if row is None:
            return page(
                "error.html",
                http_status=404,
                nav="overview",
                message="No report with that digest is in this vendor store. "
                "Pick one from the overview.",
            )
        return page("report.html", nav="overview", report=row)

    async def usage(request: Request) -> Response:
        try:
            period = _period(request, now())
        except ConfigError as exc:
            return problem(exc)
        start = date(period.year, period.month, 1)
        end = (start + timedelta(days=32)).replace(day=1)
        daily = _data.daily_usage(src, start, end, today=now().astimezone(UTC).date())
        charts = []
        for meter, per_license in daily.items():
            series = [
                Series(lic, tuple((float(d.toordinal()), float(u)) for d, u in days))
                for lic, days in per_license.items()
            ]
            charts.append(
                {
                    "meter": meter,
                    "per_license": per_license,
                    "chart": line_chart(
                        series,
                        title=f"Units of {meter} per day, {period}",
                        x_label=lambda v: date.fromordinal(round(v)).strftime("%d %b"),
                    ),
                }
            )
        statement = bill(src.home, period, store_url=src.store_url)
        peaks = _peak_charts(statement.seats)
        return page(
            "usage.html", nav="usage", period=str(period), charts=charts, peaks=peaks,
        )  # fmt: skip

    async def bill_page(request: Request) -> Response:
        try:
            period = _period(request, now())
            statement = bill(src.home, period, store_url=src.store_url)
        except ConfigError as exc:
            return problem(exc)
        return page(
            "bill.html",
            nav="bill",
            period=str(period),
            statement=statement,
            total_overage=sum(m.overage for m in statement.meters),
        )

    async def bill_csv(request: Request) -> Response:
        try:
            period = _period(request, now())
            statement = bill(src.home, period, store_url=src.store_url)
        except ConfigError as exc:
            return problem(exc)
        return Response(
            statement.to_csv(),
            media_type="text/csv; charset=utf-8",
            headers={
                **SECURITY_HEADERS,
                "content-disposition": f'attachment; filename="bill-{period}.csv"',
            },
        )

    async def anomalies(_: Request) -> Response:
        findings = _data.all_findings(src)
        return page(
            "anomalies.html", nav="anomalies", findings=findings, codes=sorted(CODES.items())
        )

    return Starlette(
        exception_handlers={404: _not_found(page)},
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/reports/{digest:str}", report, methods=["GET"]),
            Route("/usage", usage, methods=["GET"]),
            Route("/bill", bill_page, methods=["GET"]),
            Route("/bill.csv", bill_csv, methods=["GET"]),
            Route("/anomalies", anomalies, methods=["GET"]),
            Mount("/static", dashboard_static(), name="static"),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))],
    )


def _peak_charts(seats: Any) -> list[dict[str, Any]]:
    """One bar chart per (license, feature): the period's hourly peaks, busiest hours."""
    groups: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
    for s in seats:
        groups.setdefault((s.customer, s.license_id, s.feature), []).append((s.hour, s.peak))
    out = []
    for (customer, lic, feature), hours in sorted(groups.items()):
        hours.sort()
        bars = [(h[5:13].replace("T", " ") + "h", float(p)) for h, p in hours[-48:]]
        out.append(
            {
                "customer": customer,
                "license_id": lic,
                "feature": feature,
                "max": max(p for _, p in hours),
                "hours": hours,
                "chart": bar_chart(bars, title=f"Peak seats of {feature} per hour ({lic})"),
            }
        )
    return out
