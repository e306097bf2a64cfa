"""Typed record payloads: exact keys and bytes, round trips, and refusal of bad maps."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.crypto import x25519_private_from_raw
from meterbox.errors import FormatError
from meterbox.ledger import RecordType, ReportVerifier
from meterbox.ledger.records import (
    PAYLOAD_TYPES,
    STATE_ROWS,
    STATE_SCALARS,
    Boot,
    Checkpoint,
    ClockStep,
    Genesis,
    Heartbeat,
    LicenseRevoked,
    LicenseSuspended,
    MachineActivated,
    MachineDeactivated,
    QuotaBlockReturned,
    QuotaBlockTaken,
    ReceiptImported,
    SeatCheckout,
    SeatExpire,
    SeatRelease,
    Shutdown,
    State,
    Usage,
    UsageDecrement,
    Witness,
    WitnessMismatch,
    parse_payload,
)
from support.ledger import VENDOR, VENDOR_ID, export, make_ledger, verify

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "ledger"

_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_TEXT = st.text(max_size=20)
_KIND_STRATEGY: dict[str, st.SearchStrategy[Any]] = {
    "int": _INTS,
    "str": _TEXT,
    "bytes": st.binary(max_size=40),
    "flag": st.booleans(),
    "str_list": st.lists(_TEXT, max_size=4).map(tuple),
}
_SCALARS = st.none() | st.booleans() | _INTS | _TEXT | st.binary(max_size=8)
_ANY_VALUE = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
_FREE_MAP = st.dictionaries(_TEXT.filter(lambda k: k != "ik"), _ANY_VALUE, max_size=4)


_STATE_COLUMN = {"int": _INTS, "str": _TEXT}


def state_strategy() -> st.SearchStrategy[State]:
    """Any STATE payload: rows of every list, optional receipt, a part of a run."""
    rows = {
        name: st.lists(st.tuples(*(_STATE_COLUMN[k] for k in STATE_ROWS[key])), max_size=4).map(
            tuple
        )
        for key, name in State._ROW_FIELDS
    }
    part = st.integers(1, 5).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n)))
    return st.builds(
        lambda p, **kw: State(index=p[0], count=p[1], **kw),
        part,
        clock_floor_ms=_INTS,
        head_seq=_INTS,
        receipt_ms=st.none() | _INTS,
        receipt_seq=st.none() | _INTS,
        receipt_id=st.none() | _TEXT,
        **rows,
    )


def _strategy(cls: type) -> st.SearchStrategy[Any]:
    if cls is State:
        return state_strategy()
    if cls is Genesis:
        return st.builds(Genesis, st.binary(min_size=32, max_size=32), _FREE_MAP)
    if issubclass(cls, Boot):
        return st.builds(cls, _FREE_MAP)
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        value = _KIND_STRATEGY[f.metadata["kind"]]
        optional = f.default is not dataclasses.MISSING and f.metadata["kind"] != "flag"
        kwargs[f.name] = (st.none() | value) if optional else value
    return st.builds(cls, **kwargs)


_ANY_PAYLOAD = st.one_of(*(_strategy(cls) for cls in PAYLOAD_TYPES.values()))


@settings(max_examples=400)
@given(_ANY_PAYLOAD)
def test_every_payload_survives_msgpack_and_back(payload: Any) -> None:
    data = msgpack.packb(payload.to_map(), use_bin_type=True)
    again = msgpack.unpackb(data, raw=False, strict_map_key=True)
    assert type(payload).from_map(again) == payload
    assert parse_payload(payload.record_type, again) == payload


def _letters(cls: type) -> list[str]:
    if cls is State:
        return [*STATE_ROWS, *STATE_SCALARS]
    if cls is Genesis:
        return ["ik", "l", "fp"]
    if issubclass(cls, Boot):
        return ["x"]
    return [f.metadata["key"] for f in dataclasses.fields(cls)]


_TYPES_WITH_PAYLOAD = sorted(PAYLOAD_TYPES, key=int)


@settings(max_examples=600)
@given(st.data())
def test_random_maps_either_parse_or_raise_format_error(data: st.DataObject) -> None:
    rtype = data.draw(st.sampled_from(_TYPES_WITH_PAYLOAD))
    keys = st.sampled_from(_letters(PAYLOAD_TYPES[rtype])) | _TEXT
    candidate = data.draw(st.dictionaries(keys, _ANY_VALUE, max_size=6) | _ANY_VALUE)
    try:
        parsed = parse_payload(rtype, candidate)
    except FormatError as exc:
        failure = exc
    else:
        failure = None
    if failure is not None:
        assert failure.expected and failure.found  # says what was wanted and what came
        return
    # Whatever parsed writes back the keys it understood, with the values it read.
    out = parsed.to_map()
    assert isinstance(candidate, dict)
    for key, value in out.items():
        assert key in candidate
        original = candidate[key]
        assert value == original or (value == 1 and original not in (0, False))


def test_server_usage_keys_and_order_are_the_specified_ones() -> None:
    usage = Usage(
        meter="solver-runs",
        amount=5,
        client_id="ws-17",
        license_id="lic_00112233445566aa",
        idempotency_key="req-0001",
    )
    assert list(usage.to_map().items()) == [
        ("m", "solver-runs"),
        ("a", 5),
        ("c", "ws-17"),
        ("l", "lic_00112233445566aa"),
        ("k", "req-0001"),
    ]
    flagged = Usage(meter="m", amount=1, client_id="c", license_id="l", flagged=True)
    assert flagged.to_map() == {"m": "m", "a": 1, "c": "c", "l": "l", "f": 1}


def test_seat_checkout_f_is_the_feature_and_usage_f_the_flag() -> None:
    seat = SeatCheckout.from_map({"i": "lease-1", "f": "cad", "c": "ws", "l": "lic", "e": 9})
    assert seat.feature == "cad" and seat.lease_id == "lease-1" and seat.expires == 9
    assert not seat.overdraft
    assert Usage.from_map({"m": "runs", "a": 2, "f": 1}).flagged is True
    with pytest.raises(FormatError, match="ill-typed 'f'"):
        Usage.from_map({"m": "runs", "a": 2, "f": "cad"})


def test_ledger_written_payloads_keep_their_keys() -> None:
    assert ClockStep(delta_ms=-5, wall_ms=1, mono_ms=2).to_map() == {"d": -5, "w": 1, "m": 2}
    cp = Checkpoint(seq=4, head_hash=b"\x01" * 32, epoch=0)
    assert list(cp.to_map()) == ["s", "h", "e"]
    genesis = Genesis(b"k" * 32, {"l": ["lic_1"], "fp": "site"})
    assert list(genesis.to_map()) == ["l", "fp", "ik"]
    assert genesis.license_ids == ("lic_1",)
    assert Shutdown({}).to_map() == {}


def test_missing_and_ill_typed_keys_name_expected_and_found() -> None:
    with pytest.raises(FormatError) as missing:
        Usage.from_map({"m": "runs"})
    assert "'a'" in missing.value.problem and missing.value.found == "keys 'm'"
    with pytest.raises(FormatError) as boolean:
        Heartbeat.from_map({"n": True})
    assert boolean.value.found == "a boolean (True)"
    with pytest.raises(FormatError, match="not a map"):
        SeatRelease.from_map([1, 2])  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="no payload map"):
        parse_payload(RecordType.EPOCH, {})
    with pytest.raises(FormatError, match="names the instance key"):
        Genesis(b"k" * 32, {"ik": b"other"})


def test_dispatch_picks_the_type_of_the_record() -> None:
    same = {"m": "runs", "a": 3}
    assert type(parse_payload(RecordType.USAGE, same)) is Usage
    assert type(parse_payload(RecordType.USAGE_DECREMENT, same)) is UsageDecrement
    assert parse_payload(RecordType.USAGE, same) != parse_payload(RecordType.USAGE_DECREMENT, same)
    assert type(parse_payload(RecordType.SEAT_EXPIRE, {"i": "x"})) is SeatExpire


def test_receipt_vendor_time_in_ms() -> None:
    r = ReceiptImported(acked_seq=3, vendor_time="2026-01-01T00:00:00+00:00")
    assert r.vendor_ms == 1_767_225_600_000
    assert ReceiptImported(acked_seq=3, vendor_time="yesterday").vendor_ms is None


def _packed(m: dict[str, Any], *, ordered: bool) -> bytes:
    return msgpack.packb(m if ordered else dict(sorted(m.items())), use_bin_type=True)


def test_vector_payloads_repack_to_their_exact_bytes() -> None:
    keys = json.loads((VECTORS / "vendor_key.json").read_bytes())["vendor"]
    vendor = {
        bytes.fromhex(keys["key_id"]): x25519_private_from_raw(
            bytes.fromhex(keys["x25519_private"])
        )
    }
    seen: set[RecordType] = set()
    for path in sorted((VECTORS / "valid").glob("*.report")):
        # The spec's example was written as the server writes: same key order too. The
        # other vectors hold hand-ordered maps, so there only keys and value types count.
        ordered = path.stem == "minimal"
        with path.open("rb") as stream:
            for record, _ in ReportVerifier(vendor).records(stream):
                typed = parse_payload(record.type, record.payload)
                assert _packed(typed.to_map(), ordered=ordered) == _packed(
                    record.payload, ordered=ordered
                ), (path.name, record.seq)
                seen.add(record.type)
    # SEAT_UNKNOWN, the Cryptolens machine, witness, TPM, state, SEAT_REMOVED, license
    # notice and borrow records
    # came after the vectors were fixed (they stay byte-identical); their payload round
    # trips are covered by the property tests over PAYLOAD_TYPES, the
    # test_*_keep_their_keys tests, and the tests that read them back from real reports.
    # LEDGER_SHORTENED is written only after an attack; it is in invalid/shortened-ledger.
    newer = {
        RecordType.LEDGER_SHORTENED,
        RecordType.SEAT_UNKNOWN,
        RecordType.MACHINE_ACTIVATED,
        RecordType.MACHINE_DEACTIVATED,
        RecordType.WITNESS,
        RecordType.WITNESS_MISMATCH,
        RecordType.TPM_ANCHOR,
        RecordType.TPM_ROLLBACK,
        RecordType.TPM_REENROLLED,
        RecordType.TPM_CREDENTIAL,
        RecordType.STATE,
        RecordType.STATE_REBUILT,
        RecordType.SEAT_REMOVED,
        RecordType.LICENSE_SUSPENDED,
        RecordType.LICENSE_REVOKED,
        RecordType.SEAT_BORROWED,
        RecordType.SEAT_RETURNED,
        RecordType.CLUSTER_MEMBER,
        RecordType.CLUSTER_QUORUM,
        RecordType.QUOTA_BLOCK_TAKEN,
        RecordType.QUOTA_BLOCK_RETURNED,
    }
    assert set(PAYLOAD_TYPES) - seen <= {RecordType.CLOCK_STEP, RecordType.RECOVERY} | newer


def test_license_notice_records_keep_their_keys() -> None:
    suspended = LicenseSuspended(license_id="lic", notice_id="ntc_1", sequence=3, reason="unpaid")
    assert suspended.to_map() == {"l": "lic", "n": "ntc_1", "q": 3, "r": "unpaid"}
    resumed = LicenseSuspended(license_id="lic", notice_id="ntc_2", sequence=4, resumed=True)
    assert resumed.to_map() == {"l": "lic", "n": "ntc_2", "q": 4, "x": 1}
    revoked = LicenseRevoked(license_id="lic", notice_id="ntc_3", sequence=5)
    assert revoked.to_map() == {"l": "lic", "n": "ntc_3", "q": 5}
    for rtype, payload in (
        (RecordType.LICENSE_SUSPENDED, suspended),
        (RecordType.LICENSE_SUSPENDED, resumed),
        (RecordType.LICENSE_REVOKED, revoked),
    ):
        assert parse_payload(rtype, payload.to_map()) == payload
    assert RecordType(29).kind == "license.suspended"
    assert RecordType(30).kind == "license.revoked"


def test_checkout_records_carry_the_key_and_old_ones_still_parse() -> None:
    new = SeatCheckout(lease_id="L", feature="cad", client_id="c", key_id="1a2b3c4d")
    assert new.to_map() == {"i": "L", "f": "cad", "c": "c", "k": "1a2b3c4d"}
    old = {"i": "L", "f": "cad", "c": "c", "l": "lic", "e": 10}
    assert SeatCheckout.from_map(old).key_id is None


def test_machine_records_keep_their_keys() -> None:
    up = MachineActivated(license_id="lic", machine_code="", activations=1)
    assert up.to_map() == {"l": "lic", "c": "", "n": 1}
    assert parse_payload(RecordType.MACHINE_ACTIVATED, up.to_map()) == up
    down = parse_payload(RecordType.MACHINE_DEACTIVATED, {"l": "lic", "c": "m", "n": 0})
    assert down == MachineDeactivated(license_id="lic", machine_code="m", activations=0)


def test_witness_records_keep_their_keys() -> None:
    seen = Witness(client_id="ws-1", seq=41, head_hash=b"\x01" * 32)
    assert seen.to_map() == {"c": "ws-1", "s": 41, "h": b"\x01" * 32}
    assert RecordType.WITNESS.kind == "witness"
    assert parse_payload(RecordType.WITNESS, seen.to_map()) == seen
    lost = WitnessMismatch(
        client_id=None, seq=90, head_hash=b"\x02" * 32, server_seq=60, reason="ahead"
    )
    assert lost.to_map() == {"s": 90, "h": b"\x02" * 32, "t": 60, "r": "ahead"}
    assert RecordType.WITNESS_MISMATCH.kind == "witness.mismatch"
    assert parse_payload(RecordType.WITNESS_MISMATCH, lost.to_map()) == lost


def test_seat_removed_keeps_its_keys() -> None:
    from meterbox.ledger import SeatRelease, SeatRemoved

    gone = SeatRemoved(lease_id="L1", removed_by="alice via cli", reason="needed")
    assert gone.to_map() == {"i": "L1", "b": "alice via cli", "r": "needed"}
    assert SeatRemoved.from_map(gone.to_map()) == gone
    # Readers of seat intervals treat it as a release.
    assert isinstance(gone, SeatRelease)
    assert SeatRemoved(lease_id="L1", removed_by="x").to_map() == {"i": "L1", "b": "x"}


def test_borrow_records_keep_their_keys() -> None:
    from meterbox.ledger import SeatBorrowed, SeatCheckout, SeatRelease, SeatReturned

    lent = SeatBorrowed(
        lease_id="L1", feature="cad", client_id="a@h", license_id="lic", expires=99, machine="ab"
    )
    assert lent.to_map() == {"i": "L1", "f": "cad", "c": "a@h", "l": "lic", "e": 99, "h": "ab"}
    assert parse_payload(RecordType.SEAT_BORROWED, lent.to_map()) == lent
    assert RecordType.SEAT_BORROWED.kind == "seat.borrowed"
    assert (RecordType.SEAT_BORROWED.value, RecordType.SEAT_RETURNED.value) == (31, 32)
    # Readers of seat intervals treat them as a checkout and a release.
    assert isinstance(lent, SeatCheckout)
    back = parse_payload(RecordType.SEAT_RETURNED, {"i": "L1"})
    assert back == SeatReturned(lease_id="L1") and isinstance(back, SeatRelease)
    with pytest.raises(FormatError, match="lacks 'h'"):
        parse_payload(RecordType.SEAT_BORROWED, {"f": "cad"})


def test_cluster_records_keep_their_keys() -> None:
    from meterbox.ledger import ClusterMember, ClusterQuorum

    joined = ClusterMember(event="joined", node="n1", cluster_id="123", members=("n1", "n2"))
    assert joined.to_map() == {"k": "joined", "n": "n1", "x": "123", "m": ["n1", "n2"]}
    assert RecordType.CLUSTER_MEMBER.value == 35
    assert RecordType.CLUSTER_MEMBER.kind == "cluster.member"
    assert parse_payload(RecordType.CLUSTER_MEMBER, joined.to_map()) == joined
    assert ClusterMember(event="left", node="n1").to_map() == {"k": "left", "n": "n1"}
    lost = ClusterQuorum(event="lost", detail="127.0.0.1:2379: ConnectionTimeoutError")
    assert lost.to_map() == {"k": "lost", "d": "127.0.0.1:2379: ConnectionTimeoutError"}
    assert RecordType.CLUSTER_QUORUM.value == 38
    assert RecordType.CLUSTER_QUORUM.kind == "cluster.quorum"
    assert parse_payload(RecordType.CLUSTER_QUORUM, {"k": "regained"}) == ClusterQuorum(
        event="regained"
    )


def test_quota_block_records_keep_their_keys() -> None:
    taken = QuotaBlockTaken(
        block_id="b1", license_id="lic", meter="runs", period="total", size=50, revision=7
    )
    assert taken.to_map() == {"b": "b1", "l": "lic", "m": "runs", "p": "total", "n": 50, "r": 7}
    assert list(taken.to_map()) == ["b", "l", "m", "p", "n", "r"]
    assert parse_payload(RecordType.QUOTA_BLOCK_TAKEN, taken.to_map()) == taken
    back = QuotaBlockReturned(
        block_id="b1",
        license_id="lic",
        meter="runs",
        period="2026-12",
        used=20,
        returned=30,
        reason="expired",
    )
    assert back.to_map() == {
        "b": "b1",
        "l": "lic",
        "m": "runs",
        "p": "2026-12",
        "u": 20,
        "n": 30,
        "r": "expired",
    }
    assert parse_payload(RecordType.QUOTA_BLOCK_RETURNED, back.to_map()) == back
    assert RecordType.QUOTA_BLOCK_TAKEN.kind == "quota.block.taken"
    assert RecordType.from_kind("quota.block.returned") is RecordType.QUOTA_BLOCK_RETURNED
    with pytest.raises(FormatError, match="lacks 'u'"):
        parse_payload(RecordType.QUOTA_BLOCK_RETURNED, {"b": "b1", "l": "l", "m": "m", "p": "t"})


def test_quota_block_records_verify_in_a_report_without_findings(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "ledger")
    written = [
        QuotaBlockTaken(
            block_id="b", license_id="lic_test", meter="solver", period="total", size=4
        ),
        Usage(meter="solver", amount=3, license_id="lic_test"),
        QuotaBlockReturned(
            block_id="b",
            license_id="lic_test",
            meter="solver",
            period="total",
            used=3,
            returned=1,
            reason="unused",
        ),
    ]
    for r in written:
        built.clock.advance(1000)
        built.writer.append(r.record_type, r.to_map())
    data = export(built)
    assert verify(data).findings == []
    read = [
        parse_payload(RecordType(r.type), r.payload)
        for r, _ in ReportVerifier({VENDOR_ID: VENDOR}).records(io.BytesIO(data))
        if r.type
        in {
            t.value
            for t in (
                RecordType.QUOTA_BLOCK_TAKEN,
                RecordType.USAGE,
                RecordType.QUOTA_BLOCK_RETURNED,
            )
        }
    ]
    assert read == written
