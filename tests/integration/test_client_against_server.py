"""The client SDK against the real meterbox server under uvicorn, in a killable subprocess.

Each test gets its own server state directory and port. The server is started with
``python -c`` running :data:`SERVER_MAIN`, so it can be SIGKILLed and restarted on the
same state and port mid-stream, exactly as a crash would.

License installed by every server here:

- feature ``cad``: 1 seat, 2 s lease (short, so renewal is exercised many times);
- feature ``long``: 1 seat, 600 s lease (so only an explicit release frees it);
- meter ``runs``: no limit; meter ``capped``: limit 10, refuse over the limit.

The server's clock is the machine's plus an offset the test sets
(:meth:`ServerProcess.advance`), so lease time can pass on the server without the
test sleeping through it. Only ``test_background_renewal_keeps_a_seat_past_several_lease_lengths``
renews in real time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from meterbox.cli import app as cli_app
from meterbox.client import (
    AsyncClient,
    Client,
    LeaseLost,
    NoSeatAvailable,
    QuotaExceeded,
    RetryConfig,
    ServerUnreachableError,
)
from support.timing import ManualSleeps, ManualWaits

SERVER_MAIN = textwrap.dedent(
    """
    import sys
    import time
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    import uvicorn

    from meterbox.clock import SystemClock
    from meterbox.server._app import build_app
    from meterbox.server._core.policy import FeaturePolicy, LicensePolicy, MeterPolicy
    from meterbox.server._service import LicenseService, ServiceConfig
    from meterbox.server._sinks import FileEventSink
    from meterbox.server._state import StateStore

    state_dir, port = Path(sys.argv[1]), int(sys.argv[2])
    policy = LicensePolicy(
        license_id="lic-client-it",
        customer="ACME",
        product="solver",
        issued=datetime(2026, 1, 1, tzinfo=UTC),
        features={
            "cad": FeaturePolicy(seats=1, lease_seconds=2),
            "long": FeaturePolicy(seats=1, lease_seconds=600),
        },
        meters={
            "runs": MeterPolicy(),
            "capped": MeterPolicy(limit=10, over_limit="refuse"),
        },
    )
    offset_file = state_dir / "clock-offset"

    def offset():
        # Seconds the test has moved this server's clocks forward (written atomically).
        return float(offset_file.read_text()) if offset_file.exists() else 0.0

    store = StateStore(state_dir / "state.db")
    sink = FileEventSink(state_dir / "events.bin")
    class OffsetClock(SystemClock):
        # The system clocks, moved forward by what the test wrote into the offset file.
        def wall_ms(self):
            return super().wall_ms() + int(offset() * 1000)

        def mono_ms(self):
            return super().mono_ms() + int(offset() * 1000)

    service = LicenseService.open(
        store, [policy], sink, settings=ServiceConfig(cull_interval=0.5), clock=OffsetClock()
    )
    app = build_app(service, admin_token="t" * 32)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One meterbox server subprocess on a fixed port and state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir / "server.log"
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        """Move the server's wall and monotonic clocks forward together (no clock step)."""
        self.offset += seconds
        tmp = self.state_dir / "clock-offset.tmp"
        tmp.write_text(repr(self.offset))
        tmp.replace(self.state_dir / "clock-offset")

    def start(self) -> None:
        assert self.proc is None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVER_MAIN, str(self.state_dir), str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash or power cut."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def get(self, path: str) -> dict[str, object]:
        body = httpx.get(self.url + path, timeout=5).json()
        assert isinstance(body, dict)
        return body

    def used(self, meter: str) -> int:
        meters = self.get("/v1/usage/balances")["meters"]
        assert isinstance(meters, list)
        return int(next(m["used"] for m in meters if m["meter"] == meter))

    def in_use(self, feature: str) -> int:
        features = self.get("/v1/seats")["features"]
        assert isinstance(features, list)
        return int(next(f["in_use"] for f in features if f["feature"] == feature))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    state = tmp_path / "server"
    state.mkdir()
    srv = ServerProcess(state)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None:
            srv.kill()


FAST_RETRY = RetryConfig(base_seconds=0.05, cap_seconds=0.5, max_attempts=None)


def client(
    server: ServerProcess,
    tmp_path: Path,
    name: str = "app-1",
    timeout: float = 2.0,
    renew_wait: Callable[[threading.Event, float], bool] = threading.Event.wait,
) -> Client:
    return Client(
        server.url,
        spool=tmp_path / f"{name}.spool.db",
        client_id=name,
        timeout=timeout,
        retry=FAST_RETRY,
        environ={},
        renew_wait=renew_wait,
    )


# ------------------------------------------------------------------ seats


def test_seat_is_released_when_the_block_raises(server: ServerProcess, tmp_path: Path) -> None:
    seen_in_use: list[int] = []

    def crash_while_holding(c: Client) -> None:
        with c.seat("cad") as seat:
            assert seat.lease_id
            seen_in_use.append(server.in_use("cad"))
            _ = 1 / 0

    with client(server, tmp_path) as c:
        with pytest.raises(ZeroDivisionError):
            crash_while_holding(c)
        assert seen_in_use == [1]
        assert server.in_use("cad") == 0
    # Another client can take the only seat at once.
    with client(server, tmp_path, "app-2") as other, other.seat("cad") as seat:
        assert not seat.overdraft


def test_only_seat_taken_raises_no_seat_available(server: ServerProcess, tmp_path: Path) -> None:
    with client(server, tmp_path, "app-1") as a, client(server, tmp_path, "app-2") as b:
        with a.seat("cad"):
            with pytest.raises(NoSeatAvailable), b.seat("cad"):
                pass


def test_background_renewal_keeps_a_seat_past_several_lease_lengths(
    server: ServerProcess, tmp_path: Path
) -> None:
    with client(server, tmp_path, "app-1") as a, client(server, tmp_path, "app-2") as b:
        with a.seat("cad") as seat:
            first_expiry = seat.expires_at
            time.sleep(7.0)  # three and a half 2 s leases
            assert not seat.lost
            assert seat.expires_at > first_expiry
            assert server.in_use("cad") == 1
            with pytest.raises(NoSeatAvailable), b.seat("cad"):
                pass
        assert server.in_use("cad") == 0


def test_lease_expired_while_unrenewed_is_reported_lost(
    server: ServerProcess, tmp_path: Path
) -> None:
    waits = ManualWaits()
    with client(server, tmp_path, renew_wait=waits) as c:
        seat = c.seat("cad").acquire()
        # A paused process: no heartbeat goes out while the 2 s lease runs out.
        server.advance(3.0)
        waits.fire()  # the process resumes; its overdue heartbeat finds the lease expired
        assert seat.lost
        with pytest.raises(LeaseLost):
            seat.check()
        with pytest.raises(LeaseLost):
            c.heartbeat(seat.lease_id)
        seat.release()


def test_async_seat_renews_and_releases(server: ServerProcess, tmp_path: Path) -> None:
    sleeps = ManualSleeps(on_fire=server.advance)

    async def scenario() -> None:
        async with (
            AsyncClient(server.url, client_id="async-1", environ={}, renew_sleep=sleeps) as c,
            c.seat("cad") as seat,
        ):
            first_expiry = seat.expires_at
            while sleeps.elapsed < 5.0:  # two and a half 2 s leases of server time
                await sleeps.fire()
            assert not seat.lost
            assert seat.expires_at - first_expiry >= timedelta(seconds=4.5)
            assert server.in_use("cad") == 1

    asyncio.run(scenario())
    assert server.in_use("cad") == 0


def test_seat_left_held_is_released_at_interpreter_exit(
    server: ServerProcess, tmp_path: Path
) -> None:
    child = textwrap.dedent(
        f"""
        from meterbox.client import Client
        c = Client({server.url!r}, client_id="exiting", environ={{}})
        seat = c.seat("long").acquire()   # never released by the program
        print(seat.lease_id, flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, check=True, timeout=30)
    assert out.stdout.strip()
    # The lease is 600 s long, so only the exit hook can have freed it.
    assert server.in_use("long") == 0


# ------------------------------------------------------------------ usage


def test_quota_exhaustion_is_raised_and_not_spooled(server: ServerProcess, tmp_path: Path) -> None:
    with client(server, tmp_path) as c:
        assert c.record("capped", 6).receipt is not None
        assert c.record("capped", 4).receipt is not None
        with pytest.raises(QuotaExceeded):
            c.record("capped", 1)
        assert c.spool.pending_count() == 0
        assert c.spool.dead_letters() == []
        assert c.balance("capped").used == 10
    assert server.used("capped") == 10


def test_server_killed_and_restarted_mid_stream_every_unit_arrives_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    recorded: list[int] = []
    spooled = 0
    stop = threading.Event()
    errors: list[BaseException] = []

    with client(server, tmp_path, timeout=1.0) as c:

        def producer() -> None:
            nonlocal spooled
            n = 0
            try:
                while not stop.is_set():
                    n += 1
                    amount = n % 7 + 1
                    result = c.record("runs", amount)
                    recorded.append(amount)
                    spooled += result.spooled
                    time.sleep(0.005)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=producer)
        thread.start()
        for _ in range(3):
            time.sleep(0.7)
            server.kill()
            time.sleep(0.7)
            server.start()
        time.sleep(0.5)
        stop.set()
        thread.join()
        assert errors == []
        final = c.flush()
        assert final.pending == 0
        assert final.dead_letters == ()

    assert spooled > 0, "the outage never reached the client; the test proved nothing"
    assert len(recorded) > 50
    assert server.used("runs") == sum(recorded)


def test_spool_survives_kill_9_of_the_client_process(server: ServerProcess, tmp_path: Path) -> None:
    spool_path = tmp_path / "shared.spool.db"
    server.kill()
    child = textwrap.dedent(
        f"""
        import os, signal
        from meterbox.client import Client
        c = Client({server.url!r}, spool={str(spool_path)!r}, client_id="doomed",
                   timeout=0.5, environ={{}})
        for amount in range(1, 21):
            assert c.record("runs", amount).spooled
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child], check=False, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    server.start()
    with Client(server.url, spool=spool_path, client_id="heir", environ={}) as c:
        result = c.flush()
        assert (result.delivered, result.pending, result.dead_lettered) == (20, 0, 0)
        # Flushing again is a no-op: nothing is sent twice.
        assert c.flush().delivered == 0
    assert server.used("runs") == sum(range(1, 21))


def test_record_with_server_down_spools_and_later_record_delivers_in_order(
    server: ServerProcess, tmp_path: Path
) -> None:
    with client(server, tmp_path) as c:
        server.kill()
        assert c.record("runs", 2).spooled
        assert c.record("runs", 3).spooled
        server.start()
        time.sleep(0.6)  # past the backoff cap
        result = c.record("runs", 5)
        assert not result.spooled
        assert result.receipt is not None
        # The two spooled events went first, so this one saw all ten units.
        assert result.receipt.used == 10
    assert server.used("runs") == 10


def test_unreachable_seat_checkout_raises(tmp_path: Path) -> None:
    with Client(f"http://127.0.0.1:{free_port()}", environ={}, timeout=0.5) as c:
        with pytest.raises(ServerUnreachableError), c.seat("cad"):
            pass


def test_failover_to_the_second_server(server: ServerProcess, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with Client([dead, server.url], client_id="fo", environ={}, spool=tmp_path / "s.db") as c:
        assert not c.record("runs", 1).spooled
        with c.seat("cad") as seat:
            assert seat.lease_id
    assert server.used("runs") == 1


# ------------------------------------------------------------------ CLI


def test_cli_round_trip_and_exit_codes(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("METERBOX_URL", server.url)
    monkeypatch.setenv("METERBOX_SPOOL", str(tmp_path / "cli.db"))

    out = runner.invoke(cli_app, ["client", "checkout", "long", "--client-id", "sh-1"])
    assert out.exit_code == 0, out.stderr
    lease_id = out.stdout.strip()
    denied = runner.invoke(cli_app, ["client", "checkout", "long", "--client-id", "sh-2"])
    assert denied.exit_code == 1
    released = runner.invoke(cli_app, ["client", "release", lease_id])
    assert released.exit_code == 0
    assert json.loads(released.stdout) == {"released": True}

    rec = runner.invoke(cli_app, ["client", "record", "capped", "10"])
    assert rec.exit_code == 0
    assert json.loads(rec.stdout)["receipt"]["used"] == 10
    assert runner.invoke(cli_app, ["client", "record", "capped", "1"]).exit_code == 1
    assert runner.invoke(cli_app, ["client", "record", "nope", "1"]).exit_code == 1
    bal = runner.invoke(cli_app, ["client", "balance", "capped"])
    assert json.loads(bal.stdout)["remaining"] == 0

    server.kill()
    spooled = runner.invoke(cli_app, ["client", "record", "runs", "3"])
    assert spooled.exit_code == 0
    assert json.loads(spooled.stdout)["spooled"] is True
    assert runner.invoke(cli_app, ["client", "checkout", "long"]).exit_code == 5
    server.start()
    flushed = runner.invoke(cli_app, ["client", "flush"])
    assert flushed.exit_code == 0, flushed.stderr
    assert json.loads(flushed.stdout)["delivered"] == 1
    assert server.used("runs") == 3
    assert os.path.exists(tmp_path / "cli.db")


# ------------------------------------------------------------ shell identity


def meterbox_cli(
    server: ServerProcess, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """One `meterbox` process, as a shell script runs it (so each call has a new pid)."""
    env = {**os.environ, "METERBOX_URL": server.url, "METERBOX_SPOOL": str(tmp_path / "sh.db")}
    return subprocess.run(
        [sys.executable, "-m", "meterbox", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_cli_record_rerun_with_the_same_key_is_a_replay_and_exits_0(
    server: ServerProcess, tmp_path: Path
) -> None:
    first = meterbox_cli(server, tmp_path, "client", "record", "runs", "2", "--key", "job-17")
    again = meterbox_cli(server, tmp_path, "client", "record", "runs", "2", "--key", "job-17")
    assert (first.returncode, again.returncode) == (0, 0), again.stderr
    assert json.loads(again.stdout)["receipt"]["replayed"] is True
    assert server.used("runs") == 2


def test_cli_second_checkout_from_the_shell_renews_the_same_seat(
    server: ServerProcess, tmp_path: Path
) -> None:
    first = meterbox_cli(server, tmp_path, "client", "checkout", "long")
    again = meterbox_cli(server, tmp_path, "client", "checkout", "long", "--json")
    assert (first.returncode, again.returncode) == (0, 0), again.stderr
    lease = json.loads(again.stdout)
    assert lease["lease_id"] == first.stdout.strip()
    assert lease["renewed"] is True
    assert server.in_use("long") == 1


def test_sigterm_releases_a_held_seat(server: ServerProcess, tmp_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import time
        from meterbox.client import Client
        c = Client({server.url!r}, client_id="terminated", environ={{}})
        with c.seat("long") as seat:
            print(seat.lease_id, flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip()
    assert server.in_use("long") == 1
    proc.send_signal(signal.SIGTERM)
    # The default action still ends the process, with the status a SIGTERM gives.
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert server.in_use("long") == 0


def test_balance_of_a_refusing_meter_at_its_limit(server: ServerProcess, tmp_path: Path) -> None:
    with client(server, tmp_path) as c:
        c.record("capped", 10)
        (balance,) = [b for b in c.balances() if b.meter == "capped"]
    assert (balance.policy, balance.over_limit, balance.remaining) == ("refuse", False, 0)
