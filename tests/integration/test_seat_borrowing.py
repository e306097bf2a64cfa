"""Seat borrowing against the real server (docs/adr/0028-seat-borrowing.md).

A client borrows a seat for hours; the seat counts against the feature until it is
returned or expires; it survives a graceful restart and SIGKILL (it is in the ledger and
the state); its token verifies in the SDK with no server until its expiry (injected
clock) and not after; an early return frees the seat; a token copied to another
machine verifies nowhere else and gets no second seat from the server; the borrow and
the return are records of the report the vendor verifies, and the CLI does it all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from tests.support.server_proc import Data, ServerProcess, make_data

from meterbox.client import Client
from meterbox.client.errors import BorrowRefused, NoSeatAvailable
from meterbox.errors import LicenseExpired, MeterboxError, StateError, VerificationError
from meterbox.ledger import RecordType, SeatBorrowed, parse_payload
from meterbox.licenses import machine_digest

LAPTOP, DESKTOP = "laptop-a1", "desktop-b2"


@pytest.fixture
def site(tmp_path: Path) -> Data:
    return make_data(tmp_path, seats=2, overdraft=1, max_borrow_hours=336)


@pytest.fixture
def server(site: Data, tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(site.data, tmp_path / "server.log")
    s.start()
    yield s
    s.stop()


def client(url: str, home: Path, client_id: str = "alice@laptop") -> Client:
    return Client(url, spool=home / "spool.db", client_id=client_id)


def seats(url: str) -> dict[str, object]:
    feature: dict[str, object] = httpx.get(f"{url}/v1/seats").json()["features"][0]
    return feature


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    return subprocess.run(
        [sys.executable, "-m", "meterbox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**base, **(env or {})},
    )


def test_a_borrow_counts_survives_restarts_and_kill9_and_an_early_return_frees_it(
    site: Data, server: ServerProcess, tmp_path: Path
) -> None:
    with client(server.url, tmp_path / "a") as alice:
        got = alice.borrow("cad", hours=24, machine_code=LAPTOP)
    assert got.feature == "cad" and got.token.machine == machine_digest(LAPTOP)
    assert (
        timedelta(hours=23, minutes=59) < got.expires_at - got.token.issued <= timedelta(hours=24)
    )
    view = seats(server.url)
    assert (view["in_use"], view["borrowed"]) == (1, 1)
    holder = view["holders"][0]  # type: ignore[index]
    assert holder["borrowed"] is True and "lease_id" not in holder
    text = cli("server", "status", "--data", str(site.data))
    assert "cad: 1 (1 borrowed)" in text.stdout, text.stdout + text.stderr
    as_json = json.loads(cli("server", "status", "--data", str(site.data), "--json").stdout)
    assert as_json["seats_borrowed"] == {"cad": 1}

    def lose_state() -> None:
        # The cache gone: the server rebuilds it from the ledger's fold (ADR 0014).
        server.stop()
        (site.data / "state.db").unlink()

    for stop in (server.stop, server.kill9, lose_state):
        stop()
        server.start()
        view = seats(server.url)
        assert (view["in_use"], view["borrowed"]) == (1, 1), stop.__name__
        status = httpx.get(f"{server.url}/v1/status").json()
        assert status["seats_borrowed"] == {"cad": 1}

    with client(server.url, tmp_path / "a") as alice:
        # Asked again from the same machine: the same seat and the same token, no new record.
        again = alice.borrow("cad", hours=24, machine_code=LAPTOP)
        assert again.lease_id == got.lease_id
        # A borrowed seat is not renewed by a checkout and not released as a lease.
        lease = alice.checkout("cad")
        assert lease.lease_id == got.lease_id and lease.expires_at == got.expires_at
        with pytest.raises(BorrowRefused, match="borrowed seat"):
            alice.release(got.lease_id)
        assert alice.return_borrow("cad", machine_code=LAPTOP) is True
        assert not (tmp_path / "a" / "borrows" / "cad.borrow").exists()
        assert (seats(server.url)["in_use"], seats(server.url)["borrowed"]) == (0, 0)
        # The freed seat is there for the next client at once.
        assert not client(server.url, tmp_path / "b", "bob@desk").checkout("cad").overdraft

    events = [json.loads(line) for line in (site.data / "activity.jsonl").read_text().splitlines()]
    lent_lines = [e for e in events if e["event"] == "borrow"]
    assert len(lent_lines) == 1 and lent_lines[0]["lease"] == got.lease_id[:8]
    assert lent_lines[0]["expires"].startswith(got.expires_at.isoformat()[:19])
    assert [e["client_id"] for e in events if e["event"] == "return"] == ["alice@laptop"]

    report = tmp_path / "report.mbr"
    assert cli("server", "export", "--data", str(site.data), "-o", str(report)).returncode == 0
    records, result = site.verify(report.read_bytes())
    # Deleting state.db above is itself on record: the only critical finding.
    assert {f.code for f in result.findings if f.severity == "critical"} == {"state.rebuilt"}
    lent = [r for r in records if r.type == RecordType.SEAT_BORROWED]
    back = [r for r in records if r.type == RecordType.SEAT_RETURNED]
    assert len(lent) == 1 and len(back) == 1
    borrowed = parse_payload(RecordType.SEAT_BORROWED, lent[0].payload)
    assert isinstance(borrowed, SeatBorrowed)
    assert borrowed.lease_id == got.lease_id and borrowed.machine == machine_digest(LAPTOP)
    assert borrowed.expires == int(got.expires_at.timestamp())


def test_the_token_verifies_offline_until_expiry_and_not_on_another_machine(
    server: ServerProcess, tmp_path: Path
) -> None:
    home = tmp_path / "a"
    with client(server.url, home) as alice:
        got = alice.borrow("cad", hours=72, machine_code=LAPTOP)
    server.stop()  # from here on there is no server at all
    offline = client("http://127.0.0.1:9", home)
    assert offline.borrowed("cad", machine_code=LAPTOP).lease_id == got.lease_id
    last = got.expires_at - timedelta(seconds=1)
    assert offline.borrowed("cad", machine_code=LAPTOP, now=last).lease_id == got.lease_id
    with pytest.raises(LicenseExpired, match="expired"):
        offline.borrowed("cad", machine_code=LAPTOP, now=got.expires_at)
    with pytest.raises(StateError, match="No borrowed seat"):
        offline.borrowed("cfd", machine_code=LAPTOP)

    # The borrow directory copied whole to another machine: the token is refused there.
    shutil.copytree(home / "borrows", tmp_path / "copy" / "borrows")
    thief = client("http://127.0.0.1:9", tmp_path / "copy")
    with pytest.raises(VerificationError, match="another machine"):
        thief.borrowed("cad", machine_code=DESKTOP)
    # An edited token (a later expiry) fails its signature.
    token = tmp_path / "copy" / "borrows" / "cad.borrow"
    token.write_bytes(token.read_bytes().replace(b'"payload":"ey', b'"payload":"eX', 1))
    with pytest.raises(MeterboxError):
        thief.borrowed("cad", machine_code=LAPTOP)


def test_a_copied_token_gets_no_second_seat_and_cannot_be_returned_elsewhere(
    server: ServerProcess, tmp_path: Path
) -> None:
    with client(server.url, tmp_path / "a") as alice:
        alice.borrow("cad", hours=8, machine_code=LAPTOP)
    shutil.copytree(tmp_path / "a" / "borrows", tmp_path / "copy" / "borrows")
    with client(server.url, tmp_path / "copy") as thief:
        # Same client id, another machine: no second seat, and no token for it.
        with pytest.raises(BorrowRefused, match="another machine"):
            thief.borrow("cad", hours=8, machine_code=DESKTOP)
        # Returning the copy from the other machine does not free the laptop's seat.
        with pytest.raises(BorrowRefused, match="another machine"):
            thief.return_borrow("cad", machine_code=DESKTOP)
    assert (seats(server.url)["in_use"], seats(server.url)["borrowed"]) == (1, 1)


def test_the_administrator_cannot_remove_a_borrowed_seat_to_lend_it_again(
    site: Data, server: ServerProcess, tmp_path: Path
) -> None:
    with client(server.url, tmp_path / "a") as alice:
        alice.borrow("cad", hours=8, machine_code=LAPTOP)
    admin = {"Authorization": f"Bearer {site.token}"}
    # The token stays valid offline whatever the server does, so freeing its seat would
    # give the site a seat more than the license: the removal matches no borrowed seat.
    r = httpx.post(
        f"{server.url}/v1/admin/seats/remove",
        json={"client_id": "alice@laptop", "by": "root"},
        headers=admin,
    )
    assert r.status_code == 200 and r.json()["removed"] == [], r.text
    assert (seats(server.url)["in_use"], seats(server.url)["borrowed"]) == (1, 1)


def test_borrows_take_regular_seats_only_and_stay_within_the_license(
    server: ServerProcess, tmp_path: Path
) -> None:
    a, b = client(server.url, tmp_path / "a", "a@1"), client(server.url, tmp_path / "b", "b@2")
    with a, b:
        with pytest.raises(BorrowRefused, match="337 hours"):
            a.borrow("cad", hours=337, machine_code=LAPTOP)
        a.borrow("cad", hours=336, machine_code=LAPTOP)
        # A held lease is handed over to the borrow: still one seat for this client.
        b.checkout("cad")
        b.borrow("cad", hours=1, machine_code=DESKTOP)
        assert seats(server.url)["in_use"] == 2
        with client(server.url, tmp_path / "c", "c@3") as c:
            # Both regular seats are lent: a borrow is refused, a checkout gets overdraft.
            with pytest.raises(NoSeatAvailable):
                c.borrow("cad", hours=1, machine_code="c")
            assert c.checkout("cad").overdraft
    view = seats(server.url)
    assert (view["in_use"], view["borrowed"]) == (3, 2)


def test_a_license_without_borrowing_refuses_and_the_cli_borrows_and_returns(
    tmp_path: Path,
) -> None:
    plain = make_data(tmp_path / "plain", seats=1, overdraft=0)
    s = ServerProcess(plain.data, tmp_path / "plain.log")
    s.start()
    try:
        with client(s.url, tmp_path / "p") as p, pytest.raises(BorrowRefused, match="allows"):
            p.borrow("cad", hours=1, machine_code=LAPTOP)
    finally:
        s.stop()

    lending = make_data(tmp_path / "lend", seats=1, overdraft=0, max_borrow_hours=48)
    s = ServerProcess(lending.data, tmp_path / "lend.log")
    s.start()
    try:
        env = {"METERBOX_MACHINE_CODE": LAPTOP}
        spool = str(tmp_path / "cli" / "spool.db")
        out = cli(
            "client", "borrow", "cad", "--hours", "12", "--url", s.url, "--spool", spool, env=env
        )
        assert out.returncode == 0, out.stderr
        lent = json.loads(out.stdout)
        assert lent["feature"] == "cad" and "works offline" in out.stderr
        s.stop()
        ok = cli("client", "borrowed", "cad", "--spool", spool, env=env)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["lease_id"] == lent["lease_id"]
        other = cli("client", "borrowed", "cad", "--spool", spool,
                    env={"METERBOX_MACHINE_CODE": DESKTOP})  # fmt: skip
        assert other.returncode != 0 and "another machine" in other.stderr
        s.start()
        back = cli("client", "return", "cad", "--url", s.url, "--spool", spool, env=env)
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout) == {"returned": True}
        assert seats(s.url)["in_use"] == 0
    finally:
        s.stop()


def test_the_async_client_borrows_checks_offline_and_returns(
    server: ServerProcess, tmp_path: Path
) -> None:
    import asyncio

    from meterbox.client import AsyncClient

    home = tmp_path / "async"

    async def borrow_and_return() -> tuple[str, str, bool]:
        async with AsyncClient(
            server.url, spool=home / "spool.db", client_id="carol@laptop"
        ) as carol:
            got = await carol.borrow("cad", hours=24, machine_code=LAPTOP)
            # Offline: verified from the kept token, with no request.
            again = carol.borrowed("cad", machine_code=LAPTOP)
            held = seats(server.url)["borrowed"]
            back = await carol.return_borrow("cad", machine_code=LAPTOP)
            return got.lease_id, again.lease_id, bool(held == 1 and back)

    lent, checked, returned = asyncio.run(borrow_and_return())
    assert lent == checked and returned
    assert seats(server.url)["borrowed"] == 0
    # The token is gone with the return: nothing verifies offline any more.
    with pytest.raises(StateError, match="No borrowed seat"):
        client("http://127.0.0.1:9", home).borrowed("cad", machine_code=LAPTOP)
