"""The seat options file: parser (clear errors with lines, hypothesis round trips) and the
engine's invariants under random checkouts, releases, expiries, removals, borrows and
returns."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import BorrowRefused, ConfigError, NoSeatAvailable, PolicyDenied
from meterbox.server._core.engine import Engine
from meterbox.server._core.options import (
    KINDS,
    Identity,
    Rule,
    lease_identity,
    parse_options,
    reservation_fill,
)
from meterbox.server._core.policy import FeaturePolicy, LicensePolicy

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: The license's borrow limit in these tests, in hours.
MAX_BORROW = 48

EXAMPLE = """\
version = 1

[feature.cad]
max_per_user = 1
exclude_users = ["mallory"]
include_groups = ["cfd", "design", "interns"]

[[feature.cad.reserve]]
seats = 2
group = "cfd"

[[feature.cad.max]]
seats = 3
group = "interns"
"""


def counter_rng() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def engine(seats: int, overdraft: int, options: str) -> Engine:
    policy = LicensePolicy(
        license_id="L1",
        customer="acme",
        product="cad",
        issued=T0 - timedelta(days=1),
        features={"cad": FeaturePolicy(seats=seats, overdraft=overdraft, lease_seconds=60)},
        max_borrow_hours=MAX_BORROW,
    )
    e = Engine([policy], init_time=T0, rng=counter_rng())
    e.options = parse_options(options)
    return e


def test_the_spec_example_parses_to_its_rules() -> None:
    opts = parse_options(EXAMPLE).features["cad"]
    assert opts.reserve == (Rule(2, "group", "cfd", line=8),)
    assert opts.max == (Rule(3, "group", "interns", line=12),)
    assert opts.max_per == {"user": 1}
    assert opts.exclude == {"user": frozenset({"mallory"})}
    assert opts.include == {"group": frozenset({"cfd", "design", "interns"})}


@pytest.mark.parametrize(
    ("text", "found", "line"),
    [
        ("version = 1\n[feature.cad]\nmax_per_usr = 1\n", "'max_per_usr'", 3),
        ("version = 1\n\n[feature.cad]\n\n[[feature.cad.reserve]]\nseats = 2\nteam = 'x'\n",
         "'team'", 7),
        ("version = 1\n[feature.cad]\nmax_per_user = -1\n", "-1", 3),
        ("version = 1\n[[feature.cad.max]]\nseats = 2\nuser = 'a'\ngroup = 'b'\n",
         "2 of them", 2),
        ("version = 1\n[feature.cad]\nexclude_users = ['has space']\n", "has space", 3),
        ("version = 2\n", "2", 1),
        ("colour = 'blue'\nversion = 1\n", "'colour'", 1),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_naming_the_line(text: str, found: str, line: int) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_options(text, "/site/options.toml")
    message = caught.value.render()
    assert found in message and f"/site/options.toml:{line}" in message, message


def test_a_typo_gets_the_nearest_key_and_toml_errors_say_where() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'max_per_user'"):
        parse_options("version = 1\n[feature.cad]\nmax_per_usr = 1\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        parse_options("version = 1\n[feature.cad\n")


# --------------------------------------------------------------- hypothesis: parser
names = st.from_regex(r"[a-z][a-z0-9._@-]{0,12}", fullmatch=True)
rules = st.lists(st.tuples(st.integers(1, 9), st.sampled_from(KINDS), names), max_size=3)
feature_docs = st.fixed_dictionaries(
    {
        "reserve": rules,
        "max": rules,
        "max_per": st.dictionaries(st.sampled_from(KINDS), st.integers(0, 5)),
        "include": st.dictionaries(st.sampled_from(KINDS), st.lists(names, max_size=3)),
        "exclude": st.dictionaries(st.sampled_from(KINDS), st.lists(names, max_size=3)),
    }
)


def render(features: dict[str, dict[str, Any]]) -> tuple[str, dict[tuple[str, str, int], int]]:
    """TOML text for ``features`` and the line of each rule table."""
    lines = ["version = 1", ""]
    where: dict[tuple[str, str, int], int] = {}
    for name, doc in features.items():
        lines.append(f'[feature."{name}"]')
        for kind, n in doc["max_per"].items():
            lines.append(f"max_per_{kind} = {n}")
        for which in ("include", "exclude"):
            for kind, items in doc[which].items():
                lines.append(f"{which}_{kind}s = {items!r}".replace("'", '"'))
        for which in ("reserve", "max"):
            for i, (seats, kind, who) in enumerate(doc[which]):
                lines.append(f'[[feature."{name}".{which}]]')
                where[(name, which, i)] = len(lines)
                lines += [f"seats = {seats}", f'{kind} = "{who}"']
        lines.append("")
    return "\n".join(lines) + "\n", where


@settings(max_examples=150, deadline=None)
@given(features=st.dictionaries(names, feature_docs, max_size=3))
def test_rendered_options_parse_back_to_the_same_rules(
    features: dict[str, dict[str, Any]],
) -> None:
    text, where = render(features)
    parsed = parse_options(text).features
    assert set(parsed) == set(features)
    for name, doc in features.items():
        got = parsed[name]
        for which in ("reserve", "max"):
            assert getattr(got, which) == tuple(
                Rule(seats, kind, who, line=where[(name, which, i)])
                for i, (seats, kind, who) in enumerate(doc[which])
            )
        assert dict(got.max_per) == doc["max_per"]
        assert dict(got.exclude) == {k: frozenset(v) for k, v in doc["exclude"].items()}
        assert dict(got.include) == {k: frozenset(v) for k, v in doc["include"].items() if v}


@settings(max_examples=150, deadline=None)
@given(
    features=st.dictionaries(names, feature_docs, min_size=1, max_size=3),
    data=st.data(),
)
def test_an_unknown_key_anywhere_is_refused_with_its_line(
    features: dict[str, dict[str, Any]], data: st.DataObject
) -> None:
    text, _ = render(features)
    lines = text.splitlines()
    # After a header or a key line, inside the table that line belongs to.
    spots = [i for i, line in enumerate(lines) if line.startswith("[")]
    at = data.draw(st.sampled_from(spots)) + 1
    lines.insert(at, "zzz_unknown = 1")
    with pytest.raises(ConfigError, match="zzz_unknown") as caught:
        parse_options("\n".join(lines) + "\n", "o.toml")
    assert f"o.toml:{at + 1}" in caught.value.render()


@settings(max_examples=200, deadline=None)
@given(blob=st.text(max_size=200))
def test_any_text_parses_or_is_a_config_error(blob: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_options(blob)


# ----------------------------------------------------------------- decisions
def test_reserved_seats_are_kept_for_their_group_and_max_holds() -> None:
    e = engine(4, 0, EXAMPLE)
    design = [Identity(user=f"d{i}", group="design") for i in range(3)]
    for i, who in enumerate(design[:2]):
        e.checkout("cad", f"c{i}", T0, key_id=None, user=who.user, group=who.group)
    with pytest.raises(PolicyDenied, match="reserved for group 'cfd'"):
        e.checkout("cad", "c2", T0, user="d2", group="design")
    e.checkout("cad", "c3", T0, user="alice", group="cfd")
    with pytest.raises(PolicyDenied, match="user 'alice' already holds 1"):
        e.checkout("cad", "c4", T0, user="alice", group="cfd")
    with pytest.raises(PolicyDenied, match="excluded"):
        e.checkout("cad", "c5", T0, user="mallory", group="cfd")
    with pytest.raises(PolicyDenied, match="only groups"):
        e.checkout("cad", "c6", T0, user="x", group="sales")
    e.checkout("cad", "c7", T0, user="bob", group="cfd")
    with pytest.raises(NoSeatAvailable):
        e.checkout("cad", "c8", T0, user="carol", group="cfd")
    assert e.seats.policy_denials == {"cad": 4} and e.seats.denials == {"cad": 1}


# ---------------------------------------------- hypothesis: the engine's invariants
GROUPS = ("cfd", "design", "interns", None)
OPTIONS = """\
version = 1

[feature.cad]
max_per_user = 2

[[feature.cad.reserve]]
seats = 2
group = "cfd"

[[feature.cad.reserve]]
seats = 1
group = "design"

[[feature.cad.max]]
seats = 2
group = "interns"
"""

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("checkout"), st.integers(0, 11), st.sampled_from(GROUPS), st.integers(0, 4)
        ),
        st.tuples(st.just("release"), st.integers(0, 40)),
        st.tuples(st.just("remove"), st.integers(0, 11)),
        st.tuples(st.just("advance"), st.integers(1, 90)),
        st.tuples(
            st.just("borrow"),
            st.integers(0, 11),
            st.sampled_from(GROUPS),
            st.integers(1, MAX_BORROW + 12),
            st.integers(0, 1),
        ),
        st.tuples(st.just("return"), st.integers(0, 40), st.integers(0, 1)),
        st.tuples(st.just("advance_hours"), st.integers(1, 30)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(seats=st.integers(1, 6), overdraft=st.integers(0, 2), steps=ops)
def test_live_seats_stay_within_the_license_and_reservations_go_to_their_groups(
    seats: int, overdraft: int, steps: list[tuple[Any, ...]]
) -> None:
    e = engine(seats, overdraft, OPTIONS)
    rules = e.options.features["cad"].reserve
    capacity = seats + overdraft
    now = T0
    issued: list[str] = []
    for step in steps:
        if step[0] == "checkout":
            _, client, group, user = step
            live = e.seats.live("cad", now)
            fill = reservation_fill(rules, live)
            open_for_others = sum(
                r.seats - f for r, f in zip(rules, fill, strict=True) if r.name != group
            )
            try:
                d = e.checkout("cad", f"c{client}", now, user=f"u{user}", group=group)
            except (PolicyDenied, NoSeatAvailable):
                continue
            if not d.renewed:
                issued.append(d.lease.lease_id)
                # Granted only where the seats held open for other groups stayed free.
                assert len(live) + open_for_others < capacity
        elif step[0] == "release" and issued:
            with contextlib.suppress(BorrowRefused):  # a borrowed seat is only returned
                e.release(issued[step[1] % len(issued)])
        elif step[0] == "remove":
            e.remove(now, "admin", client_id=f"c{step[1]}")
        elif step[0] == "advance":
            now += timedelta(seconds=step[1])
            e.expire(now)
        elif step[0] == "borrow":
            _, client, group, hours, machine = step
            live = e.seats.live("cad", now)
            try:
                b = e.borrow(
                    "cad", f"c{client}", now, hours=hours, machine=f"m{machine}", group=group
                )
            except (PolicyDenied, NoSeatAvailable, BorrowRefused):
                continue
            # A repeat from the same machine is answered with the borrow it holds.
            assert (hours <= MAX_BORROW or not b.record) and not b.lease.overdraft
            if b.record:
                issued.append(b.lease.lease_id)
        elif step[0] == "return" and issued:
            with contextlib.suppress(BorrowRefused):  # not a borrow, or another machine
                e.return_borrow(issued[step[1] % len(issued)], f"m{step[2]}", now)
        elif step[0] == "advance_hours":
            now += timedelta(hours=step[1])
            e.expire(now)
        live = e.seats.live("cad", now)
        assert len(live) <= capacity
        # Borrows take regular seats only, and a client holds at most one lease.
        assert sum(x.borrowed for x in live) <= seats
        assert len({x.client_id for x in live}) == len(live)
        holders = [lease_identity(x) for x in live]
        assert sum(h.group == "interns" for h in holders) <= 2
        # A client that declares no user is limited by no per-user maximum.
        for user in {h.user for h in holders} - {None}:
            assert sum(h.user == user for h in holders) <= 2


def test_a_cluster_node_refuses_only_what_no_holders_could_admit() -> None:
    """With ``options_on_claim`` the node's own leases are not the cluster's (ADR 0034).

    What no set of holders could make admissible is still refused at once; everything
    that depends on who holds seats is left to the claim over every node's seats.
    """
    e = engine(3, 0, EXAMPLE)
    e.options_on_claim = True
    with pytest.raises(PolicyDenied, match="excluded"):
        e.checkout("cad", "m", T0, user="mallory", group="cfd")
    with pytest.raises(PolicyDenied, match="only groups"):
        e.checkout("cad", "o", T0, user="olga", group="sales")
    # The node's own lease of ann's would refuse her second one on a single server;
    # here the claim decides, over all nodes' holders.
    e.checkout("cad", "a1", T0, user="ann", group="design")
    e.checkout("cad", "a2", T0, user="ann", group="design")
    assert len(e.seats.live("cad", T0)) == 2
    # Reservations that leave outsiders nothing are refused whatever anyone holds.
    tight = engine(2, 0, EXAMPLE)
    tight.options_on_claim = True
    with pytest.raises(PolicyDenied, match="reserved for group 'cfd'"):
        tight.checkout("cad", "d", T0, user="dora", group="design")
