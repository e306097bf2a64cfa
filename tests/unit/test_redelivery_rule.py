"""The rule that bills one usage event once across a cluster's ledgers (ADR 0033)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meterbox.vendorkit._redelivery import (
    USAGE_REDELIVERED,
    USAGE_REDELIVERED_MISMATCH,
    KeyedUsage,
    Tally,
    decide,
)

NODES = ["aa" * 16, "bb" * 16, "cc" * 16]


def _row(node: int, seq: int, key: str, amount: int = 1, meter: str = "runs") -> KeyedUsage:
    return KeyedUsage(NODES[node], seq, "lic_a", key, meter, "increment", amount)


@st.composite
def _cluster_rows(draw: st.DrawFn) -> list[KeyedUsage]:
    """Rows of up to three ledgers; a key's copies carry one amount (true redeliveries)."""
    amounts = draw(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 50), min_size=1))
    rows: list[KeyedUsage] = []
    for node in range(3):
        keys = draw(st.lists(st.sampled_from(sorted(amounts)), max_size=8))
        rows += [_row(node, seq, k, amounts[k]) for seq, k in enumerate(keys)]
    return rows


def _billed_all(reports: list[list[KeyedUsage]], chunk: int) -> list[KeyedUsage]:
    """Ingest ``reports`` in order, each in chunks of ``chunk`` rows, as the shell does."""
    billed: dict[tuple[str, str], KeyedUsage] = {}
    out: list[KeyedUsage] = []
    for report in reports:
        ordered = sorted(report, key=lambda r: (r.instance_id, r.seq))
        for at in range(0, len(ordered), chunk):
            d = decide(billed, ordered[at : at + chunk])
            for r in d.bill:
                billed[r.event] = r
            out += d.bill
    return out


@given(_cluster_rows(), st.permutations(range(3)), st.integers(1, 5))
def test_each_key_is_billed_exactly_once_whatever_the_order_and_chunks(
    rows: list[KeyedUsage], order: list[int], chunk: int
) -> None:
    reports = [[r for r in rows if r.instance_id == NODES[n]] for n in order]
    billed = _billed_all(reports, chunk)
    assert sorted(r.event for r in billed) == sorted({r.event for r in rows})
    # The statement equals the distinct acknowledged units, each key once.
    distinct = {r.event: r.amount for r in rows}
    assert sum(r.amount for r in billed) == sum(distinct.values())


@given(_cluster_rows(), st.integers(1, 5))
def test_chunked_decisions_equal_one_decision(rows: list[KeyedUsage], chunk: int) -> None:
    whole = decide({}, rows)
    assert _billed_all([rows], chunk) == list(whole.bill)
    assert len(whole.bill) + len(whole.redelivered) == len(rows)


@given(_cluster_rows(), st.permutations(range(3)))
def test_the_first_ingested_copy_is_the_billed_one(
    rows: list[KeyedUsage], order: list[int]
) -> None:
    reports = [[r for r in rows if r.instance_id == NODES[n]] for n in order]
    billed = {r.event: r for r in _billed_all(reports, 3)}
    first: dict[tuple[str, str], KeyedUsage] = {}
    for report in reports:
        for r in sorted(report, key=lambda r: r.seq):
            first.setdefault(r.event, r)
    assert billed == first


def test_an_already_billed_copy_makes_the_new_one_a_redelivery() -> None:
    first = _row(0, 7, "k1", 5)
    again = _row(1, 3, "k1", 5)
    d = decide({first.event: first}, [again, _row(1, 4, "k2", 2)])
    assert [r.key for r in d.bill] == ["k2"]
    assert [(r.copy, r.billed, r.mismatch) for r in d.redelivered] == [(again, first, False)]


def test_the_billed_row_itself_is_no_redelivery() -> None:
    row = _row(0, 7, "k1")
    assert decide({row.event: row}, [row]) == decide({}, [])


def test_findings_count_redeliveries_and_name_mismatches() -> None:
    first = _row(0, 1, "k1", 5)
    tally = Tally()
    tally.add(decide({first.event: first}, [_row(1, 9, "k1", 5)]).redelivered)
    tally.add(decide({first.event: first}, [_row(2, 4, "k1", 6, meter="exports")]).redelivered)
    info, warning = tally.findings()
    assert (info.code, info.severity, info.seq) == (USAGE_REDELIVERED, "info", 9)
    assert "1 usage events (5 units)" in info.message and NODES[0][:16] in info.message
    assert (warning.code, warning.severity, warning.seq) == (
        USAGE_REDELIVERED_MISMATCH,
        "warning",
        4,
    )
    assert "increment exports 6" in warning.message and "increment runs 5" in warning.message


def test_keys_are_per_license() -> None:
    a = KeyedUsage(NODES[0], 1, "lic_a", "k", "runs", "increment", 1)
    b = KeyedUsage(NODES[1], 1, "lic_b", "k", "runs", "increment", 1)
    assert len(decide({}, [a, b]).bill) == 2
    assert Tally().findings() == []
