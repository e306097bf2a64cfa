"""Usage delivery through the write-ahead spool, against an in-process fake server.

The fake implements POST /v1/usage as docs/api.md describes (idempotency keys, quota,
unknown meters) behind httpx.MockTransport, and can be switched down, to 503, or to
"applies the record but the reply is lost" so every failure path is exercised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterbox.client import (
    AsyncClient,
    BadRequestError,
    Client,
    QuotaExceeded,
    RetryConfig,
    Spool,
    SpoolError,
    UsageEvent,
)
from meterbox.clock import ManualClock

URL = "http://meterbox.test"
MODES = ("up", "down", "503", "lost_reply", "500")


class FakeServer:
    def __init__(self, quota: int | None = None) -> None:
        self.mode = "up"
        self.quota = quota
        self.used = 0
        self.applied: list[tuple[str, int]] = []
        self.answers: dict[str, dict[str, object]] = {}
        self.requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "503":
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "busy"}})
        body = json.loads(request.content)
        assert set(body) == {"meter", "amount", "client_id", "idempotency_key"}
        key = body["idempotency_key"]
        if key in self.answers:
            return httpx.Response(200, json={**self.answers[key], "replayed": True})
        if body["meter"] == "nope":
            return httpx.Response(
                404, json={"error": {"code": "unknown_meter", "message": "no meter 'nope'"}}
            )
        if self.quota is not None and self.used + body["amount"] > self.quota:
            return httpx.Response(
                402, json={"error": {"code": "quota_exceeded", "message": "quota used up"}}
            )
        self.used += body["amount"]
        self.applied.append((key, body["amount"]))
        answer: dict[str, object] = {
            "meter": body["meter"],
            "amount": body["amount"],
            "seq": len(self.applied),
            "used": self.used,
            "limit": self.quota,
            "remaining": None if self.quota is None else self.quota - self.used,
            "flagged": False,
            "replayed": False,
        }
        self.answers[key] = answer
        if self.mode == "lost_reply":
            raise httpx.ReadTimeout("reply lost", request=request)
        if self.mode == "500":
            return httpx.Response(500, text="internal error")
        return httpx.Response(200, json=answer)


class FakeClock(ManualClock):
    """A manual clock whose wall time the tests set in seconds (``t``)."""

    def __init__(self) -> None:
        super().__init__(wall_ms=1_000_000_000)

    @property
    def t(self) -> float:
        return self.wall_ms() / 1000

    @t.setter
    def t(self, value: float) -> None:
        self.step_wall(round(value * 1000) - self.wall_ms())


def make_client(server: FakeServer, spool: Path, clock: FakeClock, **kw: object) -> Client:
    return Client(
        URL,
        spool=spool,
        transport=httpx.MockTransport(server.handler),
        clock=clock,
        rand=lambda: 0.5,
        environ={},
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_record_with_server_up_is_delivered_and_not_left_in_spool(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    with make_client(server, tmp_path / "s.db", clock) as c:
        result = c.record("runs", 3)
        assert not result.spooled
        assert result.receipt is not None
        assert result.receipt.used == 3
        assert c.spool.pending_count() == 0
    assert server.applied == [(result.idempotency_key, 3)]


def test_record_while_down_spools_then_flush_delivers(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    with make_client(server, tmp_path / "s.db", clock) as c:
        server.mode = "down"
        r1 = c.record("runs", 1)
        r2 = c.record("runs", 2)
        assert r1.spooled
        assert r2.spooled
        server.mode = "up"
        flushed = c.flush()
        assert (flushed.delivered, flushed.pending, flushed.dead_lettered) == (2, 0, 0)
    assert server.applied == [(r1.idempotency_key, 1), (r2.idempotency_key, 2)]


def test_record_during_backoff_does_not_contact_the_server(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    with make_client(server, tmp_path / "s.db", clock) as c:
        server.mode = "down"
        c.record("runs", 1)
        before = server.requests
        assert c.record("runs", 1).spooled
        assert server.requests == before
        clock.t += 3600
        server.mode = "up"
        result = c.record("runs", 1)
        # Once the backoff has passed, the earlier events go first, then this one.
        assert not result.spooled
        assert len(server.applied) == 3


def test_background_flusher_delivers_without_further_calls(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    import time

    with make_client(server, tmp_path / "s.db", clock, flush_interval=0.02) as c:
        server.mode = "down"
        assert c.record("runs", 2).spooled
        server.mode = "up"
        clock.t += 3600  # past the backoff of the spooled event
        deadline = time.monotonic() + 5
        while server.used != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.used == 2
        assert c.spool.pending_count() == 0


def test_lost_reply_is_resent_under_the_same_key_and_applied_once(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    with make_client(server, tmp_path / "s.db", clock) as c:
        server.mode = "lost_reply"
        first = c.record("runs", 5)
        assert first.spooled
        server.mode = "up"
        assert c.flush().delivered == 1
    assert server.applied == [(first.idempotency_key, 5)]
    assert server.used == 5


def test_quota_exceeded_is_raised_and_not_spooled(clock: FakeClock, tmp_path: Path) -> None:
    server = FakeServer(quota=4)
    with make_client(server, tmp_path / "s.db", clock) as c:
        c.record("runs", 4)
        with pytest.raises(QuotaExceeded, match="quota used up"):
            c.record("runs", 1)
        assert c.spool.pending_count() == 0
        assert c.spool.dead_letters() == []


def test_unknown_meter_on_a_new_event_is_raised_not_spooled(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    with make_client(server, tmp_path / "s.db", clock) as c:
        with pytest.raises(Exception, match="no meter 'nope'"):
            c.record("nope", 1)
        assert c.spool.pending_count() == 0


def test_invalid_amount_never_reaches_spool_or_server(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    with make_client(server, tmp_path / "s.db", clock) as c:
        with pytest.raises(BadRequestError):
            c.record("runs", 0)
        assert c.spool.pending_count() == 0
    assert server.requests == 0


def test_spooled_event_refused_later_goes_to_dead_letters_and_rest_is_delivered(
    clock: FakeClock, tmp_path: Path
) -> None:
    server = FakeServer(quota=10)
    with make_client(server, tmp_path / "s.db", clock) as c:
        server.mode = "down"
        a = c.record("runs", 8)
        b = c.record("runs", 8)  # will not fit once a is applied
        d = c.record("runs", 2)
        server.mode = "up"
        flushed = c.flush()
        assert flushed.delivered == 2
        assert [x.event.idempotency_key for x in flushed.dead_letters] == [b.idempotency_key]
        assert "quota used up" in flushed.dead_letters[0].reason
        assert flushed.dead_letters[0].code == "quota_exceeded"
        assert [x.event.idempotency_key for x in c.spool.dead_letters()] == [b.idempotency_key]
        # After a top-up the dead letter can be sent again under its original key.
        server.quota = 100
        assert c.spool.requeue_dead_letters() == 1
        assert c.flush().delivered == 1
    assert [k for k, _ in server.applied] == [
        a.idempotency_key,
        d.idempotency_key,
        b.idempotency_key,
    ]


def test_retry_budget_exhausted_moves_event_to_dead_letters(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    with make_client(server, tmp_path / "s.db", clock, retry=RetryConfig(max_attempts=3)) as c:
        server.mode = "down"
        c.record("runs", 1)  # attempt 1
        c.flush()  # attempt 2
        result = c.flush()  # attempt 3: budget spent
        assert result.pending == 0
        assert result.dead_letters[0].code == "retry_budget"
        assert "3 attempts" in result.dead_letters[0].reason


def test_event_older_than_the_idempotency_window_is_dead_lettered_not_resent(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    with make_client(server, tmp_path / "s.db", clock) as c:
        server.mode = "down"
        c.record("runs", 1)
        server.mode = "up"
        clock.t += 7 * 24 * 3600
        before = server.requests
        result = c.flush()
        assert server.requests == before
        assert [d.code for d in result.dead_letters] == ["too_old"]
        assert "idempotency key" in result.dead_letters[0].reason
    assert server.applied == []


def test_retry_state_survives_reopening_the_spool(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "s.db"
    with make_client(server, path, clock) as c:
        server.mode = "down"
        c.record("runs", 1)
        c.flush()
    with Spool(path) as spool:
        (ev,) = spool.pending()
        assert ev.attempts == 2
        assert ev.next_attempt_at > clock.t
        assert "connection refused" in (ev.last_error or "")


def test_spool_with_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Spool(path).close()
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='99' WHERE key='version'")
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match="version 99"):
        Spool(path)


def test_spool_in_unwritable_place_says_how_to_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="METERBOX_SPOOL"):
        Spool(blocker / "sub" / "s.db")


def test_spooled_events_survive_kill_9_of_the_recording_process(tmp_path: Path) -> None:
    spool_path = tmp_path / "s.db"
    child = textwrap.dedent(
        f"""
        import os, signal
        from meterbox.client import Client
        c = Client("http://127.0.0.1:9", spool={str(spool_path)!r}, timeout=0.5, environ={{}})
        for i in range(1, 6):
            assert c.record("runs", i).spooled
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], check=False, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with Spool(spool_path) as spool:
        assert [e.event.amount for e in spool.pending()] == [1, 2, 3, 4, 5]


def test_async_client_delivers_in_the_same_order(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    import asyncio

    async def scenario() -> list[str]:
        async with AsyncClient(
            URL,
            spool=tmp_path / "s.db",
            transport=httpx.MockTransport(server.handler),
            clock=clock,
            rand=lambda: 0.5,
            environ={},
        ) as c:
            server.mode = "down"
            keys = [(await c.record("runs", n)).idempotency_key for n in (1, 2)]
            server.mode = "up"
            clock.t += 3600
            keys.append((await c.record("runs", 3)).idempotency_key)
            assert (await c.flush()).pending == 0
            return keys

    keys = asyncio.run(scenario())
    assert [k for k, _ in server.applied] == keys


# -- the property: any interleaving delivers every event exactly once, in order

ops = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.integers(1, 9)),
        st.tuples(st.just("mode"), st.sampled_from(MODES)),
        st.tuples(st.just("flush"), st.booleans()),
        st.tuples(st.just("wait"), st.floats(0, 120)),
        st.tuples(st.just("restart"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops)
def test_any_interleaving_delivers_every_event_exactly_once_in_order(
    script: list[tuple[str, object]],
) -> None:
    server = FakeServer()
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.db"
        c = make_client(server, path, clock, retry=RetryConfig(max_attempts=None))
        recorded: list[tuple[str, int]] = []
        try:
            for op, arg in script:
                if op == "record":
                    assert isinstance(arg, int)
                    result = c.record("runs", arg)
                    recorded.append((result.idempotency_key, arg))
                    assert result.spooled == (result.receipt is None)
                elif op == "mode":
                    server.mode = str(arg)
                elif op == "flush":
                    c.flush(force=bool(arg))
                elif op == "wait":
                    assert isinstance(arg, float)
                    clock.t += arg
                else:
                    c.close()
                    c = make_client(server, path, clock, retry=RetryConfig(max_attempts=None))
            server.mode = "up"
            final = c.flush()
            assert final.pending == 0
            assert final.dead_letters == ()
        finally:
            c.close()
    assert server.applied == recorded
    assert server.used == sum(a for _, a in recorded)


def test_readding_an_event_with_the_same_key_keeps_one_entry(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        ev = UsageEvent("runs", 1, "c", "k")
        assert spool.add(ev, 1.0) == spool.add(ev, 2.0)
        assert spool.pending_count() == 1


def test_spool_ids_are_not_reused_after_delivery(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        first = spool.add(UsageEvent("runs", 1, "c", "a"), 1.0)
        spool.acknowledge(first)
        second = spool.add(UsageEvent("runs", 1, "c", "b"), 2.0)
        assert second > first


def test_client_process_env_for_spool_is_used(tmp_path: Path, server: FakeServer) -> None:
    env = {"METERBOX_SPOOL": str(tmp_path / "env.db")}
    c = Client(URL, transport=httpx.MockTransport(server.handler), environ=env)
    try:
        c.record("runs", 1)
        assert c.spool.path == tmp_path / "env.db"
    finally:
        c.close()
    assert os.path.exists(tmp_path / "env.db")
