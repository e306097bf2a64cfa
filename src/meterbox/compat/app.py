"""The HTTP shell: a Starlette app that answers every path with the service.

Mount it with ``Mount("/api", create_cryptolens_app(...))`` or wrap a whole
server with :func:`with_cryptolens_api` (which also catches ``/API/...`` in
any case). It never redirects: Starlette's ``redirect_slashes`` is off and a
single catch-all ASGI route takes every method and path, so
``/api//data/IncrementIntValueToKey/`` and ``/api//key/activate/`` reach the
service unchanged. Every reply is HTTP 200 JSON, as the SDKs require.

The body is read with a hard cap (:attr:`CryptolensLimitsConfig.max_body_bytes`); a larger
``Content-Length`` is refused before reading.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from meterbox.clock import Clock, SystemClock
from meterbox.compat.backend import CryptolensBackend
from meterbox.compat.errors import CryptolensRequestError, wire_message
from meterbox.compat.service import CryptolensService
from meterbox.compat.signer import CryptolensSigner
from meterbox.compat.wire import CryptolensLimitsConfig

__all__ = ["create_cryptolens_app", "with_cryptolens_api"]


def _json(reply: dict[str, Any]) -> Response:
    body = json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(body, status_code=200, media_type="application/json")


class _BodyTooLargeError(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


def _route_path(scope: Scope) -> str:
    """The path below the mount point (Starlette keeps the full path and sets root_path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class _Endpoint:
    """Catch-all ASGI endpoint; an ASGI callable so Starlette applies no method filter."""

    def __init__(self, service: CryptolensService) -> None:
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        limit = self._service.limits.max_body_bytes
        try:
            body = await _read_body(request, limit)
        except _BodyTooLargeError:
            error = CryptolensRequestError(
                "request body is too large",
                expected=f"at most {limit} bytes",
                found=f"Content-Length {request.headers.get('content-length', 'over the limit')}",
            )
            await _json({"result": 1, "message": wire_message(error)})(scope, receive, send)
            return
        reply = await self._service.handle(
            request.method,
            _route_path(scope),
            body,
            request.headers.get("content-type", ""),
            request.client.host if request.client else "",
        )
        await _json(reply)(scope, receive, send)


def create_cryptolens_app(
    backend: CryptolensBackend,
    signer: CryptolensSigner,
    clock: Clock | None = None,
    limits: CryptolensLimitsConfig | None = None,
) -> Starlette:
    """A Starlette app serving the Cryptolens Web API 3 calls the SDKs make offline."""
    service = CryptolensService(backend, signer, clock or SystemClock(), limits)
    app = Starlette(routes=[Route("/{path:path}", _Endpoint(service))])
    # A 307/308 to the slash-less path breaks every SDK: they do not follow POST redirects.
    app.router.redirect_slashes = False
    return app


def with_cryptolens_api(app: ASGIApp, cryptolens_app: ASGIApp) -> ASGIApp:
    """Send every HTTP request whose first path segment is ``api`` (any case) to ``cryptolens_app``.

    Starlette's ``Mount("/api")`` is case-sensitive; this wrapper is not, and
    keeps the full path so the compat app strips the ``api`` segment itself.
    """

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            first = scope["path"].lstrip("/").split("/", 1)[0]
            if first.lower() == "api":
                await cryptolens_app(scope, receive, send)
                return
        await app(scope, receive, send)

    return dispatch
