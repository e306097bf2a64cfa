"""Blocking client: :class:`Client` and :class:`Seat`, a thin driver of the sans-I/O core.

Threads: seat renewal runs in one daemon thread per seat; the optional background
flusher in one daemon thread per client. Usage flows hold ``_flow_lock`` so
concurrent ``record`` calls and the flusher never send spooled events out of order.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
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

#: How a seat's renewer waits between heartbeats: called with the seat's stop event and
#: the delay in seconds, it returns True as soon as the seat is released and False once
#: the delay has passed, exactly like :meth:`threading.Event.wait` (the default). Tests
#: pass their own to decide when each delay is over instead of sleeping through it.
RenewWait = Callable[[threading.Event, float], bool]


class Client:
    """Seats and usage against one meterbox server, or several tried in order.

    >>> client = Client("http://127.0.0.1:8400")            # doctest: +SKIP
    >>> with client.seat("cad") as seat: ...                  # doctest: +SKIP
    >>> client.record("solver-runs", 3)                       # doctest: +SKIP
    """

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
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        rand: RandFn = random.random,
        environ: Mapping[str, str] | None = None,
        renew_wait: RenewWait = threading.Event.wait,
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
        self._http = httpx.Client(
            timeout=timeout, transport=transport, headers=auth_headers(self.config.api_key)
        )
        self._clock: Clock = clock or SystemClock()
        self._rand = rand
        #: The last cluster view a server gave (discovery), when it was asked for (mono
        #: seconds), and whether a request failed over since.
        self._view: ClusterView | None = None
        self._view_at: float | None = None
        self._failed_over = False
        self._renew_wait = renew_wait
        self._spool: Spool | None = spool if isinstance(spool, Spool) else None
        self._owns_spool = not isinstance(spool, Spool)
        self._flow_lock = threading.RLock()
        self._seats: dict[int, Seat] = {}
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        if flush_interval is not None:
            self._flusher = threading.Thread(
                target=self._flush_loop, args=(flush_interval,), name="meterbox-flush", daemon=True
            )
            self._flusher.start()

    def _seconds(self) -> float:
        # The spool's retry schedule is kept in POSIX seconds.
        return self._clock.wall_ms() / 1000

    # -- transport

    def _attempt(self, url: str, req: Request) -> Outcome:
        headers = witness_headers(self._spool_for_witness, url, req)
        try:
            # A queued checkout is held by the server for up to its wait: allow for it.
            timeout = self.config.timeout + req.wait if req.wait else httpx.USE_CLIENT_DEFAULT
            resp = self._http.request(
                req.method, url + req.path, json=req.body, headers=headers, timeout=timeout
            )
        except httpx.TransportError as exc:
            return Unreachable(url, f"{url}: {type(exc).__name__}: {exc}")
        keep_head(self._spool_for_witness, url, resp.headers, self._seconds())
        return Reply(url, resp.status_code, decode_body(resp.content))

    def _spool_for_witness(self) -> Spool:
        # Once open, the spool is used without the flow lock (it locks each statement
        # itself), so a seat's renewal never waits behind a long flush of usage.
        spool = self._spool
        return spool if spool is not None else self.spool

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

    def discover(self) -> ClusterView | None:
        """Ask the known servers, in order, which members their cluster has.

        The first valid answer is kept; a server without ``/v1/cluster`` (an older
        one) or an invalid answer is skipped. Called by requests when ``discover`` is
        on: at the first, every ``DISCOVERY_TTL`` seconds, and after a failover.
        """
        self._view_at, self._failed_over = self._mono(), False
        for url in self.urls:
            outcome = self._attempt(url, cluster_request())
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

    def _send(self, req: Request, prefer: str | None = None) -> Outcome:
        if self._discovery_due():
            self.discover()
        outcome: Outcome = Unreachable("", "no server configured")
        for url in failover_order(self.urls, prefer):
            outcome = self._attempt(url, req)
            if not fails_over(outcome):
                return outcome
            self._failed_over = True
        return outcome

    def _call(self, req: Request, prefer: str | None = None) -> Reply:
        return expect_ok(self._send(req, prefer), self.urls)

    def _drive(self, flow: Generator[Request, object, T]) -> T:
        try:
            req = next(flow)
            while True:
                req = flow.send(self._send(req))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # -- spool

    @property
    def spool(self) -> Spool:
        """The spool (usage and the latest ledger heads), opened on first use."""
        with self._flow_lock:
            if self._spool is None:
                self._spool = Spool(self.config.spool_path)
            return self._spool

    # -- seats

    def checkout(self, feature: str, *, wait: float | None = None) -> Lease:
        """Check out one seat (queueing up to ``wait`` s for one); prefer :meth:`seat`."""
        req = checkout_request(
            feature, self.config.client_id, self.config.hostname, self.config.user, wait
        )
        return parse_lease(self._call(req))

    def _checkout_at(self, feature: str, wait: float | None = None) -> tuple[Lease, str]:
        req = checkout_request(
            feature, self.config.client_id, self.config.hostname, self.config.user, wait
        )
        reply = self._call(req)
        return parse_lease(reply), reply.url

    def heartbeat(self, lease_id: str, *, prefer: str | None = None) -> Lease:
        """Renew a lease; raises :class:`LeaseLost` if the server no longer has it."""
        return parse_lease(self._call(heartbeat_request(lease_id), prefer))

    def release(self, lease_id: str, *, prefer: str | None = None) -> bool:
        """Release a lease; False if it was already gone (releasing is idempotent)."""
        return parse_released(self._call(release_request(lease_id), prefer))

    def seat(
        self,
        feature: str,
        *,
        on_lost: Callable[[MeterboxError], None] | None = None,
        wait: float | None = None,
        reacquire: bool = False,
    ) -> Seat:
        """A seat for ``feature``, checked out by ``with`` and renewed in the background.

        ``wait`` queues the checkout (FIFO per feature) for up to that many seconds when
        no seat is free, instead of raising :class:`NoSeatAvailable` at once.
        ``reacquire`` checks out a new seat, on any server that answers, once the old
        lease is provably gone (its server said so, or no server renewed it for a whole
        lease term; see :mod:`meterbox.client._cluster`): never two at once.
        """
        seat = Seat(self, feature, on_lost)
        seat.wait = wait
        seat.reacquire = reacquire
        return seat

    # -- borrowing (docs/adr/0028-seat-borrowing.md)

    def _borrow_store(self) -> BorrowStore:
        from meterbox.client._borrow import BorrowStore

        return BorrowStore(self.config.spool_path.parent / "borrows")

    def borrow(
        self,
        feature: str,
        *,
        hours: int,
        machine_code: str | None = None,
        instance_key: bytes | str | None = None,
    ) -> Borrow:
        """Borrow a seat of ``feature`` for ``hours``, to use with no server until it expires.

        The token is verified at once (signature, this machine, its time) and kept in the
        borrow directory; :meth:`borrowed` verifies it again offline. ``instance_key``
        pins the server's key (else the key of the first borrow is pinned). Raises
        ``BorrowRefused`` when the license allows no borrowing or not that long.
        """
        from meterbox.client._borrow import borrow_request, parse_borrow, public_key
        from meterbox.client._borrow import machine_code as local_code

        code = machine_code or local_code()
        store = self._borrow_store()
        pinned = public_key(instance_key)[1] if instance_key is not None else store.pinned()
        req = borrow_request(
            feature, self.config.client_id, hours, code, self.config.hostname, self.config.user
        )
        borrow = parse_borrow(self._call(req), pinned, code, self._clock.now())
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
        """The seat of ``feature`` this machine borrowed, verified offline (no request).

        Raises ``LicenseExpired`` once the token has expired, ``VerificationError`` for a
        token of another machine, server or feature, and ``StateError`` when none is kept.
        """
        from meterbox.client._borrow import machine_code as local_code
        from meterbox.client._borrow import verify_offline

        return verify_offline(
            self._borrow_store(),
            feature,
            code=machine_code or local_code(),
            now=now or self._clock.now(),
            instance_key=instance_key,
        )

    def return_borrow(self, feature: str, *, machine_code: str | None = None) -> bool:
        """Give a borrowed seat back early; its token is deleted. False if the server
        no longer held it (it had expired): the token is deleted then too."""
        from meterbox.client._borrow import machine_code as local_code
        from meterbox.client._borrow import parse_returned, return_for

        store = self._borrow_store()
        returned = parse_returned(
            self._call(return_for(store, feature, machine_code or local_code()))
        )
        store.forget(feature)
        return returned

    # -- usage

    def record(
        self, meter: str, amount: int = 1, *, idempotency_key: str | None = None
    ) -> RecordResult:
        """Record usage; spools it (``spooled=True``) if no server can take it now.

        Raises QuotaExceeded, UnknownMeter, BadRequestError and other refusals; those events
        are not spooled. The idempotency key is generated here once per event.
        """
        event = UsageEvent(
            meter, amount, self.config.client_id, idempotency_key or uuid.uuid4().hex
        )
        with self._flow_lock:
            return self._drive(
                record_flow(self.spool, self.config.retry, self._seconds, self._rand, event)
            )

    def flush(self, *, force: bool = True) -> FlushResult:
        """Deliver spooled events now (``force`` ignores the backoff schedule)."""
        with self._flow_lock:
            return self._drive(
                flush_flow(self.spool, self.config.retry, self._seconds, self._rand, force=force)
            )

    def balances(self) -> list[Balance]:
        return parse_balances(self._call(balances_request()))

    def balance(self, meter: str) -> Balance:
        for b in self.balances():
            if b.meter == meter:
                return b
        raise BadRequestError(
            "The server has no such meter",
            expected=f"meter {meter!r} among the installed licenses",
            found=", ".join(b.meter for b in self.balances()) or "no meters",
            hint="Check the meter name against GET /v1/usage/balances",
        )

    def _flush_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                self.flush(force=False)
            except MeterboxError as exc:
                log.warning("background flush failed: %s", exc)

    # -- lifecycle

    def close(self) -> None:
        """Release held seats, stop background threads, close the spool and connections."""
        for seat in list(self._seats.values()):
            seat.release()
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._flow_lock:
            if self._spool is not None and self._owns_spool:
                self._spool.close()
                self._spool = None
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Seat:
    """One floating seat: checked out on ``with``, renewed in a thread, released on exit.

    ``lost`` turns True when a renewal finds the lease gone; :meth:`check` then raises
    :class:`LeaseLost`, and so does leaving the ``with`` block normally.
    """

    #: Seconds the checkout may wait in the server's queue (None: refused at once).
    wait: float | None = None
    #: Check out a new seat once the old lease is provably gone (ADR 0026).
    reacquire: bool = False
    #: How many times the seat was checked out again after its lease was gone.
    reacquired: int = 0

    def __init__(
        self,
        client: Client,
        feature: str,
        on_lost: Callable[[MeterboxError], None] | None,
    ) -> None:
        self.feature = feature
        self._client = client
        self._on_lost = on_lost
        self._lease: Lease | None = None
        self._server: str | None = None
        self._lost: MeterboxError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = threading.Lock()

    # -- state

    @property
    def lease(self) -> Lease:
        if self._lease is None:
            raise BadRequestError(
                "The seat is not checked out",
                expected="a seat inside its 'with' block",
                found="no lease",
                hint="Use 'with client.seat(feature) as seat:'",
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
        """Raise :class:`LeaseLost` (or the refusal met on renewal) if the seat is lost."""
        if self._lost is not None:
            raise self._lost

    # -- lifecycle

    def acquire(self) -> Seat:
        self._lease, self._server = self._client._checkout_at(self.feature, self.wait)
        self._client._seats[id(self)] = self
        _exit.hold(self)
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"meterbox-seat-{self.feature}", daemon=True
        )
        self._thread.start()
        return self

    def release(self) -> bool:
        """Stop renewing and release the lease. Safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._state:
            lease = self._lease
            if lease is None or self._client._seats.pop(id(self), None) is None:
                return False
        _exit.drop(self)
        if isinstance(self._lost, LeaseLost):
            return False  # nothing left to release on the server
        try:
            return self._client.release(lease.lease_id, prefer=self._server)
        except (ServerUnreachableError, LeaseLost) as exc:
            # The lease runs out by itself; refusing to exit over it helps nobody.
            log.warning("seat %s not released: %s", lease.lease_id, exc)
            return False

    def release_at_exit(self) -> None:
        self.release()

    def __enter__(self) -> Seat:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        if exc_type is None:
            self.check()

    def _renew_loop(self) -> None:
        lease = self.lease
        fraction = self._client.config.renew_fraction
        delay = renewal_interval(lease.lease_seconds, fraction)
        renewed_at = self._client._mono()
        while not self._client._renew_wait(self._stop, delay):
            outcome = self._client._send(heartbeat_request(lease.lease_id), self._server)
            if self._stop.is_set():
                return
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
                if not self._take_again(step.reason):
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

    def _take_again(self, reason: str) -> bool:
        """Check out a new seat for a lease that is gone; False when the seat is lost.

        No server answering keeps the seat waiting (the next attempt comes after a
        retry interval); a refusal (no seat free, license expired, ...) loses it.
        """
        old = self.lease_id
        while not self._stop.is_set():
            try:
                lease, server = self._client._checkout_at(self.feature)
            except ServerUnreachableError as exc:
                log.info("seat %s: no server can check out again yet: %s", old, exc)
                wait = retry_interval(self.lease.lease_seconds, self._client.config.renew_fraction)
                if self._client._renew_wait(self._stop, wait):
                    return False
                continue
            except MeterboxError as exc:
                self._lose(exc)
                return False
            with self._state:
                self._lease, self._server = lease, server
                self.reacquired += 1
            log.warning(
                "seat %s gone (%s): checked out %s on %s", old, reason, lease.lease_id, server
            )
            return True
        return False
