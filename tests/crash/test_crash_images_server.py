"""Power-loss images of the server's durable paths: ``server init`` and receipt import.

``server init`` must leave, at every power-loss point, a directory that either
``server run`` opens or ``server init`` accepts again. A receipt import compacts
the ledger and writes the receipt: every image must open, verify, and hold every
acknowledged usage record the receipt did not cover; once the import returned, the
receipt must be there.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from meterbox.errors import MeterboxError
from meterbox.ledger import Head
from meterbox.server._instance import ServerInstance, init_server
from support.crash import (
    Vendor,
    expected_critical_removed,
    make_vendor,
    report_count,
    server_clock,
    server_usage_keys,
)
from support.crashmodel import CrashPoint, Fault, Recorder, crash_images

_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(autouse=True)
def _fixed_rsa_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """One Cryptolens RSA key for every init: generating one per image costs ~0.1 s each."""
    monkeypatch.setattr(rsa, "generate_private_key", lambda **_: _RSA_KEY)


def _init(data: Path, vendor: Vendor) -> str:
    result = init_server(
        data,
        vendor_pub=vendor.home / "vendor.pub",
        license_files=list(vendor.license_files),
        clock=server_clock(),
        fingerprint="x",
    )
    return result.instance_id


def _init_checker(vendor: Vendor) -> object:
    def check(root: Path, point: CrashPoint) -> None:
        data = root / "data"
        done = [n for n in point.notes if isinstance(n, tuple) and n[0] == "init"]
        try:
            instance = ServerInstance.open(data, clock=server_clock())
        except MeterboxError as exc:
            if done:
                raise AssertionError(f"init had returned, yet run refuses: {exc.problem}") from None
            try:
                _init(data, vendor)
            except MeterboxError as again:
                raise AssertionError(
                    f"neither run ({exc.problem}) nor init ({again.problem}) accepts it"
                ) from None
            instance = ServerInstance.open(data, clock=server_clock())
        try:
            if done:
                assert instance.writer.instance_id.hex() == done[0][1]
        finally:
            instance.close()

    return check


def test_server_init_is_atomic_under_power_loss(mem_path: Path) -> None:
    images = 0
    # (licenses, whether the admin created the data directory beforehand)
    for licenses, precreated in ((3, False), (1, True), (5, False), (2, True)):
        vendor = make_vendor(mem_path / f"vendor-{licenses}", licenses=licenses)
        root = mem_path / f"root-{licenses}"
        root.mkdir()
        if precreated:
            (root / "data").mkdir(mode=0o700)
        with Recorder(root) as rec:
            rec.note(("init", _init(root / "data", vendor)))
        report = crash_images(rec, _init_checker(vendor), workdir=mem_path)  # type: ignore[arg-type]
        workload = f"{licenses} licenses, " + ("existing" if precreated else "new") + " directory"
        report_count("server init", report, workload)
        assert not report.failures, report.summary()
        images += report.images
    assert images >= 300


def _site(mem_path: Path) -> tuple[Vendor, Path, bytes, Head]:
    """An initialised site with 20 usage records and a receipt for all of them."""
    vendor = make_vendor(mem_path)
    root = mem_path / "root"
    root.mkdir()
    instance_id = _init(root / "data", vendor)

    async def work() -> Head:
        inst = ServerInstance.open(root / "data", clock=server_clock())
        try:
            for i in range(20):
                await inst.service.usage("runs", 1, "c", f"pre-{i:04d}")
            await inst.service.aclose()
            return inst.writer.head
        finally:
            inst.close()

    head = asyncio.run(work())
    receipt = vendor.receipt(instance_id, head, datetime(2026, 6, 1, 1, tzinfo=UTC))
    return vendor, root, receipt, head


async def _record_import(rec: Recorder, root: Path, receipt: bytes, receipt_seq: int) -> None:
    inst = ServerInstance.open(root / "data", clock=server_clock())
    try:
        for i in range(15):
            r = await inst.service.usage("runs", 1, "c", f"mid-{i:04d}")
            rec.note(("ack", r.seq, f"mid-{i:04d}"))
        try:
            await inst.import_bytes(receipt)
        except MeterboxError as exc:
            # A 507 for compaction still says the receipt was imported: hold it to that.
            if "receipt was imported" in exc.problem:
                rec.note(("receipt", receipt_seq))
        else:
            rec.note(("receipt", receipt_seq))
        for i in range(15):
            try:
                r = await inst.service.usage("runs", 1, "c", f"post-{i:04d}")
            except MeterboxError:
                continue
            rec.note(("ack", r.seq, f"post-{i:04d}"))
        await inst.service.aclose()
    finally:
        inst.close()


def _import_checker(vendor: Vendor, covered: int) -> object:
    def check(root: Path, point: CrashPoint) -> None:
        have, critical, acked = server_usage_keys(root / "data", vendor)
        assert not expected_critical_removed(critical, point), critical
        for note in point.notes:
            if note[0] == "ack" and note[1] > covered:
                assert have.get(note[1]) == note[2], f"acknowledged seq {note[1]} lost"
            if note[0] == "receipt":
                assert acked is not None and acked.seq == note[1], "imported receipt lost"

    return check


def test_receipt_import_survives_every_power_loss_image(mem_path: Path) -> None:
    vendor, root, receipt, head = _site(mem_path)
    with Recorder(root) as rec:
        asyncio.run(_record_import(rec, root, receipt, head.seq))
    assert any(n[0] == "receipt" for n in (op.value for op in rec.ops if op.kind == "note"))
    report = crash_images(rec, _import_checker(vendor, head.seq), workdir=mem_path)  # type: ignore[arg-type]
    report_count("receipt import", report)
    assert report.images >= 100
    assert not report.failures, report.summary()


def _compaction_disk_full(kind: str, rel: str, n: int) -> Fault | None:
    """Writes to the compaction copy: the header fits, the frames only in part, then ENOSPC."""
    if kind != "write" or not rel.endswith("ledger.mbl.compact"):
        return None
    return None if n == 0 else Fault(short=100, error=None) if n == 1 else Fault()


def test_receipt_import_on_a_filling_disk_keeps_the_ledger_and_the_receipt(
    mem_path: Path,
) -> None:
    vendor, root, receipt, head = _site(mem_path)
    state = {"n": 0}

    def faults(kind: str, rel: str, n: int) -> Fault | None:
        if kind == "write" and rel.endswith("ledger.mbl.compact"):
            state["n"] += 1
            return _compaction_disk_full(kind, rel, state["n"] - 1)
        return None

    with Recorder(root, faults=faults) as rec:
        asyncio.run(_record_import(rec, root, receipt, head.seq))
    notes = [op.value for op in rec.ops if op.kind == "note"]
    assert any(n[0] == "receipt" for n in notes), "the receipt was not imported"
    assert not (root / "data" / "ledger" / "ledger.mbl.compact").exists()
    report = crash_images(rec, _import_checker(vendor, head.seq), workdir=mem_path)  # type: ignore[arg-type]
    report_count("receipt import, disk fills", report)
    assert not report.failures, report.summary()
