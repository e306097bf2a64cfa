"""asyncio client: :class:`AsyncClient` and :class:`AsyncSeat`, the same core driven with await.

Seat renewal runs in one task per seat; the optional background flusher in one task
started by ``async with AsyncClient(...)``. The spool is local SQLite; its short
fsynced transactions run on the event loop thread (about a millisecond each), which
keeps the ordering lock a plain :class:`asyncio.Lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import httpx

from meterbox.client import _exit
from meterbox.client._cluster import (
    DISCOVERY_MIN_GAP,
    DISCOVERY_TTL,
    ClusterView,
    Reacquire,
    after_renewal,
    cluster_request,
    member_urls,
    parse_cluster,
)
from meterbox.client._core import (
    Balance,
    ClientConfig,
    FlushResult,
    Lease,
    Lost,
    Outcome,
    RandFn,
    RecordResult,
    Renewed,
    Reply,
    Request,
    RetryConfig,
    Unreachable,
    UsageEvent,
    auth_headers,
    balances_request,
    checkout_request,
    classify_renewal,
    decode_body,
    expect_ok,
    failover_order,
    fails_over,
    heartbeat_request,
    parse_balances,
    parse_lease,
    parse_released,
    release_request,
    renewal_interval,
    retry_interval,
)
from meterbox.client._flows import flush_flow, record_flow
from meterbox.client._spool import Spool
from meterbox.client._witness import keep_head, witness_headers
from meterbox.client.errors import (
    BadRequestError,
    LeaseLost,
    MeterboxError,
    ProtocolError,
    ServerUnreachableError,
)
from meterbox.clock import Clock, SystemClock

if TYPE_CHECKING:
    from meterbox.client._borrow import Borrow, BorrowStore

log = logging.getLogger("meterbox.client")
T = TypeVar("T")

#: How a seat's renewal task waits between heartbeats, :func:`asyncio.sleep` by default.
#: Releasing the seat cancels the task, so the wait needs no stop signal of its own.
#: Tests pass their own to decide when each delay is over instead of sleeping through it.
RenewSleep = Callable[[float], Awaitable[None]]


class AsyncClient:
    """The asyncio twin of :class:`meterbox.client.Client`; same arguments, awaitable methods."""

    def __init__(  # noqa: PLR0913 - the documented SDK keywords (docs/client.md), checked once into ClientConfig
        self,
        url: str | Sequence[str] | None = None,
        *,
        spool: str | Path | Spool | None = None,
        client_id: str | None = None,
        hostname: str | None = None,
        api_key: str | None = None,
        user: str | None = None,
        discover: bool = False,
        timeout: float = 5.0,
        retry: RetryConfig | None = None,
        renew_fraction: float = 1 / 3,
        flush_interval: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        rand: RandFn = random.random,
        environ: Mapping[str, str] | None = None,
        renew_sleep: RenewSleep = asyncio.sleep,
    ) -> None:
        self.config = ClientConfig.build(
            url,
            spool=None if isinstance(spool, Spool) else spool,
            client_id=client_id,
            hostname=hostname,
            timeout=timeout,
            retry=retry,
            renew_fraction=renew_fraction,
            flush_interval=flush_interval,
            environ=os.environ if environ is None else environ,
            home=Path.home(),
            api_key=api_key,
            user=user,
            discover=discover,
        )
        self._http = httpx.AsyncClient(
            timeout=timeout, transport=transport, headers=auth_headers(self.config.api_key)
        )
        self._clock: Clock = clock or SystemClock()
        self._rand = rand
        #: The last cluster view a server gave (discovery), when it was asked for (mono
        #: seconds), and whether a request failed over since.
        self._view: ClusterView | None = None
        self._view_at: float | None = None
        self._failed_over = False
        self._renew_sleep = renew_sleep
        self._spool: Spool | None = spool if isinstance(spool, Spool) else None
        self._owns_spool = not isinstance(spool, Spool)
        self._flow_lock = asyncio.Lock()
        self._seats: dict[int, AsyncSeat] = {}
        self._flusher: asyncio.Task[None] | None = None

    def _seconds(self) -> float:
        # The spool's retry schedule is kept in POSIX seconds.
        return self._clock.wall_ms() / 1000

    # -- transport

    async def _attempt(self, url: str, req: Request) -> Outcome:
        headers = witness_headers(self._spool_for_witness, url, req)
        try:
            # A queued checkout is held by the server for up to its wait: allow for it.
            timeout = self.config.timeout + req.wait if req.wait else httpx.USE_CLIENT_DEFAULT
            resp = await self._http.request(
                req.method, url + req.path, json=req.body, headers=headers, timeout=timeout
            )
        except httpx.TransportError as exc:
            return Unreachable(url, f"{url}: {type(exc).__name__}: {exc}")
        keep_head(self._spool_for_witness, url, resp.headers, self._seconds())
        return Reply(url, resp.status_code, decode_body(resp.content))

    def _spool_for_witness(self) -> Spool:
        return self.spool

    def _mono(self) -> float:
        return self._clock.mono_ms() / 1000

    @property
    def urls(self) -> tuple[str, ...]:
        """The servers requests go to, in order: configured, then discovered members."""
        return member_urls(self.config.urls, self._view)

    @property
    def cluster(self) -> ClusterView | None:
        """The cluster view the last discovery got (None: not asked, or no answer)."""
        return self._view

    async def discover(self) -> ClusterView | None:
        """Ask the known servers, in order, which members their cluster has.

        The first valid answer is kept; a server without ``/v1/cluster`` (an older
        one) or an invalid answer is skipped. Called by requests when ``discover`` is
        on: at the first, every ``DISCOVERY_TTL`` seconds, and after a failover.
        """
        self._view_at, self._failed_over = self._mono(), False
        for url in self.urls:
            outcome = await self._attempt(url, cluster_request())
            if isinstance(outcome, Reply) and outcome.status == 200:
                try:
                    self._view = parse_cluster(outcome)
                except ProtocolError as exc:
                    log.warning("cluster discovery: %s", exc)
                    continue
                return self._view
        return self._view

    def _discovery_due(self) -> bool:
        if not self.config.discover:
            return False
        if self._view_at is None:
            return True
        age = self._mono() - self._view_at
        return age > DISCOVERY_TTL or (self._failed_over and age > DISCOVERY_MIN_GAP)

    async def _send(self, req: Request, prefer: str | None = None) -> Outcome:
        if self._discovery_due():
            await self.discover()
        outcome: Outcome = Unreachable("", "no server configured")
        for url in failover_order(self.urls, prefer):
            outcome = await self._attempt(url, req)
            if not fails_over(outcome):
                return outcome
            self._failed_over = True
        return outcome

    async def _call(self, req: Request, prefer: str | None = None) -> Reply:
        return expect_ok(await self._send(req, prefer), self.urls)

    async def _drive(self, flow: Generator[Request, object, T]) -> T:
        try:
            req = next(flow)
            while True:
                req = flow.send(await self._send(req))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    @property
    def spool(self) -> Spool:
        """The spool (usage and the latest ledger heads), opened on first use."""
        if self._spool is None:
            self._spool = Spool(self.config.spool_path)
        return self._spool

    # -- seats

    async def checkout(self, feature: str, *, wait: float | None = None) -> Lease:
        """Check out one seat (queueing up to ``wait`` s); prefer :meth:`seat`."""
        lease, _ = await self._checkout_at(feature, wait)
        return lease

    async def _checkout_at(self, feature: str, wait: float | None = None) -> tuple[Lease, str]:
        req = checkout_request(
            feature, self.config.client_id, self.config.hostname, self.config.user, wait
        )
        reply = await self._call(req)
        return parse_lease(reply), reply.url

    async def heartbeat(self, lease_id: str, *, prefer: str | None = None) -> Lease:
        return parse_lease(await self._call(heartbeat_request(lease_id), prefer))

    async def release(self, lease_id: str, *, prefer: str | None = None) -> bool:
        return parse_released(await self._call(release_request(lease_id), prefer))

    def seat(
        self,
        feature: str,
        *,
        on_lost: Callable[[MeterboxError], None] | None = None,
        wait: float | None = None,
        reacquire: bool = False,
    ) -> AsyncSeat:
        """A seat for ``feature``: ``async with client.seat("cad", wait=600) as seat:``.

        ``wait`` queues the checkout (FIFO per feature) for up to that many seconds when
        no seat is free, instead of raising :class:`NoSeatAvailable` at once.
        ``reacquire``: as for :meth:`meterbox.client.Client.seat`.
        """
        seat = AsyncSeat(self, feature, on_lost)
        seat.wait = wait
        seat.reacquire = reacquire
        return seat

    # -- borrowing (the same requests and checks as Client's; docs/adr/0028)

    def _borrow_store(self) -> BorrowStore:
        from meterbox.client._borrow import BorrowStore

        return BorrowStore(self.config.spool_path.parent / "borrows")

    async def borrow(
        self,
        feature: str,
        *,
        hours: int,
        machine_code: str | None = None,
        instance_key: bytes | str | None = None,
    ) -> Borrow:
        """Borrow a seat of ``feature`` for ``hours``, to use with no server until it expires.

        As :meth:`meterbox.client.Client.borrow`: the token is verified at once and kept
        in the borrow directory; :meth:`borrowed` verifies it again offline.
        """
        from meterbox.client._borrow import borrow_request, parse_borrow, public_key
        from meterbox.client._borrow import machine_code as local_code

        code = machine_code or local_code()
        store = self._borrow_store()
        pinned = public_key(instance_key)[1] if instance_key is not None else store.pinned()
        req = borrow_request(
            feature, self.config.client_id, hours, code, self.config.hostname, self.config.user
        )
        borrow = parse_borrow(await self._call(req), pinned, code, self._clock.now())
        store.save(borrow)
        return borrow

    def borrowed(
        self,
        feature: str,
        *,
        machine_code: str | None = None,
        instance_key: bytes | str | None = None,
        now: datetime | None = None,
    ) -> Borrow:
        """The seat of ``feature`` this machine borrowed, verified offline (no request)."""
        from meterbox.client._borrow import machine_code as local_code
        from meterbox.client._borrow import verify_offline

        return verify_offline(
            self._borrow_store(),
            feature,
            code=machine_code or local_code(),
            now=now or self._clock.now(),
            instance_key=instance_key,
        )

    async def return_borrow(self, feature: str, *, machine_code: str | None = None) -> bool:
        """Give a borrowed seat back early; its token is deleted (as ``Client.return_borrow``)."""
        from meterbox.client._borrow import machine_code as local_code
        from meterbox.client._borrow import parse_returned, return_for

        store = self._borrow_store()
        req = return_for(store, feature, machine_code or local_code())
        returned = parse_returned(await self._call(req))
        store.forget(feature)
        return returned

    # -- usage

    async def record(
        self, meter: str, amount: int = 1, *, idempotency_key: str | None = None
    ) -> RecordResult:
        """Record usage; see :meth:`meterbox.client.Client.record`."""
        event = UsageEvent(
            meter, amount, self.config.client_id, idempotency_key or uuid.uuid4().hex
        )
        async with self._flow_lock:
            return await self._drive(
                record_flow(self.spool, self.config.retry, self._seconds, self._rand, event)
            )

    async def flush(self, *, force: bool = True) -> FlushResult:
        async with self._flow_lock:
            return await self._drive(
                flush_flow(self.spool, self.config.retry, self._seconds, self._rand, force=force)
            )

    async def balances(self) -> list[Balance]:
        return parse_balances(await self._call(balances_request()))

    async def balance(self, meter: str) -> Balance:
        balances = await self.balances()
        for b in balances:
            if b.meter == meter:
                return b
        raise BadRequestError(
            "The server has no such meter",
            expected=f"meter {meter!r} among the installed licenses",
            found=", ".join(b.meter for b in balances) or "no meters",
            hint="Check the meter name against GET /v1/usage/balances",
        )

    async def _flush_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush(force=False)
            except MeterboxError as exc:
                log.warning("background flush failed: %s", exc)

    # -- lifecycle

    async def aclose(self) -> None:
        """Release held seats, stop the flusher, close the spool and connections."""
        for seat in list(self._seats.values()):
            await seat.release()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._spool is not None and self._owns_spool:
            self._spool.close()
            self._spool = None
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        if self.config.flush_interval is not None and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(self.config.flush_interval))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncSeat:
    """One floating seat renewed by an asyncio task; see :class:`meterbox.client.Seat`."""

    #: Seconds the checkout may wait in the server's queue (None: refused at once).
    wait: float | None = None
    #: Check out a new seat once the old lease is provably gone (ADR 0026).
    reacquire: bool = False
    #: How many times the seat was checked out again after its lease was gone.
    reacquired: int = 0

    def __init__(
        self,
        client: AsyncClient,
        feature: str,
        on_lost: Callable[[MeterboxError], None] | None,
    ) -> None:
        self.feature = feature
        self._client = client
        self._on_lost = on_lost
        self._lease: Lease | None = None
        self._server: str | None = None
        self._lost: MeterboxError | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def lease(self) -> Lease:
        if self._lease is None:
            raise BadRequestError(
                "The seat is not checked out",
                expected="a seat inside its 'async with' block",
                found="no lease",
                hint="Use 'async with client.seat(feature) as seat:'",
            )
        return self._lease

    @property
    def lease_id(self) -> str:
        return self.lease.lease_id

    @property
    def expires_at(self) -> datetime:
        return self.lease.expires_at

    @property
    def overdraft(self) -> bool:
        return self.lease.overdraft

    @property
    def lost(self) -> bool:
        return self._lost is not None

    @property
    def lost_error(self) -> MeterboxError | None:
        return self._lost

    def check(self) -> None:
        if self._lost is not None:
            raise self._lost

    async def acquire(self) -> AsyncSeat:
        self._lease, self._server = await self._client._checkout_at(self.feature, self.wait)
        self._client._seats[id(self)] = self
        _exit.hold(self)
        self._task = asyncio.create_task(self._renew_loop())
        return self

    async def release(self) -> bool:
        """Stop renewing and release the lease. Safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lease = self._lease
        if lease is None or self._client._seats.pop(id(self), None) is None:
            return False
        _exit.drop(self)
        if isinstance(self._lost, LeaseLost):
            return False  # nothing left to release on the server
        try:
            return await self._client.release(lease.lease_id, prefer=self._server)
        except (ServerUnreachableError, LeaseLost) as exc:
            log.warning("seat %s not released: %s", lease.lease_id, exc)
            return False

    def release_at_exit(self) -> None:
        # The event loop is gone at interpreter exit, so release with a blocking call.
        if self._lease is not None and self._lost is None:
            _exit.release_blocking(self._client.urls, self._server, self._lease.lease_id)

    async def __aenter__(self) -> AsyncSeat:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()
        if exc_type is None:
            self.check()

    async def _renew_loop(self) -> None:
        lease = self.lease
        fraction = self._client.config.renew_fraction
        delay = renewal_interval(lease.lease_seconds, fraction)
        renewed_at = self._client._mono()
        while True:
            await self._client._renew_sleep(delay)
            outcome = await self._client._send(heartbeat_request(lease.lease_id), self._server)
            step = after_renewal(
                classify_renewal(outcome),
                outcome,
                owner=self._server,
                view=self._client.cluster,
                since_renewed=self._client._mono() - renewed_at,
                lease_seconds=lease.lease_seconds,
                reacquire=self.reacquire,
            )
            if isinstance(step, Renewed):
                lease = self._lease = step.lease
                # In a cluster that shares leases another node may renew it: follow it.
                self._server = outcome.url
                renewed_at = self._client._mono()
                delay = renewal_interval(lease.lease_seconds, fraction)
            elif isinstance(step, Reacquire):
                if not await self._take_again(step.reason):
                    return
                lease, renewed_at = self.lease, self._client._mono()
                delay = renewal_interval(lease.lease_seconds, fraction)
            elif isinstance(step, Lost):
                self._lose(step.error)
                return
            else:
                log.info("heartbeat for %s failed, retrying: %s", lease.lease_id, step.reason)
                delay = retry_interval(lease.lease_seconds, fraction)

    def _lose(self, error: MeterboxError) -> None:
        self._lost = error
        log.warning("seat %s lost: %s", self.lease_id, error)
        if self._on_lost is not None:
            self._on_lost(error)

    async def _take_again(self, reason: str) -> bool:
        """Check out a new seat for a lease that is gone; False when the seat is lost."""
        old = self.lease_id
        while True:
            try:
                lease, server = await self._client._checkout_at(self.feature)
            except ServerUnreachableError as exc:
                log.info("seat %s: no server can check out again yet: %s", old, exc)
                fraction = self._client.config.renew_fraction
                await self._client._renew_sleep(retry_interval(self.lease.lease_seconds, fraction))
                continue
            except MeterboxError as exc:
                self._lose(exc)
                return False
            self._lease, self._server = lease, server
            self.reacquired += 1
            log.warning(
                "seat %s gone (%s): checked out %s on %s", old, reason, lease.lease_id, server
            )
            return True
