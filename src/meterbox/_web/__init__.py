"""Web assets both dashboards share: one stylesheet and one page layout.

The site dashboard (``meterbox.server._dashboard``) and the vendor dashboard
(``meterbox.vendorkit.dashboard``) look the same because they render the same
``layout.html`` and serve the same ``dashboard.css``; each keeps only its own
pages and scripts. Invariant: nothing here refers to either dashboard's routes;
a dashboard passes its static path by overriding the ``static`` block.
"""

from __future__ import annotations

from jinja2 import BaseLoader, ChoiceLoader, PackageLoader
from starlette.staticfiles import StaticFiles

__all__ = ["dashboard_loader", "dashboard_static"]

_PACKAGE = "meterbox._web"


def dashboard_loader(package: str) -> BaseLoader:
    """Templates of ``package`` first, then the shared ``layout.html``."""
    return ChoiceLoader([PackageLoader(package, "templates"), PackageLoader(_PACKAGE, "templates")])


def dashboard_static(package: str | None = None) -> StaticFiles:
    """Static files: the shared stylesheet, plus ``package``'s own ``static`` directory."""
    packages: list[str | tuple[str, str]] = [(_PACKAGE, "static")]
    if package is not None:
        packages.insert(0, (package, "static"))
    return StaticFiles(packages=packages)
