"""The client's cluster decisions: the /v1/cluster parser, the URL order, seat failover."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.client._cluster import (
    ClusterView,
    Member,
    Reacquire,
    after_renewal,
    member_urls,
    parse_cluster,
)
from meterbox.client._core import Lease, Lost, Renewed, RenewLater, Reply, Unreachable
from meterbox.client.errors import LeaseLost, ProtocolError

A, B, C = "http://a:1", "http://b:1", "http://c:1"
urls = st.sampled_from([A, B, C, "https://d:2", "http://e:3"])
members = st.builds(
    lambda n, u, alive: {"node": n, "url": u, "alive": alive},
    st.text(min_size=1, max_size=8),
    urls,
    st.booleans(),
)
views = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["single", "etcd"]),
        "node": st.text(min_size=1, max_size=8),
        "quorum": st.booleans(),
        "members": st.lists(members, min_size=1, max_size=5),
    }
)


@given(views)
def test_a_valid_view_parses_to_what_it_says(body: dict[str, Any]) -> None:
    view = parse_cluster(Reply(A, 200, body))
    assert view.mode == body["mode"]
    assert view.quorum is body["quorum"]
    assert [(m.node, m.url, m.alive) for m in view.members] == [
        (m["node"], m["url"], m["alive"]) for m in body["members"]
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(views, st.sampled_from(["mode", "node", "quorum", "members"]), json_values)
def test_any_field_replaced_by_junk_is_a_protocol_error_or_still_valid(
    body: dict[str, Any], key: str, junk: object
) -> None:
    changed = {**body, key: junk}
    errors: list[ProtocolError] = []
    try:
        view = parse_cluster(Reply(A, 200, changed))
    except ProtocolError as exc:
        errors.append(exc)
    if errors:
        assert errors[0].expected
    else:
        # Only junk that happens to be a valid value gets through.
        assert view.mode in ("single", "etcd")


@given(json_values)
def test_arbitrary_bodies_never_raise_anything_but_a_protocol_error(body: object) -> None:
    with contextlib.suppress(ProtocolError):
        parse_cluster(Reply(A, 200, body))


def test_a_non_200_or_a_member_without_http_url_is_refused() -> None:
    good = {"mode": "etcd", "node": "n", "quorum": True}
    with pytest.raises(ProtocolError):
        parse_cluster(Reply(A, 404, {**good, "members": [{"node": "n", "url": A, "alive": 1}]}))
    ftp = [{"node": "n", "url": "ftp://x", "alive": True}]
    with pytest.raises(ProtocolError):
        parse_cluster(Reply(A, 200, {**good, "members": ftp}))
    with pytest.raises(ProtocolError):
        parse_cluster(Reply(A, 200, {**good, "members": []}))


@given(st.lists(urls, min_size=1, max_size=4), st.lists(st.tuples(urls, st.booleans()), max_size=5))
def test_configured_urls_come_first_then_live_then_dead_members_each_once(
    configured: list[str], found: list[tuple[str, bool]]
) -> None:
    view = ClusterView("etcd", "n", tuple(Member("m", u, alive) for u, alive in found), True)
    out = member_urls(configured, view)
    assert len(out) == len(set(out))
    assert out[: len(set(configured))] == tuple(dict.fromkeys(configured))
    rest = out[len(set(configured)) :]
    live = [u for u, alive in found if alive]
    first_dead = next((n for n, u in enumerate(rest) if u not in live), len(rest))
    assert all(u in live for u in rest[:first_dead])
    assert set(out) == set(configured) | {u for u, _ in found}


LEASE = Lease("L", "cad", "app", datetime(2026, 1, 1, tzinfo=UTC), 2.0, False, True)
GONE = Reply(B, 404, {"error": {"code": "lease_not_found", "message": "no such lease"}})
REMOVED = Reply(A, 410, {"error": {"code": "lease_removed", "message": "removed"}})
SHARED = ClusterView("etcd", "a", (Member("a", A, True), Member("b", B, True)), True)
ALONE = ClusterView("single", "a", (Member("a", A, True),), True)


def _after(step: Any, outcome: Any, **kw: Any) -> Any:
    args = {"owner": A, "view": None, "since_renewed": 0.5, "lease_seconds": 2.0}
    return after_renewal(step, outcome, **{**args, **kw, "reacquire": kw.get("reacquire", True)})


def test_without_reacquire_every_step_is_left_as_it_was() -> None:
    lost = Lost(LeaseLost("gone"))
    assert _after(lost, GONE, reacquire=False, view=SHARED) is lost
    later = RenewLater("x")
    assert _after(later, Unreachable(A, "x"), reacquire=False, since_renewed=99) is later


def test_gone_from_the_owner_or_from_a_sharing_cluster_is_taken_again() -> None:
    lost = Lost(LeaseLost("gone"))
    assert isinstance(_after(lost, Reply(A, 404, GONE.body)), Reacquire)
    assert isinstance(_after(lost, GONE, view=SHARED), Reacquire)


def test_gone_from_a_standalone_server_that_never_had_it_waits_for_the_term() -> None:
    lost = Lost(LeaseLost("gone"))
    assert isinstance(_after(lost, GONE, view=ALONE), RenewLater)
    assert isinstance(_after(lost, GONE, view=ALONE, since_renewed=2.01), Reacquire)


def test_removed_by_the_administrator_is_never_taken_again() -> None:
    lost = Lost(LeaseLost("removed"))
    assert _after(lost, REMOVED, view=SHARED, since_renewed=99) is lost


@given(st.floats(0, 10), st.floats(0.5, 5))
def test_no_answer_takes_again_exactly_after_a_whole_term(since: float, term: float) -> None:
    step = _after(RenewLater("x"), Unreachable(A, "x"), since_renewed=since, lease_seconds=term)
    assert isinstance(step, Reacquire) == (since > term)


def test_a_renewal_is_kept() -> None:
    renewed = Renewed(LEASE)
    assert _after(renewed, Reply(B, 200, {}), view=SHARED) is renewed


def test_the_quorum_lost_answer_is_named_and_fails_over() -> None:
    from meterbox.client._core import error_code, error_from_reply, fails_over
    from meterbox.client.errors import ServerUnreachableError

    body = {"error": "cluster_unavailable", "problem": "this node lost quorum", "hint": "x"}
    reply = Reply(A, 503, body)
    assert fails_over(reply)
    assert error_code(reply) == "cluster_unavailable"
    err = error_from_reply(reply)
    assert isinstance(err, ServerUnreachableError)
    assert err.problem == "this node lost quorum"
