"""Release every seat still held when the interpreter exits.

A process that forgets to release (or exits through ``sys.exit`` inside a ``with``
block that never unwinds, or from a daemon thread) would otherwise hold its seats
until their leases run out. kill -9 cannot be caught; leases cover that case.

SIGTERM (what ``kill``, systemd and container runtimes send) ends Python without
running ``atexit``, so while a seat is held and the application has left SIGTERM at its
default, a handler releases the held seats and then lets the default action end the
process with the usual status (128 + 15). An application's own SIGTERM handler is left
alone: it decides how to unwind, and its ``with`` blocks release as usual.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from types import FrameType
from typing import Protocol

import httpx

from meterbox.client._core import failover_order, release_request

log = logging.getLogger("meterbox.client")


class _Releasable(Protocol):
    def release_at_exit(self) -> None: ...


_lock = threading.Lock()
_held: dict[int, _Releasable] = {}


def hold(seat: _Releasable) -> None:
    with _lock:
        _held[id(seat)] = seat
    _install_sigterm()


def _install_sigterm() -> None:
    # Signal handlers can only be set from the main thread; a seat taken elsewhere is
    # still released at a normal exit.
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _release_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def drop(seat: _Releasable) -> None:
    with _lock:
        _held.pop(id(seat), None)


def release_blocking(urls: tuple[str, ...], prefer: str | None, lease_id: str) -> None:
    """Release one lease with a fresh blocking HTTP client (no event loop needed)."""
    req = release_request(lease_id)
    with httpx.Client(timeout=2.0) as http:
        for url in failover_order(urls, prefer):
            try:
                resp = http.request(req.method, url + req.path, json=req.body)
            except httpx.TransportError:
                continue
            if resp.status_code != 503:
                return


@atexit.register
def _release_all() -> None:
    with _lock:
        seats = list(_held.values())
        _held.clear()
    for seat in seats:
        try:
            seat.release_at_exit()
        except Exception as exc:  # noqa: BLE001 - exit must go on; the lease will expire
            log.warning("could not release a seat at exit: %s", exc)
