"""Checking the cache files against the ledger at open, and rebuilding them from it.

The ledger is the only truth (docs/adr/0014-ledger-is-the-truth.md). ``state.db``
and ``cryptolens.db`` are caches of the fold (:mod:`meterbox.server._core.ledgerstate`).
At every open, after the ledger writer has folded its last epoch:

1. each cache is read and compared with the fold (:func:`~meterbox.server._core.
   ledgerstate.compare`);
2. if it is missing (and the ledger holds anything it should have), older than the
   ledger, or different, a STATE_REBUILT record saying what was missing or differed
   is sealed first -- so a crash before step 3 records it again at the next open,
   never not at all;
3. the cache's enforcement tables are replaced by the fold in one transaction; a
   kill at any point leaves either the old file (rebuilt again at the next open) or
   the new one;
4. each cache records the ledger head (``seq:hash``, meta ``ledger_head``) it was
   checked against; ``state.db`` also keeps the seq of the last record it applied
   (``last_seq``), which is what the comparison reads.

Severity at the vendor (``state.rebuilt``): critical when the cache claimed less
than the ledger holds (less usage, fewer leases or activations, a top-up or a
receipt the ledger lacks), warning otherwise. A cache that is only *older* (the
server did not stop cleanly, the cache stops at a seq before the ledger's head, and
it agrees with the ledger as of that seq) is the trace of a crash between the
ledger and the state commit: a warning. After a clean stop (the ledger's last
record is SHUTDOWN) every change had been committed, so any difference is an edit.

A ledger written before STATE records existed has no STATE in its last epoch: the
fold then started from the caches themselves (``partial``) and there is nothing to
compare; the first epoch this server writes carries a STATE record.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from meterbox.ledger import LedgerWriter, RecordType
from meterbox.ledger.records import StateRebuilt
from meterbox.licenses import License
from meterbox.server._core.ledgerstate import (
    Difference,
    FoldLease,
    LedgerState,
    StateView,
    compare,
    has_enforcement,
    ms,
)
from meterbox.server._core.seats import SeatLease
from meterbox.server._state import StateSnapshot, StateStore

CRYPTOLENS_DB_NAME = "cryptolens.db"


@dataclass(frozen=True)
class Rebuilt:
    """One cache rebuilt at open (what the STATE_REBUILT record says)."""

    cache: str
    reason: str
    less: bool
    items: tuple[str, ...]


def view_of_snapshot(snap: StateSnapshot) -> StateView:
    """The enforcement content of ``state.db`` in the fold's terms."""
    return StateView(
        usage={k: n for k, n in snap.usage.items() if n},
        topups={
            t.topup_id: (t.license_id, t.meter, t.amount, t.period, ms(t.applied_at))
            for t in snap.topups
        },
        leases={
            x.lease_id: FoldLease(
                x.lease_id,
                x.feature,
                x.client_id,
                x.license_id,
                ms(x.issued_at),
                ms(x.expires_at),
                x.lease_seconds,
                x.overdraft,
                key_id=x.key_id,
                machine=x.machine,
            )
            for x in snap.leases
        },
        head_seq=snap.last_seq,
        receipt=None
        if snap.last_receipt is None
        else (
            ms(snap.last_receipt.vendor_time),
            snap.last_receipt.seq,
            snap.last_receipt.receipt_id or "",
        ),
    )


def _classify(
    fold: LedgerState,
    cache: StateView,
    now_ms: int,
    seats: bool,
    missing: bool,
    crashed: bool,
) -> tuple[str, bool, Difference] | None:
    truth = fold.finish()
    diff = compare(truth, cache, now_ms, seats=seats)
    if missing:
        if not has_enforcement(truth, now_ms):
            return None
        return "missing", bool(diff.less) or not diff, diff
    if not diff:
        return None
    if seats and crashed and fold.at_watch is not None and cache.head_seq < truth.head_seq:
        # The server did not stop cleanly and the cache is behind: a crash between a
        # ledger commit and the state commit leaves exactly that. It is tampering only
        # if the cache disagrees with the ledger as of the seq it says it reflects.
        # After a clean stop (SHUTDOWN last) the cache had every change committed.
        earlier = compare(fold.at_watch, cache, now_ms, seats=True)
        if not earlier:
            return "older", False, diff
        return "differed", bool(earlier.less), diff
    return "differed", bool(diff.less), diff


def _record(writer: LedgerWriter, rebuilt: Rebuilt, cache_seq: int | None) -> None:
    writer.append(
        RecordType.STATE_REBUILT,
        StateRebuilt(
            cache=rebuilt.cache,
            reason=rebuilt.reason,
            less=rebuilt.less,
            items=rebuilt.items,
            cache_seq=cache_seq,
        ).to_map(),
    )


# ------------------------------------------------------------------ state.db
def check_state_db(
    fold: LedgerState,
    store: StateStore,
    writer: LedgerWriter,
    *,
    now_ms: int,
    missing: bool,
    before: StateSnapshot,
) -> Rebuilt | None:
    """Compare ``state.db`` (as ``before``, read before the crash replay) with the fold.

    ``store`` is re-read after the crash replay: a cache the replay brought up to the
    ledger needs nothing more.
    """
    if fold.partial:
        return None
    after = view_of_snapshot(store.load())
    truth = fold.finish()
    if not compare(truth, after, now_ms) and not missing:
        return None
    found = _classify(
        fold, view_of_snapshot(before), now_ms, True, missing, not writer.clean_shutdown
    )
    if found is None:
        return None
    reason, less, diff = found
    rebuilt = Rebuilt("state.db", reason, less, diff.items() or ("no rows",))
    _record(writer, rebuilt, None if missing else before.last_seq)
    # Leases: the cache may know a later expiry (a renewal the ledger did not need).
    cached = {x.lease_id: x for x in before.leases}
    store.replace_enforced(
        usage=truth.usage,
        leases=[
            x if x.lease_id not in cached else _later(x, cached[x.lease_id]) for x in fold.leases()
        ],
        topups=fold.topups(),
        receipt=truth.receipt,
        last_seq=truth.head_seq,
    )
    return rebuilt


def _later(fold_lease: SeatLease, cached: SeatLease) -> SeatLease:
    if cached.expires_at > fold_lease.expires_at and cached.license_id == fold_lease.license_id:
        # The later expiry only: the owner is the ledger's, whatever the cache says.
        if fold_lease.key_id is not None:
            return replace(cached, key_id=fold_lease.key_id)
        return cached
    return fold_lease


# ------------------------------------------------------------- cryptolens.db
def _objects(licenses: Iterable[License]) -> dict[tuple[str, int], tuple[str, str]]:
    """(license, object id) -> (meter, charge direction) of every metered data object."""
    out: dict[tuple[str, int], tuple[str, str]] = {}
    for lic in licenses:
        section = lic.cryptolens
        for o in section.data_objects if section else ():
            if o.meter is not None:
                out[(lic.license_id, o.id)] = (o.meter, o.charge)
    return out


def read_cryptolens(
    path: Path, licenses: Iterable[License], idempotency_keys: Iterable[str]
) -> StateView | None:
    """The data-object charges and activations ``cryptolens.db`` claims (``None``: no file).

    A pending change counts when the state knows its idempotency key (the usage was
    durable), as the backend settles it.
    """
    if not path.exists():
        return None
    objects = _objects(licenses)
    known = set(idempotency_keys)
    view = StateView()
    nets: dict[tuple[str, int], int] = {}
    with contextlib.suppress(sqlite3.Error), closing(sqlite3.connect(str(path))) as db:
        for lid, oid, net in db.execute("SELECT license_id, object_id, net FROM data_net"):
            nets[(str(lid), int(oid))] = nets.get((str(lid), int(oid)), 0) + int(net)
        for key, lid, oid, delta in db.execute(
            "SELECT idem_key, license_id, object_id, delta FROM pending"
        ):
            if key in known:
                nets[(str(lid), int(oid))] = nets.get((str(lid), int(oid)), 0) + int(delta)
        for lid, code in db.execute("SELECT license_id, machine_code FROM nodelocked"):
            view.machines.add((str(lid), str(code)))
    for (lid, oid), net in nets.items():
        meter, charge = objects.get((lid, oid), ("", "increment"))
        if net:
            view.charged[(lid, meter, oid)] = net if charge == "increment" else -net
    return view


def check_cryptolens_db(
    fold: LedgerState,
    writer: LedgerWriter,
    data: Path,
    licenses: list[License],
    idempotency_keys: Iterable[str],
    *,
    now_ms: int,
) -> Rebuilt | None:
    """Compare ``cryptolens.db`` with the fold; rebuild its nets and activations from it."""
    path = data / CRYPTOLENS_DB_NAME
    cache = read_cryptolens(path, licenses, idempotency_keys)
    if fold.partial:
        # No STATE to compare with: the cache is the base, taken into the fold.
        if cache is not None:
            fold.view.charged.update(cache.charged)
            fold.view.machines |= cache.machines
        return None
    truth = fold.finish()
    rebuilt: Rebuilt | None = None
    if cache is None:
        if truth.charged or truth.machines:
            diff = compare(truth, StateView(), now_ms, seats=False)
            rebuilt = Rebuilt(CRYPTOLENS_DB_NAME, "missing", True, diff.items())
    else:
        diff = compare(truth, cache, now_ms, seats=False)
        if diff:
            rebuilt = Rebuilt(CRYPTOLENS_DB_NAME, "differed", bool(diff.less), diff.items())
    if rebuilt is not None:
        _record(writer, rebuilt, None)
    if rebuilt is not None or _has_pending(path):
        _rewrite_cryptolens(path, truth, _objects(licenses))
    return rebuilt


def _has_pending(path: Path) -> bool:
    if not path.exists():
        return False
    with contextlib.suppress(sqlite3.Error), closing(sqlite3.connect(str(path))) as db:
        return int(db.execute("SELECT count(*) FROM pending").fetchone()[0]) > 0
    return False


def _rewrite_cryptolens(
    path: Path, truth: StateView, objects: Mapping[tuple[str, int], tuple[str, str]]
) -> None:
    """Nets and activations from the fold, pending changes dropped, in one transaction.

    The tables are created here when the file is new, exactly as the backend does
    (``CREATE TABLE IF NOT EXISTS``), so a rebuilt file is one the backend opens.
    """
    from meterbox.server._cryptolens import SCHEMA, SCHEMA_VERSION

    with closing(sqlite3.connect(str(path), isolation_level=None)) as db:
        db.executescript(SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))
            db.execute("DELETE FROM pending")
            db.execute("DELETE FROM data_net")
            for (lid, oid), (meter, charge) in objects.items():
                charged = truth.charged.get((lid, meter, oid), 0)
                if charged:
                    net = charged if charge == "increment" else -charged
                    db.execute("INSERT INTO data_net VALUES (?, ?, ?)", (lid, oid, net))
            rows = {
                (str(r[0]), str(r[1]))
                for r in db.execute("SELECT license_id, machine_code FROM nodelocked")
            }
            for lid, code in rows - truth.machines:
                db.execute(
                    "DELETE FROM nodelocked WHERE license_id = ? AND machine_code = ?", (lid, code)
                )
            for lid, code in sorted(truth.machines - rows):
                db.execute(
                    "INSERT INTO nodelocked VALUES (?, ?, '', '', ?)",
                    (lid, code, truth.clock_floor_ms // 1000),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def note_head(store: StateStore, data: Path, seq: int, head_hash: bytes) -> None:
    """Write into each cache the ledger head it was checked against and now reflects."""
    store.note_ledger_head(seq, head_hash)
    path = data / CRYPTOLENS_DB_NAME
    if path.exists():
        # A damaged file is the backend's to refuse, with its own error, when it opens.
        with (
            contextlib.suppress(sqlite3.Error),
            closing(sqlite3.connect(str(path), isolation_level=None)) as db,
        ):
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('ledger_head', ?)",
                (f"{seq}:{head_hash.hex()}",),
            )
