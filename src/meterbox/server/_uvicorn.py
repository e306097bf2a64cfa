"""uvicorn, adjusted for a license server that must stop cleanly and resist slow clients."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Final

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds a connection may take to deliver a request's headers. uvicorn's keep-alive
#: timeout only runs between requests, and every received byte resets it, so a client
#: that trickles its headers would otherwise hold a connection slot forever.
HEADER_TIMEOUT_SECONDS: Final = 10.0


class HeaderTimeoutProtocol(H11Protocol):
    """H11 protocol that closes a connection whose request headers do not arrive in time."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        # A request whose headers arrived has a live cycle: its body and the answer may
        # take as long as they need. Only a connection still waiting for headers is cut.
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        if waiting_for_headers and not self.transport.is_closing():
            self.transport.close()


class GracefulServer(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGTERM/SIGINT after the graceful shutdown.

    uvicorn re-raises a captured signal once it has stopped serving, which would kill
    the process before the ledger is closed (shutdown record, final sync). Here the
    signal only asks for the graceful stop, and ``run`` returns normally.
    """

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
