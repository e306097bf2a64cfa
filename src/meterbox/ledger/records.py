"""Typed payloads of ledger records: one frozen dataclass per record type with a payload.

A record's payload is a msgpack map with one- or two-letter keys (docs/spec/ledger.md,
"Payloads"); short keys keep records small, and ``f`` means *feature* in seat records
but *flagged* in usage records. This module is the one place that knows the keys:
writers build a typed payload and call :meth:`to_map`; readers call
:func:`parse_payload` (or ``SomeType.from_map``) and use spelled-out field names.

Invariants:

* ``to_map()`` produces exactly the keys, key order and value types the format
  defines, so the sealed bytes do not depend on which code built the payload;
* ``from_map(to_map(x)) == x`` for every payload ``x``;
* ``from_map`` accepts any mapping and either returns a payload or raises
  :class:`~meterbox.errors.FormatError` naming the key, what was expected and what
  was found. Keys it does not know are ignored: the ledger seals any map, and a
  reader only relies on the keys listed here;
* an optional field that is ``None`` (or a flag that is false) is left out of the map,
  as the server has always written it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, Final, Literal, Self

import msgpack

from meterbox.errors import FormatError
from meterbox.ledger._format import RecordType

#: The largest amount one record may carry (usage, decrement, top-up), shared by the
#: server, the Cryptolens compatibility layer and the vendor. With at most 4,000,000
#: records in a report (docs/spec/report.md, "Limits") no per-report sum can leave a
#: signed 64-bit integer.
MAX_AMOUNT: Final = 10**12

_Kind = Literal["int", "str", "bytes", "flag", "str_list"]
_KIND_TEXT: Final[dict[str, str]] = {
    "int": "an integer",
    "str": "a string",
    "bytes": "binary data",
    "flag": "an integer flag (1 when set)",
    "str_list": "a list of strings",
}


def _req(key: str, kind: _Kind) -> Any:
    return field(metadata={"key": key, "kind": kind})


def _opt(key: str, kind: _Kind) -> Any:
    return field(default=False if kind == "flag" else None, metadata={"key": key, "kind": kind})


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value})"
    return type(value).__name__


def _check(owner: str, key: str, kind: str, value: object) -> Any:
    ok: bool
    if kind in ("int", "flag"):
        ok = isinstance(value, int) and (kind == "flag" or not isinstance(value, bool))
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "bytes":
        ok = isinstance(value, bytes)
    else:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    if not ok:
        raise FormatError(
            f"{owner} payload has an ill-typed {key!r}",
            expected=_KIND_TEXT[kind],
            found=_describe(value),
        )
    if kind == "flag":
        return bool(value)
    if kind == "str_list":
        return tuple(value)  # type: ignore[arg-type]
    return value


def _require_map(owner: str, data: object) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise FormatError(
            f"{owner} payload is not a map", expected="a msgpack map", found=_describe(data)
        )
    return data


@dataclass(frozen=True, slots=True, kw_only=True)
class _Payload:
    """Keyed fields: each dataclass field names its map key and value kind."""

    record_type: ClassVar[RecordType]

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            key, kind = f.metadata["key"], f.metadata["kind"]
            value = getattr(self, f.name)
            if kind == "flag":
                if value:
                    out[key] = 1
            elif value is not None:
                out[key] = list(value) if kind == "str_list" else value
        return out

    @classmethod
    def from_map(cls, data: Mapping[str, Any]) -> Self:
        owner = cls.record_type.name
        data = _require_map(owner, data)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key, kind = f.metadata["key"], f.metadata["kind"]
            if key in data:
                kwargs[f.name] = _check(owner, key, kind, data[key])
            elif f.default is MISSING:
                raise FormatError(
                    f"{owner} payload lacks {key!r}",
                    expected=f"{key!r} as {_KIND_TEXT[kind]}",
                    found="keys " + (", ".join(repr(k) for k in data) or "none"),
                )
        return cls(**kwargs)


# ----------------------------------------------------------------- usage
@dataclass(frozen=True, slots=True, kw_only=True)
class Usage(_Payload):
    """Units of a meter used by a client (``usage``)."""

    record_type: ClassVar[RecordType] = RecordType.USAGE
    meter: str = _req("m", "str")
    amount: int = _req("a", "int")
    client_id: str | None = _opt("c", "str")
    license_id: str | None = _opt("l", "str")
    idempotency_key: str | None = _opt("k", "str")
    #: Over the license's limit and allowed (an overage the vendor bills as such).
    flagged: bool = _opt("f", "flag")


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageDecrement(Usage):
    """Units given back (``usage.decrement``); same fields as :class:`Usage`."""

    record_type: ClassVar[RecordType] = RecordType.USAGE_DECREMENT


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageDenied(Usage):
    """A usage request refused (``usage.denied``); same fields as :class:`Usage`."""

    record_type: ClassVar[RecordType] = RecordType.USAGE_DENIED


# ----------------------------------------------------------------- seats
@dataclass(frozen=True, slots=True, kw_only=True)
class SeatCheckout(_Payload):
    """A floating seat leased to a client (``seat.checkout``)."""

    record_type: ClassVar[RecordType] = RecordType.SEAT_CHECKOUT
    lease_id: str | None = _opt("i", "str")
    feature: str = _req("f", "str")
    client_id: str | None = _opt("c", "str")
    license_id: str | None = _opt("l", "str")
    #: Lease expiry, Unix seconds.
    expires: int | None = _opt("e", "int")
    #: A seat beyond the license's count, allowed as overdraft.
    overdraft: bool = _opt("o", "flag")
    #: The id (public part) of the site API key that checked the lease out: only that
    #: key may renew or release it. Absent for leases taken without a key and in
    #: records written before it was added.
    key_id: str | None = _opt("k", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatRenew(_Payload):
    """A lease extended (``seat.renew``)."""

    record_type: ClassVar[RecordType] = RecordType.SEAT_RENEW
    lease_id: str = _req("i", "str")
    #: New lease expiry, Unix seconds.
    expires: int | None = _opt("e", "int")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatRelease(_Payload):
    """A lease given back by its client (``seat.release``)."""

    record_type: ClassVar[RecordType] = RecordType.SEAT_RELEASE
    lease_id: str = _req("i", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatExpire(SeatRelease):
    """A lease the server expired (``seat.expire``); same fields as :class:`SeatRelease`."""

    record_type: ClassVar[RecordType] = RecordType.SEAT_EXPIRE


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatRemoved(SeatRelease):
    """A lease the site administrator took away (``seat.removed``).

    A subclass of :class:`SeatRelease`: for everything that reads seat intervals the
    lease ends here, as if released; ``removed_by`` says who ended it.
    """

    record_type: ClassVar[RecordType] = RecordType.SEAT_REMOVED
    #: Who removed it, as the administrator's tool states it (e.g. ``alice via cli``).
    removed_by: str = _req("b", "str")
    reason: str | None = _opt("r", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatBorrowed(SeatCheckout):
    """A seat borrowed for use with no server (``seat.borrowed``).

    A subclass of :class:`SeatCheckout`: for everything that reads seat intervals the
    lease starts here and runs to ``expires`` (the borrow token's expiry) unless a
    :class:`SeatReturned` ends it earlier. ``machine`` is the SHA-256 (hex) of the
    machine code the borrow token is bound to, never the code itself.
    """

    record_type: ClassVar[RecordType] = RecordType.SEAT_BORROWED
    machine: str = _req("h", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatReturned(SeatRelease):
    """A borrowed seat given back before its expiry (``seat.returned``).

    A subclass of :class:`SeatRelease`; same fields.
    """

    record_type: ClassVar[RecordType] = RecordType.SEAT_RETURNED


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatUnknown(_Payload):
    """A client renewed or released a lease the server does not hold (``seat.unknown``).

    Written so the vendor can tell a lease that ran out (its checkout is in the
    ledger) from one whose checkout the ledger lost, as after a restored copy.
    """

    record_type: ClassVar[RecordType] = RecordType.SEAT_UNKNOWN
    lease_id: str = _req("i", "str")
    #: What the client asked for: ``renew`` or ``release``.
    operation: str = _req("o", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatDenied(_Payload):
    """A checkout refused (``seat.denied``)."""

    record_type: ClassVar[RecordType] = RecordType.SEAT_DENIED
    feature: str = _req("f", "str")
    client_id: str | None = _opt("c", "str")
    #: The license the denial belongs to (the first license offering the feature).
    #: Absent in records written before it was added; readers then fall back to the
    #: report's license.
    license_id: str | None = _opt("l", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterMember(_Payload):
    """This node joined or left a cluster of servers sharing seats (``cluster.member``)."""

    record_type: ClassVar[RecordType] = RecordType.CLUSTER_MEMBER
    #: ``joined`` or ``left``.
    event: str = _req("k", "str")
    #: This node's instance id.
    node: str = _req("n", "str")
    #: The etcd cluster's id as etcd reports it (decimal), when it answered.
    cluster_id: str | None = _opt("x", "str")
    #: Instance ids of the members this node saw (itself included), sorted.
    members: tuple[str, ...] | None = _opt("m", "str_list")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterQuorum(_Payload):
    """This node lost or regained etcd quorum (``cluster.quorum``).

    Between a ``lost`` and the next ``regained`` the node granted no new seat or usage.
    """

    record_type: ClassVar[RecordType] = RecordType.CLUSTER_QUORUM
    #: ``lost`` or ``regained``.
    event: str = _req("k", "str")
    #: What etcd answered (or did not), for ``lost``.
    detail: str | None = _opt("d", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(_Payload):
    """The server is alive (``heartbeat``)."""

    record_type: ClassVar[RecordType] = RecordType.HEARTBEAT
    seats_in_use: int | None = _opt("n", "int")


# ------------------------------------------------------ ledger evidence
@dataclass(frozen=True, slots=True, kw_only=True)
class ClockStep(_Payload):
    """The wall clock moved against the monotonic clock (``clock.step``).

    The ledger always writes all three fields; a reader needs only the step itself.
    """

    record_type: ClassVar[RecordType] = RecordType.CLOCK_STEP
    #: Change in ms of ``wall_ms - mono_ms`` since the last recorded offset.
    delta_ms: int = _req("d", "int")
    wall_ms: int | None = _opt("w", "int")
    mono_ms: int | None = _opt("m", "int")


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint(_Payload):
    """A commitment to the chain before it (``checkpoint``)."""

    record_type: ClassVar[RecordType] = RecordType.CHECKPOINT
    #: Seq of the record before the checkpoint.
    seq: int = _req("s", "int")
    #: Chain hash through that record.
    head_hash: bytes = _req("h", "bytes")
    epoch: int = _req("e", "int")


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery(_Payload):
    """A torn tail cut when the ledger was opened (``recovery``)."""

    record_type: ClassVar[RecordType] = RecordType.RECOVERY
    #: Byte offset in the ledger file where the cut began.
    cut_offset: int = _req("o", "int")
    cut_bytes: int = _req("n", "int")
    last_good_seq: int = _req("s", "int")
    #: The highest seq the server's state had applied (acknowledged) before the cut.
    acked_seq: int | None = _opt("k", "int")
    #: How many acknowledged records (seq after ``last_good_seq``, up to
    #: ``acked_seq``) the cut removed. Always 0 when writes are durable.
    acked_lost: int | None = _opt("a", "int")


# ------------------------------------------------------------- witnesses
@dataclass(frozen=True, slots=True, kw_only=True)
class Witness(_Payload):
    """A client handed back a ledger head it was given (``witness``, docs/spec/witness.md).

    Sealed at most once per client and new head; the vendor checks every witnessed
    head against the chain of the report.
    """

    record_type: ClassVar[RecordType] = RecordType.WITNESS
    client_id: str | None = _opt("c", "str")
    #: The witnessed head's seq.
    seq: int = _req("s", "int")
    #: The witnessed head's chain hash.
    head_hash: bytes = _req("h", "bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessMismatch(Witness):
    """A client handed back a head this ledger never had (``witness.mismatch``).

    Written at once by the server that met it: the ledger was restored from a copy or
    cut back since the client was given that head.
    """

    record_type: ClassVar[RecordType] = RecordType.WITNESS_MISMATCH
    #: The server's own head seq when it met the witness.
    server_seq: int = _req("t", "int")
    #: ``ahead`` (the witnessed seq is past the server's head) or ``differs`` (the
    #: server has that seq with another chain hash).
    reason: str = _req("r", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerShortened(_Payload):
    """The ledger at open did not reach, or did not match, the batch its key state names.

    ``reason`` is ``shorter`` (the ledger ends before the key state's point: records the
    server had committed were removed), ``diverged`` (the record at that point has another
    chain hash: the ledger was replaced) or ``key_behind`` (the ledger holds batches after
    the key state's that a correct server writes only after moving the key state on: a
    saved key state was put back).
    """

    record_type: ClassVar[RecordType] = RecordType.LEDGER_SHORTENED
    reason: str = _req("r", "str")
    #: What the key state named: epoch, batch, seq and chain hash of its point.
    key_epoch: int = _req("ke", "int")
    key_batch: int = _req("kb", "int")
    key_seq: int = _req("ks", "int")
    key_hash: bytes = _req("kh", "bytes")
    #: What the ledger has: its last seq and chain hash when it was opened.
    ledger_seq: int = _req("ls", "int")
    ledger_hash: bytes = _req("lh", "bytes")
    #: The highest seq the server's state had applied, when the opener knew it.
    state_seq: int | None = _opt("k", "int")


# -------------------------------------------------------------- imports
@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptImported(_Payload):
    """A vendor receipt the server verified and imported (``receipt.imported``)."""

    record_type: ClassVar[RecordType] = RecordType.RECEIPT_IMPORTED
    #: The head seq the receipt acknowledges.
    acked_seq: int = _req("s", "int")
    #: The vendor's time, ISO 8601 (the server always writes it).
    vendor_time: str | None = _opt("t", "str")
    receipt_id: str | None = _opt("r", "str")

    @property
    def vendor_ms(self) -> int | None:
        """The vendor time in Unix ms, or ``None`` when it is absent or not ISO 8601."""
        if self.vendor_time is None:
            return None
        try:
            return round(datetime.fromisoformat(self.vendor_time).timestamp() * 1000)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True, kw_only=True)
class TopupImported(_Payload):
    """A vendor top-up the server imported (``topup.imported``)."""

    record_type: ClassVar[RecordType] = RecordType.TOPUP_IMPORTED
    topup_id: str = _req("t", "str")
    license_id: str | None = _opt("l", "str")
    meter: str = _req("m", "str")
    amount: int = _req("a", "int")


@dataclass(frozen=True, slots=True, kw_only=True)
class _NoticeApplied(_Payload):
    """A vendor license notice the server verified and applied (docs/spec/suspension.md)."""

    license_id: str = _req("l", "str")
    notice_id: str = _req("n", "str")
    #: The notice's sequence number among the notices of its license.
    sequence: int = _req("q", "int")
    reason: str | None = _opt("r", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenseSuspended(_NoticeApplied):
    """A license suspended by a vendor notice (``license.suspended``); ``resumed``: un-suspended.

    One record type for both directions: a resume is the end of a suspension, and the
    fold reads the pair as one state that flips, ordered by ``sequence``.
    """

    record_type: ClassVar[RecordType] = RecordType.LICENSE_SUSPENDED
    resumed: bool = _opt("x", "flag")


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenseRevoked(_NoticeApplied):
    """A license revoked for good by a vendor notice (``license.revoked``)."""

    record_type: ClassVar[RecordType] = RecordType.LICENSE_REVOKED


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenseInstalled(_Payload):
    """A license file installed on the server (``license.installed``)."""

    record_type: ClassVar[RecordType] = RecordType.LICENSE_INSTALLED
    license_id: str = _req("l", "str")
    #: SHA-256 hex of the license file.
    digest: str | None = _opt("d", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineActivated(_Payload):
    """A Cryptolens node-locked activation the server granted (``machine.activated``)."""

    record_type: ClassVar[RecordType] = RecordType.MACHINE_ACTIVATED
    license_id: str = _req("l", "str")
    #: The machine code verbatim, as the SDK sent it (may be empty).
    machine_code: str = _req("c", "str")
    #: Node-locked activations of the license after this change.
    activations: int = _req("n", "int")


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineDeactivated(MachineActivated):
    """A node-locked activation the server forgot (``machine.deactivated``)."""

    record_type: ClassVar[RecordType] = RecordType.MACHINE_DEACTIVATED


# ------------------------------------------------------------------ TPM
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmAnchor(_Payload):
    """The TPM counter reached ``counter`` (``tpm.anchor``): the chain commits to it.

    Written by the server after each advance of its TPM NV counter (docs/adr/0011).
    """

    record_type: ClassVar[RecordType] = RecordType.TPM_ANCHOR
    counter: int = _req("c", "int")
    #: Hex TPM Name of the counter index the value was read from.
    nv_name: str = _req("n", "str")
    #: Why the counter advanced: open, activity, epoch, import, report, resync.
    reason: str = _req("w", "str")


@dataclass(frozen=True, slots=True, kw_only=True)
class TpmRollback(_Payload):
    """At open the TPM disagreed with this ledger (``tpm.rollback``): critical evidence.

    ``kind`` is ``rollback`` (TPM counter above the ledger's), ``ahead`` (ledger above
    the TPM: another TPM or a replaced index), ``foreign`` (another TPM identity),
    ``ledger`` (the ledger is older than the server's own anchor note) or
    ``unavailable`` (the configured TPM did not answer).
    """

    record_type: ClassVar[RecordType] = RecordType.TPM_ROLLBACK
    kind: str = _req("k", "str")
    #: The counter value the ledger (or its anchor note) last committed to.
    ledger_counter: int | None = _opt("l", "int")
    #: The value the TPM holds, when it answered.
    tpm_counter: int | None = _opt("t", "int")
    detail: str | None = _opt("d", "str")


# --------------------------------------------------------------- quota
@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaBlockTaken(_Payload):
    """A cluster node reserved ``size`` units of a meter's shared quota (``quota.block.taken``).

    Written after the etcd transaction that reserved the block succeeded and before any
    unit of it is granted (docs/adr/0025): usage the node grants afterwards for the same
    (license, meter, period), unflagged, is drawn from its blocks oldest first.
    """

    record_type: ClassVar[RecordType] = RecordType.QUOTA_BLOCK_TAKEN
    block_id: str = _req("b", "str")
    license_id: str = _req("l", "str")
    meter: str = _req("m", "str")
    #: The meter's period key: ``total`` or ``YYYY-MM``.
    period: str = _req("p", "str")
    size: int = _req("n", "int")
    #: The etcd revision of the transaction that reserved the block.
    revision: int | None = _opt("r", "int")


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaBlockReturned(_Payload):
    """A node settled a quota block (``quota.block.returned``): ``used`` consumed, the rest back.

    ``reason`` is ``unused`` (given back while the node held it), ``expired`` (the node's
    etcd lease ran out while it held the block; settled from this ledger when the node came
    back) or ``lost`` (the node restarted holding it and settled it from this ledger).
    """

    record_type: ClassVar[RecordType] = RecordType.QUOTA_BLOCK_RETURNED
    block_id: str = _req("b", "str")
    license_id: str = _req("l", "str")
    meter: str = _req("m", "str")
    period: str = _req("p", "str")
    #: Units of the block the node granted (they count as consumed).
    used: int = _req("u", "int")
    #: Units that went back to the shared quota.
    returned: int = _req("n", "int")
    reason: str = _req("r", "str")


# --------------------------------------------------------------- TPM re-enrolment
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmReenrolled(_Payload):
    """The instance moved to another TPM on purpose (``tpm.reenrolled``; ADR 0031).

    Written by ``meterbox server tpm reenrol`` with the server stopped: the TPM the
    instance was anchored to until now and the one it is anchored to from here on.
    The vendor shows it as a warning and pins the new TPM only through this record;
    anchors after it continue from ``new_counter`` on the counter named ``new_nv_name``.
    """

    record_type: ClassVar[RecordType] = RecordType.TPM_REENROLLED
    #: Hex TPM Names of the old endorsement key, attestation key and counter index.
    old_ek_name: str = _req("oe", "str")
    old_ak_name: str = _req("oa", "str")
    old_nv_name: str = _req("on", "str")
    #: The last counter value the ledger committed to on the old TPM.
    old_counter: int = _req("oc", "int")
    new_ek_name: str = _req("ne", "str")
    new_ak_name: str = _req("na", "str")
    new_nv_name: str = _req("nn", "str")
    #: The new counter's value when it was enrolled: the next anchor is one above it.
    new_counter: int = _req("nc", "int")
    #: Whether the new counter index can be deleted by the owner (see ADR 0011).
    owner_deletable: bool = _opt("od", "flag")
    #: The operator's reason, as given on the command line.
    reason: str | None = _opt("r", "str")


# --------------------------------------------------------- TPM credential proof
@dataclass(frozen=True, slots=True, kw_only=True)
class TpmCredential(_Payload):
    """The answer to the TPM credential challenge a receipt carried (``tpm.credential``).

    Written when a ``meterbox-receipt/2`` is imported: ``proof`` is what
    TPM2_ActivateCredential released, bound to the AK Name (docs/spec/tpm-attestation.md),
    or ``error`` says why the server could not answer (no TPM attached, a challenge for
    another attestation key, the TPM refused). The vendor judges either at the next
    ingest (docs/adr/0036); the server never decides that its own answer is good.
    """

    record_type: ClassVar[RecordType] = RecordType.TPM_CREDENTIAL
    #: The receipt whose challenge this answers.
    receipt_id: str = _req("ri", "str")
    #: Hex TPM Name of the attestation key the challenge named.
    ak_name: str = _req("a", "str")
    #: The 32-byte proof, when the TPM released the secret.
    proof: bytes | None = _opt("p", "bytes")
    #: Why there is no proof (at most 200 characters).
    error: str | None = _opt("e", "str")


# ------------------------------------------------------------- the state
#: Column kinds of each row list of a STATE payload, by key (docs/spec/ledger.md).
STATE_ROWS: Final[dict[str, tuple[str, ...]]] = {
    # license id, meter, period, used units
    "u": ("str", "str", "str", "int"),
    # top-up id, license id, meter, amount, period, applied at (Unix ms)
    "t": ("str", "str", "str", "int", "str", "int"),
    # lease id, feature, client id, license id, issued (Unix ms), expires (Unix ms),
    # lease seconds, overdraft (0 or 1)
    "s": ("str", "str", "str", "str", "int", "int", "int", "int"),
    # license id, meter, data-object id, units charged through that object
    "d": ("str", "str", "int", "int"),
    # license id, machine code (node-locked activations)
    "ma": ("str", "str"),
    # lease id, API key id: the owner of each live lease taken with a key
    "sk": ("str", "str"),
    # license id, notice sequence, standing (suspended, active or revoked), notice id,
    # reason ("" for none), applied at (Unix ms)
    "ls": ("str", "int", "str", "str", "str", "int"),
    # a removed lease as in "s", then its API key id ("" for none), who removed it,
    # why ("" for none) and when (Unix ms)
    "rm": ("str", "str", "str", "str", "int", "int", "int", "int", "str", "str", "str", "int"),
    # lease id, machine digest: the leases of "s" that are borrowed (seat.borrowed)
    "sb": ("str", "str"),
    # block id, license id, meter, period, size, units granted from it: the quota
    # blocks this cluster node holds (quota.block_taken not yet returned)
    "qb": ("str", "str", "str", "str", "int", "int"),
}
#: Scalar keys of a STATE payload and their kinds.
STATE_SCALARS: Final[dict[str, str]] = {
    "cf": "int",  # clock floor: the latest record time folded, Unix ms
    "hs": "int",  # seq of the last record the state reflects
    "rt": "int",  # last receipt: vendor time, Unix ms
    "rs": "int",  # last receipt: acknowledged seq
    "ri": "str",  # last receipt: receipt id
    "pi": "int",  # this record's index in a run of STATE records (0 when alone)
    "pn": "int",  # how many STATE records the run has (1 when alone)
}

UsageRow = tuple[str, str, str, int]
TopupRow = tuple[str, str, str, int, str, int]
LeaseRow = tuple[str, str, str, str, int, int, int, int]
ChargedRow = tuple[str, str, int, int]
MachineRow = tuple[str, str]
LeaseKeyRow = tuple[str, str]
StandingRow = tuple[str, int, str, str, str, int]
RemovalRow = tuple[str, str, str, str, int, int, int, int, str, str, str, int]
BorrowRow = tuple[str, str]
QuotaBlockRow = tuple[str, str, str, str, int, int]


def _rows(key: str, data: Mapping[str, Any]) -> tuple[tuple[Any, ...], ...]:
    kinds = STATE_ROWS[key]
    raw = data.get(key, [])
    if not isinstance(raw, list | tuple):
        raise FormatError(
            f"STATE payload has an ill-typed {key!r}",
            expected="a list of rows",
            found=_describe(raw),
        )
    out = []
    for i, row in enumerate(raw):
        if not isinstance(row, list | tuple) or len(row) != len(kinds):
            raise FormatError(
                f"STATE payload row {i} of {key!r} has the wrong shape",
                expected=f"a list of {len(kinds)} values ({', '.join(kinds)})",
                found=_describe(row)
                if not isinstance(row, list | tuple)
                else f"a list of {len(row)} values",
            )
        out.append(
            tuple(_check("STATE", f"{key}[{i}]", k, v) for k, v in zip(kinds, row, strict=True))
        )
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    """Everything enforcement needs, as of the record before it (``state``).

    The first record after every EPOCH record (but the ledger's first epoch, which
    starts from nothing). Folded forward with the epoch's later records it gives the
    server's whole enforcement state, so the current epoch alone (whose key the
    server holds) rebuilds every cache file. A state too large for one record is a
    run of ``count`` STATE records, each with its ``index``; :func:`merge_states`
    joins them.
    """

    record_type: ClassVar[RecordType] = RecordType.STATE
    usage: tuple[UsageRow, ...] = ()
    topups: tuple[TopupRow, ...] = ()
    leases: tuple[LeaseRow, ...] = ()
    charged: tuple[ChargedRow, ...] = ()
    machines: tuple[MachineRow, ...] = ()
    lease_keys: tuple[LeaseKeyRow, ...] = ()
    standings: tuple[StandingRow, ...] = ()
    removals: tuple[RemovalRow, ...] = ()
    borrowed: tuple[BorrowRow, ...] = ()
    quota_blocks: tuple[QuotaBlockRow, ...] = ()
    clock_floor_ms: int = 0
    head_seq: int = -1
    receipt_ms: int | None = None
    receipt_seq: int | None = None
    receipt_id: str | None = None
    index: int = 0
    count: int = 1

    _ROW_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("u", "usage"),
        ("t", "topups"),
        ("s", "leases"),
        ("d", "charged"),
        ("ma", "machines"),
        ("sk", "lease_keys"),
        ("ls", "standings"),
        ("rm", "removals"),
        ("sb", "borrowed"),
        ("qb", "quota_blocks"),
    )

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise FormatError(
                "STATE payload has an impossible part index",
                expected=f"0 <= index < count ({self.count})",
                found=str(self.index),
            )

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, name in self._ROW_FIELDS:
            rows = getattr(self, name)
            if rows:
                out[key] = [list(r) for r in rows]
        if self.clock_floor_ms:
            out["cf"] = self.clock_floor_ms
        if self.head_seq != -1:
            out["hs"] = self.head_seq
        if self.receipt_ms is not None:
            out["rt"] = self.receipt_ms
        if self.receipt_seq is not None:
            out["rs"] = self.receipt_seq
        if self.receipt_id is not None:
            out["ri"] = self.receipt_id
        if self.count != 1:
            out["pi"] = self.index
            out["pn"] = self.count
        return out

    @classmethod
    def from_map(cls, data: Mapping[str, Any]) -> State:
        data = _require_map("STATE", data)
        scalars = {
            k: _check("STATE", k, kind, data[k]) for k, kind in STATE_SCALARS.items() if k in data
        }
        rows = {name: _rows(key, data) for key, name in cls._ROW_FIELDS}
        return cls(
            **rows,
            clock_floor_ms=scalars.get("cf", 0),
            head_seq=scalars.get("hs", -1),
            receipt_ms=scalars.get("rt"),
            receipt_seq=scalars.get("rs"),
            receipt_id=scalars.get("ri"),
            index=scalars.get("pi", 0),
            count=scalars.get("pn", 1),
        )


def merge_states(parts: list[State]) -> State:
    """One state from a run of STATE records (rows joined, scalars of the first part)."""
    if (
        not parts
        or len(parts) != parts[0].count
        or [p.index for p in parts] != list(range(len(parts)))
    ):
        raise FormatError(
            "STATE run is incomplete",
            expected=f"{parts[0].count if parts else 1} STATE records numbered from 0",
            found=f"indexes {[p.index for p in parts]}",
        )
    first = parts[0]
    joined: dict[str, Any] = {
        name: tuple(r for p in parts for r in getattr(p, name)) for _, name in State._ROW_FIELDS
    }
    return State(
        **joined,
        clock_floor_ms=first.clock_floor_ms,
        head_seq=first.head_seq,
        receipt_ms=first.receipt_ms,
        receipt_seq=first.receipt_seq,
        receipt_id=first.receipt_id,
    )


def split_state(state: State, max_bytes: int) -> list[State]:
    """``state`` as a run of STATE records whose payloads each encode to at most ``max_bytes``.

    Rows are cut into chunks of a size estimated from their encoding; every part
    repeats the scalars, so each record reads alone.
    """
    if len(msgpack.packb(state.to_map())) <= max_bytes:
        return [state]
    rows = [(name, r) for _, name in State._ROW_FIELDS for r in getattr(state, name)]
    chunks: list[list[tuple[str, tuple[Any, ...]]]] = [[]]
    size = 0
    budget = max_bytes - 256  # scalars and list headers
    for name, r in rows:
        n = len(msgpack.packb(list(r))) + 8
        if size + n > budget and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append((name, r))
        size += n
    count = len(chunks)
    out = []
    for i, chunk in enumerate(chunks):
        grouped = {name: tuple(r for n, r in chunk if n == name) for _, name in State._ROW_FIELDS}
        out.append(
            State(
                **grouped,
                clock_floor_ms=state.clock_floor_ms,
                head_seq=state.head_seq,
                receipt_ms=state.receipt_ms,
                receipt_seq=state.receipt_seq,
                receipt_id=state.receipt_id,
                index=i,
                count=count,
            )
        )
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class StateRebuilt(_Payload):
    """A cache file did not match the ledger at open and was rebuilt (``state.rebuilt``).

    Written at open, before the cache is rewritten, so a crash in between records it
    again at the next open rather than never.
    """

    record_type: ClassVar[RecordType] = RecordType.STATE_REBUILT
    #: The cache file: ``state.db`` or ``cryptolens.db``.
    cache: str = _req("f", "str")
    #: ``missing`` (no file), ``older`` (behind the ledger), ``differed`` (edited).
    reason: str = _req("r", "str")
    #: The cache claimed less than the ledger holds (less usage, fewer leases or
    #: activations, more top-ups, a later receipt): what tampering would aim at.
    less: bool = _opt("c", "flag")
    #: What differed, one line each, at most :data:`MAX_REBUILT_ITEMS`.
    items: tuple[str, ...] = _req("d", "str_list")
    #: The ledger seq the cache said it reflected (absent when the file was missing).
    cache_seq: int | None = _opt("s", "int")


#: Lines of a STATE_REBUILT record, so a large difference still fits one record.
MAX_REBUILT_ITEMS: Final = 32


# ---------------------------------------------------------- free-form maps
@dataclass(frozen=True, slots=True)
class Genesis:
    """The ledger's first sealed record (``genesis``): the instance key plus the server's map.

    ``server_fields`` is the map the server passed at creation (today ``l``, the license
    ids, and ``fp``, the site fingerprint); ``ik`` is appended after it.
    """

    record_type: ClassVar[RecordType] = RecordType.GENESIS
    instance_key: bytes
    server_fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "ik" in self.server_fields:
            raise FormatError(
                "the server's genesis map names the instance key itself",
                expected="a map without 'ik' (the ledger adds it)",
                found="'ik' among its keys",
            )

    @property
    def license_ids(self) -> tuple[str, ...] | None:
        value = self.server_fields.get("l")
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        return None

    def to_map(self) -> dict[str, Any]:
        return {**self.server_fields, "ik": self.instance_key}

    @classmethod
    def from_map(cls, data: Mapping[str, Any]) -> Genesis:
        data = _require_map("GENESIS", data)
        if "ik" not in data:
            raise FormatError(
                "GENESIS payload lacks 'ik'",
                expected="'ik' as binary data",
                found="keys " + (", ".join(repr(k) for k in data) or "none"),
            )
        ik = _check("GENESIS", "ik", "bytes", data["ik"])
        return cls(ik, {k: v for k, v in data.items() if k != "ik"})


@dataclass(frozen=True, slots=True)
class Boot:
    """The ledger was opened (``boot``); the map is the opener's, empty by default."""

    record_type: ClassVar[RecordType] = RecordType.BOOT
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_map(self) -> dict[str, Any]:
        return dict(self.fields)

    @classmethod
    def from_map(cls, data: Mapping[str, Any]) -> Self:
        return cls(dict(_require_map(cls.record_type.name, data)))


@dataclass(frozen=True, slots=True)
class Shutdown(Boot):
    """The ledger was closed cleanly (``shutdown``); the map is the closer's."""

    record_type: ClassVar[RecordType] = RecordType.SHUTDOWN


RecordPayload = (
    Usage
    | UsageDecrement
    | UsageDenied
    | SeatCheckout
    | SeatRenew
    | SeatRelease
    | SeatExpire
    | SeatRemoved
    | SeatBorrowed
    | SeatReturned
    | SeatUnknown
    | SeatDenied
    | Heartbeat
    | ClockStep
    | Checkpoint
    | Recovery
    | LedgerShortened
    | ReceiptImported
    | TopupImported
    | LicenseSuspended
    | LicenseRevoked
    | LicenseInstalled
    | MachineActivated
    | MachineDeactivated
    | Witness
    | WitnessMismatch
    | TpmAnchor
    | TpmRollback
    | ClusterMember
    | ClusterQuorum
    | QuotaBlockTaken
    | QuotaBlockReturned
    | TpmReenrolled
    | TpmCredential
    | State
    | StateRebuilt
    | Genesis
    | Boot
    | Shutdown
)

PAYLOAD_TYPES: Final[dict[RecordType, type[RecordPayload]]] = {
    t.record_type: t
    for t in (
        Usage,
        UsageDecrement,
        UsageDenied,
        SeatCheckout,
        SeatRenew,
        SeatRelease,
        SeatExpire,
        SeatRemoved,
        SeatBorrowed,
        SeatReturned,
        SeatUnknown,
        SeatDenied,
        Heartbeat,
        ClockStep,
        Checkpoint,
        Recovery,
        LedgerShortened,
        ReceiptImported,
        TopupImported,
        LicenseSuspended,
        LicenseRevoked,
        LicenseInstalled,
        MachineActivated,
        MachineDeactivated,
        Witness,
        WitnessMismatch,
        TpmAnchor,
        TpmRollback,
        ClusterMember,
        ClusterQuorum,
        QuotaBlockTaken,
        QuotaBlockReturned,
        TpmReenrolled,
        TpmCredential,
        State,
        StateRebuilt,
        Genesis,
        Boot,
        Shutdown,
    )
}


def parse_payload(record_type: RecordType, data: Mapping[str, Any]) -> RecordPayload:
    """The typed payload of a record of ``record_type``; raises FormatError if it does not fit."""
    cls = PAYLOAD_TYPES.get(record_type)
    if cls is None:
        raise FormatError(
            f"{record_type.name} records carry no payload map",
            expected="a record type with a payload (every type but EPOCH)",
            found=record_type.name,
        )
    return cls.from_map(data)
