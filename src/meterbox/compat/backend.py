"""The narrow interface the Cryptolens-compatible API needs from a license server.

The request layer (:mod:`meterbox.compat.service`) never touches seats, meters
or the ledger itself: it asks a :class:`CryptolensBackend`. The production
implementation adapts the server engine (seats with leases and overdraft,
meters with quotas, every change sealed into the ledger); the in-repo
:class:`meterbox.compat.memory.InMemoryBackend` exists only to test the request
layer. See ``docs/spec/cryptolens-compat.md`` for how to wire the engine.

Invariants every backend MUST keep:

- ``floating_activate`` is atomic: renew-or-take is one decision under the
  same lock as every other seat change, and a refusal changes nothing.
- ``nodelocked_activate`` is atomic: the slot decision
  (:func:`meterbox.compat.rules.check_nodelocked`) and the durable record of the
  activation happen under one lock; a refusal changes nothing.
- ``change_data_object`` is atomic and all-or-nothing: it decides with
  :func:`meterbox.compat.rules.plan_change`; when the bound, the Int32 range, the
  amount charged so far or a quota would be crossed, the value is unchanged and
  nothing is recorded.
- Machine codes are stored and returned verbatim (no trimming, no case folding).
- Every value returned describes the state *after* the call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "NEVER_EXPIRES",
    "ActivatedMachine",
    "CryptolensBackend",
    "CryptolensLicenseView",
    "CustomerView",
    "DataObjectView",
    "numeric_license_id",
]

#: Expiry used for licenses without one: 9999-12-31T00:00:00Z. The Python SDK
#: converts ``Expires`` with ``datetime.fromtimestamp`` and refuses larger values.
NEVER_EXPIRES = 253_402_214_400


def numeric_license_id(license_id: str) -> int:
    """A stable positive 31-bit ``ID`` for a meterbox license id (``ID`` is an int32 in .NET)."""
    digest = hashlib.sha256(b"meterbox cryptolens id v1\x00" + license_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF or 1


@dataclass(frozen=True)
class CustomerView:
    id: int
    name: str
    email: str
    company_name: str
    created: int


@dataclass(frozen=True)
class DataObjectView:
    """A named integer counter of a license; in meterbox it is backed by a meter."""

    id: int
    name: str
    string_value: str = ""
    int_value: int = 0
    #: ``increment`` (usage counts up) or ``decrement`` (a credit countdown).
    charge: str = "increment"
    #: Whether the object is bound to a meter; a plain value cannot be changed.
    metered: bool = True


@dataclass(frozen=True)
class ActivatedMachine:
    """One activation. ``floating_expires`` is ``None`` for node-locked activations."""

    machine_code: str
    friendly_name: str
    ip: str
    time: int
    floating_expires: int | None = None
    overdraft: bool = False

    @property
    def mid(self) -> str:
        """The ``Mid`` the SDKs compare: ``IsOnRightMachine`` strips 9 or 19 characters."""
        if self.floating_expires is None:
            return self.machine_code
        if self.overdraft:
            return "floating:overdraft:" + self.machine_code
        return "floating:" + self.machine_code


@dataclass(frozen=True)
class CryptolensLicenseView:
    """What a license's ``cryptolens`` section (plus its seats) says, in Cryptolens terms.

    ``max_no_of_machines`` is the node-locked limit shown as ``MaxNoOfMachines``
    (``0`` unlimited): the license's ``max_machines``, else the seat count of its
    floating feature, else the number of allowed machines. ``floating`` says whether
    the license has a floating feature at all; ``max_overdraft`` is that feature's
    overdraft, which caps the client's ``MaxOverdraft``.
    """

    license_id: str
    product_id: int
    key: str
    id: int
    created: int
    expires: int = NEVER_EXPIRES
    features: tuple[bool, bool, bool, bool, bool, bool, bool, bool] = (False,) * 8
    notes: str = ""
    block: bool = False
    global_id: int = 0
    customer: CustomerView | None = None
    max_no_of_machines: int = 0
    max_overdraft: int = 0
    allowed_machines: tuple[str, ...] = field(default_factory=tuple)
    trial_activation: bool = False
    floating: bool = False
    allow_deactivation: bool = True

    @property
    def period(self) -> int:
        """Whole days from creation to expiry, as Cryptolens reports ``Period``."""
        return max(0, (self.expires - self.created) // 86_400)


@runtime_checkable
class CryptolensBackend(Protocol):
    """What the Cryptolens-compatible API asks of a license server."""

    async def find_license(self, product_id: int, key: str) -> CryptolensLicenseView | None:
        """The license with this product id and key, or ``None``."""
        ...

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
        """Renew this machine's live seat to now + interval, or take a free one.

        A regular seat is taken while fewer than the license's seats are live;
        past that, an overdraft seat while fewer than seats + ``max_overdraft``
        are live (``max_overdraft`` is already capped by the license). Raises
        :class:`meterbox.errors.NoSeatAvailable` otherwise, changing nothing.
        """
        ...

    async def floating_live_machines(self, license_id: str) -> list[ActivatedMachine]:
        """Every floating seat of the license whose lease has not expired."""
        ...

    async def floating_deactivate(self, license_id: str, machine_code: str) -> bool:
        """Release the machine's seat; ``False`` when it held none."""
        ...

    async def nodelocked_activate(
        self, license_id: str, machine_code: str, friendly_name: str, ip: str
    ) -> list[ActivatedMachine]:
        """Activate a machine node-locked; return all node-locked activations after it.

        Decides with :func:`meterbox.compat.rules.check_nodelocked` under the same lock
        as every other activation change, and records a new activation durably before
        answering. Re-activating a known machine changes nothing. Raises
        :class:`meterbox.errors.NoSeatAvailable` when every slot is taken, changing
        nothing.
        """
        ...

    async def nodelocked_machines(self, license_id: str) -> list[ActivatedMachine]:
        """Every node-locked activation of the license."""
        ...

    async def nodelocked_deactivate(self, license_id: str, machine_code: str) -> bool:
        """Forget a node-locked activation; ``False`` when there was none."""
        ...

    async def change_data_object(
        self,
        license_id: str,
        object_id: int,
        name: str,
        delta: int,
        bound: int | None,
    ) -> DataObjectView:
        """Add ``delta`` (positive: usage; negative: a decrement) to one data object.

        The object is found by ``object_id`` when it is not 0, else by ``name``. The
        rules are :func:`meterbox.compat.rules.plan_change`'s. Raises
        :class:`~meterbox.compat.errors.UnknownDataObject`,
        :class:`~meterbox.compat.errors.ReadOnlyDataObject`,
        :class:`~meterbox.compat.errors.BoundExceeded` or a quota refusal, changing
        nothing; otherwise returns the object with its new value.
        """
        ...

    async def data_objects(self, license_id: str) -> list[DataObjectView]:
        """The license's data objects with their current values, ordered by id."""
        ...
