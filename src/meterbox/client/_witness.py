"""The client as a witness of the server's ledger head (docs/spec/witness.md).

Every acknowledgement of a state change carries the server's ledger head in a
``Meterbox-Head`` header. The SDK keeps the latest one per server URL in its spool
(durably, so it survives a restart of the application) and sends it back with its
next state-changing request as ``Meterbox-Witness``. A server restored from a copy of
its data directory, or whose ledger was cut back, then meets a head it never had and
records the finding at once.

Witnessing is evidence, never a condition of service: a spool that cannot be opened
or a head the server sent malformed is logged and the request goes on without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from meterbox.client._core import Request
from meterbox.client._spool import Spool
from meterbox.errors import FormatError, MeterboxError
from meterbox.witness import HEAD_HEADER, WITNESS_HEADER, parse_head

log = logging.getLogger("meterbox.client")


def witness_headers(spool: Callable[[], Spool], url: str, req: Request) -> dict[str, str]:
    """The ``Meterbox-Witness`` header for a state-changing request to ``url``, if any."""
    if req.method != "POST":
        return {}
    try:
        head = spool().head_for(url)
    except MeterboxError as exc:
        log.warning("no ledger head sent to %s: %s", url, exc)
        return {}
    return {} if head is None else {WITNESS_HEADER: head.to_header()}


def keep_head(spool: Callable[[], Spool], url: str, headers: Mapping[str, str], now: float) -> None:
    """Keep the ``Meterbox-Head`` an answer from ``url`` carried, if newer than the one held."""
    value = headers.get(HEAD_HEADER)
    if value is None:
        return
    try:
        head = parse_head(value)
    except FormatError as exc:
        log.warning("server %s sent a %s not as specified: %s", url, HEAD_HEADER, exc)
        return
    try:
        spool().keep_head(url, head, now)
    except MeterboxError as exc:
        log.warning("could not keep the ledger head of %s: %s", url, exc)
