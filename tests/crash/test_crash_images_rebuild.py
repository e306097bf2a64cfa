"""Power-loss images of a cache rebuild: every image opens and enforces the ledger.

A site holds usage, a live lease and a top-up; ``state.db`` is then deleted (the
attack) and the next open rebuilds it from the ledger, sealing a STATE_REBUILT
record first. A power loss (or ``kill -9``, which loses less) at any point of that
open must leave a directory the server opens again, whose state holds what the
ledger holds, and whose report carries the rebuild finding once the rebuild began.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from meterbox.ledger import RecordType, ReportVerifier
from meterbox.server._instance import ServerInstance, init_server
from support.crash import make_vendor, report_count, server_clock
from support.crashmodel import CrashPoint, Recorder, crash_images


def test_a_rebuild_of_a_deleted_state_db_survives_every_power_loss_image(
    mem_path: Path,
) -> None:
    vendor = make_vendor(mem_path)
    root = mem_path / "root"
    root.mkdir()
    data = root / "data"
    init_server(
        data,
        vendor_pub=vendor.home / "vendor.pub",
        license_files=list(vendor.license_files),
        clock=server_clock(),
        fingerprint="x",
    )

    async def work() -> str:
        inst = ServerInstance.open(data, clock=server_clock())
        try:
            for i in range(12):
                await inst.service.usage("runs", 5, "c", f"u-{i:04d}")
            lease = (await inst.service.checkout("cad", "ws-1")).lease.lease_id
            await inst.service.aclose()
            return lease
        finally:
            inst.close()

    lease_id = asyncio.run(work())
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (data / name).unlink(missing_ok=True)

    with Recorder(root) as rec:
        inst = ServerInstance.open(data, clock=server_clock())
        rec.note(("opened", len(inst.rebuilt)))
        inst.close()

    def check(image: Path, point: CrashPoint) -> None:
        inst = ServerInstance.open(image / "data", clock=server_clock())
        try:
            now = inst.service.now()
            engine = inst.service.engine
            balances = {b["meter"]: b["used"] for b in engine.balances(now)}
            assert balances["runs"] == 60, balances
            assert lease_id in {x.lease_id for x in engine.seats.live("cad", now)}
            report = inst.export_bytes()
        finally:
            inst.close()
        verifier = ReportVerifier(vendor.ledger_keys())
        kinds = [r.type for r, _ in verifier.records(io.BytesIO(report))]
        # Either this open or the one interrupted sealed the rebuild; never none.
        assert RecordType.STATE_REBUILT in kinds
        codes = {f.code for f in verifier.result.findings if f.severity == "critical"}
        assert codes == {"state.rebuilt"}, (point.cut, point.variant, sorted(codes))

    report = crash_images(rec, check, workdir=mem_path)
    report_count("cache rebuild", report)
    assert report.images >= 10
    assert not report.failures, report.summary()
