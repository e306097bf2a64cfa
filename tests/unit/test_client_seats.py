"""Seat checkout, background renewal, loss and release, against an in-process fake server.

Time is the test's: the fake server's clock starts at 0 and moves only when a renewer's
wait is fired (``support.timing``), by exactly that wait's delay, so "past five lease
lengths" takes no real time and every heartbeat happens at a known moment. The one
real-time renewal check is tests/integration/test_client_against_server.py
(``test_background_renewal_keeps_a_seat_past_several_lease_lengths``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from meterbox.client import (
    AsyncClient,
    Client,
    LeaseLost,
    NoSeatAvailable,
    ServerUnreachableError,
    _exit,
)
from support.timing import ManualSleeps, ManualWaits

LEASE_SECONDS = 30.0
RENEW_EVERY = LEASE_SECONDS / 3  # the default renew_fraction
RETRY_EVERY = RENEW_EVERY / 4  # after a heartbeat that got no answer
#: The fake server's time 0.
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeSeatServer:
    """Seats as docs/api.md describes: checkout, heartbeat (404 once expired), release."""

    def __init__(self, seats: int = 1, host: str = "a.test") -> None:
        self.host = host
        self.seats = seats
        self.now = 0.0  # seconds since EPOCH; moved by advance() only
        self.leases: dict[str, float] = {}  # lease id -> expiry, in self.now's seconds
        self.heartbeats = 0
        self.released: list[str] = []
        self.down = False
        self.lock = threading.Lock()
        self.n = 0

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds

    def _lease(self, lease_id: str, renewed: bool) -> dict[str, object]:
        return {
            "lease_id": lease_id,
            "feature": "cad",
            "client_id": "c",
            "expires_at": (EPOCH + timedelta(seconds=self.leases[lease_id])).isoformat(),
            "lease_seconds": LEASE_SECONDS,
            "overdraft": False,
            "renewed": renewed,
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        body = json.loads(request.content)
        with self.lock:
            now = self.now
            self.leases = {k: v for k, v in self.leases.items() if v > now}
            if request.url.path == "/v1/seats/checkout":
                if len(self.leases) >= self.seats:
                    return httpx.Response(
                        409, json={"error": {"code": "no_seat", "message": "all seats taken"}}
                    )
                self.n += 1
                lease_id = f"{self.host}-L{self.n}"
                self.leases[lease_id] = now + LEASE_SECONDS
                return httpx.Response(200, json=self._lease(lease_id, False))
            if request.url.path == "/v1/seats/heartbeat":
                self.heartbeats += 1
                if body["lease_id"] not in self.leases:
                    return httpx.Response(
                        404, json={"error": {"code": "lease_not_found", "message": "gone"}}
                    )
                self.leases[body["lease_id"]] = now + LEASE_SECONDS
                return httpx.Response(200, json=self._lease(body["lease_id"], True))
            if request.url.path == "/v1/seats/release":
                released = self.leases.pop(body["lease_id"], None) is not None
                if released:
                    self.released.append(body["lease_id"])
                return httpx.Response(200, json={"released": released})
        return httpx.Response(404)


def client_for(*servers: FakeSeatServer, waits: ManualWaits | None = None) -> Client:
    """A client of ``servers``; its renewers wait on ``waits`` (by default never fired)."""
    by_host = {s.host: s for s in servers}
    transport = httpx.MockTransport(lambda r: by_host[r.url.host].handler(r))
    return Client(
        [f"http://{s.host}" for s in servers],
        transport=transport,
        environ={},
        renew_wait=waits if waits is not None else ManualWaits(),
    )


def test_seat_is_renewed_past_several_lease_lengths() -> None:
    server = FakeSeatServer()
    waits = ManualWaits(on_fire=server.advance)
    with client_for(server, waits=waits) as c, c.seat("cad") as seat:
        assert seat.expires_at == EPOCH + timedelta(seconds=LEASE_SECONDS)
        while waits.elapsed < LEASE_SECONDS * 5:
            waits.fire()
        assert not seat.lost
        assert seat.lease_id in server.leases
        # The last heartbeat, at 5 lease lengths, moved the end one lease further.
        assert seat.expires_at == EPOCH + timedelta(seconds=LEASE_SECONDS * 6)
    assert waits.delays[:15] == [RENEW_EVERY] * 15
    assert server.heartbeats == 15
    assert server.released == ["a.test-L1"]


def test_seat_is_released_when_the_block_raises() -> None:
    server = FakeSeatServer()
    with client_for(server) as c:
        with pytest.raises(RuntimeError, match="boom"), c.seat("cad"):
            raise RuntimeError("boom")
        assert server.leases == {}
        # The seat is free again for the next checkout.
        with c.seat("cad") as again:
            assert again.lease_id == "a.test-L2"


def test_second_checkout_with_no_free_seat_raises_no_seat_available() -> None:
    server = FakeSeatServer(seats=1)
    with client_for(server) as c, c.seat("cad"):
        with pytest.raises(NoSeatAvailable, match="all seats taken"), c.seat("cad"):
            pass


def test_lost_lease_is_reported_and_raised_on_exit() -> None:
    server = FakeSeatServer()
    waits = ManualWaits(on_fire=server.advance)
    lost: list[Exception] = []
    with client_for(server, waits=waits) as c:
        seat = c.seat("cad", on_lost=lost.append).acquire()
        with server.lock:
            server.leases.clear()  # the server forgets the lease
        assert not seat.lost
        waits.fire()  # the next heartbeat finds it gone; the renewer stops
        assert seat.lost
        with pytest.raises(LeaseLost):
            seat.check()
        # Leaving the block normally raises too, so a lost seat is never silent.
        with pytest.raises(LeaseLost, match="Check out the seat again"):
            seat.__exit__(None, None, None)
    assert len(lost) == 1
    assert server.released == []


def test_renewal_rides_out_a_short_outage() -> None:
    server = FakeSeatServer()
    waits = ManualWaits(on_fire=server.advance)
    with client_for(server, waits=waits) as c, c.seat("cad") as seat:
        server.down = True
        waits.fire()  # the heartbeat due at a third of the lease gets no answer
        waits.fire()  # nor does the first retry
        server.down = False
        waits.fire()  # the second retry renews, well inside the lease
        while waits.elapsed < LEASE_SECONDS * 2:
            waits.fire()
        assert not seat.lost
    assert waits.delays[:5] == [RENEW_EVERY, RETRY_EVERY, RETRY_EVERY, RENEW_EVERY, RENEW_EVERY]


def test_checkout_fails_over_and_heartbeats_go_to_the_granting_server() -> None:
    a, b = FakeSeatServer(host="a.test"), FakeSeatServer(host="b.test")
    waits = ManualWaits(on_fire=lambda s: (a.advance(s), b.advance(s)))
    a.down = True
    with client_for(a, b, waits=waits) as c, c.seat("cad") as seat:
        assert seat.lease_id.startswith("b.test")
        a.down = False  # a is back, but it never granted this lease
        while waits.elapsed < LEASE_SECONDS * 2:
            waits.fire()
        assert not seat.lost
        assert a.heartbeats == 0
        assert b.heartbeats == 6


def test_checkout_with_every_server_down_is_unreachable() -> None:
    server = FakeSeatServer()
    server.down = True
    with client_for(server) as c:
        with pytest.raises(ServerUnreachableError, match=r"a\.test"), c.seat("cad"):
            pass


def test_seats_still_held_at_interpreter_exit_are_released() -> None:
    server = FakeSeatServer()
    c = client_for(server)
    seat = c.seat("cad").acquire()
    _exit._release_all()  # what atexit runs
    assert server.released == [seat.lease_id]
    c.close()


def test_closing_the_client_releases_its_seats() -> None:
    server = FakeSeatServer()
    c = client_for(server)
    seat = c.seat("cad").acquire()
    c.close()
    assert server.released == [seat.lease_id]


def test_async_seat_renews_and_releases() -> None:
    server = FakeSeatServer()
    sleeps = ManualSleeps(on_fire=server.advance)

    async def scenario() -> None:
        async with (
            AsyncClient(
                "http://a.test",
                transport=httpx.MockTransport(server.handler),
                environ={},
                renew_sleep=sleeps,
            ) as c,
            c.seat("cad") as seat,
        ):
            while sleeps.elapsed < LEASE_SECONDS * 4:
                await sleeps.fire()
            assert not seat.lost
            assert not seat.overdraft
            assert seat.lease_id in server.leases
            assert seat.expires_at == EPOCH + timedelta(seconds=LEASE_SECONDS * 5)

    asyncio.run(scenario())
    assert sleeps.delays[:12] == [RENEW_EVERY] * 12
    assert server.heartbeats == 12
    assert server.released == ["a.test-L1"]


def test_async_lost_lease_raises_on_exit() -> None:
    server = FakeSeatServer()
    sleeps = ManualSleeps(on_fire=server.advance)

    async def scenario() -> None:
        async with AsyncClient(
            "http://a.test",
            transport=httpx.MockTransport(server.handler),
            environ={},
            renew_sleep=sleeps,
        ) as c:
            async with c.seat("cad") as seat:
                server.leases.clear()
                await sleeps.fire()  # the next heartbeat finds the lease gone
                assert seat.lost

    with pytest.raises(LeaseLost):
        asyncio.run(scenario())
