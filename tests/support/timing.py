"""Stand-ins for the waits of background loops, so a test decides when each delay is over.

The client's seat renewers and the server's housekeeping loop take their wait as an
argument (``Client(renew_wait=...)``, ``AsyncClient(renew_sleep=...)``,
``LicenseService(sleep=...)``, ``build_app(sleep=...)``). Given one of these, the loop
blocks on every wait until the test calls ``fire``: the wait then ends as if its delay
had passed, ``on_fire`` moves the test's clocks by that delay, and ``fire`` returns once
the loop has finished the round (it asks for its next wait, or it ends). No test sleeps
through a lease, and every round happens at a time the test chose.

Invariants: waits end in the order they were asked for, one per ``fire``; a wait asked
for and never fired ends only when the loop is stopped (the stop event, or cancelling
the task), exactly as a real wait would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

#: How long ``fire`` waits for the loop to ask for a wait, or to finish a round. Far above
#: any round's real work (one local HTTP request), so reaching it means the loop is stuck.
ROUND_TIMEOUT = 15.0
_POLL = 0.002


def _until(ready: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out after {timeout} s: {what}"
        time.sleep(_POLL)


async def _until_async(ready: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out after {timeout} s: {what}"
        # A real pause, not a stand-in for the loop's delay: it lets the other task run.
        await asyncio.sleep(_POLL)


class ManualWaits:
    """Stands in for :meth:`threading.Event.wait` in a loop running in its own thread."""

    def __init__(self, on_fire: Callable[[float], None] | None = None) -> None:
        #: Every delay asked for, in order (the last one may still be pending).
        self.delays: list[float] = []
        #: The sum of the delays fired so far: how much time the loop believes has passed.
        self.elapsed = 0.0
        self._on_fire = on_fire
        self._fired = 0
        self._lock = threading.Lock()
        self._waiter: threading.Thread | None = None

    def __call__(self, stop: threading.Event, seconds: float) -> bool:
        with self._lock:
            self.delays.append(seconds)
            index = len(self.delays) - 1
            self._waiter = threading.current_thread()
        # Polling the stop event is only how a release is noticed; it is not the delay.
        while not stop.wait(_POLL):
            with self._lock:
                if self._fired > index:
                    return False
        return True

    def fire(self, timeout: float = ROUND_TIMEOUT) -> float:
        """End the oldest pending wait and return its delay once the round is done."""
        _until(lambda: len(self.delays) > self._fired, "the loop to ask for a wait", timeout)
        with self._lock:
            index = self._fired
            delay = self.delays[index]
            waiter = self._waiter
            if self._on_fire is not None:
                self._on_fire(delay)
            self.elapsed += delay
            self._fired += 1
        assert waiter is not None
        _until(
            lambda: len(self.delays) > index + 1 or not waiter.is_alive(),
            "the loop to finish its round",
            timeout,
        )
        return delay


class ManualSleeps:
    """Stands in for :func:`asyncio.sleep` in a loop running as an asyncio task.

    ``await fire()`` from a task on the same event loop; ``fire_from_thread()`` when the
    loop's event loop runs in another thread (a server under uvicorn in a thread).
    """

    def __init__(self, on_fire: Callable[[float], None] | None = None) -> None:
        #: Every delay asked for, in order (the last one may still be pending).
        self.delays: list[float] = []
        #: The sum of the delays fired so far: how much time the loop believes has passed.
        self.elapsed = 0.0
        self._on_fire = on_fire
        self._fired = 0
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._task: asyncio.Task[object] | None = None

    async def __call__(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self.delays.append(seconds)
            self._pending.append((loop, future))
            self._task = asyncio.current_task()
        await future

    def _asked(self) -> bool:
        return len(self.delays) > self._fired

    def _release(self) -> tuple[float, Callable[[], bool]]:
        with self._lock:
            index = self._fired
            delay = self.delays[index]
            loop, future = self._pending[index]
            task = self._task
            if self._on_fire is not None:
                self._on_fire(delay)
            self.elapsed += delay
            self._fired += 1
        loop.call_soon_threadsafe(_resolve, future)

        def settled() -> bool:
            return len(self.delays) > index + 1 or (task is not None and task.done())

        return delay, settled

    async def fire(self, timeout: float = ROUND_TIMEOUT) -> float:
        """End the oldest pending sleep and return its delay once the round is done."""
        await _until_async(self._asked, "the loop to ask for a sleep", timeout)
        delay, settled = self._release()
        await _until_async(settled, "the loop to finish its round", timeout)
        return delay

    def fire_from_thread(self, timeout: float = ROUND_TIMEOUT) -> float:
        """:meth:`fire` for a loop whose event loop runs in another thread."""
        _until(self._asked, "the loop to ask for a sleep", timeout)
        delay, settled = self._release()
        _until(settled, "the loop to finish its round", timeout)
        return delay


def _resolve(future: asyncio.Future[None]) -> None:
    # A sleep cancelled meanwhile (the loop was stopped) has nothing left to wake.
    if not future.done():
        future.set_result(None)
