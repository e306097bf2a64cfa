"""State changes as values: what one decision asks the state store to merge.

Each change is a frozen dataclass; a batch of them is applied in one transaction by the
state store (``meterbox.server._state``). Changes are merges, not overwrites, so batches
commute (docs/adr/0003-server-state.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from meterbox.server._core.engine import ReceiptInfo
from meterbox.server._core.meters import AppliedTopup, IdemEntry
from meterbox.server._core.seats import SeatLease


@dataclass(frozen=True)
class LeasePut:
    """A lease granted or renewed (``ended=False``) or released/expired (``ended=True``)."""

    lease: SeatLease
    ended: bool = False


@dataclass(frozen=True)
class UsageDelta:
    license_id: str
    meter: str
    period: str
    delta: int


@dataclass(frozen=True)
class DenialAdd:
    feature: str
    count: int = 1


@dataclass(frozen=True)
class PeakMax:
    feature: str
    hour: datetime
    peak: int


@dataclass(frozen=True)
class IdemPut:
    key: str
    entry: IdemEntry


@dataclass(frozen=True)
class IdemDrop:
    keys: tuple[str, ...]


@dataclass(frozen=True)
class TopupPut:
    topup: AppliedTopup


@dataclass(frozen=True)
class ReceiptPut:
    receipt: ReceiptInfo


@dataclass(frozen=True)
class SeqMax:
    """The state's watermark: every record at or before ``seq`` is committed (or needs
    no state change), and so are the records ``ahead`` of it (ADR 0044)."""

    seq: int
    ahead: tuple[int, ...] = ()


@dataclass(frozen=True)
class ClockFloor:
    at: datetime


@dataclass(frozen=True)
class LicensePut:
    license_id: str
    blob: bytes
    installed_at: datetime


Change = (
    LeasePut
    | UsageDelta
    | DenialAdd
    | PeakMax
    | IdemPut
    | IdemDrop
    | TopupPut
    | ReceiptPut
    | SeqMax
    | ClockFloor
    | LicensePut
)
