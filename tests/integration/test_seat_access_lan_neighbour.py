"""A LAN neighbour against the real server: site API keys, bearer lease ids, key scopes.

The server runs as `meterbox server run --host 0.0.0.0` in a subprocess (so keys are
required, as on any site network), over a real data directory; keys are created and
revoked with the real `meterbox server keys` command while it runs. The neighbour is
plain HTTP with no key, or with a key of its own; the holder is the SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.server_proc import Data, ServerProcess, make_data

from meterbox.client import AsyncClient, Client
from meterbox.client.errors import ForbiddenError, UnauthorizedError


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    return subprocess.run(
        [sys.executable, "-m", "meterbox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
        env=env,
    )


def create_key(data: Path, name: str, *scope: str) -> dict[str, object]:
    out = cli("server", "keys", "create", "--data", str(data), "--name", name, "--json", *scope)
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


@pytest.fixture
def site(tmp_path: Path) -> Data:
    return make_data(tmp_path, seats=2, overdraft=0, extra_features=("cam",))


@pytest.fixture
def lan_server(site: Data, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(site.data, tmp_path / "server.log", extra=("--host", "0.0.0.0"))
    server.start()
    yield server
    server.stop()


def bearer(token: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_neighbour_without_a_key_can_neither_list_ids_nor_take_renew_release_or_record(
    site: Data, lan_server: ServerProcess, tmp_path: Path
) -> None:
    key = create_key(site.data, "lab-3", "--group", "cfd")
    with Client(lan_server.url, api_key=str(key["token"]), spool=tmp_path / "s.db") as holder:
        lease = holder.checkout("cad")
        with httpx.Client(base_url=lan_server.url) as neighbour:
            listing = neighbour.get("/v1/seats")
            assert listing.status_code == 200
            # Counts and holder names for everyone; the lease id appears nowhere.
            assert lease.lease_id not in listing.text
            cad = next(f for f in listing.json()["features"] if f["feature"] == "cad")
            assert cad["in_use"] == 1 and [h["client_id"] for h in cad["holders"]] == [
                lease.client_id
            ]
            body = {"lease_id": lease.lease_id}
            for path, payload in (
                ("/v1/seats/checkout", {"feature": "cad", "client_id": "neighbour"}),
                ("/v1/seats/heartbeat", body),
                ("/v1/seats/release", body),
                ("/v1/usage", {"meter": "runs", "amount": 5, "client_id": "neighbour"}),
            ):
                refused = neighbour.post(path, json=payload)
                assert refused.status_code == 401, (path, refused.text)
                assert refused.json()["error"]["code"] == "unauthorized"
                assert refused.headers["WWW-Authenticate"] == "Bearer"
        # The holder's seat is untouched, and nothing was charged to the meter.
        assert holder.heartbeat(lease.lease_id).lease_id == lease.lease_id
        assert holder.balance("runs").used == 0
    assert "site API keys: required" in lan_server.tail()
    assert str(key["token"]) not in lan_server.tail()


def test_another_keys_holder_cannot_renew_release_or_claim_a_colleagues_seat(
    site: Data, lan_server: ServerProcess, tmp_path: Path
) -> None:
    mine = create_key(site.data, "alice-laptop")
    theirs = create_key(site.data, "bob-laptop")
    with Client(
        lan_server.url, api_key=str(mine["token"]), client_id="alice@ws1", spool=tmp_path / "s.db"
    ) as alice:
        lease = alice.checkout("cad")
        with httpx.Client(base_url=lan_server.url, headers=bearer(theirs["token"])) as bob:
            # Even with the id (say, read over a shoulder) another key gets nothing.
            beat = bob.post("/v1/seats/heartbeat", json={"lease_id": lease.lease_id})
            assert beat.status_code == 404 and beat.json()["error"]["code"] == "lease_not_found"
            gone = bob.post("/v1/seats/release", json={"lease_id": lease.lease_id})
            assert gone.json() == {"released": False}
            # Naming alice's public client id does not hand over her lease (or its id).
            claim = bob.post(
                "/v1/seats/checkout", json={"feature": "cad", "client_id": "alice@ws1"}
            )
            assert claim.status_code == 403 and claim.json()["error"]["code"] == "forbidden"
            assert lease.lease_id not in claim.text
        assert alice.heartbeat(lease.lease_id).lease_id == lease.lease_id
        assert alice.release(lease.lease_id) is True


def test_a_key_limited_to_one_feature_cannot_take_another_nor_record_a_meter_it_lacks(
    site: Data, lan_server: ServerProcess, tmp_path: Path
) -> None:
    cad_only = create_key(site.data, "cad-only", "--feature", "cad", "--no-usage")
    with Client(lan_server.url, api_key=str(cad_only["token"]), spool=tmp_path / "a.db") as c:
        assert c.checkout("cad").feature == "cad"
        with pytest.raises(ForbiddenError, match="may not check out feature 'cam'"):
            c.checkout("cam")
    with httpx.Client(base_url=lan_server.url, headers=bearer(cad_only["token"])) as raw:
        refused = raw.post("/v1/usage", json={"meter": "runs", "amount": 1, "client_id": "x"})
        assert refused.status_code == 403 and "may not record usage" in refused.text
    metered = create_key(site.data, "runs-only", "--feature", "cam", "--meter", "runs")
    with Client(lan_server.url, api_key=str(metered["token"]), spool=tmp_path / "b.db") as c:
        assert c.checkout("cam").feature == "cam"
        assert not c.record("runs", 2).spooled
        assert c.balance("runs").used == 2


def test_a_revoked_key_is_refused_at_once_and_after_a_restart(
    site: Data, lan_server: ServerProcess, tmp_path: Path
) -> None:
    key = create_key(site.data, "contractor")
    with httpx.Client(base_url=lan_server.url, headers=bearer(key["token"])) as c:
        lease = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "k"}).json()
        cli("server", "keys", "revoke", "--data", str(site.data), "contractor")
        # The very next request, on the same connection: refused.
        beat = c.post("/v1/seats/heartbeat", json={"lease_id": lease["lease_id"]})
        assert beat.status_code == 401 and "was revoked" in beat.json()["error"]["message"]
        again = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "k"})
        assert again.status_code == 401
    listed = json.loads(cli("server", "keys", "list", "--data", str(site.data), "--json").stdout)
    assert [(k["name"], k["revoked_at"] is not None) for k in listed] == [("contractor", True)]
    lan_server.stop()
    lan_server.start()
    with httpx.Client(base_url=lan_server.url, headers=bearer(key["token"])) as c:
        assert (
            c.post("/v1/usage", json={"meter": "runs", "amount": 1, "client_id": "k"}).status_code
            == 401
        )


def test_the_async_client_and_the_command_line_take_the_key_from_the_environment(
    site: Data, lan_server: ServerProcess, tmp_path: Path
) -> None:
    key = str(create_key(site.data, "ci-runner")["token"])

    async def use() -> str:
        environ = {"METERBOX_API_KEY": key}
        async with AsyncClient(lan_server.url, environ=environ, spool=tmp_path / "s.db") as c:
            lease = await c.checkout("cad")
            await c.release(lease.lease_id)
            return lease.feature

    assert asyncio.run(use()) == "cad"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    base = [sys.executable, "-m", "meterbox", "client"]
    url = ["--url", lan_server.url]
    denied = subprocess.run(
        [*base, "checkout", "cad", *url],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert denied.returncode == 2 and "needs a site API key" in denied.stderr
    taken = subprocess.run(
        [*base, "checkout", "cad", *url],
        capture_output=True,
        text=True,
        env={**env, "METERBOX_API_KEY": key},
        timeout=60,
        check=True,
    )
    lease_id = taken.stdout.strip()
    released = subprocess.run(
        [*base, "release", lease_id, *url, "--api-key", key],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert json.loads(released.stdout) == {"released": True}
    with pytest.raises(UnauthorizedError):
        Client(lan_server.url, api_key=key[:-1] + ("A" if key[-1] != "A" else "B")).checkout("cad")


def test_keys_made_while_stopped_are_stored_hashed_and_keys_are_optional_on_loopback(
    site: Data, tmp_path: Path
) -> None:
    key = create_key(site.data, "offline-made", "--feature", "cad")
    token = str(key["token"])
    stored = site.data / "api-keys.json"
    assert token not in stored.read_text() and token.split(".")[1] not in stored.read_text()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    listing = cli("server", "keys", "list", "--data", str(site.data)).stdout
    assert "offline-made" in listing and token not in listing
    server = ServerProcess(site.data, tmp_path / "loop.log")
    server.start()
    try:
        with httpx.Client(base_url=server.url) as c:
            anonymous = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "a"})
            assert anonymous.status_code == 200
            keyed = c.post(
                "/v1/seats/checkout",
                json={"feature": "cad", "client_id": "b"},
                headers=bearer(token),
            )
            assert keyed.status_code == 200
            # A lease taken with a key is renewed only with that key, on loopback too.
            beat = c.post("/v1/seats/heartbeat", json={"lease_id": keyed.json()["lease_id"]})
            assert beat.status_code == 404
        cli("server", "keys", "revoke", "--data", str(site.data), str(key["key_id"]))
        with httpx.Client(base_url=server.url, headers=bearer(token)) as c:
            assert (
                c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "b"}).status_code
                == 401
            )
        assert "site API keys: optional" in server.tail()
    finally:
        server.stop()
