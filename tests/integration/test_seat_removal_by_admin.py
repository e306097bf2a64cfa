"""The site administrator removes seats on the real server: CLI, admin API, dashboard button.

Each removal takes effect at once (the seat is free for the next checkout), the holder's
next heartbeat is told who removed it and why (410 ``lease_removed``), the removal is a
``seat.removed`` record in the report the vendor verifies, and it survives a restart.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.server_proc import Data, ServerProcess, make_data

from meterbox.client import Client
from meterbox.client.errors import LeaseLost
from meterbox.ledger import RecordType, SeatRemoved, parse_payload


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


@pytest.fixture
def site(tmp_path: Path) -> Data:
    return make_data(tmp_path, seats=1, overdraft=0)


@pytest.fixture
def server(site: Data, tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(site.data, tmp_path / "server.log")
    s.start()
    yield s
    s.stop()


def removals(site: Data, tmp_path: Path) -> list[SeatRemoved]:
    report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.mbr"
    cli("server", "export", "--data", str(site.data), "-o", str(report))
    records, result = site.verify(report.read_bytes())
    assert not result.critical, result.findings
    out = []
    for r in records:
        if r.type == RecordType.SEAT_REMOVED:
            payload = parse_payload(r.type, r.payload)
            assert isinstance(payload, SeatRemoved)
            out.append(payload)
    return out


def test_removed_from_the_command_line_the_holder_is_told_why_and_the_vendor_sees_it(
    site: Data, server: ServerProcess, tmp_path: Path
) -> None:
    with Client(server.url, client_id="stuck@ws4", hostname="ws4", spool=tmp_path / "a.db") as a:
        lease = a.checkout("cad")
        done = cli(
            "server", "remove", "--data", str(site.data), "--client", "stuck@ws4",
            "--reason", "needed for the 10:00 review", "--json",
        )  # fmt: skip
        [removed] = json.loads(done.stdout)
        assert removed["lease_id"] == lease.lease_id
        # Effective at once: the only seat is free for someone else.
        with Client(server.url, client_id="next@ws5", spool=tmp_path / "b.db") as b:
            assert b.checkout("cad").client_id == "next@ws5"
        with pytest.raises(LeaseLost) as lost:
            a.heartbeat(lease.lease_id)
        message = str(lost.value)
        assert "was removed by" in message and "Ask the site administrator" in message
        assert f"{getpass.getuser()} via cli" in message and "10:00 review" in message
    raw = httpx.post(f"{server.url}/v1/seats/heartbeat", json={"lease_id": lease.lease_id})
    assert raw.status_code == 410 and raw.json()["error"]["code"] == "lease_removed"
    [record] = removals(site, tmp_path)
    assert record.lease_id == lease.lease_id
    assert record.removed_by == f"{getpass.getuser()} via cli"
    assert record.reason == "needed for the 10:00 review"
    # A removal of nothing is said, exits 1, and writes nothing.
    none = cli("server", "remove", "--data", str(site.data), "--lease", "nope", check=False)
    assert none.returncode == 1 and "nothing was removed" in none.stderr
    assert len(removals(site, tmp_path)) == 1


def test_removal_by_host_through_the_admin_api_survives_a_restart(
    site: Data, server: ServerProcess, tmp_path: Path
) -> None:
    with Client(server.url, client_id="u@ws7", hostname="ws7", spool=tmp_path / "a.db") as a:
        lease = a.checkout("cad")
    admin = {"Authorization": f"Bearer {site.token}"}
    body = {"hostname": "ws7", "by": "facilities"}
    assert httpx.post(f"{server.url}/v1/admin/seats/remove", json=body).status_code == 401
    both = httpx.post(
        f"{server.url}/v1/admin/seats/remove", json={**body, "lease_id": "x"}, headers=admin
    )
    assert both.status_code == 400 and "exactly one selector" in both.text
    done = httpx.post(f"{server.url}/v1/admin/seats/remove", json=body, headers=admin).json()
    assert [x["lease_id"] for x in done["removed"]] == [lease.lease_id]
    server.kill9()
    server.start()
    listed = httpx.get(f"{server.url}/v1/admin/seats", headers=admin).json()
    assert listed == {"leases": []}
    [record] = removals(site, tmp_path)
    assert (record.lease_id, record.removed_by, record.reason) == (
        lease.lease_id,
        "facilities",
        None,
    )


def test_the_dashboard_remove_button_needs_the_session_and_its_csrf_token(
    site: Data, server: ServerProcess, tmp_path: Path
) -> None:
    with Client(server.url, client_id="kiosk", spool=tmp_path / "a.db") as a:
        lease = a.checkout("cad")
        with httpx.Client(base_url=server.url) as anon:
            form = {"lease_id": lease.lease_id, "csrf": "x"}
            assert anon.post("/ui/remove", data=form, follow_redirects=False).status_code == 303
        with httpx.Client(base_url=server.url) as admin:
            admin.post("/login", data={"token": site.token})
            page = admin.get("/")
            assert 'data-testid="remove-kiosk"' in page.text
            forged = admin.post("/ui/remove", data={"lease_id": lease.lease_id, "csrf": "x"})
            assert forged.status_code == 403
            assert a.heartbeat(lease.lease_id).lease_id == lease.lease_id
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf is not None
            done = admin.post(
                "/ui/remove",
                data={"lease_id": lease.lease_id, "csrf": csrf[1]},
                follow_redirects=True,
            )
            assert "Removed the cad seat of kiosk" in done.text
        with pytest.raises(LeaseLost, match="admin via dashboard"):
            a.heartbeat(lease.lease_id)
    assert [r.removed_by for r in removals(site, tmp_path)] == ["admin via dashboard"]
