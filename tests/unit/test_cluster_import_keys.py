"""The etcd keys of published top-ups and notices: they round-trip and order notices."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meterbox.server._cluster._imports import import_key, parse_import_key

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
sequences = st.integers(0, 10**12 - 1)


@given(names, st.sampled_from(["topup", "notice"]), names, sequences)
def test_a_key_round_trips(license_id: str, kind: str, doc_id: str, sequence: int) -> None:
    seq = sequence if kind == "notice" else 0
    key = import_key(license_id, kind, doc_id, seq)  # type: ignore[arg-type]
    assert parse_import_key(key) == (license_id, kind, doc_id, seq)


@given(names, names, names, sequences, sequences)
def test_notices_sort_by_sequence(license_id: str, a: str, b: str, first: int, second: int) -> None:
    keys = sorted(
        [import_key(license_id, "notice", a, first), import_key(license_id, "notice", b, second)]
    )
    parsed = [parse_import_key(k) for k in keys]
    assert [p[3] for p in parsed if p] == sorted([first, second])


@given(st.one_of(st.text(max_size=80), st.from_regex(r"/meterbox/[^/]+/imports/(topup|notice)/.*")))
def test_whatever_parses_names_one_document(text: str) -> None:
    parsed = parse_import_key(text)
    if parsed is not None:
        # Written again, it names the same document (percent-encoding may differ).
        assert parse_import_key(import_key(*parsed)) == parsed


def test_foreign_shapes_are_refused() -> None:
    for key in (
        "/meterbox/lic/imports/receipt/x",
        "/meterbox/lic/imports/notice/12-x",
        "/meterbox/lic/imports/notice/00000000000a-x",
        "/meterbox/lic/imports/notice/000000000001-",
        "/meterbox/lic/imports/topup/",
        "/meterbox/lic/seats/cad/regular/0",
        "/other/lic/imports/topup/t",
    ):
        assert parse_import_key(key) is None, key
