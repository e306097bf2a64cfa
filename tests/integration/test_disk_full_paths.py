"""A full disk on every durable path, on a real small tmpfs.

Each scenario fills a real tmpfs (see tests/support/tmpfs.py) while a durable path
runs: ledger appends, epoch rolls, compaction, receipt import, ``server init``,
export, vendor ingest and the client spool. Each must answer with a clear error
(503/507 JSON over HTTP, a CLI message naming the disk), lose nothing it had
acknowledged, leave nothing half-written, and work again once space returns.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from meterbox.cli import app as cli_app
from meterbox.clock import ManualClock
from meterbox.errors import MeterboxError
from meterbox.ledger import LedgerConfig, LedgerWriter, RecordType, ReportVerifier, export_report
from meterbox.server._instance import ServerInstance
from meterbox.server._runtime import build_server
from meterbox.server._state import StateStore
from support.ledger import VENDOR, VENDOR_ID, make_ledger
from support.server_proc import LICENSE_ID, make_data
from support.tmpfs import fill, reserve, says_disk, small_tmpfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "256k") as mnt:
        yield mnt


@pytest.fixture
def big_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "8m") as mnt:
        yield mnt


def _payload(i: int) -> dict[str, Any]:
    return {"m": "runs", "a": 1, "c": "client", "k": f"key-{i:06d}", "pad": "x" * 200}


def _usage_keys(directory: Path) -> dict[int, str]:
    clock = ManualClock(wall_ms=1_900_000_000_000, mono_ms=5_000, boot=b"\x03" * 16)
    writer = LedgerWriter.open(directory, clock=clock)
    try:
        buf = io.BytesIO()
        export_report(writer, buf, clock=clock, licenses=[b"l"], acked=None)
    finally:
        writer.close()
    verifier = ReportVerifier({VENDOR_ID: VENDOR})
    out = {
        r.seq: str(r.payload["k"])
        for r, _ in verifier.records(io.BytesIO(buf.getvalue()))
        if r.type == RecordType.USAGE
    }
    assert not verifier.result.critical, verifier.result.findings
    return out


def _append_until_full(writer: LedgerWriter, start: int = 0) -> tuple[dict[int, str], list[str]]:
    acked: dict[int, str] = {}
    errors: list[str] = []
    for i in range(start, start + 5000):
        try:
            a = writer.append(RecordType.USAGE, _payload(i))
        except MeterboxError as exc:
            errors.append(exc.render())
            if len(errors) >= 10:
                break
            continue
        acked[a.seq] = f"key-{i:06d}"
    assert errors, "the disk never filled"
    return acked, errors


def test_ledger_appends_on_a_filling_disk_lose_nothing_acknowledged(disk: Path) -> None:
    reserve(disk / "reserve", 32 * 1024)
    built = make_ledger(disk / "l")
    acked, errors = _append_until_full(built.writer)
    assert all(says_disk(e) for e in errors), errors[0]
    built.writer.close()
    (disk / "reserve").unlink()
    have = _usage_keys(disk / "l")
    lost = {s: k for s, k in acked.items() if have.get(s) != k}
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged records lost"
    # Space is back: the ledger grows again.
    more = LedgerWriter.open(disk / "l", clock=built.clock)
    more.append(RecordType.USAGE, _payload(99_999))
    more.close()


def test_epoch_rolls_on_a_filling_disk_keep_the_ledger_openable(disk: Path) -> None:
    config = LedgerConfig(epoch_max_records=3)
    reserve(disk / "reserve", 32 * 1024)
    built = make_ledger(disk / "l", config=config)
    acked, errors = _append_until_full(built.writer)
    assert all(says_disk(e) for e in errors), errors[0]
    built.writer.close()
    (disk / "reserve").unlink()
    have = _usage_keys(disk / "l")
    assert all(have.get(s) == k for s, k in acked.items())


def _ledger_with_epochs(directory: Path) -> tuple[LedgerWriter, Any]:
    # The receipt covers the first 70 records; compaction keeps the epoch after
    # them (about 100 records, some 30 KiB), more than the nearly-full disk holds.
    built = make_ledger(directory, config=LedgerConfig(epoch_max_records=60))
    head = None
    for i in range(170):
        built.writer.append(RecordType.USAGE, _payload(i))
        if i == 70:
            head = built.writer.head
    assert head is not None
    return built.writer, head


@pytest.mark.parametrize("free", [0, 8192], ids=["full", "nearly-full"])
def test_compaction_on_a_full_disk_leaves_the_ledger_untouched(disk: Path, free: int) -> None:
    writer, head = _ledger_with_epochs(disk / "l")
    if free:
        reserve(disk / "reserve", free)
    fill(disk / "filler")
    if free:
        (disk / "reserve").unlink()
    before = (disk / "l" / "ledger.mbl").read_bytes()
    with pytest.raises(MeterboxError) as raised:
        writer.compact(head)
    assert says_disk(raised.value.render())
    assert (disk / "l" / "ledger.mbl").read_bytes() == before
    assert not (disk / "l" / "ledger.mbl.compact").exists()
    (disk / "filler").unlink()
    assert writer.compact(head) > 0
    writer.close()
    assert _usage_keys(disk / "l") is not None


def _site_with_receipt(root: Path, data: Path, records: int) -> tuple[Any, bytes]:
    site = make_data(root, data)
    from meterbox.licenses import Receipt
    from meterbox.vendorkit import keys as vendor_keys

    async def work() -> tuple[str, Any]:
        inst = ServerInstance.open(data)
        try:
            for i in range(records):
                await inst.service.usage("runs", 1, "c", f"pre-{i:05d}")
            await inst.service.aclose()
            return inst.writer.instance_id.hex(), inst.writer.head
        finally:
            inst.close()

    instance_id, head = asyncio.run(work())
    from datetime import UTC, datetime

    keys = vendor_keys.VendorKeys.load(site.home)
    receipt = Receipt(
        receipt_id="rcpt_diskfull",
        instance_id=instance_id,
        license_ids=(LICENSE_ID,),
        head_seq=head.seq,
        head_hash=head.hash.hex(),
        previous_head_seq=None,
        vendor_time=datetime.now(UTC),
        report_digest="00" * 32,
    ).sign(keys.signer())
    return site, receipt


@pytest.mark.parametrize("free", [0, 16384], ids=["full", "nearly-full"])
def test_receipt_import_on_a_full_disk_answers_507_or_503_and_keeps_everything(
    tmp_path: Path, big_disk: Path, free: int
) -> None:
    data = big_disk / "server"
    site, receipt = _site_with_receipt(tmp_path, data, 600)
    auth = {"Authorization": f"Bearer {site.token}"}
    built = build_server(data)
    acked: list[str] = []
    try:
        with TestClient(built.app, raise_server_exceptions=False) as c:
            for i in range(10):
                r = c.post("/v1/usage", json={"meter": "runs", "amount": 1, "client_id": "c",
                                              "idempotency_key": f"mid-{i}"})  # fmt: skip
                assert r.status_code == 200, r.text
                acked.append(f"mid-{i}")
            if free:
                reserve(big_disk / "reserve", free)
            fill(big_disk / "filler")
            if free:
                (big_disk / "reserve").unlink()
            r = c.post("/v1/admin/import", content=receipt, headers=auth)
            assert r.status_code in (200, 503, 507), r.text
            assert r.headers["content-type"].startswith("application/json"), r.text
            assert not (data / "ledger" / "ledger.mbl.compact").exists()
            (big_disk / "filler").unlink()
            if r.status_code != 200:
                r = c.post("/v1/admin/import", content=receipt, headers=auth)
                assert r.status_code == 200, r.text
    finally:
        built.close()
    inst = ServerInstance.open(data)
    try:
        assert inst.acked_head() is not None
        report = inst.export_bytes()
    finally:
        inst.close()
    records, result = site.verify(report)
    assert not result.critical, result.findings
    keys = {r.payload.get("k") for r in records if r.type == RecordType.USAGE}
    assert set(acked) <= keys


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args))


def test_server_init_on_a_full_disk_fails_clearly_and_can_be_rerun(
    tmp_path: Path, disk: Path
) -> None:
    site = make_data(tmp_path)  # the vendor home and a license, off the small disk
    lic = tmp_path / "site.lic"
    fill(disk / "filler")
    args = ["server", "init", "--data", str(disk / "srv"), "--vendor-key",
            str(site.home / "vendor.pub"), "--license", str(lic)]  # fmt: skip
    r = _cli(*args)
    assert r.exit_code != 0
    assert says_disk(r.output), r.output
    (disk / "filler").unlink()
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    ServerInstance.open(disk / "srv").close()


def test_export_to_a_full_disk_fails_clearly_and_leaves_no_partial_report(
    tmp_path: Path, disk: Path
) -> None:
    site = make_data(tmp_path)
    fill(disk / "filler")
    out = disk / "report.mbr"
    r = _cli("server", "export", "--data", str(site.data), "-o", str(out))
    assert r.exit_code != 0
    assert says_disk(r.output), r.output
    assert not out.exists()
    (disk / "filler").unlink()
    r = _cli("server", "export", "--data", str(site.data), "-o", str(out))
    assert r.exit_code == 0, r.output


def test_state_database_on_a_full_disk_names_the_disk(disk: Path) -> None:
    StateStore(disk / "state.db").close()
    fill(disk / "filler")
    with pytest.raises(MeterboxError) as raised:
        StateStore(disk / "state2.db")
    assert says_disk(raised.value.render()), raised.value.render()


def test_client_spool_on_a_full_disk_refuses_clearly_and_keeps_what_it_had(disk: Path) -> None:
    from meterbox.client._core import UsageEvent
    from meterbox.client._spool import Spool
    from meterbox.client.errors import SpoolError

    spool = Spool(disk / "spool.db")
    kept: list[str] = []
    refused: list[str] = []
    reserve(disk / "reserve", 16 * 1024)
    fill(disk / "filler")
    for i in range(3000):
        key = f"k-{i:05d}-" + "p" * 100
        try:
            spool.add(UsageEvent("runs", 1, "c", key), float(i))
        except SpoolError as exc:
            refused.append(exc.render())
            if len(refused) >= 5:
                break
            continue
        kept.append(key)
    assert refused, "the spool never filled"
    assert all(says_disk(r) for r in refused), refused[0]
    spool.close()
    (disk / "filler").unlink()
    (disk / "reserve").unlink()
    spool = Spool(disk / "spool.db")
    try:
        spool.add(UsageEvent("runs", 1, "c", "after"), 9999.0)
        have = {e.event.idempotency_key for e in spool.pending()}
    finally:
        spool.close()
    assert set(kept) | {"after"} <= have


def _report(tmp_path: Path) -> tuple[Path, Path]:
    """A vendor home and an exported report with some usage, both off the small disk."""
    site = make_data(tmp_path)

    async def work() -> bytes:
        inst = ServerInstance.open(site.data)
        try:
            for i in range(20):
                await inst.service.usage("runs", 1, "c", f"u-{i}")
            await inst.service.aclose()
            return inst.export_bytes()
        finally:
            inst.close()

    report = tmp_path / "site.mbr"
    report.write_bytes(asyncio.run(work()))
    return site.home, report


def test_vendor_ingest_whose_receipt_cannot_be_written_is_not_acknowledged(
    tmp_path: Path, disk: Path
) -> None:
    home, report = _report(tmp_path)
    fill(disk / "filler")
    receipt = disk / "site.receipt"
    args = ["vendor", "ingest", "--home", str(home), str(report), "--receipt-out", str(receipt)]
    r = _cli(*args)
    assert r.exit_code != 0
    assert says_disk(r.output), r.output
    assert not receipt.exists()
    (disk / "filler").unlink()
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    assert receipt.stat().st_size > 0


def test_vendor_ingest_into_a_store_on_a_full_disk_records_nothing(
    tmp_path: Path, big_disk: Path
) -> None:
    disk = big_disk
    import shutil

    home, report = _report(tmp_path)
    shutil.copytree(home, disk / "vendor")
    home = disk / "vendor"
    receipt = tmp_path / "site.receipt"
    fill(disk / "filler")
    args = ["vendor", "ingest", "--home", str(home), str(report), "--receipt-out", str(receipt)]
    r = _cli(*args)
    assert r.exit_code != 0
    assert says_disk(r.output), r.output
    assert not receipt.exists()
    (disk / "filler").unlink()
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    assert receipt.exists()
