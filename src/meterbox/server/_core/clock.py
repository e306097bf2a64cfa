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

Clock steps are not detected here: the ledger writer compares the wall clock with the
monotonic clock before every batch and seals a ``CLOCK_STEP`` record for a step beyond
its threshold (``LedgerConfig.clock_step_threshold_ms``). That record is the vendor's
evidence, and the writer's count of them (``LedgerWriter.clock_steps``) is what the
operator sees (the ``meterbox_clock_steps_total`` metric, ``/v1/status``, the dashboard
and the log), so the two can never disagree. The class is pure: the caller passes both
clock readings in.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class LicenseClock:
    """Non-decreasing license time."""

    def __init__(self, *, floor: datetime) -> None:
        if floor.utcoffset() is None:
            raise ValueError("floor must be timezone-aware")
        self._floor = floor
        self._floor_mono: float | None = None

    @property
    def floor(self) -> datetime:
        """The latest license time handed out or imposed so far."""
        return self._floor

    def raise_floor(self, t: datetime) -> None:
        """Never hand out a time before ``t`` again (ledger time, receipt vendor time)."""
        if t > self._floor:
            self._floor = t
            # The monotonic extrapolation restarts from the new floor at next observe.
            self._floor_mono = None

    def observe(self, wall: datetime, mono: float) -> datetime:
        """License time for a wall-clock reading and a monotonic reading (seconds)."""
        candidate = self._floor
        if self._floor_mono is not None and mono > self._floor_mono:
            candidate = self._floor + timedelta(seconds=mono - self._floor_mono)
        now = max(wall, candidate)
        self._floor = now
        self._floor_mono = mono
        return now
