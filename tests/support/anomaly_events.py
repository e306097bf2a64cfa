"""Detector inputs built as a steady server would write them, for the anomaly unit tests.

The rules' unit tests need exact, small histories (a silence of exactly four hours, a
clock step of ten minutes); the evidence the real server writes is tested against
records it wrote (tests/integration/test_anomaly_server_evidence.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from meterbox.vendorkit.anomaly import Event, InstanceHistory, ReportView, ThresholdsConfig
from meterbox.vendorkit.clockcheck import ClockCheckConfig

T0 = 1_767_571_200_000  # Monday 00:00 UTC
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
#: The builder beats every 10 minutes, so the clock checks are told so.
TH = ThresholdsConfig(clock=ClockCheckConfig(heartbeat_interval_ms=10 * MIN))


class Builder:
    """Writes events as a steady server would: heartbeats every 10 minutes."""

    def __init__(self) -> None:
        self.seq = 0
        self.wall = T0
        self.mono = 1_000
        self.events: list[Event] = []

    def add(self, kind: str, **kw: object) -> Event:
        e = Event(self.seq, kind, self.wall, self.mono, **kw)  # type: ignore[arg-type]
        self.seq += 1
        self.events.append(e)
        return e

    def run(self, ms: int, *, seats: int = 0, usage_every: int = 0) -> None:
        """Let ``ms`` pass with heartbeats; usage every ``usage_every`` ms if set."""
        end = self.wall + ms
        nxt_use = self.wall + usage_every if usage_every else None
        while self.wall < end:
            step = 10 * MIN
            if nxt_use is not None and nxt_use < self.wall + step:
                step = max(1, nxt_use - self.wall)
            self.tick(min(step, end - self.wall))
            if nxt_use is not None and self.wall >= nxt_use:
                self.add("usage", amount=5)
                nxt_use += usage_every
            else:
                self.add("heartbeat", in_use=seats)

    def tick(self, ms: int) -> None:
        self.wall += ms
        self.mono += ms

    def report(self, received: int | None = None, created: int | None = None) -> ReportView:
        evs, self.events = tuple(self.events), []
        rec = received if received is not None else self.wall + 30 * MIN
        return ReportView(
            f"r{evs[0].seq if evs else 0}",
            created if created is not None else self.wall,
            rec,
            evs[0].seq if evs else 0,
            evs[-1].seq if evs else 0,
            evs,
        )


def history(reports: Iterable[ReportView], every: int | None = None) -> InstanceHistory:
    return InstanceHistory("inst-a", "lic-1", "acme", every, 0, tuple(reports))


def week_with_seats(b: Builder, *, usage_every: int = 15 * MIN, seats: int = 2) -> ReportView:
    """A week where ``seats`` leases stay open and usage flows steadily."""
    for i in range(seats):
        b.add("seat.checkout", lease=f"w{b.seq}-{i}")
    b.run(7 * DAY, seats=seats, usage_every=usage_every)
    leases = [e.lease for e in b.events if e.kind == "seat.checkout"]
    for lease in leases:
        b.add("seat.release", lease=lease)
    return b.report()


def stop_and_restart(b: Builder, down_ms: int, *, clean: bool) -> None:
    if clean:
        b.add("shutdown")
    b.tick(down_ms)
    b.mono = 1_000
    b.add("boot")
