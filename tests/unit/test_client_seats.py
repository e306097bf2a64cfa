"""Seat checkout, background renewal, loss and release, against an in-process fake server.

Leases here are 0.3 s long so renewal at a third of the lease runs many times per test.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
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

LEASE_SECONDS = 0.3


class FakeSeatServer:
    """Seats as docs/api.md describes: checkout, heartbeat (404 once expired), release."""

    def __init__(self, seats: int = 1, host: str = "a.test") -> None:
        self.host = host
        self.seats = seats
        self.leases: dict[str, float] = {}  # lease id -> monotonic expiry
        self.heartbeats = 0
        self.released: list[str] = []
        self.down = False
        self.lock = threading.Lock()
        self.n = 0

    def _lease(self, lease_id: str, renewed: bool) -> dict[str, object]:
        return {
            "lease_id": lease_id,
            "feature": "cad",
            "client_id": "c",
            "expires_at": (datetime.now(UTC) + timedelta(seconds=LEASE_SECONDS)).isoformat(),
            "lease_seconds": LEASE_SECONDS,
            "overdraft": False,
            "renewed": renewed,
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        body = json.loads(request.content)
        now = time.monotonic()
        with self.lock:
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


def client_for(*servers: FakeSeatServer) -> Client:
    by_host = {s.host: s for s in servers}
    transport = httpx.MockTransport(lambda r: by_host[r.url.host].handler(r))
    return Client([f"http://{s.host}" for s in servers], transport=transport, environ={})


def test_seat_is_renewed_past_several_lease_lengths() -> None:
    server = FakeSeatServer()
    with client_for(server) as c, c.seat("cad") as seat:
        first_expiry = seat.expires_at
        time.sleep(LEASE_SECONDS * 5)
        assert not seat.lost
        assert seat.lease_id in server.leases
        assert seat.expires_at > first_expiry
    assert server.heartbeats >= 8
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
    lost: list[Exception] = []
    with client_for(server) as c:
        seat = c.seat("cad", on_lost=lost.append).acquire()
        with server.lock:
            server.leases.clear()  # the server forgets the lease
        deadline = time.monotonic() + 3
        while not seat.lost and time.monotonic() < deadline:
            time.sleep(0.02)
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
    with client_for(server) as c, c.seat("cad") as seat:
        server.down = True
        time.sleep(LEASE_SECONDS * 0.5)
        server.down = False
        time.sleep(LEASE_SECONDS * 2)
        assert not seat.lost


def test_checkout_fails_over_and_heartbeats_go_to_the_granting_server() -> None:
    a, b = FakeSeatServer(host="a.test"), FakeSeatServer(host="b.test")
    a.down = True
    with client_for(a, b) as c, c.seat("cad") as seat:
        assert seat.lease_id.startswith("b.test")
        a.down = False  # a is back, but it never granted this lease
        time.sleep(LEASE_SECONDS * 2)
        assert not seat.lost
        assert a.heartbeats == 0
        assert b.heartbeats >= 2


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

    async def scenario() -> None:
        async with (
            AsyncClient(
                "http://a.test", transport=httpx.MockTransport(server.handler), environ={}
            ) as c,
            c.seat("cad") as seat,
        ):
            await asyncio.sleep(LEASE_SECONDS * 4)
            assert not seat.lost
            assert not seat.overdraft
            assert seat.lease_id in server.leases

    asyncio.run(scenario())
    assert server.heartbeats >= 6
    assert server.released == ["a.test-L1"]


def test_async_lost_lease_raises_on_exit() -> None:
    server = FakeSeatServer()

    async def scenario() -> None:
        async with AsyncClient(
            "http://a.test", transport=httpx.MockTransport(server.handler), environ={}
        ) as c:
            async with c.seat("cad") as seat:
                server.leases.clear()
                for _ in range(100):
                    if seat.lost:
                        break
                    await asyncio.sleep(0.02)

    with pytest.raises(LeaseLost):
        asyncio.run(scenario())
