"""API documentation pages, /docs (Swagger UI) and /redoc (ReDoc), served offline.

The JavaScript and CSS are files of this package (``assets/``, vendored byte for byte
from the pinned npm packages by ``scripts/fetch_api_docs_assets.py``, with their
licences and a sha256 manifest), never a CDN: the server runs on hosts with no
network. The pages hold no inline script (each starts its viewer from a small file in
``init/``), so the Content-Security-Policy allows scripts from the server only.

Only the files named in :data:`FILES` are served; a request for any other name is 404,
so no path reaches the file system.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files
from typing import Final

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

ASSET_PREFIX: Final = "/docs/assets/"

#: Served name -> (package-relative file, media type).
FILES: Final = {
    "swagger-ui-bundle.js": ("assets/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("assets/swagger-ui.css", "text/css"),
    "redoc.standalone.js": ("assets/redoc.standalone.js", "text/javascript"),
    "swagger-init.js": ("init/swagger-init.js", "text/javascript"),
    "redoc-init.js": ("init/redoc-init.js", "text/javascript"),
    "swagger-ui-LICENSE": ("assets/swagger-ui-LICENSE", "text/plain"),
    "swagger-ui-NOTICE": ("assets/swagger-ui-NOTICE", "text/plain"),
    "redoc-LICENSE": ("assets/redoc-LICENSE", "text/plain"),
    "redoc.standalone.js.LICENSE.txt": ("assets/redoc.standalone.js.LICENSE.txt", "text/plain"),
    "swagger-ui-bundle.js.LICENSE.txt": ("assets/swagger-ui-bundle.js.LICENSE.txt", "text/plain"),
}

#: The dashboard's policy (server/_dashboard), with what the two viewers need beyond it:
#: ReDoc's styled-components insert <style> elements ('unsafe-inline' for styles; scripts
#: stay 'self' only), its search runs in a blob: worker, and Swagger UI's icons are
#: data: images.
SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src blob:; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
{styles}</head>
<body>
<div id="{root}" data-openapi="{openapi}"></div>
{scripts}</body>
</html>
"""


def _page(title: str, root: str, openapi: str, css: list[str], js: list[str]) -> str:
    styles = "".join(f'<link rel="stylesheet" href="{ASSET_PREFIX}{n}">\n' for n in css)
    scripts = "".join(f'<script src="{ASSET_PREFIX}{n}"></script>\n' for n in js)
    return _PAGE.format(
        title=escape(title), root=root, openapi=escape(openapi), styles=styles, scripts=scripts
    )


def _read(name: str) -> bytes:
    path, _ = FILES[name]
    return files(__package__).joinpath(path).read_bytes()


def add_api_docs(app: FastAPI, *, openapi_url: str = "/openapi.json") -> None:
    """Serve /docs, /redoc and their files on ``app`` (built with docs_url=None)."""
    swagger = _page(
        f"{app.title} - Swagger UI",
        "swagger-ui",
        openapi_url,
        ["swagger-ui.css"],
        ["swagger-ui-bundle.js", "swagger-init.js"],
    )
    redoc = _page(
        f"{app.title} - ReDoc", "redoc", openapi_url, [], ["redoc.standalone.js", "redoc-init.js"]
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_page() -> HTMLResponse:
        return HTMLResponse(swagger, headers=SECURITY_HEADERS)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page() -> HTMLResponse:
        return HTMLResponse(redoc, headers=SECURITY_HEADERS)

    @app.get(ASSET_PREFIX + "{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in FILES:
            return Response(status_code=404)
        _, media_type = FILES[name]
        headers = {**SECURITY_HEADERS, "cache-control": "public, max-age=3600"}
        return Response(_read(name), media_type=media_type, headers=headers)
