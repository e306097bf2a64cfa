"""Power-loss images of the SQLite files: the server's state database and the client spool.

SQLite writes around the recorder, so each commit is logged three ways (see
tests/support/crashmodel.py): a committed copy, the database and its -wal byte for
byte as they were on disk, and the database file without its -wal. The state
database is a cache of the ledger: on every image, even one whose -wal is gone, the
server must open, hold every acknowledged usage record, answer a retried request as
a replay (so nothing is billed twice) and still hold every acknowledged seat. The
spool promises that an event ``add`` returned for survives until it is acknowledged:
on every power-loss image it is there, in order, and the file opens.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from meterbox.client._core import UsageEvent
from meterbox.client._spool import Spool
from meterbox.server._instance import ServerInstance, init_server
from support.crash import (
    Vendor,
    expected_critical_removed,
    make_vendor,
    report_count,
    server_clock,
    server_usage_keys,
)
from support.crashmodel import CrashPoint, Recorder, crash_images

MIN_IMAGES_PER_PATH = 300


def _init(data: Path, vendor: Vendor) -> None:
    init_server(
        data,
        vendor_pub=vendor.home / "vendor.pub",
        license_files=list(vendor.license_files),
        clock=server_clock(),
        fingerprint="x",
    )


async def _serve(rec: Recorder, data: Path, usages: int, seats: int, key: str) -> None:
    inst = ServerInstance.open(data, clock=server_clock())
    try:
        leases = []
        for i in range(max(usages, seats)):
            if i < usages:
                r = await inst.service.usage("runs", 1 + i % 3, "c", f"{key}-{i:04d}")
                rec.note(("ack", r.seq, f"{key}-{i:04d}", 1 + i % 3))
            if i < seats:
                d = await inst.service.checkout("cad", f"client-{i}")
                leases.append(d.lease.lease_id)
                rec.note(("seat", d.lease.lease_id))
                if i % 2:
                    released = leases.pop(0)
                    # Noted first: from the moment it is asked, the release may persist.
                    rec.note(("released", released))
                    await inst.service.release(released)
        await inst.service.aclose()
    finally:
        inst.close()


def _state_checker(vendor: Vendor) -> Any:
    def check(root: Path, point: CrashPoint) -> None:
        data = root / "data"
        have, critical, _ = server_usage_keys(data, vendor)
        assert not expected_critical_removed(critical, point), critical
        acked = [n for n in point.notes if n[0] == "ack"]
        for _, seq, key, _ in acked:
            assert have.get(seq) == key, f"acknowledged usage {key} (seq {seq}) lost"
        held = [n[1] for n in point.notes if n[0] == "seat"]
        released = {n[1] for n in point.notes if n[0] == "released"}
        inst = ServerInstance.open(data, clock=server_clock())

        async def probe() -> None:
            try:
                # A retried request must be recognised, whatever the state file kept.
                for _, _, key, amount in acked[-3:]:
                    again = await inst.service.usage("runs", amount, "c", key)
                    assert again.replayed, f"retried {key} was counted again"
                for lease_id in held:
                    if lease_id in released:
                        continue
                    # Held seats survive every image, the one without the -wal too:
                    # the server rebuilds its lease table from the ledger (ADR 0014).
                    d = await inst.service.heartbeat(lease_id)
                    assert d.lease.lease_id == lease_id
            finally:
                await inst.service.aclose()

        try:
            asyncio.run(probe())
        finally:
            inst.close()

    return check


def test_state_database_survives_every_power_loss_image(mem_path: Path) -> None:
    images = 0
    for usages, seats in ((12, 0), (4, 4), (20, 3)):
        vendor = make_vendor(mem_path / f"v-{usages}-{seats}")
        root = mem_path / f"state-{usages}-{seats}"
        root.mkdir()
        _init(root / "data", vendor)
        with Recorder(root) as rec:
            asyncio.run(_serve(rec, root / "data", usages, seats, f"u{usages}s{seats}"))
        report = crash_images(rec, _state_checker(vendor), workdir=mem_path)
        report_count("server state database", report, f"{usages} usage, {seats} seats")
        assert not report.failures, report.summary()
        images += report.images
    assert images >= MIN_IMAGES_PER_PATH


def _event(i: int) -> UsageEvent:
    return UsageEvent(meter="runs", amount=1 + i % 4, client_id="app", idempotency_key=f"k{i:06d}")


def _spool_checker(point: CrashPoint, root: Path) -> None:
    added = [n[1] for n in point.notes if n[0] == "added"]
    gone = {n[1] for n in point.notes if n[0] in ("acked", "dead")}
    with Spool(root / "spool.db") as spool:
        keys = [e.event.idempotency_key for e in spool.pending()]
        dead = {d.event.idempotency_key for d in spool.dead_letters()}
    assert keys == sorted(keys), f"events out of order: {keys}"
    assert set(keys) <= {_event(i).idempotency_key for i in range(1000)}
    if ":main-only" in point.variant:
        # The customer deleted the -wal: what it held is gone, but the file opens.
        return
    for key in added:
        if key in gone:
            continue
        assert key in keys or key in dead, f"spooled event {key} lost"


def test_spool_survives_every_power_loss_image(mem_path: Path) -> None:
    images = 0
    for n, ack_every, dead_every in ((30, 3, 0), (16, 2, 5), (40, 0, 0)):
        root = mem_path / f"spool-{n}-{ack_every}-{dead_every}"
        root.mkdir()
        Spool(root / "spool.db").close()
        with Recorder(root) as rec, Spool(root / "spool.db") as spool:
            for i in range(n):
                event = _event(i)
                eid = spool.add(event, now=1000.0 + i)
                rec.note(("added", event.idempotency_key))
                if ack_every and i % ack_every == ack_every - 1:
                    head = spool.head()
                    assert head is not None
                    # Noted first: from the moment it is asked, the deletion may persist.
                    rec.note(("acked", head.event.idempotency_key))
                    spool.acknowledge(head.id)
                elif dead_every and i % dead_every == dead_every - 1:
                    rec.note(("dead", event.idempotency_key))
                    spool.dead_letter(eid, "quota.exceeded", "refused for good", 2000.0 + i)
                else:
                    spool.schedule_retry(eid, 1, 1500.0 + i, "server unreachable")
        report = crash_images(rec, lambda r, p: _spool_checker(p, r), workdir=mem_path)
        workload = f"{n} events, ack every {ack_every}, dead letter every {dead_every}"
        report_count("client spool", report, workload)
        assert not report.failures, report.summary()
        images += report.images
    assert images >= MIN_IMAGES_PER_PATH


def test_broken_sqlite_sync_makes_the_spool_harness_find_losses(mem_path: Path) -> None:
    root = mem_path / "spool-sanity"
    root.mkdir()
    Spool(root / "spool.db").close()
    with Recorder(root, broken_sync={"sqlite"}) as rec, Spool(root / "spool.db") as spool:
        for i in range(6):
            event = _event(i)
            spool.add(event, now=1000.0 + i)
            rec.note(("added", event.idempotency_key))
    report = crash_images(rec, lambda r, p: _spool_checker(p, r), workdir=mem_path)
    report_count("sanity: SQLite commits not durable", report)
    lost = [why for _, why in report.failures if "spooled event" in why]
    assert lost, report.summary()
