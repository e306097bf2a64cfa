"""The Cryptolens-compatible API wired onto the real server engine.

:class:`EngineCryptolensBackend` implements
:class:`meterbox.compat.backend.CryptolensBackend` over a running
:class:`~meterbox.server._instance.ServerInstance`, so that the Cryptolens SDKs
(``licensing`` on PyPI, ``cryptolens`` on npm, the .NET SDK) take seats and record usage through the
same engine, ledger and state as meterbox's own clients. :func:`mount_cryptolens`
puts it in front of the server's HTTP app under ``/api`` (any case).

Mapping (docs/spec/cryptolens-compat.md, "Mapping onto meterbox"):

- **License**: the installed license whose ``cryptolens`` section has this
  ``product_id`` and ``key``. Licenses are looked up on every call, so a license
  imported while the server runs is served at once.
- **Floating activation** (``FloatingTimeInterval > 0``): a seat checkout of the
  license's ``cryptolens.feature`` *on that license only*, with ``client_id`` = the
  machine code verbatim and ``hostname`` = the friendly name; the lease lasts
  ``FloatingTimeInterval`` seconds, up to the longest requested lease
  (:data:`meterbox.server._core.policy.MAX_REQUESTED_LEASE_SECONDS`, 30 days, the
  range the compat spec accepts); ``MaxOverdraft`` is capped by the feature's
  overdraft. A live lease of the same machine is renewed (``seat.renew``), otherwise
  a ``seat.checkout`` is sealed in the ledger, with the overdraft flag on an overdraft
  seat, whose ``Mid`` is ``floating:overdraft:<code>``
  (else ``floating:<code>``). A refusal is a ``seat.denied`` record and the exact
  Cryptolens "limit has been reached" message. ``key/getkey`` lists the live leases
  of that feature on that license; ``key/deactivate`` with ``Floating=True`` is a
  ``seat.release``. Leases expire and are culled by the server as any other lease.
- **Node-locked activation** (interval 0): the first ``MaxNoOfMachines`` distinct
  machine codes activate (``0`` unlimited), codes in ``allowed_machines`` always do
  (:func:`meterbox.compat.rules.check_nodelocked`), and only while the license is
  usable (not expired, report not overdue). A new activation is sealed in the ledger
  as a ``machine.activated`` record (license id, the code verbatim, the count after
  it) before it is answered, then kept in ``DATA/cryptolens.db`` so that getkey lists
  it after a restart; a deactivation, when the license allows it, is a
  ``machine.deactivated`` record. The vendor counts activations from those records.
- **Data objects**: a metered object is bound to a meter of the license; the change
  in its ``charge`` direction (an increment of a counter, a decrement of a credit
  countdown) is usage of that meter charged to that license (a ``usage`` record with
  client id ``cryptolens/<id>``, counted against the quota: a refused quota is
  ``result: 1`` with the engine's message and records nothing). The opposite change
  is a ``usage.decrement`` record that gives the units back to that license's meter,
  never more than the object charged. ``IntValue`` = the issued ``int_value`` + the
  net of the changes made through the data object over the license's life, kept in
  ``DATA/cryptolens.db`` (meter counters may be monthly and are shared with other
  clients, so they cannot give it back). An object without a meter is read-only.

Invariants:

- Every change of an ``IntValue`` is exactly one sealed ``usage`` or
  ``usage.decrement`` record of the same amount; a change of 0 is a no-op.
- What a data object has charged never goes below zero: giving back is capped by
  what that object charged (:func:`meterbox.compat.rules.plan_change`), so it can
  never free quota that other clients used or that was never charged. ``IntValue``
  stays inside Int32. With ``EnableBound`` an increment may not end above ``Bound``
  and a decrement may not end below it.
- A data-object change is all-or-nothing: bound, range, floor and quota are checked
  before anything is recorded, under one lock for all data-object changes.
- Every record the vendor needs to judge a data object from the ledger alone is in
  the ledger: usage and give-backs carry the license and ``cryptolens/<id>``, and
  :func:`meterbox.compat.rules.charged_from_records` recomputes what each object charged from them.
- Crash safety: a change is first written to ``cryptolens.db`` as *pending* with a
  fresh idempotency key, then sent to the service with that key, then applied.
  On start, a pending change whose key the engine's persisted state knows is
  applied (the usage is durable); any other is dropped (the usage never became
  part of the server's state). So ``IntValue`` always equals what the engine
  persisted, whatever the moment of a crash.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from starlette.types import ASGIApp

from meterbox.compat import CryptolensSigner, create_cryptolens_app, with_cryptolens_api
from meterbox.compat.backend import ActivatedMachine, CryptolensLicenseView, DataObjectView
from meterbox.compat.errors import UnknownDataObject
from meterbox.compat.mapping import view_from_license
from meterbox.compat.rules import CLIENT_PREFIX, check_nodelocked, plan_change
from meterbox.errors import NoSeatAvailable, StateError
from meterbox.ledger.records import MachineActivated, MachineDeactivated
from meterbox.licenses import DataObject, License
from meterbox.server._core.seats import SeatLease
from meterbox.server._instance import CRYPTOLENS_KEY, ServerInstance

__all__ = [
    "CLIENT_PREFIX",
    "CRYPTOLENS_DB",
    "EngineCryptolensBackend",
    "mount_cryptolens",
]

#: Side state of the Cryptolens API in the data directory.
CRYPTOLENS_DB: Final = "cryptolens.db"
#: Schema version of ``cryptolens.db``; another version is refused, never guessed at.
SCHEMA_VERSION: Final = 1

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS data_net (
    license_id TEXT NOT NULL, object_id INTEGER NOT NULL, net INTEGER NOT NULL,
    PRIMARY KEY (license_id, object_id));
CREATE TABLE IF NOT EXISTS pending (
    idem_key TEXT PRIMARY KEY, license_id TEXT NOT NULL, object_id INTEGER NOT NULL,
    delta INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodelocked (
    license_id TEXT NOT NULL, machine_code TEXT NOT NULL, friendly_name TEXT NOT NULL,
    ip TEXT NOT NULL, time INTEGER NOT NULL, PRIMARY KEY (license_id, machine_code));
CREATE TABLE IF NOT EXISTS floating_meta (
    license_id TEXT NOT NULL, machine_code TEXT NOT NULL, friendly_name TEXT NOT NULL,
    ip TEXT NOT NULL, PRIMARY KEY (license_id, machine_code));
"""

_IDEM_PREFIX: Final = "cryptolens:"


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


@dataclass(frozen=True)
class _Seen:
    """How a machine introduced itself; shown in ``ActivatedMachines`` (not in the ledger)."""

    friendly_name: str
    ip: str


class _SideStore:
    """``DATA/cryptolens.db``: data-object nets, pending changes, node-locked activations.

    One short-lived connection per transaction, so writes can run in a worker
    thread and nothing is left open when the server stops.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with closing(sqlite3.connect(str(path), isolation_level=None)) as db:
            # executescript commits on its own, so the schema is created outside _tx.
            db.executescript(SCHEMA)
        with self._tx() as db:
            row = db.execute("SELECT v FROM meta WHERE k = 'version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise StateError(
                    "the Cryptolens state has an unknown schema version",
                    expected=f"version {SCHEMA_VERSION}",
                    found=f"version {row[0]} in {path}",
                    hint="run the meterbox version that wrote this data directory",
                )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(str(self.path), isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def load(
        self,
    ) -> tuple[
        dict[tuple[str, int], int],
        list[tuple[str, str, int, int]],
        dict[str, dict[str, ActivatedMachine]],
        dict[tuple[str, str], _Seen],
    ]:
        with self._tx() as db:
            nets = {(r[0], int(r[1])): int(r[2]) for r in db.execute("SELECT * FROM data_net")}
            pending = [
                (str(r[0]), str(r[1]), int(r[2]), int(r[3]))
                for r in db.execute("SELECT * FROM pending ORDER BY rowid")
            ]
            nodelocked: dict[str, dict[str, ActivatedMachine]] = {}
            for lid, code, friendly, ip, t in db.execute("SELECT * FROM nodelocked ORDER BY rowid"):
                nodelocked.setdefault(lid, {})[code] = ActivatedMachine(
                    machine_code=code, friendly_name=friendly, ip=ip, time=int(t)
                )
            seen = {
                (r[0], r[1]): _Seen(r[2], r[3]) for r in db.execute("SELECT * FROM floating_meta")
            }
        return nets, pending, nodelocked, seen

    def begin_change(self, key: str, license_id: str, object_id: int, delta: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO pending VALUES (?, ?, ?, ?)", (key, license_id, object_id, delta)
            )

    def finish_change(self, key: str, applied: tuple[str, int, int] | None) -> None:
        """Drop the pending row; with ``applied`` = (license, object, new net), store the net."""
        with self._tx() as db:
            db.execute("DELETE FROM pending WHERE idem_key = ?", (key,))
            if applied is not None:
                db.execute("INSERT OR REPLACE INTO data_net VALUES (?, ?, ?)", applied)

    def put_nodelocked(self, license_id: str, m: ActivatedMachine) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO nodelocked VALUES (?, ?, ?, ?, ?)",
                (license_id, m.machine_code, m.friendly_name, m.ip, m.time),
            )

    def drop_nodelocked(self, license_id: str, machine_code: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM nodelocked WHERE license_id = ? AND machine_code = ?",
                (license_id, machine_code),
            )

    def put_seen(self, license_id: str, machine_code: str, seen: _Seen) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO floating_meta VALUES (?, ?, ?, ?)",
                (license_id, machine_code, seen.friendly_name, seen.ip),
            )


class EngineCryptolensBackend:
    """:class:`~meterbox.compat.backend.CryptolensBackend` over a server instance.

    Seats and usage go through ``instance.service`` (engine, ledger, state); this
    class keeps only what the engine has no place for, in ``DATA/cryptolens.db``.
    Build it before the server starts serving: it settles changes a crash left
    pending.
    """

    def __init__(self, instance: ServerInstance) -> None:
        self._instance = instance
        self._service = instance.service
        self._side = _SideStore(instance.data / CRYPTOLENS_DB)
        self._lock = asyncio.Lock()
        self._nets, pending, self._nodelocked, self._seen = self._side.load()
        self._settle(pending)

    # ------------------------------------------------------------ helpers
    def _settle(self, pending: list[tuple[str, str, int, int]]) -> None:
        """Apply pending changes the engine persisted; drop the others (see module docs)."""
        known = self._service.engine.meters.idempotency
        for key, license_id, object_id, delta in pending:
            applied = None
            if key in known:
                net = self._nets.get((license_id, object_id), 0) + delta
                self._nets[(license_id, object_id)] = net
                applied = (license_id, object_id, net)
            self._side.finish_change(key, applied)

    def _license(self, license_id: str) -> License:
        for lic, _ in self._instance.licenses:
            if lic.license_id == license_id:
                return lic
        raise StateError(
            f"license {license_id!r} is no longer installed",
            expected="an installed license",
            found="none with that id",
            hint="reinstall the license file with 'meterbox server import'",
        )

    def _now(self) -> datetime:
        return self._service.now()

    def _machine(self, lease: SeatLease) -> ActivatedMachine:
        seen = self._seen.get((lease.license_id, lease.client_id))
        return ActivatedMachine(
            machine_code=lease.client_id,
            friendly_name=seen.friendly_name if seen else (lease.hostname or ""),
            ip=seen.ip if seen else "",
            time=_epoch(lease.issued_at),
            floating_expires=_epoch(lease.expires_at),
            overdraft=lease.overdraft,
        )

    def _live(self, license_id: str) -> list[SeatLease]:
        section = self._license(license_id).cryptolens
        if section is None or section.feature is None:
            return []
        live = self._service.engine.seats.live(section.feature, self._now())
        return sorted(
            (x for x in live if x.license_id == license_id),
            key=lambda x: (x.issued_at, x.client_id),
        )

    def _value(self, license_id: str, obj: DataObject) -> DataObjectView:
        net = self._nets.get((license_id, obj.id), 0)
        return DataObjectView(
            obj.id,
            obj.name,
            obj.string_value,
            obj.int_value + net,
            charge=obj.charge,
            metered=obj.meter is not None,
        )

    # ------------------------------------------------------------ licenses
    async def find_license(self, product_id: int, key: str) -> CryptolensLicenseView | None:
        for lic, _ in self._instance.licenses:
            section = lic.cryptolens
            if section is not None and section.product_id == product_id and section.key == key:
                return view_from_license(lic)
        return None

    # ------------------------------------------------------------ floating
    async def floating_activate(
        self,
        license_id: str,
        machine_code: str,
        *,
        friendly_name: str,
        ip: str,
        interval_s: int,
        max_overdraft: int,
    ) -> ActivatedMachine:
        section = self._license(license_id).cryptolens
        if section is None or section.feature is None:
            raise NoSeatAvailable(
                f"license {license_id!r} has no floating feature",
                expected="a license whose cryptolens section names a floating feature",
                found="none",
                hint="activate node-locked (FloatingTimeInterval=0) or ask for a floating license",
            )
        decision = await self._service.checkout_on(
            license_id,
            section.feature,
            machine_code,
            lease_seconds=interval_s,
            overdraft_cap=max_overdraft,
            hostname=friendly_name or None,
        )
        seen = _Seen(friendly_name, ip)
        if self._seen.get((license_id, machine_code)) != seen:
            async with self._lock:
                await asyncio.to_thread(self._side.put_seen, license_id, machine_code, seen)
                self._seen[(license_id, machine_code)] = seen
        return self._machine(decision.lease)

    async def floating_live_machines(self, license_id: str) -> list[ActivatedMachine]:
        return [self._machine(x) for x in self._live(license_id)]

    async def floating_deactivate(self, license_id: str, machine_code: str) -> bool:
        for lease in self._live(license_id):
            if lease.client_id == machine_code:
                return await self._service.release(lease.lease_id)
        return False

    # ---------------------------------------------------------- node-locked
    async def nodelocked_activate(
        self, license_id: str, machine_code: str, friendly_name: str, ip: str
    ) -> list[ActivatedMachine]:
        lic = self._license(license_id)
        view = view_from_license(lic)
        async with self._lock:
            machines = self._nodelocked.setdefault(license_id, {})
            if machine_code in machines:
                return list(machines.values())
            check_nodelocked(view, machines.keys(), machine_code)
            self._check_usable(license_id)
            machine = ActivatedMachine(
                machine_code=machine_code,
                friendly_name=friendly_name,
                ip=ip,
                time=_epoch(self._now()),
            )
            # Sealed first: an activation the ledger does not hold is never answered.
            await self._service.record_event(
                MachineActivated(
                    license_id=license_id, machine_code=machine_code, activations=len(machines) + 1
                )
            )
            await asyncio.to_thread(self._side.put_nodelocked, license_id, machine)
            machines[machine_code] = machine
            return list(machines.values())

    def _check_usable(self, license_id: str) -> None:
        """Refuse a new activation on an expired license or one whose report is overdue."""
        engine = self._service.engine
        policy = engine.licenses.get(license_id)
        if policy is None:
            return
        err = engine.blocked(policy, self._now())
        if err is not None:
            raise err

    async def nodelocked_machines(self, license_id: str) -> list[ActivatedMachine]:
        return list(self._nodelocked.get(license_id, {}).values())

    async def nodelocked_deactivate(self, license_id: str, machine_code: str) -> bool:
        async with self._lock:
            machines = self._nodelocked.get(license_id, {})
            if machine_code not in machines:
                return False
            await self._service.record_event(
                MachineDeactivated(
                    license_id=license_id, machine_code=machine_code, activations=len(machines) - 1
                )
            )
            await asyncio.to_thread(self._side.drop_nodelocked, license_id, machine_code)
            del machines[machine_code]
            return True

    # --------------------------------------------------------- data objects
    async def change_data_object(
        self, license_id: str, object_id: int, name: str, delta: int, bound: int | None
    ) -> DataObjectView:
        lic = self._license(license_id)
        objects = lic.cryptolens.data_objects if lic.cryptolens else ()
        async with self._lock:
            target = _find_object(objects, object_id, name)
            current = self._value(license_id, target)
            net = self._nets.get((license_id, target.id), 0)
            # What the object may give back is judged from the ledger's fold, never
            # from cryptolens.db: an edited cache cannot turn used units into credit.
            charged = (
                self._instance.fold.charged(license_id, target.meter, target.id)
                if target.meter is not None
                else _charged(target, net)
            )
            plan = plan_change(current, charged, delta, bound)
            if delta == 0 or target.meter is None:
                return current
            key = _IDEM_PREFIX + secrets.token_hex(16)
            await asyncio.to_thread(self._side.begin_change, key, license_id, target.id, delta)
            try:
                await self._service.usage(
                    target.meter,
                    abs(plan.usage),
                    f"{CLIENT_PREFIX}{target.id}",
                    key,
                    decrement=plan.usage < 0,
                    license_id=license_id,
                )
            except Exception:
                # Refused or not durable: the engine has taken it back, so must we. (A
                # cancellation leaves the row pending: the next start settles it.)
                await asyncio.to_thread(self._side.finish_change, key, None)
                raise
            await asyncio.to_thread(
                self._side.finish_change, key, (license_id, target.id, net + delta)
            )
            self._nets[(license_id, target.id)] = net + delta
            return self._value(license_id, target)

    async def data_objects(self, license_id: str) -> list[DataObjectView]:
        section = self._license(license_id).cryptolens
        objects = section.data_objects if section else ()
        return [self._value(license_id, o) for o in sorted(objects, key=lambda o: o.id)]


def _find_object(objects: tuple[DataObject, ...], object_id: int, name: str) -> DataObject:
    """By ``object_id`` when it is not 0, else by exact ``name`` (as the test double does)."""
    if object_id != 0:
        for o in objects:
            if o.id == object_id:
                return o
        raise UnknownDataObject(
            f"The license has no data object with Id={object_id}",
            expected=f"one of the ids {sorted(o.id for o in objects)}",
            found=str(object_id),
            hint="List the data objects with ListDataObjectsToKey",
        )
    matches = [o for o in objects if o.name == name]
    if len(matches) == 1:
        return matches[0]
    raise UnknownDataObject(
        f"The license has {'no' if not matches else 'more than one'} data object named {name!r}",
        expected="an Id, or a Name that matches exactly one data object",
        found=f"{len(matches)} matches",
        hint="Pass the Id of the data object",
    )


def _charged(obj: DataObject, net: int) -> int:
    """Units the object has charged to its meter, from the net change of its value."""
    return net if obj.charge == "increment" else -net


def mount_cryptolens(app: ASGIApp, instance: ServerInstance) -> ASGIApp:
    """Serve the Cryptolens-compatible API under ``/api`` (any case) in front of ``app``.

    The reply signing key is ``DATA/cryptolens.pem``; replies are signed at the
    instance clock's wall time (the SDKs compare ``SignDate`` with their own clock).
    """
    backend = EngineCryptolensBackend(instance)
    signer = CryptolensSigner.load(instance.data / CRYPTOLENS_KEY)
    return with_cryptolens_api(app, create_cryptolens_app(backend, signer, instance.clock))
