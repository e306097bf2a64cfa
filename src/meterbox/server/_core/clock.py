"""License time: a clock the customer cannot turn back.

License time is the latest of

* the wall clock,
* the floor: the last license time handed out (persisted, so it survives restarts),
  the time of the last authenticated ledger record (read from the ledger by the
  server's fold at every start, so a deleted or edited state file cannot lower it),
  and the vendor time of the last receipt,
* the floor advanced by the monotonic clock elapsed since the floor was set.

The third term matters: if the wall clock is set back by a day, license time does
not freeze for a day (which would keep every lease alive); it keeps running at the
rate of the monotonic clock from where it was. Setting the wall clock forward moves
license time forward, which only shortens what the customer gets, and is recorded.

Invariants: :meth:`LicenseClock.observe` never returns a time earlier than any time
it returned before, nor earlier than any floor given to :meth:`raise_floor`.

Step notices compare the wall clock with the monotonic clock: between two
observations both should advance by the same amount; a difference beyond
``step_threshold`` seconds (default 300 s, three times tighter than RLM's 15-minute
TIMEJUMP) is reported once as a :class:`ClockStepNotice`. A notice is for the
operator only (the ``meterbox_clock_steps_total`` metric, ``/v1/status``, the
dashboard and the log). The evidence is the ledger's own ``CLOCK_STEP`` record,
which the ledger writer seals by itself with the same threshold; nothing here is
written to the ledger. The class is pure: the caller passes both clock readings in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

DEFAULT_STEP_THRESHOLD = 300.0


@dataclass(frozen=True)
class ClockStepNotice:
    """For the operator: the wall clock moved by ``delta_seconds`` more than the monotonic one."""

    wall_before: datetime
    wall_after: datetime
    delta_seconds: float


@dataclass(frozen=True)
class ClockReading:
    now: datetime
    step: ClockStepNotice | None = None


class LicenseClock:
    """Non-decreasing license time with wall-clock step detection."""

    def __init__(self, *, floor: datetime, step_threshold: float = DEFAULT_STEP_THRESHOLD) -> None:
        if floor.utcoffset() is None:
            raise ValueError("floor must be timezone-aware")
        if step_threshold <= 0:
            raise ValueError("step_threshold must be positive")
        self._floor = floor
        self._floor_mono: float | None = None
        self._threshold = step_threshold
        self._last_wall: datetime | None = None
        self._last_mono: float | None = None

    @property
    def floor(self) -> datetime:
        """The latest license time handed out or imposed so far."""
        return self._floor

    @property
    def step_threshold(self) -> float:
        return self._threshold

    def raise_floor(self, t: datetime) -> None:
        """Never hand out a time before ``t`` again (ledger time, receipt vendor time)."""
        if t > self._floor:
            self._floor = t
            # The monotonic extrapolation restarts from the new floor at next observe.
            self._floor_mono = None

    def observe(self, wall: datetime, mono: float) -> ClockReading:
        """License time for a wall-clock reading and a monotonic reading (seconds)."""
        step: ClockStepNotice | None = None
        if self._last_wall is not None and self._last_mono is not None:
            expected = self._last_wall + timedelta(seconds=mono - self._last_mono)
            delta = (wall - expected).total_seconds()
            if abs(delta) > self._threshold:
                step = ClockStepNotice(wall_before=expected, wall_after=wall, delta_seconds=delta)
        self._last_wall, self._last_mono = wall, mono

        candidate = self._floor
        if self._floor_mono is not None and mono > self._floor_mono:
            candidate = self._floor + timedelta(seconds=mono - self._floor_mono)
        now = max(wall, candidate)
        self._floor = now
        self._floor_mono = mono
        return ClockReading(now=now, step=step)
