"""License time and report deadlines come from the ledger and the license, not state.db.

Real server instances on real files under a manual clock (the attack is on the
clock and on the state file): a clock set back across a restart after
``license_expired`` still finds the license expired, because license time never
goes below the last ledger record's time; and a fresh ``server init`` (or a deleted
state file) with the same license gets the same first report deadline, the
license's issue time plus its interval.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meterbox.clock import ManualClock
from meterbox.errors import LicenseExpired
from meterbox.licenses import License
from meterbox.server._instance import ServerInstance, init_server, read_bundle
from support.server_proc import make_data


def _clock(at: datetime) -> ManualClock:
    return ManualClock(wall_ms=int(at.timestamp() * 1000))


def _checkout(data: Path, clock: ManualClock, client: str) -> None:
    async def go() -> None:
        inst = ServerInstance.open(data, clock=clock)
        try:
            await inst.service.checkout("cad", client)
        finally:
            await inst.service.aclose()
            inst.close()

    asyncio.run(go())


@pytest.mark.parametrize("attack", ["state.db deleted", "clock floor edited"])
def test_a_clock_set_back_across_a_restart_does_not_revive_an_expired_license(
    tmp_path: Path, attack: str
) -> None:
    site = make_data(tmp_path, expires_in=timedelta(days=10))
    lic = License.from_bytes((tmp_path / "site.lic").read_bytes(), read_bundle(site.data))
    assert lic.expires is not None
    after = lic.expires + timedelta(hours=1)
    with pytest.raises(LicenseExpired):
        _checkout(site.data, _clock(after), "a")
    if attack == "state.db deleted":
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (site.data / name).unlink(missing_ok=True)
    else:
        with closing(sqlite3.connect(site.data / "state.db")) as db:
            db.execute("UPDATE meta SET value = '0' WHERE key IN ('clock_floor', 'init_time')")
            db.commit()
    # The wall clock now says two days before the expiry.
    with pytest.raises(LicenseExpired):
        _checkout(site.data, _clock(lic.expires - timedelta(days=2)), "b")


def test_an_honest_clock_before_expiry_still_serves(tmp_path: Path) -> None:
    site = make_data(tmp_path, expires_in=timedelta(days=10))
    _checkout(site.data, _clock(datetime.now(UTC)), "a")


def _due(data: Path, clock: ManualClock) -> str:
    inst = ServerInstance.open(data, clock=clock)
    try:
        due: str = inst.service.status()["report_due"]["due"]
        return due
    finally:
        inst.close()


def test_re_initialising_with_the_same_license_keeps_the_first_deadline(tmp_path: Path) -> None:
    site = make_data(tmp_path, report_every_days=30)
    lic = License.from_bytes((tmp_path / "site.lic").read_bytes(), read_bundle(site.data))
    now = datetime.now(UTC)
    first = _due(site.data, _clock(now))
    assert first == (lic.issued + timedelta(days=30)).isoformat()
    # A second instance from the same license, twenty days later.
    again = tmp_path / "again"
    init_server(
        again,
        vendor_pub=site.home / "vendor.pub",
        license_files=[tmp_path / "site.lic"],
        clock=_clock(now + timedelta(days=20)),
        fingerprint="x",
    )
    assert _due(again, _clock(now + timedelta(days=20))) == first
    # And the first instance with its state file deleted.
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (site.data / name).unlink(missing_ok=True)
    assert _due(site.data, _clock(now + timedelta(days=21))) == first
