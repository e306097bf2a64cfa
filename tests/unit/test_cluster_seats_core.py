"""The cluster's seat holders and queue order, decided without etcd (docs/adr/0034)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.errors import PolicyDenied
from meterbox.server._cluster._seats_core import (
    SlotHolder,
    SlotValueError,
    Waiter,
    holder_of,
    holders_as_leases,
    parse_slot,
    places_ahead,
    queue_guard,
    slot_value,
)
from meterbox.server._core.options import Identity, parse_options
from meterbox.server._core.seats import SeatLease

names = st.text(min_size=1, max_size=30)
holders = st.builds(
    SlotHolder,
    node=names,
    lease=names,
    client=names,
    user=st.none() | names,
    host=st.none() | names,
    group=st.none() | names,
    issued_ms=st.integers(min_value=0, max_value=2**53),
)


@given(holders)
def test_slot_values_round_trip(holder: SlotHolder) -> None:
    assert parse_slot(slot_value(holder)) == holder


def test_values_written_before_identities_parse_without_them() -> None:
    old = b'{"node":"n1","lease":"L1","client":"c1"}'
    assert parse_slot(old) == SlotHolder("n1", "L1", "c1")


def test_unknown_fields_of_a_newer_value_are_ignored() -> None:
    raw = b'{"node":"n1","lease":"L1","client":"c1","user":"ann","colour":"red"}'
    assert parse_slot(raw) == SlotHolder("n1", "L1", "c1", user="ann")


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b"not json", "not json"),
        (b"[1, 2]", "list"),
        (b'{"lease":"L","client":"c"}', "node=None"),
        (b'{"node":"","lease":"L","client":"c"}', "node=''"),
        (b'{"node":"n","lease":"L","client":"c","user":7}', "user=7"),
        (b'{"node":"n","lease":"L","client":"c","issued_ms":-1}', "issued_ms=-1"),
        (b'{"node":"n","lease":"L","client":"c","issued_ms":true}', "issued_ms=True"),
        (b"\xff\xfe", "xff"),
    ],
)
def test_a_bad_value_says_what_was_expected_and_found(raw: bytes, named: str) -> None:
    with pytest.raises(SlotValueError) as caught:
        parse_slot(raw)
    assert "expected a JSON object" in str(caught.value)
    assert named in str(caught.value)


@given(st.binary(max_size=200))
def test_any_value_either_parses_or_is_refused_clearly(raw: bytes) -> None:
    problem = ""
    try:
        parse_slot(raw)
    except SlotValueError as exc:
        problem = str(exc)
    assert not problem or ("expected" in problem and "found" in problem)


@given(st.binary(max_size=100))
def test_an_unreadable_slot_still_holds_a_seat_and_matches_nobody(raw: bytes) -> None:
    holder = holder_of("/meterbox/l/seats/f/regular/0", raw)
    try:
        expected = parse_slot(raw)
    except SlotValueError:
        assert holder.lease.startswith("unreadable:")
        assert (holder.user, holder.host, holder.group) == (None, None, None)
    else:
        assert holder == expected


# ------------------------------------------------- the options over all nodes
OPTIONS = parse_options(
    """\
version = 1

[feature.cad]
max_per_user = 1

[[feature.cad.reserve]]
seats = 1
group = "cfd"
"""
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def holder(n: int, user: str | None = None, group: str | None = None) -> SlotHolder:
    ms = int((T0 + timedelta(seconds=n)).timestamp() * 1000)
    return SlotHolder(f"node{n % 3}", f"L{n}", f"c{n}", user=user, group=group, issued_ms=ms)


def test_a_user_holding_a_seat_on_another_node_is_refused_a_second() -> None:
    live = holders_as_leases("cad", [holder(1, user="ann")])
    with pytest.raises(PolicyDenied, match="user 'ann' already holds 1"):
        OPTIONS.admit("cad", Identity(user="ann"), live, 3)
    OPTIONS.admit("cad", Identity(user="bob"), live, 3)


def test_the_reserved_seat_is_not_free_for_outsiders_whatever_node_holds_the_rest() -> None:
    live = holders_as_leases("cad", [holder(1, user="ann")])
    with pytest.raises(PolicyDenied, match="reserved for group 'cfd'"):
        OPTIONS.admit("cad", Identity(user="bob"), live, 2)
    OPTIONS.admit("cad", Identity(user="bob", group="cfd"), live, 2)


@given(st.lists(st.tuples(st.sampled_from(["ann", "bob", None]), st.booleans()), max_size=6))
def test_leases_of_holders_keep_what_the_options_match_on(
    spec: list[tuple[str | None, bool]],
) -> None:
    hs = [holder(i, user=u, group="cfd" if g else None) for i, (u, g) in enumerate(spec)]
    leases = holders_as_leases("cad", hs)
    assert [(x.user, x.group, x.lease_id) for x in leases] == [
        (h.user, h.group, h.lease) for h in hs
    ]
    assert [x.issued_at for x in leases] == sorted(x.issued_at for x in leases)
    assert all(isinstance(x, SeatLease) and x.feature == "cad" for x in leases)


# ------------------------------------------------------------------ the queue
def test_nobody_waits_anyone_may_go() -> None:
    assert places_ahead([], None) == 0
    guard = queue_guard([], None)
    assert guard is not None and guard.kind == "empty"


def test_a_request_that_does_not_wait_is_behind_every_waiter() -> None:
    waiters = [Waiter("a", 5), Waiter("b", 9)]
    assert places_ahead(waiters, None) == 2
    assert queue_guard(waiters, None) is None


def test_the_oldest_waiter_goes_first_and_the_next_is_told_one_ahead() -> None:
    a, b = Waiter("/q/n1/a", 5), Waiter("/q/n2/b", 9)
    assert places_ahead([b, a], a) == 0
    assert places_ahead([b, a], b) == 1
    guard = queue_guard([b, a], a)
    assert guard is not None and (guard.kind, guard.create_revision) == ("oldest", 5)
    assert queue_guard([a, b], b) is None


def test_a_waiter_whose_key_is_gone_counts_as_not_waiting() -> None:
    gone, b = Waiter("/q/n1/a", 5), Waiter("/q/n2/b", 9)
    assert places_ahead([b], gone) == 1
    guard = queue_guard([], gone)
    assert guard is not None and guard.kind == "empty"


@given(st.sets(st.integers(min_value=1, max_value=10_000), max_size=12), st.data())
def test_exactly_the_oldest_waiter_has_nobody_ahead(revs: set[int], data: st.DataObject) -> None:
    waiters = [Waiter(f"k{r}", r) for r in revs]
    shuffled = data.draw(st.permutations(waiters))
    free = [w for w in waiters if queue_guard(shuffled, w) is not None]
    assert free == ([min(waiters, key=lambda w: w.create_revision)] if waiters else [])
    order = sorted(waiters, key=lambda w: w.create_revision)
    assert [places_ahead(shuffled, w) for w in order] == list(range(len(order)))
    assert places_ahead(shuffled, None) == len(waiters)
