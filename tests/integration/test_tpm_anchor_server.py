"""The TPM counter against restored copies, put-back key files and clones, on a real swtpm.

Every test runs the real ``meterbox server run`` process on loopback, initialised with
``--tpm require`` on a swtpm, drives it over HTTP, exports reports through the admin API
and ingests them with the vendor's real ingest and store. The attacks are done to the
data directory exactly as a root customer would do them (``shutil.copytree``), and the
vendor's verdict is read from the ingest outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from meterbox.clock import ManualClock
from meterbox.errors import ConfigError
from meterbox.ledger import LedgerConfig, RecordType, TpmAnchor
from meterbox.licenses import License
from meterbox.server._instance import ServerInstance
from meterbox.vendorkit import IngestOutcome, ingest_report
from meterbox.vendorkit import keys as vendor_keys
from support.server_proc import Data, ServerProcess, make_data
from support.tpm import Swtpm, SwtpmFactory

#: Anchor often, so the activity after a snapshot is certainly anchored before the restore.
ADVANCE_EVERY_S = 0.5
KILL_ROUNDS = 20
_IGNORE = shutil.ignore_patterns("ledger.lock", "run.json", "*.lock")


def _site(root: Path, swtpm: Swtpm, *, require_tpm: bool = False) -> Data:
    site = make_data(root, tpm_tcti=swtpm.tcti, require_tpm=require_tpm)
    path = site.data / "tpm.json"
    config = json.loads(path.read_text())
    config["advance_every_s"] = ADVANCE_EVERY_S
    path.write_text(json.dumps(config))
    return site


class Run:
    """One server process and the vendor on the other side of the round trip."""

    def __init__(self, site: Data, root: Path) -> None:
        self.site, self.root = site, root
        self.server = ServerProcess(site.data, root / "server.log")
        self.reports = 0

    def __enter__(self) -> Run:
        self.server.start()
        self.http = httpx.Client(base_url=self.server.url, timeout=30)
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()
        self.server.stop()

    def use(self, n: int, *, client: str = "c1") -> None:
        for i in range(n):
            key = f"{client}-{time.monotonic_ns()}-{i}"
            body = {"meter": "runs", "amount": 1, "client_id": client, "idempotency_key": key}
            r = self.http.post("/v1/usage", json=body)
            assert r.status_code == 200, r.text

    def checkout(self, client: str) -> str:
        r = self.http.post("/v1/seats/checkout", json={"feature": "cad", "client_id": client})
        assert r.status_code == 200, r.text
        return str(r.json()["lease_id"])

    def heartbeat(self, lease_id: str) -> int:
        return self.http.post("/v1/seats/heartbeat", json={"lease_id": lease_id}).status_code

    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.site.token}"}

    def report(self) -> tuple[bytes, IngestOutcome]:
        r = self.http.post("/v1/admin/export", headers=self._admin())
        assert r.status_code == 200, r.text
        self.reports += 1
        path = self.root / f"report-{self.reports}-{time.monotonic_ns()}.mbr"
        path.write_bytes(r.content)
        return r.content, ingest_report(self.site.home, path)

    def round_trip(self) -> IngestOutcome:
        """Report, ingest and import the receipt: the vendor acknowledges the head."""
        _, outcome = self.report()
        assert outcome.accepted, outcome.to_json()
        assert outcome.receipt_path is not None
        r = self.http.post(
            "/v1/admin/import",
            headers={**self._admin(), "Content-Type": "application/octet-stream"},
            content=outcome.receipt_path.read_bytes(),
        )
        assert r.status_code == 200, r.text
        return outcome

    def settle(self) -> None:
        """Let an activity advance come due and run (one more request triggers it)."""
        time.sleep(ADVANCE_EVERY_S + 0.2)
        self.use(1, client="settle")
        time.sleep(0.3)


def _codes(outcome: IngestOutcome) -> dict[str, str]:
    return {f.code: f.severity for f in outcome.findings}


def _tpm_codes(outcome: IngestOutcome) -> dict[str, str]:
    return {c: s for c, s in _codes(outcome).items() if c.startswith("tpm.")}


def _snapshot(data: Path, to: Path) -> Path:
    shutil.copytree(data, to, ignore=_IGNORE)
    return to


def _restore(snapshot: Path, data: Path) -> None:
    shutil.rmtree(data)
    shutil.copytree(snapshot, data)


def _anchors(site: Data, report: bytes) -> list[TpmAnchor]:
    records, _ = site.verify(report)
    return [TpmAnchor.from_map(r.payload) for r in records if r.type is RecordType.TPM_ANCHOR]


# ------------------------------------------------------------------ acceptance: attacks
@pytest.mark.parametrize("clients_active", [True, False], ids=["clients-active", "none-active"])
def test_snapshot_after_receipt_restored_is_critical(
    tmp_path: Path, swtpm: Swtpm, clients_active: bool
) -> None:
    site = _site(tmp_path, swtpm)
    with Run(site, tmp_path) as run:
        run.use(3)
        first = run.round_trip()
        assert _tpm_codes(first) == {"tpm.quote.ok": "info"}
        lease = run.checkout("holder") if clients_active else None
        snapshot = _snapshot(site.data, tmp_path / "snapshot")
        # The usage the customer wants to erase; the counter advances while it is made.
        run.use(20)
        run.settle()
        if clients_active:
            # A restore under load: the server dies without a clean stop.
            run.server.kill9()
    _restore(snapshot, site.data)
    with Run(site, tmp_path) as run:
        if lease is not None:
            assert run.heartbeat(lease) == 200  # the restored copy holds the lease
        run.use(2)
        _, outcome = run.report()
    codes = _tpm_codes(outcome)
    assert outcome.status == "accepted_with_findings", outcome.to_json()
    assert codes.get("tpm.ledger.rollback") == "critical", codes


def test_saved_ledger_and_key_files_put_back_are_critical(tmp_path: Path, swtpm: Swtpm) -> None:
    site = _site(tmp_path, swtpm)
    with Run(site, tmp_path) as run:
        run.use(3)
        run.round_trip()
        # The customer keeps the ledger and its key files (chain.key, instance key) ...
        saved = _snapshot(site.data / "ledger", tmp_path / "saved-ledger")
        run.use(10)
        run.settle()
    # ... and puts them back while the rest of the directory stays current.
    _restore(saved, site.data / "ledger")
    with Run(site, tmp_path) as run:
        run.use(1)
        _, outcome = run.report()
    assert outcome.status == "accepted_with_findings", outcome.to_json()
    assert _tpm_codes(outcome).get("tpm.ledger.rollback") == "critical", outcome.to_json()


def test_note_edited_to_hide_a_restore_still_shows_a_gap(tmp_path: Path, swtpm: Swtpm) -> None:
    """A customer who also rewrites the server's anchor note defeats the open check;
    the anchors in the chain then jump, which the vendor sees without any note."""
    site = _site(tmp_path, swtpm)
    with Run(site, tmp_path) as run:
        run.use(3)
        run.round_trip()
        snapshot = _snapshot(site.data, tmp_path / "snapshot")
        run.use(10)
        run.settle()
    live_note = (site.data / "tpm-anchor.json").read_bytes()
    _restore(snapshot, site.data)
    # The note of the live directory (head and counter the restored ledger never had)
    # would be caught as "ledger"; a note claiming the TPM's value at the copy's own
    # head is what a careful customer writes.
    note = json.loads((site.data / "tpm-anchor.json").read_text())
    note["committed"] = json.loads(live_note)["committed"]
    (site.data / "tpm-anchor.json").write_text(json.dumps(note))
    with Run(site, tmp_path) as run:
        run.use(1)
        report, outcome = run.report()
    assert outcome.status == "accepted_with_findings", outcome.to_json()
    codes = _tpm_codes(outcome)
    assert codes.get("tpm.counter.gap") == "critical", codes
    assert "tpm.ledger.rollback" not in codes  # the open check was indeed defeated
    values = [a.counter for a in _anchors(site, report)]
    assert any(b - a > 1 for a, b in itertools.pairwise(values)), values


def test_directory_copied_to_another_tpm_is_critical(
    tmp_path: Path, swtpm: Swtpm, swtpm_factory: SwtpmFactory
) -> None:
    site = _site(tmp_path, swtpm)
    with Run(site, tmp_path) as run:
        run.use(3)
        run.round_trip()
    # The copy runs on a second machine, whose TPM answers at the same address there.
    other = swtpm_factory()
    path = site.data / "tpm.json"
    config = json.loads(path.read_text())
    config["tcti"] = other.tcti
    path.write_text(json.dumps(config))
    with Run(site, tmp_path) as run:
        run.use(2)
        _, outcome = run.report()
    codes = _tpm_codes(outcome)
    # The foreign TPM alone is evidence (billed and flagged); the missing attestation of
    # an enrolled instance rejects the report.
    assert outcome.status == "rejected", outcome.to_json()
    assert codes.get("tpm.ledger.foreign") == "critical", codes
    # Without its TPM the copy cannot attest: an enrolled instance must.
    assert codes.get("tpm.missing") == "critical", codes


def test_a_license_requiring_a_tpm_refuses_to_serve_without_it(
    tmp_path: Path, swtpm: Swtpm
) -> None:
    site = _site(tmp_path, swtpm, require_tpm=True)
    with Run(site, tmp_path) as run:
        run.use(1)
        assert _tpm_codes(run.round_trip()) == {"tpm.quote.ok": "info"}
    swtpm.stop()
    server = ServerProcess(site.data, tmp_path / "server-no-tpm.log")
    with pytest.raises(AssertionError, match="requires a TPM"):
        server.start(timeout=60)
    server.stop()


# ------------------------------------------------------------ acceptance: no finding
def test_clean_restarts_kill9_under_load_and_epoch_rolls_leave_no_tpm_finding(
    tmp_path: Path, swtpm: Swtpm
) -> None:
    site = _site(tmp_path, swtpm)
    with Run(site, tmp_path) as run:
        run.use(3)
        run.round_trip()
    for _ in range(2):  # clean restarts
        with Run(site, tmp_path) as run:
            run.use(5)
    with Run(site, tmp_path) as run:
        outcome = run.round_trip()
    assert _tpm_codes(outcome) == {"tpm.quote.ok": "info"}, outcome.to_json()


def test_kill9_under_load_twenty_rounds_leaves_no_tpm_finding(tmp_path: Path, swtpm: Swtpm) -> None:
    site = _site(tmp_path, swtpm)
    with Run(site, tmp_path) as run:
        run.use(2)
        run.round_trip()
    rng = random.Random(16)
    for _ in range(KILL_ROUNDS):
        run = Run(site, tmp_path).__enter__()
        stop = threading.Event()
        workers = [
            threading.Thread(target=_hammer, args=(run.server.url, f"w{i}", stop), daemon=True)
            for i in range(3)
        ]
        for w in workers:
            w.start()
        # Long enough, now and then, for activity advances to be under way at the kill.
        time.sleep(rng.uniform(0.2, 1.5))
        run.server.kill9()
        stop.set()
        for w in workers:
            w.join(timeout=15)
        run.http.close()
    with Run(site, tmp_path) as run:
        run.use(1)
        report, _ = run.report()
        outcome = run.round_trip()
    assert _tpm_codes(outcome) == {"tpm.quote.ok": "info"}, outcome.to_json()
    # A kill between an increment and its anchor is a resync (a step of 0), never a gap.
    values = [a.counter for a in _anchors(site, report)]
    assert all(0 <= b - a <= 1 for a, b in itertools.pairwise(values)), values


def _hammer(url: str, name: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        i = 0
        while not stop.is_set():
            i += 1
            body = {
                "meter": "runs",
                "amount": 1,
                "client_id": name,
                "idempotency_key": f"{name}{i}",
            }
            try:
                c.post("/v1/usage", json=body)
            except httpx.HTTPError:
                return


def test_epoch_roll_advances_the_counter_and_leaves_no_finding(
    tmp_path: Path, swtpm: Swtpm
) -> None:
    site = _site(tmp_path, swtpm)
    clock = ManualClock(wall_ms=int(time.time() * 1000), mono_ms=1_000)
    inst = ServerInstance.open(site.data, clock=clock)
    try:
        asyncio.run(inst.service.usage("runs", 1, "c1"))
        epoch = inst.writer.epoch
        clock.advance(LedgerConfig().epoch_max_ms + 1)
        asyncio.run(inst.service.usage("runs", 1, "c1"))
        asyncio.run(inst.service.usage("runs", 1, "c1"))
        assert inst.writer.epoch > epoch
        deadline = time.monotonic() + 10
        while inst.tpm is not None and inst.tpm.advances < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        report = inst.export_bytes()
    finally:
        inst.close()
    reasons = [a.reason for a in _anchors(site, report)]
    assert reasons[:2] == ["open", "epoch"], reasons
    path = tmp_path / "epoch.mbr"
    path.write_bytes(report)
    outcome = ingest_report(site.home, path)
    assert _tpm_codes(outcome) == {"tpm.quote.ok": "info"}, outcome.to_json()


def test_a_license_requiring_a_tpm_is_refused_by_a_server_initialised_without_one(
    tmp_path: Path,
) -> None:
    # Init refuses outright, before anything is written ...
    with pytest.raises(ConfigError, match="requires a TPM, and none is used"):
        make_data(tmp_path, require_tpm=True)
    assert not (tmp_path / "server").exists()
    # ... and a directory that got such a license later refuses to serve it.
    site = make_data(tmp_path / "later")
    keys = vendor_keys.VendorKeys.load(site.home)
    lic_path = site.data / "licenses" / "lic-site.lic"
    lic = License.from_bytes(lic_path.read_bytes(), keys.bundle)
    lic_path.write_bytes(dataclasses.replace(lic, require_tpm=True).sign(keys.signer()))
    with pytest.raises(ConfigError, match="requires a TPM") as err:
        ServerInstance.open(site.data)
    assert "lic-site" in str(err.value)
