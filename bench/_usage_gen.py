"""Realistic usage histories written through the real ledger, with injected attacks.

One :class:`Sim` drives one server instance: a :class:`~meterbox.ledger.LedgerWriter`
on a :class:`~meterbox.clock.ManualClock`, seats checked out and released by people
who work office hours (daily and weekly seasonality, growth, holidays, noise), usage
recorded per seat, a heartbeat every ``tick`` (the real server beats every minute; a
coarser beat keeps the evaluation fast and the detectors scale with it), weekly
reports exported with :func:`export_report`, verified by the vendor with
:class:`ReportVerifier`, acknowledged by a receipt record, and compacted.

Attacks are applied at the ledger level, as a customer could: not writing records,
restoring a copy of the ledger directory, stepping the wall clock, running a second
instance for the same license, or scaling usage down.
"""

from __future__ import annotations

import io
import math
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meterbox.clock import ManualClock
from meterbox.crypto import key_id, x25519_raw_public
from meterbox.ledger import Known, LedgerWriter, RecordType, ReportVerifier, export_report
from meterbox.vendorkit.anomaly import Event, InstanceHistory, ReportView, event_from_record

VENDOR = X25519PrivateKey.from_private_bytes(bytes(range(32)))
VENDOR_ID = key_id(x25519_raw_public(VENDOR.public_key()))
HOUR = 3_600_000
DAY = 24 * HOUR
#: Monday 2026-01-05 00:00 UTC: histories start on a Monday.
START_MS = 1_767_571_200_000

ATTACKS = (
    "suppress_all",
    "suppress_usage",
    "snapshot_live",
    "snapshot_at_shutdown",
    "clock_back",
    "clock_back_offline",
    "clock_forward",
    "clone",
    "under_report_10",
    "under_report_30",
    "under_report_50",
)


@dataclass(frozen=True)
class Profile:
    name: str
    seats: int
    #: Usage records per seat-hour.
    rate: float
    #: Mean units per usage record.
    units: float
    growth_per_week: float
    #: First and last office hour (UTC).
    work: tuple[int, int]
    weekend: float


def profiles(rng: np.random.Generator, n: int) -> list[Profile]:
    out = []
    for i in range(n):
        start = int(rng.integers(6, 10))
        out.append(
            Profile(
                name=f"cust{i}",
                seats=int(rng.choice([3, 5, 8, 12, 20])),
                rate=float(rng.uniform(1.0, 4.0)),
                units=float(rng.uniform(2.0, 20.0)),
                growth_per_week=float(rng.uniform(-0.01, 0.04)),
                work=(start, start + int(rng.integers(8, 11))),
                weekend=float(rng.uniform(0.0, 0.15)),
            )
        )
    return out


@dataclass
class AttackPlan:
    kind: str
    start_ms: int
    duration_ms: int
    amount: float = 0.0


@dataclass
class Sim:
    directory: Path
    profile: Profile
    rng: np.random.Generator
    license_id: str
    tick_ms: int = 10 * 60_000
    clock: ManualClock = field(init=False)
    writer: LedgerWriter = field(init=False)
    leases: list[str] = field(default_factory=list)
    reports: list[ReportView] = field(default_factory=list)
    known: Known | None = None
    n_lease: int = 0
    n_boot: int = 1
    holidays: set[int] = field(default_factory=set)
    workload: float = 1.0
    suppress_all: bool = False
    suppress_usage: bool = False
    usage_scale: float = 1.0
    pending_receipt: tuple[int, int, int] | None = None
    #: True time (what the wall clock would say if nobody touched it).
    now: int = START_MS

    def __post_init__(self) -> None:
        self.clock = ManualClock(wall_ms=self.now, mono_ms=1_000, boot=self._boot_id())
        seed = int(self.rng.integers(1 << 30))
        self.writer = LedgerWriter.create(
            self.directory,
            vendor_ledger_key=VENDOR.public_key(),
            vendor_key_id=VENDOR_ID,
            clock=self.clock,
            genesis={"l": [self.license_id]},
            random=_random(seed),
        )
        self.instance_id = self.writer.instance_id.hex()

    def _boot_id(self) -> bytes:
        return self.n_boot.to_bytes(16, "big")

    # ---------------------------------------------------------------- writing
    def write(self, rtype: RecordType, payload: dict[str, Any]) -> None:
        if self.suppress_all:
            return
        if self.suppress_usage and rtype == RecordType.USAGE:
            return
        self.writer.append(rtype, payload)

    def restart(self, *, clean: bool, downtime_ms: int, wall_step_ms: int = 0) -> None:
        if clean:
            self.writer.close()
        else:
            self._kill()
        self.adv(downtime_ms)
        self.clock.step_wall(wall_step_ms)
        self.n_boot += 1
        self.clock.reboot(self._boot_id())
        self.writer = LedgerWriter.open(self.directory, clock=self.clock)

    def _kill(self) -> None:
        """Stop without a SHUTDOWN record, as kill -9 or a power cut would."""
        w = self.writer
        from meterbox.ledger._writer import _STOP

        w._queue.put(_STOP)
        w._thread.join()
        import os

        os.close(w._fd)
        w._lock_file.close()

    def adv(self, ms: int) -> None:
        self.clock.advance(ms)
        self.now += ms

    # ------------------------------------------------------------- behaviour
    def activity(self, t: int) -> float:
        day = (t - START_MS) // DAY
        hour = (t % DAY) / HOUR
        weekday = day % 7
        a, b = self.profile.work
        if a <= hour < b:
            # A hump over the working day, dipping at lunch.
            x = (hour - a) / (b - a)
            level = 0.55 + 0.45 * math.sin(math.pi * x) - (0.15 if abs(hour - 12.5) < 0.6 else 0)
        elif a - 2 <= hour < a or b <= hour < b + 3:
            level = 0.08
        else:
            level = 0.01
        if weekday >= 5:
            level *= self.profile.weekend
        if day in self.holidays:
            level *= 0.05
        growth = (1 + self.profile.growth_per_week) ** (day / 7)
        return float(level * growth)

    def step(self) -> None:
        """One heartbeat interval: seats move, usage is recorded, a heartbeat is written."""
        t = self.now
        target = int(self.rng.binomial(self.profile.seats, min(1.0, self.activity(t))))
        n_events = abs(target - len(self.leases))
        usage_n = int(
            self.rng.poisson(
                len(self.leases) * self.profile.rate * self.workload * self.tick_ms / HOUR
            )
        )
        slots = n_events + usage_n + 1
        dt = self.tick_ms // slots
        kinds = ["seat"] * n_events + ["usage"] * usage_n
        self.rng.shuffle(kinds)
        for k in kinds:
            self.adv(int(self.rng.integers(1, max(2, dt))))
            if k == "seat":
                if target > len(self.leases):
                    self.n_lease += 1
                    lease = f"L{self.n_lease}"
                    self.leases.append(lease)
                    self.write(
                        RecordType.SEAT_CHECKOUT,
                        {
                            "i": lease,
                            "f": "cad",
                            "c": f"host-{self.n_lease % 37}",
                            "l": self.license_id,
                        },
                    )
                elif self.leases:
                    lease = self.leases.pop(int(self.rng.integers(len(self.leases))))
                    self.write(RecordType.SEAT_RELEASE, {"i": lease})
            else:
                units = 1 + int(self.rng.geometric(1 / self.profile.units))
                units = _scale(units, self.usage_scale, self.rng)
                if units > 0:
                    self.write(
                        RecordType.USAGE,
                        {"m": "solver", "a": units, "c": "c", "l": self.license_id},
                    )
        end = (self.now // self.tick_ms + 1) * self.tick_ms
        self.adv(end - self.now)
        self.write(RecordType.HEARTBEAT, {"n": len(self.leases)})
        if self.pending_receipt and self.now >= self.pending_receipt[0]:
            _, seq, vendor_ms = self.pending_receipt
            self.pending_receipt = None
            self.write(RecordType.RECEIPT_IMPORTED, {"s": seq, "t": _iso(vendor_ms)})

    def true_ms(self) -> int:
        return self.now

    # --------------------------------------------------------------- reports
    def report(self, received_delay_ms: int = 30 * 60_000) -> ReportView:
        buf = io.BytesIO()
        export_report(self.writer, buf, clock=self.clock, licenses=[b"license"], acked=None)
        verifier = ReportVerifier({VENDOR_ID: VENDOR}, known=self.known)
        events: list[Event] = []
        for rec, acked in verifier.records(io.BytesIO(buf.getvalue())):
            if not acked:
                events.append(
                    event_from_record(
                        rec.seq, RecordType(rec.type).kind, rec.wall_ms, rec.mono_ms, rec.payload
                    )
                )
        res = verifier.result
        assert res.head is not None
        received = self.true_ms() + received_delay_ms
        view = ReportView(
            res.digest.hex()[:16],
            res.created_ms,
            received,
            self.known.head.seq + 1 if self.known else 0,
            res.head.seq,
            tuple(events),
        )
        self.reports.append(view)
        if not res.critical:
            self.known = Known(head=res.head, chain=res.chain, instance_key=res.instance_key)
            self.writer.compact(res.head)
            # The receipt reaches the site about a day later.
            self.pending_receipt = (self.now + DAY, res.head.seq, received)
        return view

    def history(self, report_every_ms: int | None = 7 * DAY) -> InstanceHistory:
        return InstanceHistory(
            self.instance_id,
            self.license_id,
            self.profile.name,
            report_every_ms,
            2 * DAY,
            tuple(self.reports),
        )

    def close(self) -> None:
        self.writer.close()


def _scale(units: int, scale: float, rng: np.random.Generator) -> int:
    if scale >= 1.0:
        return units
    x = units * scale
    return int(x) + int(rng.random() < x - int(x))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _random(seed: int) -> Any:
    rng = np.random.default_rng(seed)

    def rnd(n: int) -> bytes:
        return rng.bytes(n)

    return rnd


# ------------------------------------------------------------------ scenarios
@dataclass
class Outcome:
    customer: str
    attack: str | None
    #: Histories judged report by report: (history prefix, report index, attacked?).
    sims: list[Sim]
    attacked_reports: set[int]


def run_history(
    root: Path,
    profile: Profile,
    seed: int,
    *,
    weeks: int,
    attack: str | None,
) -> Outcome:
    """Simulate ``weeks`` of one customer; an attack, if any, falls in the last week."""
    rng = np.random.default_rng(seed)
    lic = f"lic-{profile.name}"
    sim = Sim(root / "a", profile, np.random.default_rng(rng.integers(1 << 30)), lic)
    n_holidays = int(rng.integers(0, 3))
    sim.holidays = {int(d) for d in rng.integers(7, weeks * 7, n_holidays)}
    maint = {int(d) for d in rng.integers(1, weeks * 7, max(1, weeks // 3))}
    clone: Sim | None = None
    attack_day = (weeks - 1) * 7 + int(rng.integers(0, 4))
    attack_hour = profile.work[0] + int(rng.integers(0, 3))
    attack_at = START_MS + attack_day * DAY + attack_hour * HOUR
    plan = _plan(attack, attack_at, rng) if attack else None
    state: dict[str, Any] = {}
    attacked: set[int] = set()
    ticks_per_day = DAY // sim.tick_ms
    for day in range(weeks * 7):
        if day % 7 == 0:
            # Workload mix drifts from week to week: honest usage per seat-hour varies.
            sim.workload = float(np.exp(rng.normal(0, 0.08)))
        for tick in range(ticks_per_day):
            t = sim.true_ms()
            if day in maint and tick == 3 * ticks_per_day // 24:
                sim.restart(clean=True, downtime_ms=int(rng.integers(2, 20)) * 60_000)
            if plan is not None:
                clone = _apply(sim, plan, t, state, root, rng, clone)
            sim.step()
            if clone is not None:
                clone.step()
        if day % 7 == 6:
            sim.report()
            if plan is not None and state.get("began"):
                attacked.add(len(sim.reports) - 1)
            if clone is not None:
                clone.report()
    sims = [sim] + ([clone] if clone is not None else [])
    for s in sims:
        s.close()
    return Outcome(profile.name, attack, sims, attacked)


def _plan(kind: str, at: int, rng: np.random.Generator) -> AttackPlan:
    if kind == "suppress_all":
        return AttackPlan(kind, at, int(rng.integers(2, 12)) * HOUR)
    if kind == "suppress_usage":
        return AttackPlan(kind, at, int(rng.integers(4, 24)) * HOUR)
    if kind.startswith("snapshot"):
        return AttackPlan(kind, at, int(rng.integers(1, 3)) * DAY)
    if kind.startswith("clock_back"):
        return AttackPlan(kind, at, 0, -float(rng.integers(1, 60)) * DAY)
    if kind == "clock_forward":
        return AttackPlan(kind, at, 0, float(rng.integers(1, 90)) * DAY)
    if kind == "clone":
        return AttackPlan(kind, at - 7 * DAY, 0)
    if kind.startswith("under_report_"):
        return AttackPlan(kind, at - (at - START_MS) % (7 * DAY), 0, int(kind[13:]) / 100)
    raise ValueError(kind)


def _apply(
    sim: Sim,
    plan: AttackPlan,
    t: int,
    state: dict[str, Any],
    root: Path,
    rng: np.random.Generator,
    clone: Sim | None,
) -> Sim | None:
    k = plan.kind
    if t < plan.start_ms:
        return clone
    first = not state.get("began")
    state["began"] = True
    if k in ("suppress_all", "suppress_usage"):
        on = t < plan.start_ms + plan.duration_ms
        if k == "suppress_all":
            sim.suppress_all = on
        else:
            sim.suppress_usage = on
    elif k.startswith("snapshot"):
        snap = root / "snapshot"
        if first:
            if k == "snapshot_at_shutdown":
                # Stop cleanly, copy the stopped server's directory, start again.
                sim.writer.close()
                shutil.copytree(sim.directory, snap)
                sim.adv(60_000)
                sim.n_boot += 1
                sim.clock.reboot(sim._boot_id())
                sim.writer = LedgerWriter.open(sim.directory, clock=sim.clock)
            else:
                shutil.copytree(sim.directory, snap)
            state["leases"] = list(sim.leases)
        elif not state.get("restored") and t >= plan.start_ms + plan.duration_ms:
            state["restored"] = True
            sim._kill()
            shutil.rmtree(sim.directory)
            shutil.copytree(snap, sim.directory)
            sim.adv(5 * 60_000)
            sim.n_boot += 1
            sim.clock.reboot(sim._boot_id())
            sim.writer = LedgerWriter.open(sim.directory, clock=sim.clock)
            # The vendor's acknowledged state is unchanged: no receipt came in between.
    elif k in ("clock_back", "clock_forward") and first:
        sim.clock.step_wall(int(plan.amount))
    elif k == "clock_back_offline" and first:
        sim.restart(clean=True, downtime_ms=10 * 60_000, wall_step_ms=int(plan.amount))
    elif k == "clone" and first:
        clone = Sim(
            root / "clone",
            sim.profile,
            np.random.default_rng(rng.integers(1 << 30)),
            sim.license_id,
            now=sim.now,
        )
    elif k.startswith("under_report_") and first:
        sim.usage_scale = 1 - plan.amount
    return clone
