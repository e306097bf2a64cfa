"""The vendor suspends, resumes and revokes a license; the real site server obeys.

`meterbox vendor suspend|resume|revoke` writes signed notices; `meterbox server import`
hands them to the running server (the admin import API). A suspended or revoked license
grants no seat, renewal or usage (403 with the vendor's reason), its seats in use end at
once (the holder's next heartbeat is told why), the standing survives kill -9, an old
notice replayed after a newer one changes nothing, revocation is final, and every notice
is in the report the vendor verifies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from tests.support.server_proc import LICENSE_ID, Data, ServerProcess, make_data

from meterbox.client import Client
from meterbox.client.errors import LicenseRevoked, LicenseSuspended
from meterbox.ledger import (
    LicenseRevoked as RevokedRecord,
)
from meterbox.ledger import (
    LicenseSuspended as SuspendedRecord,
)
from meterbox.ledger import RecordType, SeatRemoved, parse_payload
from meterbox.licenses import License, LicenseNotice
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit._db.schema import ledger_events_table, seat_events_table
from meterbox.vendorkit._db.store import VendorStore


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
    site = make_data(tmp_path, seats=2, overdraft=0)
    # The vendor's store holds the license it issued, as `vendor issue` leaves it.
    keys = vendor_keys.VendorKeys.load(site.home)
    blob = (tmp_path / "site.lic").read_bytes()
    with VendorStore.open(None, home=site.home) as db:
        db.add_license(License.from_bytes(blob, keys.bundle), blob)
    return site


@pytest.fixture
def server(site: Data, tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(site.data, tmp_path / "server.log")
    s.start()
    yield s
    s.stop()


def notice(site: Data, tmp_path: Path, action: str, reason: str | None = None) -> Path:
    out = tmp_path / f"{action}-{len(list(tmp_path.glob('*.ntc')))}.ntc"
    args = ["vendor", action, "--home", str(site.home), "--license", LICENSE_ID, "-o", str(out)]
    done = cli(*args, *(["--reason", reason] if reason else []), "--json")
    assert json.loads(done.stdout)["action"] == action
    return out


def site_import(site: Data, path: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cli("server", "import", "--data", str(site.data), str(path), "--json", check=check)


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def test_suspend_resume_revoke_against_the_running_server(
    site: Data, server: ServerProcess, tmp_path: Path
) -> None:
    url = server.url
    with Client(url, client_id="alice@ws1", spool=tmp_path / "a.db") as alice:
        held = alice.checkout("cad")
        alice.record("runs", 3)
        suspend = notice(site, tmp_path, "suspend", "invoice 2025-014 unpaid")
        done = json.loads(site_import(site, suspend).stdout)
        assert (done["imported"], done["standing"], done["leases_ended"]) == (
            "notice",
            "suspended",
            1,
        )
        # Effective at import: the holder's next heartbeat is refused with the reason.
        with pytest.raises(LicenseSuspended) as told:
            alice.heartbeat(held.lease_id)
        assert "invoice 2025-014 unpaid" in str(told.value)
        assert "Contact the vendor" in str(told.value)
    # Nothing new either: a seat, a renewal, usage; each a clear 403 JSON error.
    status, code, message = error_of(
        httpx.post(f"{url}/v1/seats/checkout", json={"feature": "cad", "client_id": "bob"})
    )
    assert (status, code) == (403, "license_suspended") and "unpaid" in message
    status, code, _ = error_of(
        httpx.post(f"{url}/v1/usage", json={"meter": "runs", "amount": 1, "client_id": "bob"})
    )
    assert (status, code) == (403, "license_suspended")
    status, code, _ = error_of(
        httpx.post(f"{url}/v1/seats/heartbeat", json={"lease_id": held.lease_id})
    )
    assert (status, code) == (403, "license_suspended")
    assert httpx.get(f"{url}/v1/seats").json()["features"][0]["in_use"] == 0

    # The same file again changes nothing and says why.
    again = site_import(site, suspend, check=False)
    assert again.returncode != 0 and "not newer than the last notice" in again.stderr

    # kill -9: the standing comes back from the ledger.
    server.kill9()
    server.start()
    status, code, message = error_of(
        httpx.post(f"{url}/v1/seats/checkout", json={"feature": "cad", "client_id": "bob"})
    )
    assert (status, code) == (403, "license_suspended") and "unpaid" in message

    resume = notice(site, tmp_path, "resume")
    assert json.loads(site_import(site, resume).stdout)["standing"] == "active"
    with Client(url, client_id="bob@ws2", spool=tmp_path / "b.db") as bob:
        bob_lease = bob.checkout("cad")
        assert bob_lease.client_id == "bob@ws2"
        # The old suspension replayed after the resume must not suspend again.
        replay = site_import(site, suspend, check=False)
        assert replay.returncode != 0 and "not newer" in replay.stderr
        assert bob.checkout("cad").client_id == "bob@ws2"
        assert not bob.record("runs", 1).spooled

        revoke = notice(site, tmp_path, "revoke", "contract ended")
        assert json.loads(site_import(site, revoke).stdout)["standing"] == "revoked"
        with pytest.raises(LicenseRevoked) as gone:
            bob.checkout("cad")
        assert "contract ended" in str(gone.value) and "new license file" in str(gone.value)
    # Revocation is final at the vendor (no number is handed out) ...
    refused = cli(
        "vendor", "resume", "--home", str(site.home), "--license", LICENSE_ID,
        "-o", str(tmp_path / "late.ntc"), check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "revocation is final" in refused.stderr
    assert not (tmp_path / "late.ntc").exists()
    # ... and at the site, even for a notice signed outside the store with a higher number.
    keys = vendor_keys.VendorKeys.load(site.home)
    late = LicenseNotice(
        "ntc_late", LICENSE_ID, "resume", 99, datetime.now(UTC).replace(microsecond=0)
    )
    (tmp_path / "forged-late.ntc").write_bytes(late.sign(keys.signer()))
    after = site_import(site, tmp_path / "forged-late.ntc", check=False)
    assert after.returncode != 0 and "was revoked" in after.stderr
    server.kill9()
    server.start()
    status, code, _ = error_of(
        httpx.post(f"{url}/v1/seats/checkout", json={"feature": "cad", "client_id": "carol"})
    )
    assert (status, code) == (403, "license_revoked")

    # The vendor sees every notice applied, in order, and the seat the suspension ended.
    report = tmp_path / "report.mbr"
    cli("server", "export", "--data", str(site.data), "-o", str(report))
    records, result = site.verify(report.read_bytes())
    assert not result.critical, result.findings
    notices = [
        parse_payload(r.type, r.payload)
        for r in records
        if r.type in (RecordType.LICENSE_SUSPENDED, RecordType.LICENSE_REVOKED)
    ]
    assert [(type(n), n.sequence) for n in notices] == [
        (SuspendedRecord, 1),
        (SuspendedRecord, 2),
        (RevokedRecord, 3),
    ]
    assert [getattr(n, "resumed", None) for n in notices] == [False, True, None]
    assert notices[0].reason == "invoice 2025-014 unpaid"
    ended = [
        p
        for r in records
        if r.type == RecordType.SEAT_REMOVED
        and isinstance(p := parse_payload(r.type, r.payload), SeatRemoved)
    ]
    assert [(p.lease_id, p.removed_by) for p in ended] == [
        (held.lease_id, "vendor"),
        (bob_lease.lease_id, "vendor"),
    ]
    assert ended[0].reason is not None and "suspended by notice" in ended[0].reason
    assert ended[1].reason is not None and "revoked by notice" in ended[1].reason
    # The vendor's ingest accepts the report and keeps the notices and the ended seats.
    outcome = json.loads(
        cli("vendor", "ingest", str(report), "--home", str(site.home), "--json").stdout
    )
    assert outcome["status"] in ("accepted", "accepted_with_findings"), outcome
    with VendorStore.open(None, home=site.home) as db, db.engine.connect() as conn:
        events = conn.execute(
            sa.select(ledger_events_table.c.kind, ledger_events_table.c.payload)
            .where(ledger_events_table.c.kind.like("license.%"))
            .order_by(ledger_events_table.c.seq)
        ).all()
        removed = conn.execute(
            sa.select(seat_events_table.c.lease_id).where(seat_events_table.c.kind == "remove")
        ).all()
    kinds = [(k, json.loads(p)["q"]) for k, p in events if k != "license.installed"]
    assert kinds == [("license.suspended", 1), ("license.suspended", 2), ("license.revoked", 3)]
    assert sorted(r[0] for r in removed) == sorted([held.lease_id, bob_lease.lease_id])


def test_a_notice_for_another_license_or_from_another_vendor_changes_nothing(
    site: Data, server: ServerProcess, tmp_path: Path
) -> None:
    keys = vendor_keys.VendorKeys.load(site.home)
    other = LicenseNotice(
        "ntc_x", "lic-elsewhere", "suspend", 1, datetime.now(UTC).replace(microsecond=0)
    )
    (tmp_path / "other.ntc").write_bytes(other.sign(keys.signer()))
    refused = site_import(site, tmp_path / "other.ntc", check=False)
    assert refused.returncode != 0 and "does not hold" in refused.stderr
    stranger = vendor_keys.init(tmp_path / "stranger")
    forged = LicenseNotice(
        "ntc_y", LICENSE_ID, "suspend", 1, datetime.now(UTC).replace(microsecond=0)
    )
    (tmp_path / "forged.ntc").write_bytes(forged.sign(stranger.signer()))
    refused = site_import(site, tmp_path / "forged.ntc", check=False)
    assert refused.returncode != 0
    with Client(server.url, client_id="c@ws", spool=tmp_path / "c.db") as c:
        assert c.checkout("cad").client_id == "c@ws"


def test_deleting_or_editing_the_state_files_does_not_lift_a_suspension(
    site: Data, server: ServerProcess, tmp_path: Path
) -> None:
    site_import(site, notice(site, tmp_path, "suspend", "audit pending"))
    server.stop()
    # The standing is not in state.db at all: it comes from the ledger. Delete the file,
    # and every other cache, and start again.
    for name in ("state.db", "state.db-wal", "state.db-shm", "cryptolens.db"):
        (site.data / name).unlink(missing_ok=True)
    server.start()
    status, code, message = error_of(
        httpx.post(f"{server.url}/v1/seats/checkout", json={"feature": "cad", "client_id": "x"})
    )
    assert (status, code) == (403, "license_suspended") and "audit pending" in message
