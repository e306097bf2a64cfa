"""A volatile in-memory :class:`CryptolensBackend`, FOR TESTS OF THE REQUEST LAYER ONLY.

It holds seats and data objects in dictionaries, writes no ledger, enforces
no quota and forgets everything on restart: exactly the seed server's flaw
that meterbox exists to fix. Production servers wire the compat API onto the
server engine instead (see ``docs/spec/cryptolens-compat.md``). It is kept
small and obviously correct so that the request-layer tests exercise the
request layer, and it follows every invariant listed in
:mod:`meterbox.compat.backend`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

from meterbox.clock import Clock
from meterbox.compat.backend import ActivatedMachine, CryptolensLicenseView, DataObjectView
from meterbox.compat.errors import UnknownDataObject
from meterbox.compat.rules import check_nodelocked, plan_change
from meterbox.errors import NoSeatAvailable

__all__ = ["InMemoryBackend"]


class InMemoryBackend:
    """Test double for :class:`~meterbox.compat.backend.CryptolensBackend`. Not for production."""

    def __init__(
        self,
        licenses: Iterable[tuple[CryptolensLicenseView, Iterable[DataObjectView]]],
        clock: Clock,
    ) -> None:
        self._clock = clock
        self._lock = asyncio.Lock()
        self._by_key: dict[tuple[int, str], CryptolensLicenseView] = {}
        self._by_id: dict[str, CryptolensLicenseView] = {}
        self._floating: dict[str, dict[str, ActivatedMachine]] = {}
        self._nodelocked: dict[str, dict[str, ActivatedMachine]] = {}
        self._objects: dict[str, dict[int, DataObjectView]] = {}
        #: Net units each data object charged to its (imaginary) meter.
        self._charged: dict[tuple[str, int], int] = {}
        for view, objects in licenses:
            self._by_key[(view.product_id, view.key)] = view
            self._by_id[view.license_id] = view
            self._floating[view.license_id] = {}
            self._nodelocked[view.license_id] = {}
            self._objects[view.license_id] = {o.id: o for o in objects}

    def _now(self) -> int:
        return self._clock.wall_ms() // 1000

    def _live(self, license_id: str) -> dict[str, ActivatedMachine]:
        now = self._now()
        seats = self._floating[license_id]
        for code in [c for c, m in seats.items() if (m.floating_expires or 0) <= now]:
            del seats[code]
        return seats

    async def find_license(self, product_id: int, key: str) -> CryptolensLicenseView | None:
        return self._by_key.get((product_id, key))

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
        async with self._lock:
            now = self._now()
            seats = self._live(license_id)
            current = seats.get(machine_code)
            if current is not None:
                renewed = dataclasses.replace(
                    current, floating_expires=now + interval_s, friendly_name=friendly_name, ip=ip
                )
                seats[machine_code] = renewed
                return renewed
            limit = self._by_id[license_id].max_no_of_machines
            if len(seats) < limit:
                overdraft = False
            elif len(seats) < limit + max_overdraft:
                overdraft = True
            else:
                raise NoSeatAvailable(
                    "no floating seat is free",
                    expected=f"fewer than {limit} live seats plus {max_overdraft} overdraft",
                    found=f"{len(seats)} live seats",
                    hint="Wait for a lease to expire or deactivate a machine",
                )
            machine = ActivatedMachine(
                machine_code=machine_code,
                friendly_name=friendly_name,
                ip=ip,
                time=now,
                floating_expires=now + interval_s,
                overdraft=overdraft,
            )
            seats[machine_code] = machine
            return machine

    async def floating_live_machines(self, license_id: str) -> list[ActivatedMachine]:
        async with self._lock:
            return sorted(self._live(license_id).values(), key=lambda m: (m.time, m.machine_code))

    async def floating_deactivate(self, license_id: str, machine_code: str) -> bool:
        async with self._lock:
            return self._live(license_id).pop(machine_code, None) is not None

    async def nodelocked_activate(
        self, license_id: str, machine_code: str, friendly_name: str, ip: str
    ) -> list[ActivatedMachine]:
        async with self._lock:
            machines = self._nodelocked[license_id]
            check_nodelocked(self._by_id[license_id], machines.keys(), machine_code)
            if machine_code not in machines:
                machines[machine_code] = ActivatedMachine(
                    machine_code=machine_code, friendly_name=friendly_name, ip=ip, time=self._now()
                )
            return list(machines.values())

    async def nodelocked_machines(self, license_id: str) -> list[ActivatedMachine]:
        async with self._lock:
            return list(self._nodelocked[license_id].values())

    async def nodelocked_deactivate(self, license_id: str, machine_code: str) -> bool:
        async with self._lock:
            return self._nodelocked[license_id].pop(machine_code, None) is not None

    async def change_data_object(
        self, license_id: str, object_id: int, name: str, delta: int, bound: int | None
    ) -> DataObjectView:
        async with self._lock:
            objects = self._objects[license_id]
            target = _find_object(objects, object_id, name)
            charged = self._charged.get((license_id, target.id), 0)
            plan = plan_change(target, charged, delta, bound)
            self._charged[(license_id, target.id)] = charged + plan.usage
            updated = dataclasses.replace(target, int_value=plan.new_value)
            objects[target.id] = updated
            return updated

    async def data_objects(self, license_id: str) -> list[DataObjectView]:
        async with self._lock:
            return sorted(self._objects[license_id].values(), key=lambda o: o.id)


def _find_object(objects: dict[int, DataObjectView], object_id: int, name: str) -> DataObjectView:
    if object_id != 0:
        found = objects.get(object_id)
        if found is not None:
            return found
        raise UnknownDataObject(
            f"The license has no data object with Id={object_id}",
            expected=f"one of the ids {sorted(objects)}",
            found=str(object_id),
            hint="List the data objects with ListDataObjectsToKey",
        )
    matches = [o for o in objects.values() if o.name == name]
    if len(matches) == 1:
        return matches[0]
    raise UnknownDataObject(
        f"The license has {'no' if not matches else 'more than one'} data object named {name!r}",
        expected="an Id, or a Name that matches exactly one data object",
        found=f"{len(matches)} matches",
        hint="Pass the Id of the data object",
    )
