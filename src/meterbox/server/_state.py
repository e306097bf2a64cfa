"""The server's persistent state: one SQLite file (WAL, ``synchronous=FULL``).

What is kept: live leases, denial counts, hourly seat peaks, usage counters per
(license, meter, period), applied top-ups, idempotency keys (7 days), the last
receipt, the last ledger sequence number seen, the license-clock floor, installed
license files, and the server's initialisation time.

Every change is a value (:data:`Change`) and a batch of changes is applied in one
transaction. Changes are *merges*, not overwrites: counters add, peaks, sequence
numbers and clock floors take the maximum, a lease row keeps the latest expiry and
once ended stays ended. Merges commute, so the HTTP shell may persist batches in
the order their ledger writes completed rather than the order they were decided,
and the result is the same (docs/adr/0003-server-state.md).

A second process cannot open the same state file: an exclusive ``flock`` on
``<path>.lock`` is held while the store is open.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from meterbox._fs import disk_error, is_disk_full
from meterbox.errors import StateError
from meterbox.server._core.changes import (
    Change,
    ClockFloor,
    DenialAdd,
    IdemDrop,
    IdemPut,
    LeasePut,
    LicensePut,
    PeakMax,
    ReceiptPut,
    SeqMax,
    TopupPut,
    UsageDelta,
)
from meterbox.server._core.engine import Engine, ReceiptInfo
from meterbox.server._core.meters import AppliedTopup, IdemEntry, MeterBook, UsageResult
from meterbox.server._core.policy import LicensePolicy
from meterbox.server._core.seats import SeatBook, SeatLease

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY, feature TEXT NOT NULL, client_id TEXT NOT NULL,
    license_id TEXT NOT NULL, issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    lease_seconds INTEGER NOT NULL, overdraft INTEGER NOT NULL, hostname TEXT,
    recorded_at INTEGER, ended INTEGER NOT NULL DEFAULT 0, key_id TEXT, user TEXT,
    grp TEXT, machine TEXT);
CREATE TABLE IF NOT EXISTS denials (feature TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS peaks (
    feature TEXT NOT NULL, hour INTEGER NOT NULL, peak INTEGER NOT NULL,
    PRIMARY KEY (feature, hour));
CREATE TABLE IF NOT EXISTS usage (
    license_id TEXT NOT NULL, meter TEXT NOT NULL, period TEXT NOT NULL,
    used INTEGER NOT NULL, PRIMARY KEY (license_id, meter, period));
CREATE TABLE IF NOT EXISTS topups (
    topup_id TEXT PRIMARY KEY, license_id TEXT NOT NULL, meter TEXT NOT NULL,
    amount INTEGER NOT NULL, period TEXT NOT NULL, applied_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, created_at INTEGER NOT NULL,
    result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS licenses (
    license_id TEXT PRIMARY KEY, blob BLOB NOT NULL, installed_at INTEGER NOT NULL);
"""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(t: datetime) -> int:
    """Microseconds since the Unix epoch: exact, and ordered like the datetimes."""
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def parse_seqs(text: str) -> list[int]:
    """The ``seq_ahead`` meta value: seqs, comma-separated, ascending."""
    return [int(x) for x in text.split(",") if x]


def format_seqs(seqs: Iterable[int]) -> str:
    return ",".join(str(s) for s in sorted(seqs))


@dataclass
class StateSnapshot:
    """Everything loaded back from the store at start-up."""

    init_time: datetime | None = None
    instance_id: str | None = None
    clock_floor: datetime | None = None
    last_seq: int = 0
    #: Seqs above ``last_seq`` whose state change is committed too (ADR 0044).
    seq_ahead: frozenset[int] = frozenset()
    last_receipt: ReceiptInfo | None = None
    leases: list[SeatLease] = field(default_factory=list)
    denials: dict[str, int] = field(default_factory=dict)
    peaks: dict[tuple[str, datetime], int] = field(default_factory=dict)
    usage: dict[tuple[str, str, str], int] = field(default_factory=dict)
    topups: list[AppliedTopup] = field(default_factory=list)
    idempotency: dict[str, IdemEntry] = field(default_factory=dict)
    licenses: dict[str, bytes] = field(default_factory=dict)

    def engine(
        self,
        licenses: Iterable[LicensePolicy],
        *,
        rng: Any = os.urandom,
        init_time: datetime | None = None,
    ) -> Engine:
        """An engine holding this state and the given license policies."""
        start = self.init_time or init_time
        if start is None:
            raise StateError(
                "State has no initialisation time",
                expected="a state file created by StateStore.initialize",
                found="no init_time in meta",
                hint="Initialise the server state first",
            )
        return Engine(
            licenses,
            init_time=start,
            rng=rng,
            seats=SeatBook(self.leases, self.denials, self.peaks),
            meters=MeterBook(self.usage, self.topups, self.idempotency),
            last_receipt=self.last_receipt,
        )


class StateStore:
    """The SQLite state file. Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._lockfile: IO[bytes] | None = None
        if read_only:
            self._open_read_only()
            return
        self._lockfile = open(  # noqa: SIM115 - held for the store's lifetime
            str(self.path) + ".lock", "ab"
        )
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            self._lockfile = None
            raise StateError(
                "The server state file is in use by another process",
                expected=f"no other meterbox server using {self.path}",
                found=f"{self.path}.lock is locked",
                hint="Stop the other server, or give this one its own state directory",
            ) from None
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._add_lease_key_column()
            version = self._meta("schema_version")
            if version is None:
                self._set_meta_now("schema_version", str(SCHEMA_VERSION))
            elif version != str(SCHEMA_VERSION):
                raise StateError(
                    "Unknown server state schema version",
                    expected=f"version {SCHEMA_VERSION}",
                    found=f"version {version}",
                    hint="Use the meterbox release that created this state file",
                )
        except (sqlite3.DatabaseError, ValueError) as exc:
            # ValueError: a damaged schema text can fail to decode as UTF-8.
            self.close()
            if is_disk_full(exc):
                # SQLite says "database or disk is full"; the file is not damaged, and
                # restoring a backup (the advice below) would lose state for nothing.
                raise disk_error(
                    f"The server state file {self.path} cannot be written: the disk is full",
                    exc,
                    hint="Free disk space in the data directory, then start the server "
                    "again; nothing in the state file was lost",
                ) from exc
            raise StateError(
                "The server state file is not a usable SQLite database",
                expected="a meterbox state file",
                found=str(exc),
                hint="Restore the file from backup or point the server at a new directory",
            ) from exc

    def _add_lease_key_column(self) -> None:
        # Schema 1 files written before leases carried their API key, user and group
        # gain the columns (NULL: none, as those leases were checked out); the schema
        # version stays.
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(leases)")}
        for name in ("key_id", "user", "grp", "machine"):
            if name not in columns:
                self._db.execute(f"ALTER TABLE leases ADD COLUMN {name} TEXT")

    def _open_read_only(self) -> None:
        # For queries on a stopped server (``meterbox server status``): no lock file,
        # no schema, no pragma that writes; SQLite itself refuses any write.
        if not self.path.is_file():
            raise StateError(
                "The server state file is missing",
                expected=f"a state file at {self.path}",
                found="no such file",
                hint="Run 'meterbox server init' first, or pass the right --data",
            )
        # A server that stopped cleanly left no write-ahead log: the file is complete and
        # ``immutable`` reads it without creating the -wal/-shm files read-only mode
        # would. A log left by a crash holds committed changes, so it is read through
        # (SQLite then maintains its shared-memory index; the data stays untouched).
        wal = Path(f"{self.path}-wal")
        flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
        try:
            self._db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?{flags}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            version = self._meta("schema_version")
        except sqlite3.DatabaseError as exc:
            raise StateError(
                "The server state file cannot be read",
                expected="a readable meterbox state file",
                found=str(exc),
                hint="Run the command as the user the server runs as, or restore the file",
            ) from exc
        if version != str(SCHEMA_VERSION):
            self._db.close()
            raise StateError(
                "Unknown server state schema version",
                expected=f"version {SCHEMA_VERSION}",
                found=f"version {version}",
                hint="Use the meterbox release that created this state file",
            )

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta_now(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def initialize(self, *, init_time: datetime, instance_id: str) -> None:
        """Record when and as what this server was first set up; later calls keep the first."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key, value in (
                    ("init_time", str(to_us(init_time))),
                    ("instance_id", instance_id),
                ):
                    self._db.execute(
                        "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value)
                    )
                self._db.execute("COMMIT")
            except BaseException:
                # A COMMIT that fails with SQLITE_FULL may already have rolled the
                # transaction back; a second ROLLBACK would replace the real error
                # ("disk is full") with "no transaction is active".
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    # --------------------------------------------------------------- writes
    def apply(self, changes: Sequence[Change]) -> None:
        """Apply a batch of changes in one transaction (all or nothing)."""
        if not changes:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for change in changes:
                    self._apply_one(change)
                self._db.execute("COMMIT")
            except BaseException:
                # A COMMIT that fails with SQLITE_FULL may already have rolled the
                # transaction back; a second ROLLBACK would replace the real error
                # ("disk is full") with "no transaction is active".
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _apply_one(self, c: Change) -> None:
        db = self._db
        if isinstance(c, LeasePut):
            x = c.lease
            db.execute(
                "INSERT INTO leases(lease_id, feature, client_id, license_id, issued_at, "
                "expires_at, lease_seconds, overdraft, hostname, recorded_at, ended, key_id, user, "
                "grp, machine) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(lease_id) "
                "DO UPDATE SET "
                "expires_at = max(expires_at, excluded.expires_at), "
                "recorded_at = max(coalesce(recorded_at, 0), coalesce(excluded.recorded_at, 0)), "
                "ended = max(ended, excluded.ended)",
                (
                    x.lease_id,
                    x.feature,
                    x.client_id,
                    x.license_id,
                    to_us(x.issued_at),
                    to_us(x.expires_at),
                    x.lease_seconds,
                    int(x.overdraft),
                    x.hostname,
                    None if x.recorded_at is None else to_us(x.recorded_at),
                    int(c.ended),
                    x.key_id,
                    x.user,
                    x.group,
                    x.machine,
                ),
            )
        elif isinstance(c, UsageDelta):
            db.execute(
                "INSERT INTO usage(license_id, meter, period, used) VALUES (?,?,?,?) "
                "ON CONFLICT(license_id, meter, period) DO UPDATE SET used = used + excluded.used",
                (c.license_id, c.meter, c.period, c.delta),
            )
        elif isinstance(c, DenialAdd):
            db.execute(
                "INSERT INTO denials(feature, count) VALUES (?, ?) "
                "ON CONFLICT(feature) DO UPDATE SET count = count + excluded.count",
                (c.feature, c.count),
            )
        elif isinstance(c, PeakMax):
            db.execute(
                "INSERT INTO peaks(feature, hour, peak) VALUES (?,?,?) "
                "ON CONFLICT(feature, hour) DO UPDATE SET peak = max(peak, excluded.peak)",
                (c.feature, to_us(c.hour), c.peak),
            )
        elif isinstance(c, IdemPut):
            db.execute(
                "INSERT INTO idempotency(key, fingerprint, created_at, result) VALUES (?,?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET result = excluded.result",
                (
                    c.key,
                    c.entry.fingerprint,
                    to_us(c.entry.created_at),
                    json.dumps(c.entry.result.to_json(), sort_keys=True),
                ),
            )
        elif isinstance(c, IdemDrop):
            db.executemany("DELETE FROM idempotency WHERE key = ?", [(k,) for k in c.keys])
        elif isinstance(c, TopupPut):
            t = c.topup
            db.execute(
                "INSERT OR IGNORE INTO topups(topup_id, license_id, meter, amount, period, "
                "applied_at) VALUES (?,?,?,?,?,?)",
                (t.topup_id, t.license_id, t.meter, t.amount, t.period, to_us(t.applied_at)),
            )
        elif isinstance(c, ReceiptPut):
            current = self._meta("last_receipt")
            if current is None or to_us(c.receipt.vendor_time) > json.loads(current)["t"]:
                r = c.receipt
                self._set_meta_now(
                    "last_receipt",
                    json.dumps({"t": to_us(r.vendor_time), "seq": r.seq, "id": r.receipt_id}),
                )
        elif isinstance(c, SeqMax):
            self._seq_max(c)
        elif isinstance(c, ClockFloor):
            self._meta_max("clock_floor", to_us(c.at))
        elif isinstance(c, LicensePut):
            db.execute(
                "INSERT INTO licenses(license_id, blob, installed_at) VALUES (?,?,?) "
                "ON CONFLICT(license_id) DO UPDATE SET blob = excluded.blob, "
                "installed_at = excluded.installed_at",
                (c.license_id, c.blob, to_us(c.installed_at)),
            )
        else:  # pragma: no cover - the union above is exhaustive
            raise TypeError(f"unknown change {c!r}")

    def replace_enforced(
        self,
        *,
        usage: Mapping[tuple[str, str, str], int],
        leases: Iterable[SeatLease],
        topups: Iterable[AppliedTopup],
        receipt: tuple[int, int, str] | None,
        last_seq: int,
    ) -> None:
        """Replace what enforcement reads by the ledger's fold, in one transaction.

        The one write that is not a merge: a rebuild from the ledger
        (:mod:`meterbox.server._rebuild`). Idempotency keys, denial counts, peaks and
        the clock floor are kept (they are evidence or only ever grow).
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM usage")
                db.executemany(
                    "INSERT INTO usage(license_id, meter, period, used) VALUES (?,?,?,?)",
                    [(k[0], k[1], k[2], n) for k, n in usage.items() if n],
                )
                db.execute("DELETE FROM leases")
                for x in leases:
                    self._apply_one(LeasePut(x))
                db.execute("DELETE FROM topups")
                for t in topups:
                    self._apply_one(TopupPut(t))
                db.execute("DELETE FROM meta WHERE key = 'last_receipt'")
                if receipt is not None:
                    self._set_meta_now(
                        "last_receipt",
                        json.dumps(
                            {"t": receipt[0] * 1000, "seq": receipt[1], "id": receipt[2] or None}
                        ),
                    )
                self._set_meta_now("last_seq", str(max(0, last_seq)))
                db.execute("DELETE FROM meta WHERE key = 'seq_ahead'")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def checked_against_ledger(self) -> bool:
        """Whether this file was ever checked against the ledger (a head was noted).

        A file the server created but never checked (a crash during the first open
        after the file was deleted) is no cache of the ledger yet.
        """
        with self._lock:
            return self._meta("ledger_head") is not None

    def note_ledger_head(self, seq: int, head_hash: bytes) -> None:
        """Record the ledger head this file was last checked against (``seq:hash``)."""
        with self._lock:
            self._set_meta_now("ledger_head", f"{seq}:{head_hash.hex()}")

    def _seq_max(self, c: SeqMax) -> None:
        """Raise the watermark; keep the committed seqs above it (ADR 0044)."""
        current = self._meta("last_seq")
        last = max(c.seq, int(current)) if current is not None else c.seq
        if current is None or last > int(current):
            self._set_meta_now("last_seq", str(last))
        held = self._meta("seq_ahead")
        if not held and not c.ahead:
            return
        ahead = {s for s in (*parse_seqs(held or ""), *c.ahead) if s > last}
        if ahead:
            self._set_meta_now("seq_ahead", format_seqs(ahead))
        else:
            self._db.execute("DELETE FROM meta WHERE key = 'seq_ahead'")

    def _meta_max(self, key: str, value: int) -> None:
        current = self._meta(key)
        if current is None or value > int(current):
            self._set_meta_now(key, str(value))

    def prune_ended_leases(self) -> int:
        """Delete rows of leases that ended; they are kept only to make merges commute."""
        with self._lock:
            cur = self._db.execute("DELETE FROM leases WHERE ended = 1")
            return cur.rowcount

    # ---------------------------------------------------------------- reads
    def load(self) -> StateSnapshot:
        """Read everything back; a damaged file is a :class:`StateError`, never a crash."""
        try:
            return self._load()
        except (
            sqlite3.DatabaseError,
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
            OverflowError,
        ) as exc:
            raise StateError(
                "The server state file is damaged",
                expected="rows as this meterbox release writes them",
                found=f"{type(exc).__name__}: {str(exc)[:200]}",
                hint="Restore the file from backup or point the server at a new directory",
            ) from None

    def _load(self) -> StateSnapshot:
        with self._lock:
            db = self._db
            snap = StateSnapshot()
            if (v := self._meta("init_time")) is not None:
                snap.init_time = from_us(int(v))
            snap.instance_id = self._meta("instance_id")
            if (v := self._meta("clock_floor")) is not None:
                snap.clock_floor = from_us(int(v))
            snap.last_seq = int(self._meta("last_seq") or 0)
            ahead = parse_seqs(self._meta("seq_ahead") or "")
            snap.seq_ahead = frozenset(x for x in ahead if x > snap.last_seq)
            if (v := self._meta("last_receipt")) is not None:
                r = json.loads(v)
                snap.last_receipt = ReceiptInfo(from_us(r["t"]), int(r["seq"]), r["id"])
            # A read-only open of a file from before the key column reads NULL for it.
            columns = {row[1] for row in db.execute("PRAGMA table_info(leases)")}
            extra = ", ".join(
                c if c in columns else "NULL" for c in ("key_id", "user", "grp", "machine")
            )
            for row in db.execute(
                "SELECT lease_id, feature, client_id, license_id, issued_at, expires_at, "  # noqa: S608 - extra names columns or NULL, constants
                f"lease_seconds, overdraft, hostname, recorded_at, {extra} FROM leases "
                "WHERE ended = 0"
            ):
                snap.leases.append(
                    SeatLease(
                        lease_id=row[0],
                        feature=row[1],
                        client_id=row[2],
                        license_id=row[3],
                        issued_at=from_us(row[4]),
                        expires_at=from_us(row[5]),
                        lease_seconds=int(row[6]),
                        overdraft=bool(row[7]),
                        hostname=row[8],
                        recorded_at=None if row[9] is None else from_us(row[9]),
                        key_id=row[10],
                        user=row[11],
                        group=row[12],
                        machine=row[13],
                    )
                )
            snap.denials = {f: int(n) for f, n in db.execute("SELECT feature, count FROM denials")}
            snap.peaks = {(f, from_us(h)): int(p) for f, h, p in db.execute("SELECT * FROM peaks")}
            # Usage never goes below zero; clamp defensively in case of a damaged file.
            snap.usage = {
                (lid, m, p): max(0, int(u)) for lid, m, p, u in db.execute("SELECT * FROM usage")
            }
            snap.topups = [
                AppliedTopup(tid, lid, m, int(a), p, from_us(at))
                for tid, lid, m, a, p, at in db.execute(
                    "SELECT topup_id, license_id, meter, amount, period, applied_at FROM topups"
                )
            ]
            snap.idempotency = {
                k: IdemEntry(fp, from_us(at), UsageResult.from_json(json.loads(res)))
                for k, fp, at, res in db.execute(
                    "SELECT key, fingerprint, created_at, result FROM idempotency"
                )
            }
            snap.licenses = {
                lid: bytes(blob)
                for lid, blob in db.execute("SELECT license_id, blob FROM licenses")
            }
            return snap
