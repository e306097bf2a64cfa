"""Injectable clocks. Everything that depends on time takes a :class:`Clock`.

``wall_ms`` is Unix time in milliseconds (the customer can set it);
``mono_ms`` is a monotonic clock in milliseconds that the customer cannot step
while the machine runs (CLOCK_MONOTONIC on Linux: time since boot).
``boot_id`` names the current boot, so a verifier can tell a reboot (monotonic
time restarts) from a monotonic clock going backwards.
``now`` is ``wall_ms`` as an aware UTC datetime, for code that decides in
datetimes; it is always derived from ``wall_ms``, so the two never disagree.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


class Clock(Protocol):
    def wall_ms(self) -> int: ...
    def mono_ms(self) -> int: ...
    def boot_id(self) -> bytes: ...
    def now(self) -> datetime: ...


def wall_datetime(wall_ms: int) -> datetime:
    """An aware UTC datetime for a Unix time in milliseconds."""
    return datetime.fromtimestamp(wall_ms / 1000, UTC)


class SystemClock:
    """The machine's clocks; the boot id comes from the kernel where it offers one."""

    def __init__(self) -> None:
        try:
            self._boot = uuid.UUID(_BOOT_ID_FILE.read_text().strip()).bytes
        except (OSError, ValueError):
            # No kernel boot id: a per-process id still separates monotonic timelines.
            self._boot = uuid.uuid4().bytes

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def mono_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000

    def boot_id(self) -> bytes:
        return self._boot

    def now(self) -> datetime:
        return wall_datetime(self.wall_ms())


class ManualClock:
    """A clock that moves only when told to: for tests, vectors and simulations."""

    def __init__(
        self, wall_ms: int = 1_767_225_600_000, mono_ms: int = 1_000, boot: bytes = b"\x01" * 16
    ):
        self._wall = wall_ms
        self._mono = mono_ms
        self._boot = boot

    def wall_ms(self) -> int:
        return self._wall

    def mono_ms(self) -> int:
        return self._mono

    def boot_id(self) -> bytes:
        return self._boot

    def now(self) -> datetime:
        return wall_datetime(self.wall_ms())

    def advance(self, ms: int) -> None:
        """Let time pass: both clocks move together."""
        self._wall += ms
        self._mono += ms

    def step_wall(self, ms: int) -> None:
        """Set the wall clock forward or back without monotonic time passing."""
        self._wall += ms

    def reboot(self, boot: bytes, mono_ms: int = 1_000) -> None:
        self._boot = boot
        self._mono = mono_ms
