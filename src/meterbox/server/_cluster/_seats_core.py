"""Who holds the cluster's seats and who waits for them: pure decisions (docs/adr/0034).

A slot key's value says who holds the seat (:class:`SlotHolder`): the node, the lease,
the client, and the user, host and group the site's options file decides on, plus when
the lease was issued (reservations are filled in issue order). Every node reads the
same slot values, so the options file's maximums and reservations are decided over the
leases of the whole cluster (:func:`holders_as_leases` feeds
:meth:`~meterbox.server._core.options.SeatOptions.admit`).

Waiters (:class:`Waiter`) are etcd keys ordered by their ``create_revision``, one
order for the whole cluster: :func:`places_ahead` counts who waits ahead of a request
and :func:`queue_guard` names the compare a claiming transaction carries so that no
seat goes to anyone but the oldest waiter.

Invariants (checked by the property tests): ``parse_slot(slot_value(h)) == h``; a value
this module cannot read still counts as a held seat (:func:`holder_of`); exactly the
oldest waiter, or anyone when nobody waits, has no one ahead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from meterbox.server._core.seats import SeatLease

#: Longest string a slot value may carry (client ids, hosts and users the API takes are
#: shorter; the options file's names are at most 200).
MAX_NAME: Final = 1024
_FIELDS: Final = ("node", "lease", "client", "user", "host", "group", "issued_ms")
_OPTIONAL: Final = ("user", "host", "group")


class SlotValueError(ValueError):
    """A slot key's value is not a holder this version understands."""


@dataclass(frozen=True)
class SlotHolder:
    """Who holds one seat of the cluster (a slot key's value)."""

    node: str
    lease: str
    client: str
    user: str | None = None
    host: str | None = None
    group: str | None = None
    #: When the lease was issued, in ms since the epoch (0: not known).
    issued_ms: int = 0

    @classmethod
    def of(cls, node: str, lease: SeatLease) -> SlotHolder:
        return cls(
            node=node,
            lease=lease.lease_id,
            client=lease.client_id,
            user=lease.user,
            host=lease.hostname,
            group=lease.group,
            issued_ms=int(lease.issued_at.timestamp() * 1000),
        )


def slot_value(holder: SlotHolder) -> bytes:
    """The slot key's value: compact JSON, absent identities left out."""
    doc: dict[str, Any] = {"node": holder.node, "lease": holder.lease, "client": holder.client}
    for name in _OPTIONAL:
        if (v := getattr(holder, name)) is not None:
            doc[name] = v
    if holder.issued_ms:
        doc["issued_ms"] = holder.issued_ms
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _bad(found: str) -> SlotValueError:
    return SlotValueError(
        "expected a JSON object with string node, lease and client (and optional "
        f"user, host, group and integer issued_ms), found {found}"
    )


def parse_slot(raw: bytes) -> SlotHolder:
    """The holder a slot value names; :class:`SlotValueError` says what is wrong.

    Values written before ADR 0034 (node, lease and client only) parse with no identity.
    Unknown fields are ignored, so a newer node's values stay readable.
    """
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"{raw[:60]!r} ({exc})") from None
    if not isinstance(doc, dict):
        raise _bad(type(doc).__name__)
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = doc.get(name)
        if name == "issued_ms":
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _bad(f"issued_ms={value!r}")
        elif value is None and name in _OPTIONAL:
            continue
        elif (
            not isinstance(value, str)
            or len(value) > MAX_NAME
            or (not value and name not in _OPTIONAL)
        ):
            raise _bad(f"{name}={value!r}"[:80])
        out[name] = value
    return SlotHolder(**out)


def holder_of(key: str, raw: bytes) -> SlotHolder:
    """The holder of slot ``key``; one whose value cannot be read still holds the seat.

    Such a seat counts against the feature's capacity but matches no user, host or
    group: refusing to count it would let the cluster exceed its seats.
    """
    try:
        return parse_slot(raw)
    except SlotValueError:
        return SlotHolder(node="", lease=f"unreadable:{key}", client="")


def holders_as_leases(feature: str, holders: Iterable[SlotHolder]) -> list[SeatLease]:
    """The holders as the live leases the options file's ``admit`` decides on.

    Only the fields the options file reads are meaningful (identity, issue time and
    lease id); the expiry is irrelevant to it and set one lease length after issue.
    """
    out = []
    for h in holders:
        issued = datetime.fromtimestamp(h.issued_ms / 1000, UTC)
        out.append(
            SeatLease(
                lease_id=h.lease,
                feature=feature,
                client_id=h.client,
                license_id="",
                issued_at=issued,
                expires_at=issued + timedelta(seconds=1),
                lease_seconds=1,
                hostname=h.host,
                user=h.user,
                group=h.group,
            )
        )
    return out


# ------------------------------------------------------------------ the queue
@dataclass(frozen=True)
class Waiter:
    """One waiter key of a feature's cluster-wide queue."""

    key: str
    create_revision: int


def places_ahead(waiters: Sequence[Waiter], mine: Waiter | None) -> int:
    """How many wait ahead of a request: all of them for one that does not wait.

    A waiter whose own key is gone (its node lost its session) is no longer in the
    queue and counts as not waiting.
    """
    if mine is None or not any(w.key == mine.key for w in waiters):
        return len(waiters)
    return sum(1 for w in waiters if w.create_revision < mine.create_revision)


@dataclass(frozen=True)
class QueueGuard:
    """What a claim's transaction compares on the queue's keys.

    ``empty``: no waiter key at all; ``oldest``: every waiter key was created at or
    after ``create_revision`` (the claimant's own key is the oldest).
    """

    kind: Literal["empty", "oldest"]
    create_revision: int = 0


def queue_guard(waiters: Sequence[Waiter], mine: Waiter | None) -> QueueGuard | None:
    """The compare that keeps the queue's order in the claim, or None if others wait ahead."""
    if places_ahead(waiters, mine):
        return None
    if mine is None or not any(w.key == mine.key for w in waiters):
        return QueueGuard("empty")
    return QueueGuard("oldest", mine.create_revision)


__all__ = [
    "QueueGuard",
    "SlotHolder",
    "SlotValueError",
    "Waiter",
    "holder_of",
    "holders_as_leases",
    "parse_slot",
    "places_ahead",
    "queue_guard",
    "slot_value",
]
