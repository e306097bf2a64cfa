"""A server instance on disk: set-up, opening, export and import.

Data directory layout (mode 0700)::

    DATA/ledger/          the sealed ledger (meterbox.ledger)
    DATA/state.db         seats, leases, counters (SQLite)
    DATA/licenses/*.lic   installed license files, as signed by the vendor
    DATA/vendor.pub       the vendor's public bundle
    DATA/admin.token      the admin bearer token (0600)
    DATA/cryptolens.pem   RSA-2048 key for the Cryptolens-compatible API (0600)
    DATA/cryptolens.db    Cryptolens data-object values and node-locked activations
    DATA/run.json         address of the running server, while it runs
    DATA/tpm.json         the TPM chosen at init and the counter's authValue (0600)
    DATA/tpm-anchor.json  the last counter value committed to the ledger, and a
                          pending one (docs/adr/0011-tpm-anchor.md, "Wiring")
    DATA/tpm-reenrol.json a re-enrolment in progress: the new TPM's counter authValue
                          and tpm.json, until the move is finished (0600, ADR 0036)

The ledger is opened by one process at a time (flock). ``status``, ``export`` and
``import`` therefore go through the running server's admin API when it runs, and
open the directory directly when it does not. A query (``status``) on a stopped server
uses :func:`read_status`, which writes nothing: no ledger record, no lock file, no
state change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from meterbox._fs import atomic_write, check_private_dir, disk_error, fsync_dir
from meterbox.clock import Clock, SystemClock
from meterbox.compat.signer import CryptolensSigner
from meterbox.crypto import ed25519_raw_public
from meterbox.errors import (
    ConfigError,
    DiskFullError,
    FormatError,
    MeterboxError,
    StateError,
    UnavailableError,
    VerificationError,
)
from meterbox.ledger import (
    Head,
    LedgerWriter,
    RecordType,
    TpmCredential,
    export_report,
    read_head,
    recent_heads,
)
from meterbox.licenses import (
    DocumentSigner,
    License,
    LicenseNotice,
    Receipt,
    Topup,
    VendorPublicBundle,
    instance_key_id,
    open_document,
)
from meterbox.server._cluster import EtcdCoordinator
from meterbox.server._cluster._etcd import EtcdDown
from meterbox.server._cluster._imports import ClusterImports, Kind
from meterbox.server._core.engine import ReceiptInfo
from meterbox.server._core.ledgerstate import LedgerState, from_ms
from meterbox.server._core.policy import policy_from_license
from meterbox.server._core.replay import replay_changes
from meterbox.server._rebuild import (
    CRYPTOLENS_DB_NAME,
    Rebuilt,
    check_cryptolens_db,
    check_state_db,
    note_head,
    read_cryptolens,
    view_of_snapshot,
)
from meterbox.server._service import LicenseService, ServiceConfig, Sleep, status_view
from meterbox.server._sinks import LedgerEventSink
from meterbox.server._state import StateStore
from meterbox.server._tpm import (
    REENROL_INTENT,
    AnchoredSink,
    TpmGuard,
    TpmSetup,
    answer_challenge,
    finish_reenrolment,
    prepare_tpm,
    require_tpm_guard,
    write_tpm_config,
)
from meterbox.tpm import DEFAULT_TCTI, TpmMode, report_nonce

log = logging.getLogger("meterbox.server")

LEDGER_DIR: Final = "ledger"
#: Where init builds the ledger; renaming it to LEDGER_DIR is init's commit point.
LEDGER_STAGING: Final = ".ledger.init"
STATE_DB: Final = "state.db"
LICENSES_DIR: Final = "licenses"
VENDOR_PUB: Final = "vendor.pub"
ADMIN_TOKEN: Final = "admin.token"  # noqa: S105 - a file name, not a secret
CRYPTOLENS_KEY: Final = "cryptolens.pem"
RUN_FILE: Final = "run.json"
RECEIPT_FILE: Final = "last-receipt.json"
MAX_IMPORT_BYTES: Final = 1 << 20


def machine_fingerprint() -> str:
    """A stable identity for this machine, for licenses bound to a site.

    ``METERBOX_FINGERPRINT`` overrides it: containers get a new machine-id when they
    are rebuilt, so their operators pin an identity explicitly.
    """
    override = os.environ.get("METERBOX_FINGERPRINT")
    if override:
        return override
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            ident = Path(path).read_text().strip()
        except OSError:
            continue
        if ident:
            return hashlib.sha256(b"meterbox-site/1\x00" + ident.encode()).hexdigest()[:32]
    return hashlib.sha256(b"meterbox-site/1\x00" + socket.gethostname().encode()).hexdigest()[:32]


def _check_license_for_site(lic: License, fingerprint: str) -> None:
    if lic.site_fingerprint is not None and not secrets.compare_digest(
        lic.site_fingerprint, fingerprint
    ):
        raise VerificationError(
            f"license {lic.license_id} is bound to another machine",
            expected=f"site fingerprint {lic.site_fingerprint}",
            found=f"this machine's fingerprint {fingerprint}",
            hint="ask the vendor for a license issued with --site for this machine "
            "('meterbox server fingerprint' prints it)",
        )


@dataclass(frozen=True)
class InitResult:
    instance_id: str
    admin_token: str
    licenses: tuple[str, ...]
    tpm: str = ""


def read_bundle(data: Path) -> VendorPublicBundle:
    return VendorPublicBundle.from_bytes((data / VENDOR_PUB).read_bytes())


def load_licenses(data: Path, bundle: VendorPublicBundle) -> list[tuple[License, bytes]]:
    out = []
    for path in sorted((data / LICENSES_DIR).glob("*.lic")):
        blob = path.read_bytes()
        out.append((License.from_bytes(blob, bundle), blob))
    return out


def init_server(
    data: Path,
    *,
    vendor_pub: Path,
    license_files: list[Path],
    clock: Clock | None = None,
    fingerprint: str | None = None,
    tpm: TpmMode = TpmMode.OFF,
    tpm_tcti: str = DEFAULT_TCTI,
) -> InitResult:
    """Create a server instance: identity, ledger genesis, licenses, tokens and keys.

    ``tpm`` defaults to off here, unlike the CLI's ``auto``: callers in code (tests,
    embedding) must not define counters on whatever TPM the machine has by accident.
    """
    clock = clock or SystemClock()
    if not license_files:
        raise ConfigError(
            "no license given",
            expected="at least one --license FILE",
            found="none",
            hint="the vendor issues licenses with 'meterbox vendor issue'",
        )
    if (data / LEDGER_DIR).exists():
        raise StateError(
            f"{data} already holds a server instance",
            expected="an empty or new data directory",
            found=str(data / LEDGER_DIR),
            hint="use 'meterbox server import' to add licenses to an existing server",
        )
    try:
        bundle_bytes = vendor_pub.read_bytes()
    except OSError as exc:
        raise ConfigError(
            "cannot read the vendor key",
            expected="a readable vendor.pub file",
            found=f"{vendor_pub}: {exc.strerror}",
        ) from None
    bundle = VendorPublicBundle.from_bytes(bundle_bytes)
    fingerprint = fingerprint or machine_fingerprint()
    licenses: list[tuple[License, bytes]] = []
    for path in license_files:
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                "cannot read a license file",
                expected="a readable license file",
                found=f"{path}: {exc.strerror}",
            ) from None
        lic = License.from_bytes(blob, bundle)
        _check_license_for_site(lic, fingerprint)
        licenses.append((lic, blob))
    # Before anything is written: `--tpm require` without a TPM leaves no directory behind.
    tpm_setup = prepare_tpm(tpm, tpm_tcti)
    needing = [lic.license_id for lic, _ in licenses if lic.require_tpm]
    if needing and tpm_setup.counter is None:
        raise ConfigError(
            "a license requires a TPM, and none is used",
            expected=f"a TPM for {', '.join(needing)} (--tpm require or auto with a TPM)",
            found=tpm_setup.reason,
            hint="initialise the server on a machine with a (v)TPM: docs/adr/0011-tpm-anchor.md",
        )
    try:
        return _build(data, bundle, bundle_bytes, licenses, clock, fingerprint, tpm_setup)
    except OSError as exc:
        raise disk_error(
            f"server init could not write {data}",
            exc,
            hint="free disk space or fix permissions, then run 'meterbox server init' "
            "again: an interrupted init leaves no server behind and is safe to repeat",
        ) from exc


def _build(
    data: Path,
    bundle: VendorPublicBundle,
    bundle_bytes: bytes,
    licenses: list[tuple[License, bytes]],
    clock: Clock,
    fingerprint: str,
    tpm_setup: TpmSetup,
) -> InitResult:
    """Write a new instance; the rename of the finished ledger directory commits it.

    Until ``ledger/`` exists no server can run here, and everything else in the
    directory is this init's own output: an interrupted init is repeated over it.
    The ledger is built under a temporary name and renamed into place last, after
    every other file and the directory itself are durable, so a power loss leaves
    either no instance or a whole one.
    """
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data, 0o700)
    check_private_dir(data)
    fsync_dir(data.parent)
    staging = data / LEDGER_STAGING
    if staging.exists():
        shutil.rmtree(staging)
    for name in (STATE_DB, f"{STATE_DB}-wal", f"{STATE_DB}-shm", f"{STATE_DB}-journal"):
        with contextlib.suppress(FileNotFoundError):
            (data / name).unlink()
    if (data / LICENSES_DIR).exists():
        shutil.rmtree(data / LICENSES_DIR)
    (data / LICENSES_DIR).mkdir(mode=0o700)
    for lic, blob in licenses:
        atomic_write(data / LICENSES_DIR / f"{lic.license_id}.lic", blob, mode=0o644)
    atomic_write(data / VENDOR_PUB, bundle_bytes, mode=0o644)
    write_tpm_config(data, tpm_setup)
    key = bundle.current
    writer = LedgerWriter.create(
        staging,
        vendor_ledger_key=key.ledger_key(),
        vendor_key_id=key.key_id,
        clock=clock,
        genesis={
            "l": [lic.license_id for lic, _ in licenses],
            "fp": fingerprint,
            "tpm": tpm_setup.genesis(),
        },
    )
    try:
        for lic, blob in licenses:
            writer.append(
                RecordType.LICENSE_INSTALLED,
                {"l": lic.license_id, "d": hashlib.sha256(blob).hexdigest()},
            )
    finally:
        writer.close()
    token = secrets.token_urlsafe(32)
    atomic_write(data / ADMIN_TOKEN, token.encode())
    _ensure_cryptolens_key(data / CRYPTOLENS_KEY)
    store = StateStore(data / STATE_DB)
    try:
        store.initialize(init_time=clock.now(), instance_id=writer.instance_id.hex())
    finally:
        store.close()
    fsync_dir(data)
    os.rename(staging, data / LEDGER_DIR)
    fsync_dir(data)
    return InitResult(
        writer.instance_id.hex(),
        token,
        tuple(lic.license_id for lic, _ in licenses),
        tpm_setup.reason,
    )


def _ensure_cryptolens_key(path: Path) -> None:
    """Keep a usable Cryptolens key already there; replace one an interrupted init cut."""
    if path.exists():
        try:
            CryptolensSigner.load(path)
            return
        except MeterboxError:
            path.unlink()
    CryptolensSigner.generate(path)


def read_status(data: Path, *, clock: Clock | None = None) -> dict[str, Any]:
    """The ``/v1/status`` document of a stopped server, read without writing anything."""
    clock = clock or SystemClock()
    if not (data / LEDGER_DIR).exists():
        raise StateError(
            f"no server instance in {data}",
            expected=f"a directory set up by 'meterbox server init --data {data}'",
            found="no ledger there",
        )
    # The same refusals as a start: a directory others can write is not trusted.
    check_private_dir(data)
    licenses = load_licenses(data, read_bundle(data))
    head = read_head(data / LEDGER_DIR)
    store = StateStore(data / STATE_DB, read_only=True)
    try:
        snap = store.load()
    finally:
        store.close()
    engine = snap.engine([policy_from_license(lic) for lic, _ in licenses])
    # License time as a starting server would compute it: never before what it has seen.
    now = clock.now()
    floors = [t for t in (snap.clock_floor, snap.init_time, now) if t is not None]
    if snap.last_receipt is not None:
        floors.append(snap.last_receipt.vendor_time)
    if snap.instance_id is None:
        raise StateError(
            "the server state was never initialised",
            expected="a state file written by a server that has run",
            found=f"no instance id in {data / STATE_DB}",
            hint=f"start the server once with 'meterbox server run --data {data}'",
        )
    return status_view(engine, max(floors), snap.instance_id, (head.seq, head.hash.hex()))


class ServerInstance:
    """An opened instance: ledger writer, state store and license service."""

    def __init__(
        self,
        data: Path,
        writer: LedgerWriter,
        store: StateStore,
        service: LicenseService,
        bundle: VendorPublicBundle,
        licenses: list[tuple[License, bytes]],
        clock: Clock,
        tpm: TpmGuard | None = None,
    ) -> None:
        self.tpm = tpm
        self.data = data
        self.writer = writer
        self.store = store
        self.service = service
        self.bundle = bundle
        self.licenses = licenses
        self.clock = clock
        #: The ledger's fold: the truth every cache is checked against (set by open).
        self.fold = LedgerState()
        #: Top-ups and notices imported here that etcd did not take yet (cluster only).
        self._unpublished: list[tuple[str, Kind, str, bytes, int]] = []
        #: Published documents that failed verification here (damaged, foreign): not retried.
        self._refused: set[tuple[str, Kind, str, int, bytes]] = set()
        #: The caches this open found wrong and rebuilt from the ledger.
        self.rebuilt: list[Rebuilt] = []

    @classmethod
    def open(
        cls,
        data: Path,
        *,
        clock: Clock | None = None,
        settings: ServiceConfig | None = None,
        force_recover: bool = False,
        sleep: Sleep = asyncio.sleep,
        attach_tpm: bool = True,
    ) -> ServerInstance:
        """Open the instance in ``data``; ``attach_tpm=False`` leaves the TPM alone (for
        ``server tpm reenrol``, which records the move to another TPM before the next
        open checks it), and then serves nothing a license requiring a TPM covers."""
        clock = clock or SystemClock()
        if not (data / LEDGER_DIR).exists():
            raise StateError(
                f"no server instance in {data}",
                expected=f"a directory set up by 'meterbox server init --data {data}'",
                found="no ledger there",
            )
        check_private_dir(data)
        bundle = read_bundle(data)
        licenses = load_licenses(data, bundle)
        state_missing = not (data / STATE_DB).exists()
        store = StateStore(data / STATE_DB)
        # A file created by an open that never got as far as checking it is as good as
        # missing: it reflects nothing of the ledger (ADR 0014).
        state_missing = state_missing or not store.checked_against_ledger()
        policies = [policy_from_license(lic) for lic, _ in licenses]
        try:
            snap = store.load()
            # The ledger is the truth: the writer folds its last epoch into this state
            # at open, and every cache is checked against it below (_rebuild).
            fallback = view_of_snapshot(snap)
            cached = read_cryptolens(
                data / CRYPTOLENS_DB_NAME, [lic for lic, _ in licenses], snap.idempotency
            )
            if cached is not None:
                fallback.charged, fallback.machines = cached.charged, cached.machines
            fold = LedgerState({p.license_id: p for p in policies}, fallback=fallback)
            fold.watch(snap.last_seq, snap.seq_ahead)
            # A re-enrolment cut short after its record: the head before this open's own
            # records says whether the record is sealed (docs/adr/0036).
            before_open = read_head(data / LEDGER_DIR) if (data / REENROL_INTENT).exists() else None
            writer = LedgerWriter.open(
                data / LEDGER_DIR,
                clock=clock,
                force_recover=force_recover,
                replay_after=snap.last_seq,
                folder=fold,
            )
        except BaseException:
            store.close()
            raise
        tpm: TpmGuard | None = None
        try:
            if before_open is not None:
                finish_reenrolment(data, before_open)
            # The TPM check comes before serving: a rollback is on record before any
            # request of this run, and a license that requires a TPM is enforced here.
            if attach_tpm:
                tpm = TpmGuard.open(data, writer)
                require_tpm_guard([lic for lic, _ in licenses], tpm)
            store.initialize(
                init_time=clock.now(),
                instance_id=writer.instance_id.hex(),
            )
            # Usage the ledger holds but the state missed (a crash between the two
            # commits) is applied before serving, so a client's retry is not counted twice.
            store.apply(
                replay_changes(
                    writer.replayed,
                    usage=snap.usage,
                    idempotency_keys=snap.idempotency.keys(),
                    licenses={p.license_id: p for p in policies},
                    committed=snap.seq_ahead,
                )
            )
            now_ms = clock.wall_ms()
            rebuilt = [
                r
                for r in (
                    check_state_db(
                        fold, store, writer, now_ms=now_ms, missing=state_missing, before=snap
                    ),
                    check_cryptolens_db(
                        fold,
                        writer,
                        data,
                        [lic for lic, _ in licenses],
                        store.load().idempotency,
                        now_ms=now_ms,
                    ),
                )
                if r is not None
            ]
            head = writer.head
            note_head(store, data, head.seq, head.hash)
            ledger_sink = LedgerEventSink(writer, RecordType.from_kind)
            sink = ledger_sink if tpm is None else AnchoredSink(ledger_sink, tpm)
            service = LicenseService.open(
                store,
                policies,
                sink,
                settings=settings or ServiceConfig(),
                clock=clock,
                sleep=sleep,
                ledger_floor=from_ms(fold.view.clock_floor_ms),
            )
            # Borrow tokens are signed by the instance key, which signs this server's
            # reports too: the vendor knows it from the first report (ADR 0028).
            service.borrow_signer = DocumentSigner(
                instance_key_id(ed25519_raw_public(writer.instance_key.public_key())),
                writer.instance_key,
            )
            with writer.snapshot() as frames:
                # The heads a witness may name, so judging one rarely reads the file.
                keep = service.witnesses.config.index_size
                service.witnesses.seed(recent_heads(frames.header, frames.chunks(), keep))
        except BaseException:
            if tpm is not None:
                tpm.close()
            writer.close()
            store.close()
            raise
        # Each durable record the state caches is pending until its request's state
        # commit: the state's last seq never claims one it does not hold (ADR 0044).
        commits = service.commits
        fold.on_durable = lambda seq: commits.durable(seq, time.monotonic())
        # The vendor's notices and the removals (who, why) come from the ledger itself,
        # never from a cache the site could edit (ADR 0029).
        service.engine.standings = fold.standings()
        service.engine.seats.removed.update(fold.removals())
        instance = cls(data, writer, store, service, bundle, licenses, clock, tpm)
        instance.fold = fold
        instance.rebuilt = rebuilt
        return instance

    def close(self) -> None:
        if self.tpm is not None:
            self.tpm.close()
        self.writer.close()
        self.store.close()

    # ------------------------------------------------------------------ export
    def acked_head(self) -> Head | None:
        path = self.data / RECEIPT_FILE
        if not path.exists():
            return None
        info = json.loads(path.read_text())
        return Head(int(info["head_seq"]), bytes.fromhex(info["head_hash"]))

    def export_bytes(self) -> bytes:
        buf = io.BytesIO()
        acked = self.acked_head()
        licenses = [blob for _, blob in self.licenses]
        guard = self.tpm
        if guard is None:
            export_report(self.writer, buf, clock=self.clock, licenses=licenses, acked=acked)
            return buf.getvalue()
        nonce = report_nonce(self.writer.instance_id, None if acked is None else acked.hash)
        # Under the guard's lock no other advance runs: the report's last TPM_ANCHOR is
        # the value the TPM certifies, bound to the head the report ends at.
        with guard.lock:
            guard.advance_locked("report")
            export_report(
                self.writer,
                buf,
                clock=self.clock,
                licenses=licenses,
                acked=acked,
                extra_for=lambda head: {"tpm": guard.attest_locked(head.hash, nonce)},
            )
        return buf.getvalue()

    async def _advance(self, reason: str) -> None:
        if self.tpm is not None:
            await asyncio.to_thread(self.tpm.advance, reason)

    # ------------------------------------------------------------------ import
    async def import_bytes(self, blob: bytes, *, publish: bool = True) -> dict[str, Any]:
        """Import a receipt, top-up, license notice or license. Anything else is refused.

        In a cluster a top-up or notice is also published for the other nodes
        (``_cluster/_imports.py``); ``publish=False`` is a node applying a published one.
        """
        doc = _open_importable(blob, self.bundle)
        if isinstance(doc, Receipt):
            return await self._import_receipt(doc, blob)
        if isinstance(doc, LicenseNotice):
            result = await self._import_notice(doc)
            return result | await self._publish(
                doc.license_id, "notice", doc.notice_id, blob, doc.sequence, publish
            )
        if isinstance(doc, Topup):
            known = {lic.license_id for lic, _ in self.licenses}
            if doc.license_id not in known:
                raise VerificationError(
                    "top-up is for a license this server does not hold",
                    expected="one of " + ", ".join(sorted(known)),
                    found=doc.license_id,
                )
            await self.service.import_topup(doc.topup_id, doc.license_id, doc.meter, doc.units)
            await self._advance("import")
            out: dict[str, Any] = {"imported": "topup", "topup_id": doc.topup_id}
            out["units"] = doc.units
            return out | await self._publish(
                doc.license_id, "topup", doc.topup_id, blob, 0, publish
            )
        return await self._import_license(doc, blob)

    # ------------------------------------------------------------- cluster
    def _cluster_imports(self) -> tuple[EtcdCoordinator, ClusterImports] | None:
        coordinator = self.service.cluster
        if not isinstance(coordinator, EtcdCoordinator):
            return None
        return coordinator, ClusterImports(coordinator.etcd)

    async def _publish(
        self, license_id: str, kind: Kind, doc_id: str, blob: bytes, sequence: int, publish: bool
    ) -> dict[str, Any]:
        """Hand an imported top-up or notice to the other nodes; what the answer says."""
        found = self._cluster_imports()
        if found is None or not publish:
            return {}
        coordinator, imports = found
        try:
            await asyncio.to_thread(
                coordinator.bounded, imports.publish, license_id, kind, doc_id, blob, sequence
            )
        except EtcdDown as exc:
            # Applied here and on record; the other nodes get it once it is published.
            self._unpublished.append((license_id, kind, doc_id, blob, sequence))
            return {"cluster": f"not yet published to the other nodes ({exc}); retried every round"}
        return {"cluster": "published to the other nodes"}

    async def sync_cluster(self) -> int:
        """Publish what could not be published yet; apply what other nodes published.

        Called every housekeeping round in a cluster. Returns how many documents this
        node applied. A document that does not apply here is logged and left (every node
        holds the same licenses, so that is a damaged or foreign document, never a
        reason to stop serving).
        """
        found = self._cluster_imports()
        if found is None:
            return 0
        coordinator, imports = found
        while self._unpublished:
            lic, kind, doc_id, blob, sequence = self._unpublished[0]
            try:
                await asyncio.to_thread(
                    coordinator.bounded, imports.publish, lic, kind, doc_id, blob, sequence
                )
            except EtcdDown:
                break
            self._unpublished.pop(0)
        license_ids = [lic.license_id for lic, _ in self.licenses]
        try:
            published = await asyncio.to_thread(coordinator.bounded, imports.published, license_ids)
        except EtcdDown as exc:
            log.debug("cluster imports not read this round: %s", exc)
            return 0
        applied = 0
        engine = self.service.engine
        for doc in published:
            if doc.kind == "topup" and doc.doc_id in engine.meters.topups:
                continue
            standing = engine.standings.get(doc.license_id)
            if doc.kind == "notice" and standing is not None and doc.sequence <= standing.sequence:
                continue
            seen = (doc.license_id, doc.kind, doc.doc_id, doc.sequence, doc.blob)
            if seen in self._refused:
                continue  # said once; the same bytes are refused the same way each round
            try:
                await self.import_bytes(doc.blob, publish=False)
            except MeterboxError as exc:
                if isinstance(exc, VerificationError | FormatError):
                    # Not the vendor's document, or not one at all: the same bytes fail
                    # the same way every round. Anything else is tried again next round.
                    self._refused.add(seen)
                log.warning("a %s another node published did not apply here: %s", doc.kind, exc)
                continue
            log.warning("applied %s %s published by another node", doc.kind, doc.doc_id)
            applied += 1
        return applied

    async def _import_notice(self, notice: LicenseNotice) -> dict[str, Any]:
        known = {lic.license_id for lic, _ in self.licenses}
        if notice.license_id not in known:
            raise VerificationError(
                "license notice is for a license this server does not hold",
                expected="one of " + ", ".join(sorted(known)),
                found=notice.license_id,
                hint="import the notice on the server that holds the license",
            )
        standing, removals = await self.service.import_notice(
            license_id=notice.license_id,
            notice_id=notice.notice_id,
            action=notice.action,
            sequence=notice.sequence,
            reason=notice.reason,
        )
        await self._advance("import")
        return {
            "imported": "notice",
            "notice_id": notice.notice_id,
            "license_id": notice.license_id,
            "action": notice.action,
            "sequence": notice.sequence,
            "standing": standing.status,
            "leases_ended": len(removals),
        }

    async def _import_receipt(self, receipt: Receipt, blob: bytes) -> dict[str, Any]:
        if receipt.instance_id != self.writer.instance_id.hex():
            raise VerificationError(
                "receipt is for another server instance",
                expected=self.writer.instance_id.hex(),
                found=receipt.instance_id,
                hint="import the receipt on the server that exported the report",
            )
        head = Head(receipt.head_seq, bytes.fromhex(receipt.head_hash))
        previous = self.acked_head()
        again = previous is not None and previous == head
        if previous is not None and head.seq <= previous.seq and not again:
            raise StateError(
                "receipt is older than the one already imported",
                expected=f"a receipt past seq {previous.seq}",
                found=f"seq {head.seq}",
                hint="import the newest receipt only",
            )
        # Check it names a point of this very ledger before anything changes.
        self.writer.verify_point(head)
        if not again:
            try:
                atomic_write(
                    self.data / RECEIPT_FILE,
                    json.dumps(
                        {
                            "receipt_id": receipt.receipt_id,
                            "head_seq": head.seq,
                            "head_hash": head.hash.hex(),
                            "vendor_time": receipt.vendor_time.isoformat(),
                        }
                    ).encode(),
                    mode=0o644,
                )
            except OSError as exc:
                raise disk_error(
                    "the receipt could not be saved; nothing was imported", exc
                ) from exc
        # Importing the same receipt again is how a deferred compaction is retried;
        # the service ignores a receipt it already holds.
        await self.service.import_receipt(
            ReceiptInfo(receipt.vendor_time, receipt.head_seq, receipt.receipt_id)
        )
        answered = None
        if receipt.tpm_challenge is not None and not again:
            # The proof is sealed before the import's anchor, so the next report's
            # attestation covers it (docs/adr/0036).
            answered = await asyncio.to_thread(self._answer_challenge, receipt)
        if not again:
            await self._advance("import")
        try:
            removed = self.writer.compact(head)
        except StateError as exc:
            # Compaction is an optimisation: the receipt stands, the ledger keeps the
            # records the receipt covers until a later compaction drops them.
            cls = DiskFullError if isinstance(exc, DiskFullError) else UnavailableError
            raise cls(
                "the receipt was imported, but the ledger could not be compacted",
                expected="room for a copy of the records the receipt does not cover",
                found=exc.problem + (f" ({exc.found})" if exc.found else ""),
                hint="free disk space and import the same receipt again to compact",
            ) from exc
        out: dict[str, Any] = {
            "imported": "receipt",
            "receipt_id": receipt.receipt_id,
            "head_seq": head.seq,
            "compacted_bytes": removed,
        }
        if answered is not None:
            out["tpm_credential"] = "answered" if answered.proof is not None else answered.error
        return out

    def _answer_challenge(self, receipt: Receipt) -> TpmCredential:
        assert receipt.tpm_challenge is not None
        if self.tpm is None:
            answer = answer_challenge(None, receipt.receipt_id, receipt.tpm_challenge)
        else:
            answer = self.tpm.answer_challenge(receipt.receipt_id, receipt.tpm_challenge)
        self.writer.append(RecordType.TPM_CREDENTIAL, answer.to_map())
        return answer

    async def _import_license(self, lic: License, blob: bytes) -> dict[str, Any]:
        _check_license_for_site(lic, machine_fingerprint())
        policy = policy_from_license(lic)
        await self.service.install_license(policy, blob)
        self.fold.install(policy)
        atomic_write(self.data / LICENSES_DIR / f"{lic.license_id}.lic", blob, mode=0o644)
        self.licenses = [(x, b) for x, b in self.licenses if x.license_id != lic.license_id]
        self.licenses.append((lic, blob))
        await self._advance("import")
        return {"imported": "license", "license_id": lic.license_id}


def _open_importable(
    blob: bytes, bundle: VendorPublicBundle
) -> License | Topup | Receipt | LicenseNotice:
    if len(blob) > MAX_IMPORT_BYTES:
        raise FormatError(
            "file is too large to import",
            expected=f"at most {MAX_IMPORT_BYTES} bytes",
            found=f"{len(blob)} bytes",
            hint="import receipt, top-up or license files written by 'meterbox vendor'",
        )
    return open_document(blob, bundle)


def check_importable(data: Path, blob: bytes) -> None:
    """Verify an import file against the instance's vendor key without opening the instance."""
    if not (data / VENDOR_PUB).exists():
        raise StateError(
            f"no server instance in {data}",
            expected=f"a directory set up by 'meterbox server init --data {data}'",
            found=f"no {VENDOR_PUB} there",
        )
    _open_importable(blob, read_bundle(data))


def read_admin_token(data: Path) -> str:
    try:
        return (data / ADMIN_TOKEN).read_text().strip()
    except OSError as exc:
        raise StateError(
            "cannot read the admin token",
            expected=str(data / ADMIN_TOKEN),
            found=exc.strerror or str(exc),
        ) from None


def write_run_file(data: Path, url: str) -> None:
    atomic_write(data / RUN_FILE, json.dumps({"url": url, "pid": os.getpid()}).encode(), mode=0o600)


def read_run_file(data: Path) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads((data / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info
