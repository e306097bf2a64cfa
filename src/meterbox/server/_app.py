"""The HTTP shell (FastAPI): ``docs/api.md`` v1 on top of :class:`LicenseService`.

Handlers validate bodies (unknown fields refused, sizes bounded), call the service,
and map :class:`meterbox.errors.MeterboxError` codes to HTTP statuses with the
documented error body ``{"error": {"code", "message", "hint"}}``. Admin endpoints
need ``Authorization: Bearer <admin token>``, compared in constant time and never
logged. A background task culls expired leases every ``ServiceConfig.cull_interval`` s.

Seat and usage endpoints take a site API key as ``Authorization: Bearer mbk_...``
(:mod:`meterbox.server._core.access`). With ``require_api_key`` (the default when
the server listens beyond loopback) a request without one is refused with 401; a key
that is presented is always checked, so a revoked key stops working on loopback too.
Lease ids are returned only to the holder: the public seat listing names holders,
never their ids, and renewing or releasing a lease needs the key that took it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterbox import __version__
from meterbox._fs import disk_error
from meterbox.crypto import b64e, ed25519_raw_public
from meterbox.errors import BadRequestError, FormatError, MeterboxError
from meterbox.ledger.records import MAX_AMOUNT
from meterbox.licenses import MAX_BORROW_HOURS
from meterbox.server import _metrics as metrics
from meterbox.server._apidocs import add_api_docs
from meterbox.server._cluster import RETRY_AFTER_S as CLUSTER_RETRY_AFTER_S
from meterbox.server._core.access import ApiKey, KeyRing
from meterbox.server._core.options import SeatOptions
from meterbox.server._core.seats import SeatLease
from meterbox.server._errors import HTTP_STATUS, UnauthorizedError, http_status
from meterbox.server._keys import KeyStore
from meterbox.server._service import LicenseService
from meterbox.witness import HEAD_HEADER, WITNESS_HEADER, WitnessHead, parse_head

#: Export: produce the report file. Import: take a file, return what was imported.
ExportHandler = Callable[[LicenseService], Awaitable[bytes]]
ImportHandler = Callable[[LicenseService, bytes], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True)
class HttpLimitsConfig:
    """Request size limits."""

    max_body_bytes: int = 1 << 20


# --------------------------------------------------------------------- models
#: Longest a checkout may wait in a feature's queue (one request held open that long).
MAX_WAIT_SECONDS = 3600
_NAME = Field(min_length=1, max_length=64)
_CLIENT = Field(min_length=1, max_length=200)
_LEASE_ID = Field(min_length=1, max_length=64)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CheckoutIn(_In):
    feature: Annotated[str, _NAME]
    client_id: Annotated[str, _CLIENT]
    hostname: Annotated[str | None, Field(default=None, max_length=255)] = None
    #: The user the client declares, for the site's seat options (asserted, not proven).
    user: Annotated[str | None, Field(default=None, min_length=1, max_length=200)] = None
    #: Wait up to this many seconds in the feature's FIFO queue instead of a 409 at once.
    wait_seconds: Annotated[int, Field(default=0, ge=0, le=MAX_WAIT_SECONDS)] = 0


class LeaseIdIn(_In):
    lease_id: Annotated[str, _LEASE_ID]


_MACHINE = Field(pattern=r"^[0-9a-f]{64}$")


class BorrowIn(_In):
    """A seat to take away: ``machine`` is the SDK's machine digest, never the code."""

    feature: Annotated[str, _NAME]
    client_id: Annotated[str, _CLIENT]
    hours: Annotated[int, Field(ge=1, le=MAX_BORROW_HOURS)]
    machine: Annotated[str, _MACHINE]
    hostname: Annotated[str | None, Field(default=None, max_length=255)] = None
    user: Annotated[str | None, Field(default=None, min_length=1, max_length=200)] = None


class ReturnIn(_In):
    lease_id: Annotated[str, _LEASE_ID]
    machine: Annotated[str, _MACHINE]


class BorrowOut(BaseModel):
    lease_id: str
    feature: str
    client_id: str
    license_id: str
    expires_at: datetime
    #: The borrow token (docs/spec/borrow.md), one JSON line; the SDK keeps it verbatim.
    token: str
    #: The server's instance public key (raw Ed25519, base64) that signed the token.
    instance_key: str


class ReturnOut(BaseModel):
    returned: bool


class UsageIn(_In):
    meter: Annotated[str, _NAME]
    amount: Annotated[int, Field(ge=1, le=MAX_AMOUNT)]
    client_id: Annotated[str, _CLIENT]
    idempotency_key: Annotated[str | None, Field(default=None, min_length=1, max_length=128)] = None


class LeaseOut(BaseModel):
    lease_id: str
    feature: str
    client_id: str
    expires_at: datetime
    lease_seconds: int
    overdraft: bool
    renewed: bool


class ReleaseOut(BaseModel):
    released: bool


class HolderOut(BaseModel):
    """Who holds a seat, as anyone may see it: never the lease id, which is the holder's secret."""

    client_id: str
    hostname: str | None
    since: datetime
    expires_at: datetime
    overdraft: bool
    #: A seat borrowed for use with no server, until ``expires_at`` or its return.
    borrowed: bool = False


class QueuedOut(BaseModel):
    position: int
    client_id: str
    since: datetime


class FeatureOut(BaseModel):
    feature: str
    seats: int
    overdraft: int
    in_use: int
    #: Seats among ``in_use`` borrowed for use away from the server.
    borrowed: int
    denials: int
    #: Checkouts the site's options file refused (counted apart from ``denials``).
    policy_denials: int
    holders: list[HolderOut]
    #: Checkouts waiting for a seat, first in line first.
    queue: list[QueuedOut]


class AdminLeaseOut(LeaseOut):
    license_id: str
    hostname: str | None
    issued_at: datetime
    key_id: str | None


class AdminSeatsOut(BaseModel):
    leases: list[AdminLeaseOut]


class RemoveIn(_In):
    """Which leases to remove: exactly one of ``lease_id``, ``client_id``, ``hostname``."""

    lease_id: Annotated[str | None, Field(default=None, min_length=1, max_length=64)] = None
    client_id: Annotated[str | None, Field(default=None, min_length=1, max_length=200)] = None
    hostname: Annotated[str | None, Field(default=None, min_length=1, max_length=255)] = None
    #: Who removes them, recorded in the ledger (e.g. ``alice via cli``).
    by: Annotated[str, Field(min_length=1, max_length=100)]
    reason: Annotated[str | None, Field(default=None, min_length=1, max_length=200)] = None


class RemovedOut(BaseModel):
    removed: list[AdminLeaseOut]


class KeyIn(_In):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    group: Annotated[str | None, Field(default=None, min_length=1, max_length=64)] = None
    features: Annotated[list[str] | None, Field(default=None, max_length=100)] = None
    meters: Annotated[list[str] | None, Field(default=None, max_length=100)] = None


class KeyOut(BaseModel):
    key_id: str
    name: str
    group: str | None
    features: list[str] | None
    meters: list[str] | None
    created_at: datetime
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    #: The secret, shown in this answer only; the server keeps its SHA-256 digest.
    token: str


class KeysOut(BaseModel):
    required: bool
    keys: list[KeyOut]


class SeatsOut(BaseModel):
    features: list[FeatureOut]


class UsageOut(BaseModel):
    meter: str
    amount: int
    seq: int | None
    used: int
    limit: int | None
    remaining: int | None
    flagged: bool
    replayed: bool
    license_id: str
    #: The ledger head this answer carries, as in the ``Meterbox-Head`` header.
    head: str | None = None


class BalanceOut(BaseModel):
    meter: str
    license_id: str
    limit: int | None
    period: str
    period_start: str | None
    used: int
    remaining: int | None
    over_limit: str


class BalancesOut(BaseModel):
    meters: list[BalanceOut]


class LicensesOut(BaseModel):
    licenses: list[dict[str, Any]]


class HealthOut(BaseModel):
    ok: bool
    #: Only in a cluster: GET /v1/cluster's answer (quorum, members, problem).
    cluster: dict[str, Any] | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    hint: str | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


def _lease_out(lease: SeatLease, renewed: bool = False) -> LeaseOut:
    return LeaseOut(
        lease_id=lease.lease_id,
        feature=lease.feature,
        client_id=lease.client_id,
        expires_at=lease.expires_at,
        lease_seconds=lease.lease_seconds,
        overdraft=lease.overdraft,
        renewed=renewed,
    )


def _json(model: BaseModel) -> Response:
    """Serialise a reply model directly: the hot endpoints skip FastAPI's second validation
    of a model built a line earlier (their ``response_model`` still documents them)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _error(
    code: str, message: str, hint: str | None = None, status: int | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if hint:
        body["hint"] = hint
    return JSONResponse({"error": body}, status_code=status or http_status(code))


class _BodyLimit:
    """Refuse bodies over the limit with 413 before any handler reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _error(
            "too_large",
            f"Request body too large. Expected at most {self.max_bytes} bytes.",
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await too_large(scope, receive, send)
                return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await too_large(scope, receive, send)
                return
            more = bool(message.get("more_body", False))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _witnessed(request: Request) -> WitnessHead | None:
    """The ``Meterbox-Witness`` head a client sent, if any; 400 before anything is written."""
    values = request.headers.getlist(WITNESS_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequestError(
            f"More than one {WITNESS_HEADER} header",
            expected="at most one, carrying the latest ledger head the client holds",
            found=f"{len(values)} headers",
            hint="See docs/spec/witness.md",
        )
    try:
        return parse_head(values[0])
    except FormatError as exc:
        raise BadRequestError(
            f"{WITNESS_HEADER} header not as specified: {exc.problem}",
            expected=exc.expected,
            found=exc.found,
            hint="Send the last Meterbox-Head value this server answered, unchanged "
            "(docs/spec/witness.md)",
        ) from None


_Witnessed = Annotated[WitnessHead | None, Depends(_witnessed)]


def _with_head(service: LicenseService, response: Response) -> Response:
    """Attach the ledger head (``Meterbox-Head``) to an acknowledgement of a state change."""
    head = service.head_to_hand_out()
    if head is not None:
        response.headers[HEAD_HEADER] = head.to_header()
    return response


_BEARER = HTTPBearer(auto_error=False, description="The admin token of this server.")
_AdminCreds = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
_KEY_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A site API key (`meterbox server keys create`), 'mbk_...'.",
)
_KeyCreds = Annotated[HTTPAuthorizationCredentials | None, Depends(_KEY_BEARER)]


def build_app(  # noqa: PLR0913 - keyword-only wiring of the optional handlers
    service: LicenseService,
    *,
    admin_token: str,
    limits: HttpLimitsConfig = HttpLimitsConfig(),
    export_report: ExportHandler | None = None,
    import_file: ImportHandler | None = None,
    housekeeping: bool = True,
    keys: KeyStore | None = None,
    require_api_key: bool = False,
    reload_options: Callable[[], SeatOptions] | None = None,
) -> FastAPI:
    """Build the HTTP app for ``service``. ``admin_token`` must be at least 16 characters.

    ``keys`` are the site's API keys (none: every presented key is refused);
    ``require_api_key`` refuses seat and usage requests that present no key;
    ``reload_options`` reads the site's options file again (``/v1/admin/options/reload``).
    """
    if len(admin_token) < 16:
        raise ValueError("admin_token must be at least 16 characters")
    app = FastAPI(
        title="meterbox license server",
        version=__version__,
        lifespan=_lifespan(service, housekeeping),
        description="On-site floating seats and metered usage, every event in a sealed ledger.",
        # /docs and /redoc come from the package's files, not FastAPI's CDN pages.
        docs_url=None,
        redoc_url=None,
    )
    add_api_docs(app)
    _add_error_handlers(app)
    access = _Access(keys, require_api_key)
    _add_seat_and_usage_routes(app, service, access)
    _add_borrow_routes(app, service, access)
    _add_status_routes(app, service)
    _add_admin_routes(app, service, admin_token.encode(), export_report, import_file)
    _add_key_routes(app, service, admin_token.encode(), access)
    _add_options_route(app, service, admin_token.encode(), reload_options)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(_BodyLimit, max_bytes=limits.max_body_bytes)
    return app


def _lifespan(
    service: LicenseService, housekeeping: bool
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start_cluster()
        task = asyncio.create_task(service.run_housekeeping()) if housekeeping else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await service.leave_cluster()
            await service.aclose()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MeterboxError)
    async def _meterbox_error(_: Request, exc: MeterboxError) -> JSONResponse:
        code = exc.code if exc.code in HTTP_STATUS else "bad_request"
        response = _error(code, exc.render(), exc.hint)
        if exc.code == "unauthorized":
            response.headers["WWW-Authenticate"] = "Bearer"
        if exc.code == "cluster_unavailable":
            # Clients fail over to another node now, and come back here after this.
            response.headers["Retry-After"] = str(CLUSTER_RETRY_AFTER_S)
        return response

    @app.exception_handler(OSError)
    async def _os_error(_: Request, exc: OSError) -> JSONResponse:
        # A durable write that failed below the paths that name their own error: the
        # client still gets JSON, 507 when the disk is full, else 503 (retry later).
        err = disk_error("the server could not write its data directory", exc)
        code = err.code if err.code in HTTP_STATUS else "unavailable"
        return _error(code, err.render(), err.hint)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _error(
            "bad_request",
            f"Request not as documented. Found {problems}.",
            "See docs/api.md or /openapi.json for the request schema",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Framework refusals (no route, wrong method, a body that is not JSON) say what
        # was expected and found, like every other error of this API.
        code = "not_found" if exc.status_code == 404 else "bad_request"
        if exc.status_code == 404:
            expected = "a path documented in docs/api.md"
            found = repr(request.url.path[:100])
        elif exc.status_code == 405:
            expected = "a method documented in docs/api.md for this path"
            found = request.method[:16]
        else:
            expected = "a request as documented in docs/api.md (JSON bodies are UTF-8 objects)"
            found = f"HTTP {exc.status_code}: {str(exc.detail)[:200]}"
        message = f"{str(exc.detail).rstrip('.')}. Expected {expected}. Found {found}."
        return _error(code, message, status=exc.status_code)


class _Access:
    """Who a seat or usage request comes from: its API key, or ``None`` where keys are optional."""

    def __init__(self, keys: KeyStore | None, required: bool) -> None:
        self.keys = keys
        self.required = required

    @property
    def ring(self) -> KeyRing:
        return self.keys.ring if self.keys is not None else KeyRing()

    def __call__(self, creds: _KeyCreds) -> ApiKey | None:
        if creds is None:
            if self.required:
                raise UnauthorizedError(
                    "This server needs a site API key for seats and usage",
                    expected="an 'Authorization: Bearer mbk_...' header",
                    found="no key",
                    hint="Pass the key the site administrator gave you (api_key= in the SDK, "
                    "--api-key or METERBOX_API_KEY on the command line)",
                )
            return None
        # Checked whenever presented, so a revoked key fails even where keys are optional.
        return self.ring.authenticate(creds.credentials)


def _key_id(key: ApiKey | None) -> str | None:
    return None if key is None else key.key_id


def _holder(lease: SeatLease) -> HolderOut:
    return HolderOut(
        client_id=lease.client_id,
        hostname=lease.hostname,
        since=lease.issued_at,
        expires_at=lease.expires_at,
        overdraft=lease.overdraft,
        borrowed=lease.borrowed,
    )


def _add_seat_and_usage_routes(app: FastAPI, service: LicenseService, access: _Access) -> None:
    # A default, not an Annotated alias: with postponed annotations FastAPI resolves
    # annotation names in the module, where a local alias does not exist.
    caller = Depends(access)

    # ----------------------------------------------------------------- seats
    @app.post(
        "/v1/seats/checkout",
        response_model=LeaseOut,
        responses=_errors(400, 401, 403, 404, 409, 413, 503),
    )
    async def checkout(
        body: CheckoutIn, request: Request, witness: _Witnessed, key: ApiKey | None = caller
    ) -> Response:
        if key is not None:
            key.allow_feature(body.feature)
        if witness is not None:
            await service.witness(body.client_id, witness)
        group = None if key is None else key.group
        if body.wait_seconds:
            d = await service.checkout_waiting(
                body.feature,
                body.client_id,
                body.wait_seconds,
                hostname=body.hostname,
                key_id=_key_id(key),
                user=body.user,
                group=group,
                gone=request.is_disconnected,
            )
        else:
            d = await service.checkout(
                body.feature,
                body.client_id,
                body.hostname,
                key_id=_key_id(key),
                user=body.user,
                group=group,
            )
        return _with_head(service, _json(_lease_out(d.lease, d.renewed)))

    async def lease_witness(lease_id: str, witness: WitnessHead | None) -> None:
        if witness is not None:
            lease = service.engine.seats.leases.get(lease_id)
            await service.witness(lease.client_id if lease is not None else None, witness)

    @app.post(
        "/v1/seats/heartbeat",
        response_model=LeaseOut,
        responses=_errors(400, 401, 403, 404, 410, 413, 503),
    )
    async def heartbeat(
        body: LeaseIdIn, witness: _Witnessed, key: ApiKey | None = caller
    ) -> Response:
        await lease_witness(body.lease_id, witness)
        d = await service.heartbeat(body.lease_id, key_id=_key_id(key))
        return _with_head(service, _json(_lease_out(d.lease, True)))

    @app.post("/v1/seats/release", response_model=ReleaseOut, responses=_errors(400, 401, 413, 503))
    async def release(
        body: LeaseIdIn, witness: _Witnessed, key: ApiKey | None = caller
    ) -> Response:
        await lease_witness(body.lease_id, witness)
        released = await service.release(body.lease_id, key_id=_key_id(key))
        return _with_head(service, _json(ReleaseOut(released=released)))

    @app.get("/v1/seats")
    async def seats() -> SeatsOut:
        view = service.engine.seats_view(service.now())
        return SeatsOut(
            features=[
                FeatureOut(
                    feature=f["feature"],
                    seats=f["seats"],
                    overdraft=f["overdraft"],
                    in_use=f["in_use"],
                    borrowed=f["borrowed"],
                    denials=f["denials"],
                    policy_denials=f["policy_denials"],
                    holders=[_holder(x) for x in f["leases"]],
                    queue=[QueuedOut(**q) for q in service.queue_view(f["feature"])],
                )
                for f in view
            ]
        )

    # ----------------------------------------------------------------- usage
    @app.post(
        "/v1/usage",
        response_model=UsageOut,
        responses=_errors(400, 401, 402, 403, 404, 409, 413, 503),
    )
    async def usage(body: UsageIn, witness: _Witnessed, key: ApiKey | None = caller) -> Response:
        if key is not None:
            key.allow_meter(body.meter)
        if witness is not None:
            await service.witness(body.client_id, witness)
        r = await service.usage(body.meter, body.amount, body.client_id, body.idempotency_key)
        head = service.head_to_hand_out()
        response = _json(
            UsageOut(
                meter=r.meter,
                amount=r.amount,
                seq=r.seq,
                used=r.used,
                limit=r.limit,
                remaining=r.remaining,
                flagged=r.flagged,
                replayed=r.replayed,
                license_id=r.license_id,
                head=head.to_header() if head is not None else None,
            )
        )
        if head is not None:
            response.headers[HEAD_HEADER] = head.to_header()
        return response

    @app.get("/v1/usage/balances")
    async def balances() -> BalancesOut:
        return BalancesOut(meters=[BalanceOut(**b) for b in service.engine.balances(service.now())])


def _add_borrow_routes(app: FastAPI, service: LicenseService, access: _Access) -> None:
    caller = Depends(access)

    @app.post(
        "/v1/seats/borrow",
        response_model=BorrowOut,
        responses=_errors(400, 401, 403, 404, 409, 413, 503),
    )
    async def borrow(body: BorrowIn, key: ApiKey | None = caller) -> Response:
        if key is not None:
            key.allow_feature(body.feature)
        lease, token = await service.borrow(
            body.feature,
            body.client_id,
            body.hours,
            body.machine,
            hostname=body.hostname,
            key_id=_key_id(key),
            user=body.user,
            group=None if key is None else key.group,
        )
        signer = service.borrow_signer
        assert signer is not None
        return _json(
            BorrowOut(
                lease_id=lease.lease_id,
                feature=lease.feature,
                client_id=lease.client_id,
                license_id=lease.license_id,
                expires_at=lease.expires_at,
                token=token.decode("ascii"),
                instance_key=b64e(ed25519_raw_public(signer.private_key.public_key())),
            )
        )

    @app.post(
        "/v1/seats/return", response_model=ReturnOut, responses=_errors(400, 401, 409, 413, 503)
    )
    async def return_borrow(body: ReturnIn, key: ApiKey | None = caller) -> Response:
        returned = await service.return_borrow(body.lease_id, body.machine, key_id=_key_id(key))
        return _json(ReturnOut(returned=returned))


def _add_status_routes(app: FastAPI, service: LicenseService) -> None:
    # ------------------------------------------------------- licenses/status
    @app.get("/v1/licenses")
    async def licenses() -> LicensesOut:
        return LicensesOut(licenses=[lic.summary() for lic in service.engine.ordered()])

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return service.status()

    @app.get("/healthz", response_model=HealthOut, response_model_exclude_none=True)
    async def healthz() -> Response:
        if not service.cluster.shared:
            return Response(
                HealthOut(ok=True).model_dump_json(exclude_none=True), media_type="application/json"
            )
        view = service.cluster.view()
        body = HealthOut(ok=view.quorum, cluster=view.to_json())
        return JSONResponse(
            body.model_dump(exclude_none=True),
            status_code=200 if view.quorum else 503,
            headers=None if view.quorum else {"Retry-After": str(CLUSTER_RETRY_AFTER_S)},
        )

    @app.get("/v1/cluster")
    async def cluster(request: Request) -> dict[str, Any]:
        view = service.cluster.view().to_json()
        if not service.cluster.shared:
            # The one member is this server, at the URL it was reached at unless configured.
            for m in view["members"]:
                m["url"] = m["url"] or str(request.base_url).rstrip("/")
        return view

    def snapshot() -> metrics.Snapshot:
        now = service.now()
        head = service.ledger_head()
        return metrics.Snapshot(
            seats=service.engine.seats_view(now),
            balances=service.engine.balances(now),
            counters=service.counters,
            ledger_seq=head[0] if head else None,
            clock_steps=service.clock_steps,
            report_overdue=bool(service.engine.report_status(now)["overdue"]),
            peaks=service.engine.seats.peaks,
            now=now,
            cluster=service.cluster_stats(),
        )

    # One registry per server: two servers in one process never share metrics.
    registry = metrics.server_registry(snapshot)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition(registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)


def _admin_check(token: bytes) -> Callable[[_AdminCreds], None]:
    def require_admin(creds: _AdminCreds) -> None:
        given = creds.credentials.encode() if creds is not None else b""
        # Constant-time comparison; the token itself is never logged or echoed.
        if creds is None or not hmac.compare_digest(given, token):
            raise UnauthorizedError(
                "Admin endpoint needs the admin token",
                expected="an 'Authorization: Bearer <admin token>' header",
                found="no token" if creds is None else "a token that does not match",
                hint="Use the token printed by `meterbox server init` (admin.token file)",
            )

    return require_admin


def _key_out(key: ApiKey) -> KeyOut:
    return KeyOut(**key.summary())


def _add_key_routes(app: FastAPI, service: LicenseService, token: bytes, access: _Access) -> None:
    admin = [Depends(_admin_check(token))]

    def store() -> KeyStore:
        if access.keys is None:
            raise _not_configured("API key")
        return access.keys

    @app.get("/v1/admin/keys", dependencies=admin, responses=_errors(401))
    async def list_keys() -> KeysOut:
        return KeysOut(required=access.required, keys=[_key_out(k) for k in access.ring])

    @app.post("/v1/admin/keys", dependencies=admin, responses=_errors(400, 401, 503, 507))
    async def create_key(body: KeyIn) -> NewKeyOut:
        new = store().create(
            body.name,
            service.now(),
            group=body.group,
            features=body.features,
            meters=body.meters,
        )
        return NewKeyOut(**new.key.summary(), token=new.token)

    @app.post("/v1/admin/keys/{ref}/revoke", dependencies=admin, responses=_errors(400, 401, 507))
    async def revoke_key(ref: str) -> KeyOut:
        return _key_out(store().revoke(ref[:80], service.now()))

    @app.get("/v1/admin/seats", dependencies=admin, responses=_errors(401))
    async def admin_seats() -> AdminSeatsOut:
        """Every live lease with its id, for the administrator (removal names ids)."""
        now = service.now()
        return AdminSeatsOut(
            leases=[_admin_lease(x) for f in service.engine.seats_view(now) for x in f["leases"]]
        )

    @app.post("/v1/admin/seats/remove", dependencies=admin, responses=_errors(400, 401, 413, 503))
    async def remove_seats(body: RemoveIn) -> RemovedOut:
        """Take live leases away; each is a ``seat.removed`` record naming ``by``."""
        chosen = [x for x in (body.lease_id, body.client_id, body.hostname) if x is not None]
        if len(chosen) != 1:
            raise BadRequestError(
                "A removal names exactly one selector",
                expected="one of lease_id, client_id or hostname",
                found=f"{len(chosen)} of them",
                hint="Remove by lease id (see GET /v1/admin/seats), client id or host name",
            )
        removed = await service.remove(
            body.by,
            lease_id=body.lease_id,
            client_id=body.client_id,
            hostname=body.hostname,
            reason=body.reason,
        )
        return RemovedOut(removed=[_admin_lease(r.lease) for r in removed])


def options_summary(options: SeatOptions) -> dict[str, Any]:
    return {
        "source": options.source,
        "features": {
            name: {"reserve": len(f.reserve), "max": len(f.max) + len(f.max_per)}
            for name, f in sorted(options.features.items())
        },
    }


def _add_options_route(
    app: FastAPI,
    service: LicenseService,
    token: bytes,
    reload_options: Callable[[], SeatOptions] | None,
) -> None:
    @app.post(
        "/v1/admin/options/reload",
        dependencies=[Depends(_admin_check(token))],
        responses=_errors(400, 401),
    )
    async def reload() -> dict[str, Any]:
        """Read the options file again; a bad file keeps the rules in force (400 says why)."""
        if reload_options is None:
            raise _not_configured("options file")
        options = reload_options()
        service.engine.options = options
        return options_summary(options)


def _admin_lease(x: SeatLease) -> AdminLeaseOut:
    return AdminLeaseOut(
        **_lease_out(x).model_dump(),
        license_id=x.license_id,
        hostname=x.hostname,
        issued_at=x.issued_at,
        key_id=x.key_id,
    )


def _add_admin_routes(
    app: FastAPI,
    service: LicenseService,
    token: bytes,
    export_report: ExportHandler | None,
    import_file: ImportHandler | None,
) -> None:
    # ----------------------------------------------------------------- admin
    admin = [Depends(_admin_check(token))]

    @app.post(
        "/v1/admin/export",
        dependencies=admin,
        response_class=Response,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "The report file"},
            **_errors(401, 503),
        },
    )
    async def export() -> Response:
        if export_report is None:
            raise _not_configured("export")
        return Response(await export_report(service), media_type="application/octet-stream")

    @app.post(
        "/v1/admin/import",
        dependencies=admin,
        responses=_errors(400, 401, 409, 413, 503, 507),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def import_(request: Request) -> dict[str, Any]:
        if import_file is None:
            raise _not_configured("import")
        data = await request.body()
        return dict(await import_file(service, data))


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    # Validation failures answer 400 with the common error body, not FastAPI's 422.
    for path in schema.get("paths", {}).values():
        for op in path.values():
            responses = op.get("responses", {})
            if responses.pop("422", None) is not None:
                responses["400"] = {
                    "description": "Bad Request",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}
                    },
                }
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def _not_configured(what: str) -> MeterboxError:
    from meterbox.errors import ConfigError

    return ConfigError(
        f"This server has no {what} handler configured",
        expected=f"a server started with ledger and {what} support",
        found="none",
        hint="Start the server with `meterbox server run`",
    )
