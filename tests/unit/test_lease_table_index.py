"""The lease table's indexes agree with a scan of every lease, whatever the changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.server._core.seats import SeatBook, SeatLease

T0 = datetime(2026, 3, 1, tzinfo=UTC)

changes = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 15), st.sampled_from("ab"),
                  st.integers(0, 4), st.sampled_from(("L1", "L2")), st.booleans(),
                  st.integers(1, 120)),
        st.tuples(st.just("renew"), st.integers(0, 15), st.integers(1, 120)),
        st.tuples(st.just("pop"), st.integers(0, 15)),
        st.tuples(st.just("del"), st.integers(0, 15)),
        st.tuples(st.just("expire"), st.integers(0, 150)),
    ),
    max_size=80,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(steps=changes, probe=st.integers(0, 150))
def test_indexes_match_a_scan(steps: list[tuple[Any, ...]], probe: int) -> None:
    book = SeatBook()
    now = T0
    for step in steps:
        kind, lease_id = step[0], f"id{step[1]}"
        if kind == "put":
            _, _, feature, client, lic, overdraft, seconds = step
            book.leases[lease_id] = SeatLease(
                lease_id, feature, f"c{client}", lic, now,
                now + timedelta(seconds=seconds), 60, overdraft,
            )  # fmt: skip
        elif kind == "renew" and lease_id in book.leases:
            old = book.leases[lease_id]
            book.leases[lease_id] = replace(
                old, expires_at=old.expires_at + timedelta(seconds=step[2])
            )
        elif kind == "pop":
            book.leases.pop(lease_id, None)
        elif kind == "del" and lease_id in book.leases:
            del book.leases[lease_id]
        elif kind == "expire":
            now = T0 + timedelta(seconds=step[1])
            book.expire(now)
    at = T0 + timedelta(seconds=probe)
    every = list(dict.values(book.leases))
    for feature in "ab":
        live = [x for x in every if x.feature == feature and x.live(at)]
        assert sorted(x.lease_id for x in book.live(feature, at)) == sorted(
            x.lease_id for x in live
        )
        assert book.in_use(feature, at) == len(live)
        for lic in ("L1", "L2"):
            for overdraft in (False, True):
                assert book._taken(feature, lic, overdraft, at) == sum(
                    1 for x in live if x.license_id == lic and x.overdraft == overdraft
                )
        for client in range(5):
            held = book.held_by(feature, f"c{client}", at)
            mine = [x for x in live if x.client_id == f"c{client}"]
            assert (held is None) == (not mine)
            if held is not None:
                assert held in mine
