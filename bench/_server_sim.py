"""Site histories produced by the real server: engine, service, ledger, export, ingest.

One :class:`SiteSim` runs one customer site for weeks of simulated time. Everything
the vendor later sees is written by the product's own code:

* the server is :class:`meterbox.server._instance.ServerInstance` (engine, service,
  state store, sealed ledger) on a :class:`~meterbox.clock.ManualClock`; seats are
  checked out, renewed and released, usage is recorded and the housekeeping (cull,
  heartbeat) runs, all through :class:`~meterbox.server._service.LicenseService`;
* reports are exported by the server (:meth:`ServerInstance.export_bytes`), ingested by
  :func:`meterbox.vendorkit.ingest.ingest` into a SQLite vendor store, and the receipt it
  signs is imported back into the server (which then compacts its ledger);
* the detectors are fed the records of each report as the vendor verified them
  (:class:`meterbox.ledger.ReportVerifier` with the vendor's key).

The server beats every ``TICK_MS`` (ten minutes, not the production minute, which
keeps a year of site time affordable); the clock checks are told so.

Sites differ in everything the detectors must not mistake for fraud: 2-50 seats;
office, night-shift and round-the-clock schedules; one to three meters of very
different size, metered in bursts (clients flush a batch every 10-60 minutes); weekly
or monthly reporting; weekly workload drift and seasonal growth; holidays; planned
restarts; rough NTP that steps the clock by seconds to minutes; at 60 % of sites, two
or three teams, each checking out seats of its own feature.

Attacks and legitimate operations are applied the way a customer would apply them:
stopping (cleanly or by kill -9) and restarting the server, copying and restoring its
data directory, setting the wall clock, running a second copy, patching clients to
report less. See :data:`ATTACKS` and :data:`LEGIT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from meterbox.clock import ManualClock
from meterbox.errors import MeterboxError
from meterbox.ledger import Known, RecordType, ReportVerifier
from meterbox.licenses import Feature, License, Meter
from meterbox.server._instance import ServerInstance, init_server
from meterbox.server._service import ServiceConfig
from meterbox.vendorkit import VendorStore
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit.anomaly import Event, InstanceHistory, ReportView, event_from_record
from meterbox.vendorkit.clockcheck import ClockCheckConfig
from meterbox.vendorkit.ingest import ingest
from meterbox.witness import WitnessHead

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
WEEK = 7 * DAY
TICK_MS = 10 * MIN
RENEW_TICKS = 3
#: Monday 2026-01-05 00:00 UTC: every history starts on a Monday.
START_MS = 1_767_571_200_000
#: Licenses are issued the day before the site starts. The first report interval runs
#: from the license's issue time (no receipt yet), so a site's first report, one
#: period after it starts, must fall inside that interval and its grace.
ISSUED = datetime(2026, 1, 4, tzinfo=UTC)
POLICY = ClockCheckConfig(heartbeat_interval_ms=TICK_MS)
FEATURE = "cad"
#: Feature names of sites whose teams use different features (one team per feature).
FEATURES = ("cad", "sim", "cam")
#: A team's use of its feature winds down over this long (people leave one by one).
WIND_DOWN_MS = 8 * WEEK

#: Attack classes. Each starts in the judged period (the last report period).
ATTACKS = (
    "snapshot_live_seats",  # copy the running server's directory with seats out, restore later
    "snapshot_live_idle",  # the same, copied at night with no seat out, restored in work hours
    "snapshot_stopped_seats",  # copy while stopped cleanly with seats out, restore later
    "snapshot_stopped_idle",  # copied while stopped with no seat out, restored in work hours
    # The same, restored at the first moment after that no seat is out either: nothing
    # but the clients' ledger heads can show it (threat model W1).
    "snapshot_stopped_quiet",
    "stop_clean",  # stop the server cleanly during work, work on unmetered, start later
    "stop_kill",  # the same with kill -9
    "clock_forward_stopped",  # stop, set the clock days forward, start
    "clock_back_stopped",  # stop, set the clock days back, start
    "clock_back_live",  # set the clock back while running
    "clone_reporting",  # a second copy of the server that also reports
    "clone_silent",  # a second copy that never reports; half the users move to it
    "clone_fresh_backdated",  # a fresh copy, clock before the license's issue date, reports
    "under_report_10",  # clients patched to report 90 % of every amount
    "under_report_30",
    "under_report_50",
    "drop_meter",  # the smallest meter is never reported
    "selective_meter_50",  # one meter (the largest) reported at half
    # A second copy that never reports; every user of one feature moves to it.
    "clone_silent_feature",
)

#: Legitimate operations applied in the judged period (besides the background ones).
LEGIT = (
    "clean",
    "maintenance_weekend",  # users log off Friday, server stopped cleanly until Monday
    "power_cut",  # kill -9 in working hours with seats out, back after 1-3 hours
    "upgrade",  # clean restart in working hours, 5-15 minutes, clients spool meanwhile
    "ntp_step",  # NTP steps the clock by 5-30 minutes once
    "holiday",  # a week of closure, server left running
    "project_end",  # two thirds of the users leave for good
    "seasonal_growth",  # workload grows 40-80 % over the period
    # One team's use of its feature winds down over WIND_DOWN_MS: its users leave one
    # by one and do not come back (a project ends); sites with one feature have none.
    "feature_wind_down",
)
ALL_CASES = (*LEGIT, *ATTACKS)
#: Cases that need a site whose teams use two or more features.
FEATURE_CASES = frozenset({"feature_wind_down", "clone_silent_feature"})
#: Each case's random stream is its place here: cases added later come last, so every
#: earlier case of a site draws what it drew before.
STREAMS = (
    *(c for c in ALL_CASES if c not in FEATURE_CASES),
    "feature_wind_down",
    "clone_silent_feature",
)
#: Extra report periods the clean continuation of a site lives, by reporting interval.
CLEAN_EXTRA_PERIODS = {7: 4, 30: 1}
#: Further report periods a feature case runs for, by reporting interval: the users
#: who moved are seen gone for a month; a wind-down is seen to its end.
FEATURE_EXTRA_PERIODS = {
    "clone_silent_feature": {7: 3, 30: 1},
    "feature_wind_down": {7: 8, 30: 2},
}
#: Further report periods clients patched to scale their amounts run for, by
#: reporting interval in days: the vendor judges a month of their reports (ADR 0037).
#: A weekly reporter's first week of 30 % less is within its honest week-to-week
#: swing; a month of it is not.
PATCHED_EXTRA_PERIODS = {7: 3, 30: 0}


@dataclass(frozen=True)
class MeterProfile:
    name: str
    #: Mean units per seat-hour of work.
    rate: float
    #: Mean units of one unit of work (amounts are compound Poisson).
    size: float


@dataclass(frozen=True)
class SiteProfile:
    name: str
    seats: int
    schedule: str  # office | night | always
    work_start: int
    work_hours: int
    weekend: float
    meters: tuple[MeterProfile, ...]
    report_days: int
    growth_per_week: float
    batch_ticks: int
    restart_per_week: float
    rough_ntp: bool
    #: (feature, team size) when the site's teams use different features; empty: every
    #: seat is of :data:`FEATURE`.
    features: tuple[tuple[str, int], ...] = ()

    def feature_of(self, client: int) -> str:
        """The feature client number ``client`` uses (teams in order)."""
        for name, size in self.features:
            if client < size:
                return name
            client -= size
        return FEATURE


def _teams(rng: np.random.Generator, seats: int) -> tuple[tuple[str, int], ...]:
    """Two or three teams, each on its own feature, at 60 % of sites; at least one user each."""
    if rng.random() >= 0.6:
        return ()
    n = 2 if seats < 3 or rng.random() < 0.6 else 3
    raw = rng.dirichlet([2.0] * n) * (seats - n)
    sizes = [1 + int(x) for x in raw]
    for i in np.argsort(-(raw - np.floor(raw)))[: seats - sum(sizes)]:
        sizes[int(i)] += 1
    return tuple(zip(FEATURES, sizes, strict=False))


def site_profile(rng: np.random.Generator, name: str) -> SiteProfile:
    seats = round(math.exp(rng.uniform(math.log(2), math.log(50))))
    schedule = str(rng.choice(["office", "office", "office", "night", "always"]))
    meters = [MeterProfile("solve", float(rng.uniform(2, 12)), float(rng.uniform(1, 8)))]
    for extra, (lo, hi) in (("render", (0.5, 3.0)), ("export", (0.05, 0.4))):
        if rng.random() < 0.6:
            meters.append(MeterProfile(extra, float(rng.uniform(lo, hi)), 1.0))
    return SiteProfile(
        name=name,
        seats=max(2, min(50, seats)),
        schedule=schedule,
        work_start=int(rng.integers(6, 10)) if schedule == "office" else 22,
        work_hours=int(rng.integers(8, 11)),
        weekend=float(rng.uniform(0.0, 0.2)) if schedule != "always" else 0.8,
        meters=tuple(meters),
        report_days=int(rng.choice([7, 7, 30])),
        growth_per_week=float(rng.uniform(-0.01, 0.03)),
        batch_ticks=int(rng.choice([3, 6, 12])),
        restart_per_week=float(rng.uniform(0.0, 0.5)),
        rough_ntp=bool(rng.random() < 0.3),
        # Drawn last, so every other trait of a seed's site is what it was before.
        features=_teams(rng, max(2, min(50, seats))),
    )


# ---------------------------------------------------------------------- vendor
@dataclass
class Vendor:
    """A vendor home with fixed keys and a SQLite store; signs licenses, ingests reports."""

    home: Path
    store_url: str
    keys: vendor_keys.VendorKeys

    @classmethod
    def create(cls, root: Path) -> Vendor:
        home = root / "vendor"
        pair = vendor_keys.VendorKeyPair.from_raw(
            bytes(range(32)), bytes(range(32, 64)), datetime(2025, 1, 1, tzinfo=UTC)
        )
        keys = vendor_keys.init(home, pair=pair)
        return cls(home, f"sqlite:///{root / 'vendor.db'}", keys)

    def issue(self, profile: SiteProfile, license_id: str) -> bytes:
        signer = self.keys.signer()
        lic = License(
            license_id=license_id,
            customer=profile.name,
            product="Solver",
            issued=ISSUED,
            vendor_key_id=signer.key_id.hex(),
            features={
                name: Feature(size + 2, lease_seconds=3600)
                for name, size in profile.features or ((FEATURE, profile.seats),)
            },
            meters={m.name: Meter(None, "total") for m in profile.meters},
            report_every_days=profile.report_days,
            grace_days=3,
        )
        document = lic.sign(signer)
        with VendorStore.open(self.store_url, home=self.home) as s:
            s.add_license(lic, document)
        return document

    def ledger_keys(self) -> dict[bytes, Any]:
        return {kid: pair.ledger_private for kid, pair in self.keys.pairs.items()}


# ------------------------------------------------------------------------ site
@dataclass
class Client:
    client_id: str
    feature: str = FEATURE
    lease: str | None = None
    #: Moved to a second copy of the server (an attack), or left the site for good.
    moved: bool = False
    gone: bool = False
    #: Units metered but not yet flushed, per meter.
    pending: dict[str, int] = field(default_factory=dict)
    #: The latest ledger head each server handed this client (``Meterbox-Head``), kept
    #: and handed back with the next request as the client SDK does (docs/spec/witness.md).
    heads: dict[str, WitnessHead] = field(default_factory=dict)


@dataclass
class Server:
    """One server installation: its data directory, clock and the opened instance."""

    data: Path
    clock: ManualClock
    inst: ServerInstance | None = None
    boots: int = 0
    reports: list[ReportView] = field(default_factory=list)
    known: Known | None = None
    instance_id: str = ""
    #: Wall clock minus true time (what NTP or the customer did to the clock).
    offset_ms: int = 0
    #: Monotonic time a slow oscillator has yet to lose against true time (negative: a
    #: fast one has yet to gain), spread over the next advances of the clock.
    mono_lag_ms: int = 0

    def open(self) -> None:
        self.boots += 1
        self.clock.reboot(self.boots.to_bytes(16, "big"), mono_ms=1_000 + self.boots)
        self.inst = ServerInstance.open(
            self.data, clock=self.clock, settings=ServiceConfig(heartbeat_interval=TICK_MS / 1000)
        )
        self.instance_id = self.inst.writer.instance_id.hex()

    def stop(self, *, clean: bool) -> None:
        inst = self.inst
        assert inst is not None
        self.inst = None
        if clean:
            inst.close()
            return
        # kill -9 (or a power cut): no SHUTDOWN record; what was synced stays on disk.
        from meterbox.ledger._writer import _STOP

        w = inst.writer
        w._queue.put(_STOP)
        w._thread.join()
        os.close(w._fd)
        w._lock_file.close()
        inst.store.close()

    @property
    def up(self) -> bool:
        return self.inst is not None


class SiteSim:
    """One customer site over ``weeks`` of site time; see the module docstring."""

    def __init__(
        self,
        root: Path,
        vendor: Vendor,
        profile: SiteProfile,
        seed: int,
        *,
        periods: int,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.vendor = vendor
        self.profile = profile
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.case = "clean"
        self.license_id = f"lic-{profile.name}-{seed}"
        self.license = vendor.issue(profile, self.license_id)
        self.now = START_MS  # true time
        self.period_ms = profile.report_days * DAY
        self.periods = periods
        self.judged_from = START_MS + (periods - 1) * self.period_ms
        self.end = START_MS + periods * self.period_ms
        self.clients = [Client(f"host-{i}", profile.feature_of(i)) for i in range(profile.seats)]
        self.main = self._new_server("main", self.now)
        self.others: list[Server] = []
        self.workload = 1.0
        self.meter_scale = {m.name: 1.0 for m in profile.meters}
        self.holiday_days = self._holidays()
        self.users = 1.0
        self.growth_extra = 0.0
        #: Reports (indexes into ``main.reports``) written after the case began.
        self.attacked: set[int] = set()
        self.began = False
        self.plan: dict[str, Any] = {"at": self.end}
        self.next_report = START_MS + self.period_ms
        self.week = -1
        self.planned_restart_at: int | None = None
        #: Ingest's findings per report digest (first 16 hex digits): (code, severity).
        self.ingest_findings: dict[str, list[tuple[str, str]]] = {}

    def fork(self, case: str, root: Path) -> SiteSim:
        """A copy of this site, from now on, that will live through ``case``.

        The server's data directory and the vendor's store are copied as they are on
        disk (everything the server acknowledged is synced) and the copy is opened
        with the same clocks: to the ledger this is a process restart without a
        shutdown record and without downtime, which every history then has once,
        at the start of its judged period. Each case draws from its own random
        stream, so all cases of one site share the same accepted history.
        """
        root.mkdir(parents=True, exist_ok=True)
        child = copy.copy(self)
        child.root = root
        child.case = case
        child.rng = np.random.default_rng([self.seed, STREAMS.index(case)])
        child.clients = copy.deepcopy(self.clients)
        child.meter_scale = dict(self.meter_scale)
        child.holiday_days = set(self.holiday_days)
        child.attacked = set()
        child.others = []
        child.ingest_findings = dict(self.ingest_findings)
        store = root / "vendor.db"
        shutil.copyfile(self.vendor.store_url.removeprefix("sqlite:///"), store)
        child.vendor = Vendor(self.vendor.home, f"sqlite:///{store}", self.vendor.keys)
        src = self.main
        data = root / "main"
        shutil.copytree(src.data, data, ignore=shutil.ignore_patterns("ledger.lock"))
        clock = ManualClock(src.clock.wall_ms(), src.clock.mono_ms(), src.clock.boot_id())
        child.main = Server(
            data, clock, None, src.boots, list(src.reports), src.known, src.instance_id,
            src.offset_ms, src.mono_lag_ms,
        )  # fmt: skip
        child.main.inst = ServerInstance.open(
            data, clock=clock, settings=ServiceConfig(heartbeat_interval=TICK_MS / 1000)
        )
        child.plan = child._plan()
        if case == "clean":
            # Clean reports are what the false-alarm rate is measured on: the clean
            # continuation lives on for more periods than the cases do.
            child.end += CLEAN_EXTRA_PERIODS[self.profile.report_days] * self.period_ms
        if case.startswith(("under_report_", "drop_meter", "selective_meter")):
            # Patched clients are installed once and report less from then on: the
            # judged period is under-reported from its start; clients that scale
            # every amount are seen for a month (four weekly reports, one monthly).
            child.plan["at"] = child.now
        if case.startswith("under_report_"):
            child.end += PATCHED_EXTRA_PERIODS[self.profile.report_days] * self.period_ms
        if case in FEATURE_CASES:
            extra = FEATURE_EXTRA_PERIODS[case][self.profile.report_days]
            child.end += extra * self.period_ms
        return child

    def stop_all(self) -> None:
        """Stop every server of this site without writing anything more."""
        for server in (self.main, *self.others):
            if server.up:
                server.stop(clean=False)

    # ------------------------------------------------------------- set-up
    def _new_server(self, name: str, start_ms: int, *, copy_of: Path | None = None) -> Server:
        data = self.root / name
        clock = ManualClock(wall_ms=start_ms, mono_ms=1_000)
        if copy_of is None:
            lic = self.root / f"{name}.lic"
            lic.write_bytes(self.license)
            init_server(
                data,
                vendor_pub=self.vendor.home / "vendor.pub",
                license_files=[lic],
                clock=clock,
                fingerprint="site",
            )
        else:
            shutil.copytree(copy_of, data, ignore=shutil.ignore_patterns("ledger.lock"))
        server = Server(data, clock)
        server.open()
        return server

    def _holidays(self) -> set[int]:
        days = self.periods * self.profile.report_days
        n = int(self.rng.integers(0, 3))
        # Background holidays fall before the judged period; the holiday case adds one there.
        limit = max(8, (self.judged_from - START_MS) // DAY)
        return {int(d) for d in self.rng.integers(7, limit, n)} if days > 8 else set()

    def _plan(self) -> dict[str, Any]:
        """When and how the case happens: a work-hours moment in the judged period."""
        p = self.profile
        span_days = max(1, (self.end - self.judged_from) // DAY - 4)
        for _ in range(200):
            day = int(self.rng.integers(0, span_days))
            t = self.judged_from + day * DAY
            if self._weekday(t) >= 5 and p.schedule != "always":
                continue
            hour = (p.work_start + int(self.rng.integers(1, max(2, p.work_hours - 3)))) % 24
            at = t + hour * HOUR
            if p.schedule == "night" and hour < 12:
                at += DAY  # the night shift that started the evening before
            break
        return {"at": at, "dur": 0, "amount": 0.0}

    @staticmethod
    def _weekday(t: int) -> int:
        return int(((t - START_MS) // DAY) % 7)

    # ---------------------------------------------------------- behaviour
    def activity(self, t: int) -> float:
        """Share of users at work at true time ``t``."""
        p = self.profile
        day = (t - START_MS) // DAY
        hour = (t % DAY) / HOUR
        weekday = day % 7
        if p.schedule == "always":
            level = 0.75 - 0.2 * math.cos(2 * math.pi * (hour - 3) / 24)
        else:
            into = (hour - p.work_start) % 24
            if into < p.work_hours:
                x = into / p.work_hours
                level = 0.55 + 0.45 * math.sin(math.pi * x)
            elif into < p.work_hours + 2 or into > 22:
                level = 0.06
            else:
                level = 0.01
        # A night shift that starts on Friday evening belongs to Friday.
        shift_day = weekday if p.schedule != "night" or hour >= 12 else (weekday - 1) % 7
        if shift_day >= 5:
            level *= p.weekend
        if day in self.holiday_days:
            level *= 0.03
        growth = (1 + p.growth_per_week) ** (day / 7) * (1 + self.growth_extra)
        return float(min(1.0, level * self.users) * growth)

    def _target(self, t: int) -> int:
        """Users at work: drawn afresh each hour (people do not log on and off by the minute)."""
        hour = t // HOUR
        if getattr(self, "_target_hour", None) != hour:
            self._target_hour = hour
            a = self.activity(t)
            self._target_now = int(self.rng.binomial(self.profile.seats, min(1.0, a)))
        return int(self._target_now)

    # --------------------------------------------------------------- run
    def run(self, until_ms: int | None = None) -> SiteSim:
        """Live until ``until_ms`` (true time; default: the end of the judged period)."""
        asyncio.run(self._run(self.end if until_ms is None else until_ms))
        return self

    def run_history(self) -> SiteSim:
        """Live through the accepted history, up to the start of the judged period."""
        return self.run(self.judged_from)

    async def _run(self, until_ms: int) -> None:
        while self.now < until_ms:
            await self._background()
            if self.now >= self.plan["at"] and not self.began:
                self.began = True
                await self._begin_case()
            await self._case_tick()
            for server in (self.main, *self.others):
                if server.up:
                    await self._tick(server, primary=server is self.main)
            self._advance(TICK_MS)
            if self.now >= self.next_report and self.main.up:
                self.next_report += self.period_ms
                await self._reports()
        if until_ms >= self.end:
            for server in (self.main, *self.others):
                if server.up:
                    server.stop(clean=True)

    async def _reports(self) -> None:
        await self._report(self.main)
        if self.began:
            self.attacked.add(len(self.main.reports) - 1)
        for other in self.others:
            if other.up and getattr(other, "reports_to_vendor", False):
                await self._report(other)

    async def _background(self) -> None:
        """What happens at every site: weekly drift, planned restarts, NTP."""
        p = self.profile
        w = (self.now - START_MS) // WEEK
        if w != self.week:
            self.week = w
            # The workload drifts from week to week: one factor for every meter.
            self.workload = float(np.exp(self.rng.normal(0, 0.08)))
            if self.rng.random() < p.restart_per_week:
                self.planned_restart_at = (
                    self.now + 6 * DAY + 3 * HOUR + int(self.rng.integers(0, 60)) * MIN
                )
        if self.planned_restart_at is not None and self.now >= self.planned_restart_at:
            self.planned_restart_at = None
            await self._restart(self.main, clean=True, down_ms=int(self.rng.integers(3, 20)) * MIN)
        if p.rough_ntp and self.main.up and self.rng.random() < TICK_MS / (2 * DAY):
            # A fast or slow oscillator: NTP keeps the wall clock on time with steps
            # of seconds to minutes, mostly the same way, while monotonic time runs
            # on the oscillator, so wall minus monotonic time creeps in one direction.
            step = int(self.rng.uniform(2, 150) * 1000) * (1 if self.rng.random() < 0.8 else -1)
            self._drift_monotonic(self.main, step)

    def _advance(self, ms: int) -> None:
        self.now += ms
        for server in (self.main, *self.others):
            server.clock.advance(ms)
            # A slow (fast) oscillator: monotonic time runs at least half as fast as
            # true time (at most half as fast again) until the lag is spent, so it never
            # runs back between two records, as no real monotonic clock does.
            lag = max(-(ms // 2), min(ms // 2, server.mono_lag_ms))
            if lag:
                # ManualClock has no way to slow monotonic time alone; the bench reaches in.
                server.clock._mono -= lag
                server.mono_lag_ms -= lag

    def _drift_monotonic(self, server: Server, ms: int) -> None:
        # Spent by :meth:`_advance`, never at once: taken off in one step, a record
        # written earlier in the same tick (a receipt's import, say) would show
        # monotonic time running back, which is tampering evidence, not drift.
        server.mono_lag_ms += ms

    def _step_clock(self, server: Server, ms: int) -> None:
        server.clock.step_wall(ms)
        server.offset_ms += ms

    async def _tick(self, server: Server, *, primary: bool) -> None:
        """Ten minutes of one server: users come and go, work, flush usage; housekeeping.

        Clients act concurrently, as real ones do, so the service group-commits their
        records; the order within a tick is the event loop's.
        """
        inst = server.inst
        assert inst is not None
        svc = inst.service
        clients = [c for c in self.clients if self._belongs(c, server)]
        target = round(self._target(self.now) * len(clients) / max(1, len(self.clients)))
        working = [c for c in clients if c.lease is not None]
        idle = [c for c in clients if c.lease is None]
        self.rng.shuffle(working)
        self.rng.shuffle(idle)
        leaving = working[target:] if len(working) > target else []
        coming = idle[: max(0, target - len(working))]
        staying = [c for c in working if c not in leaving]
        for c in staying:
            self._work(c)
        tick_no = (self.now - START_MS) // TICK_MS
        flush = tick_no % self.profile.batch_ticks == 0
        # Clients renew their hour-long leases every half hour.
        renew = tick_no % RENEW_TICKS == 0
        await asyncio.gather(
            *(self._leave(server, c) for c in leaving),
            *(self._come(server, c) for c in coming),
            *(self._stay(server, c, flush, renew) for c in staying),
        )
        await svc.cull()
        await svc.write_heartbeat()

    async def _leave(self, server: Server, c: Client) -> None:
        await self._send(server, c)
        lease, c.lease = c.lease, None
        svc = await self._witness(server, c)
        with contextlib.suppress(MeterboxError):
            await svc.release(lease or "")
            self._keep_head(server, c)

    async def _come(self, server: Server, c: Client) -> None:
        svc = await self._witness(server, c)
        try:
            d = await svc.checkout(c.feature, c.client_id)
            c.lease = d.lease.lease_id
            self._keep_head(server, c)
        except MeterboxError:
            c.lease = None

    async def _stay(self, server: Server, c: Client, flush: bool, renew: bool) -> None:
        try:
            if renew:
                svc = await self._witness(server, c)
                await svc.heartbeat(c.lease or "")
                self._keep_head(server, c)
        except MeterboxError:
            # The server does not know the lease (it ran out, or was lost with a
            # restored snapshot): the client checks out again.
            await self._come(server, c)
            if c.lease is None:
                return
        if flush:
            await self._send(server, c)

    async def _witness(self, server: Server, c: Client) -> Any:
        """Hand back the head ``server`` last gave ``c`` (the ``Meterbox-Witness`` header).

        The HTTP layer judges the witness before the request itself, whatever the
        request's outcome; the service is returned for the request.
        """
        assert server.inst is not None
        svc = server.inst.service
        head = c.heads.get(server.data.name)
        if head is not None:
            await svc.witness(c.client_id, head)
        return svc

    def _keep_head(self, server: Server, c: Client) -> None:
        """Keep the head an acknowledgement carried, if newer (as the client's spool does)."""
        assert server.inst is not None
        head = server.inst.service.head_to_hand_out()
        if head is None:
            return
        held = c.heads.get(server.data.name)
        if held is None or held.instance_id != head.instance_id or head.seq > held.seq:
            c.heads[server.data.name] = head

    def _share(self, server: Server) -> float:
        return 1.0

    def _belongs(self, c: Client, server: Server) -> bool:
        if c.gone:
            return False
        return c.moved != (server is self.main)

    def _work(self, c: Client) -> None:
        hours = TICK_MS / HOUR
        for m in self.profile.meters:
            jobs = int(self.rng.poisson(m.rate / m.size * self.workload * hours))
            if jobs:
                units = int(jobs + self.rng.poisson(jobs * (m.size - 1))) if m.size > 1 else jobs
                c.pending[m.name] = c.pending.get(m.name, 0) + units

    async def _send(self, server: Server, c: Client) -> None:
        """Flush the client's batch: one usage record per meter with work pending."""
        pending, c.pending = c.pending, {}
        for meter, units in sorted(pending.items()):
            reported = self._reported(meter, units)
            if reported > 0:
                svc = await self._witness(server, c)
                try:
                    await svc.usage(meter, reported, c.client_id)
                except MeterboxError:
                    # Refused (a restored copy whose last receipt is too old, say): the
                    # application tells its user, and that work is not metered.
                    continue
                self._keep_head(server, c)

    def _reported(self, meter: str, units: int) -> int:
        scale = self.meter_scale.get(meter, 1.0)
        if scale >= 1.0:
            return units
        x = units * scale
        return int(x) + int(self.rng.random() < x - int(x))

    async def _restart(self, server: Server, *, clean: bool, down_ms: int) -> None:
        server.stop(clean=clean)
        self._down(server, down_ms)
        server.open()

    def _down(self, server: Server, ms: int) -> None:
        """Let ``ms`` of true time pass with ``server`` stopped; users lose their leases."""
        self._advance(ms)
        if ms > 30 * MIN:
            for c in self.clients:
                if self._belongs(c, server):
                    c.lease = None
                    c.pending.clear()

    # ------------------------------------------------------------ reports
    async def _report(self, server: Server) -> None:
        inst = server.inst
        assert inst is not None
        blob = inst.export_bytes()
        path = self.root / f"report-{server.data.name}-{len(server.reports)}.mbr"
        path.write_bytes(blob)
        # The vendor ingests the report as it is exported and the receipt comes straight
        # back: a receipt signed later than the server imports it would date the
        # server's next records before the receipt's vendor time.
        received = self.now
        outcome = ingest(
            self.vendor.home,
            path,
            store_url=self.vendor.store_url,
            now=datetime.fromtimestamp(received / 1000, UTC),
            policy=POLICY,
        )
        self.ingest_findings[outcome.report_digest[:16]] = [
            (f.code, f.severity) for f in outcome.findings
        ]
        events, head, known, created = self._verify(blob, server.known)
        server.reports.append(
            ReportView(
                outcome.report_digest[:16],
                created,
                received,
                server.known.head.seq + 1 if server.known else 0,
                head,
                tuple(events),
            )
        )
        if outcome.receipt_path is not None:
            server.known = known
            await inst.import_bytes(outcome.receipt_path.read_bytes())
        path.unlink()

    def _verify(self, blob: bytes, known: Known | None) -> tuple[list[Event], int, Known, int]:
        verifier = ReportVerifier(self.vendor.ledger_keys(), known=known)
        events = [
            event_from_record(r.seq, RecordType(r.type).kind, r.wall_ms, r.mono_ms, r.payload)
            for r, acked in verifier.records(io.BytesIO(blob))
            # STATE is chain bookkeeping: ingest keeps it out of ledger_events too.
            if not acked and r.type != RecordType.STATE
        ]
        res = verifier.result
        assert res.head is not None, res.findings
        return (
            events,
            res.head.seq,
            Known(head=res.head, chain=res.chain, instance_key=res.instance_key),
            int(res.created_ms),
        )

    # -------------------------------------------------------------- cases
    async def _begin_case(self) -> None:
        k = self.case
        rng = self.rng
        at = self.plan["at"]
        main = self.main
        if k == "maintenance_weekend":
            # Friday evening to Monday morning of the judged period's first full weekend.
            days_to_fri = (4 - self._weekday(at)) % 7
            fri = at - at % DAY + days_to_fri * DAY + 19 * HOUR
            self.plan["stop_at"] = fri
            self.plan["start_at"] = fri + 2 * DAY + 11 * HOUR + int(rng.integers(0, 120)) * MIN
        elif k == "power_cut":
            self.plan["stop_at"] = at
            self.plan["start_at"] = at + int(rng.integers(60, 180)) * MIN
            self.plan["clean"] = False
        elif k == "upgrade":
            await self._restart(main, clean=True, down_ms=int(rng.integers(5, 15)) * MIN)
        elif k == "ntp_step":
            # A restart with the RTC wrong by 5-30 minutes; NTP steps it right soon after.
            wrong = int(rng.uniform(5, 30) * MIN) * (1 if rng.random() < 0.5 else -1)
            main.stop(clean=True)
            self._down(main, int(rng.integers(2, 10)) * MIN)
            self._step_clock(main, wrong)
            main.open()
            self.plan["ntp_fix"] = (self.now + int(rng.integers(1, 20)) * MIN, -wrong)
        elif k == "holiday":
            d0 = (at - START_MS) // DAY
            self.holiday_days |= set(range(int(d0), int(d0) + 7))
        elif k == "project_end":
            self.users = 1 / 3
        elif k == "seasonal_growth":
            self.plan["grow"] = float(rng.uniform(0.4, 0.8))
        elif k == "feature_wind_down":
            ending = self._pick_feature()
            team = [i for i, c in enumerate(self.clients) if c.feature == ending]
            self.plan["leave"] = sorted((at + int(rng.integers(0, WIND_DOWN_MS)), i) for i in team)
        else:
            await self._begin_attack()

    async def _begin_attack(self) -> None:
        k = self.case
        rng = self.rng
        at = self.plan["at"]
        main = self.main
        if k.startswith("snapshot_"):
            await self._snapshot_begin(k)
        elif k in ("stop_clean", "stop_kill"):
            self.plan["stop_at"] = at
            self.plan["start_at"] = at + int(rng.integers(8, 72)) * HOUR
            self.plan["clean"] = k == "stop_clean"
            self.plan["suppress"] = True
        elif k in ("clock_forward_stopped", "clock_back_stopped"):
            main.stop(clean=True)
            self._down(main, int(rng.integers(5, 30)) * MIN)
            days = int(rng.integers(1, 30))
            self._step_clock(main, days * DAY * (1 if k == "clock_forward_stopped" else -1))
            main.open()
        elif k == "clock_back_live":
            self._step_clock(main, -int(rng.integers(1, 30)) * DAY)
        elif k == "clone_reporting":
            clone = self._new_server("clone", main.clock.wall_ms(), copy_of=main.data)
            clone.reports_to_vendor = True  # type: ignore[attr-defined]
            self._move_half()
            self.others.append(clone)
        elif k == "clone_silent":
            clone = self._new_server("clone", main.clock.wall_ms(), copy_of=main.data)
            self._move_half()
            self.others.append(clone)
        elif k == "clone_silent_feature":
            clone = self._new_server("clone", main.clock.wall_ms(), copy_of=main.data)
            moving = self._pick_feature()
            for c in self.clients:
                if c.feature == moving:
                    c.moved = True
                    c.lease = None
                    c.pending.clear()
            self.others.append(clone)
        elif k == "clone_fresh_backdated":
            back = int(rng.integers(30, 200)) * DAY
            clone = self._new_server("fresh", ISSUED_MS - back)
            clone.offset_ms = ISSUED_MS - back - self.now
            clone.reports_to_vendor = True  # type: ignore[attr-defined]
            self._move_half()
            self.others.append(clone)
        elif k.startswith("under_report_"):
            scale = 1 - int(k.rsplit("_", 1)[1]) / 100
            self.meter_scale = dict.fromkeys(self.meter_scale, scale)
        elif k == "drop_meter":
            small = min(self.profile.meters, key=lambda m: m.rate)
            self.meter_scale[small.name] = 0.0
        elif k == "selective_meter_50":
            big = max(self.profile.meters, key=lambda m: m.rate)
            self.meter_scale[big.name] = 0.5

    def _pick_feature(self) -> str:
        """The feature a feature case is about: one of the site's, at random."""
        names = [name for name, _ in self.profile.features]
        self.plan["feature"] = names[int(self.rng.integers(0, len(names)))]
        return str(self.plan["feature"])

    def _move_half(self) -> None:
        for c in self.clients[::2]:
            c.moved = True
            c.lease = None
            c.pending.clear()

    async def _snapshot_begin(self, k: str) -> None:
        main, rng, at = self.main, self.rng, self.plan["at"]
        snap = self.root / "snapshot"
        stopped = "stopped" in k
        idle = _idle_copy(k)
        restore_at = at + int(rng.integers(1, 4)) * DAY
        if self.profile.schedule != "always":
            # Restored in work hours, as the case says: a day that falls on the weekend
            # is taken back to the Friday, or on to the Monday when that Friday is the
            # copy's own day (going forward could leave the judged period).
            shift = 12 * HOUR if self.profile.schedule == "night" else 0
            step = -DAY
            while self._weekday(restore_at - shift) >= 5:
                restore_at += step
                if restore_at < at + DAY:
                    restore_at, step = at + 3 * DAY, DAY
        self.plan["restore_at"] = restore_at
        if not idle or "snap" not in self.plan:
            # An idle copy is taken earlier, the last moment no seat was out (see
            # _case_tick); a site that is never idle is copied now, seats out.
            self._take_snapshot(main, snap, stopped)

    def _take_snapshot(self, main: Server, snap: Path, stopped: bool) -> None:
        if stopped:
            main.stop(clean=True)
            shutil.copytree(main.data, snap)
            self._advance(2 * MIN)
            main.open()
        else:
            shutil.copytree(main.data, snap, ignore=shutil.ignore_patterns("ledger.lock"))
        self.plan["snap"] = snap

    async def _case_tick(self) -> None:
        if not self.began:
            k = self.case
            # An idle snapshot is taken within the day before the case, at the first
            # moment no seat is out (a nightly backup, say).
            due = _idle_copy(k) and "snap" not in self.plan and self.now >= self.plan["at"] - DAY
            if due and self.main.up and not any(c.lease for c in self.clients):
                self._take_snapshot(self.main, self.root / "snapshot", "stopped" in k)
            return
        k, plan, main = self.case, self.plan, self.main
        while plan.get("leave") and self.now >= plan["leave"][0][0]:
            # One more of the team leaves for good: logs off first, if at work.
            c = self.clients[plan["leave"].pop(0)[1]]
            if c.lease is not None and main.up and self._belongs(c, main):
                await self._leave(main, c)
            c.gone = True
        if "ntp_fix" in plan and self.now >= plan["ntp_fix"][0]:
            self._step_clock(main, plan.pop("ntp_fix")[1])
        if "grow" in plan:
            frac = min(1.0, (self.now - plan["at"]) / max(1, self.end - plan["at"]))
            self.growth_extra = plan["grow"] * frac
        if (
            "stop_at" in plan
            and main.up
            and self.now >= plan["stop_at"]
            and not plan.get("stopped")
        ):
            plan["stopped"] = True
            if k == "maintenance_weekend":
                # Users are asked to log off first; their clients release their seats.
                await asyncio.gather(*(self._leave(main, c) for c in self.clients if c.lease))
            main.stop(clean=plan.get("clean", True))
            down = plan["start_at"] - self.now
            self._down(main, down)
            main.open()
        restore = "restore_at" in plan and self.now >= plan["restore_at"]
        restore = restore and not plan.get("restored")
        if restore and k == "snapshot_stopped_quiet":
            # Wait for a moment no seat is out (the evening, say); a site that never has
            # one within a day is restored then anyway, seats out (plan["quiet"] says).
            quiet = not any(c.lease for c in self.clients)
            restore = quiet or self.now >= plan["restore_at"] + DAY
            plan["quiet"] = quiet
        if restore:
            plan["restored"] = True
            snap = plan["snap"]
            main.stop(clean=False)
            shutil.rmtree(main.data)
            shutil.copytree(snap, main.data)
            self._advance(3 * MIN)
            main.open()


ISSUED_MS = int(ISSUED.timestamp() * 1000)


def _idle_copy(case: str) -> bool:
    """Whether ``case`` copies the directory at a moment no seat is out."""
    return case in ("snapshot_live_idle", "snapshot_stopped_idle", "snapshot_stopped_quiet")


def history(server: Server, license_id: str, customer: str, report_days: int) -> InstanceHistory:
    return InstanceHistory(
        server.instance_id,
        license_id,
        customer,
        report_days * DAY,
        3 * DAY,
        tuple(server.reports),
        license_issued_ms=ISSUED_MS,
    )


def histories(sim: SiteSim) -> Iterator[InstanceHistory]:
    for server in (sim.main, *sim.others):
        if server.reports:
            yield history(server, sim.license_id, sim.profile.name, sim.profile.report_days)


__all__ = [
    "ATTACKS",
    "FEATURE_CASES",
    "LEGIT",
    "SiteProfile",
    "SiteSim",
    "Vendor",
    "histories",
    "site_profile",
]
_ = timedelta
