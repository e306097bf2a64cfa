"""Release every seat still held when the interpreter exits.

A process that forgets to release (or exits through ``sys.exit`` inside a ``with``
block that never unwinds, or from a daemon thread) would otherwise hold its seats
until their leases run out. kill -9 cannot be caught; leases cover that case.
"""

from __future__ import annotations

import atexit
import logging
import threading
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
