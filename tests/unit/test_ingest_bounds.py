"""Properties of the bounds ingest applies (ADR 0016), over generated inputs.

- capping findings keeps the verdict, keeps at most the caps, and counts every finding
  it drops;
- a report header of any shape is answered with a header or a finding, never with an
  exception, and never allocates what a field claims;
- the decrement check agrees with a plain running sum.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import msgpack
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meterbox.ledger import Finding, Record, RecordType, ReportVerifier
from meterbox.ledger import findings as F
from meterbox.ledger.records import Usage
from meterbox.vendorkit._enforcement import DECREMENT_UNCOVERED, EnforcementCheck, Prior
from meterbox.vendorkit._ingest_core import (
    FINDINGS_OMITTED,
    IngestConfig,
    cap_findings,
    decide,
)
from support.ledger import VENDOR, VENDOR_ID

SMALL = IngestConfig(max_findings_per_code=3, max_findings=7)

findings_st = st.lists(
    st.builds(
        Finding,
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from(["critical", "warning", "info"]),
        st.just("m"),
    ),
    max_size=60,
)


@given(findings_st)
# A warning behind infos of its code, over the per-code cap: once dropped, then the
# verdict fell from accepted_with_findings to accepted.
@example([Finding("b", "info", "m")] * 3 + [Finding("b", "warning", "m")])
def test_capping_keeps_the_verdict_and_counts_what_it_drops(findings: list[Finding]) -> None:
    kept = cap_findings(findings, SMALL)

    real = [f for f in kept if f.code != FINDINGS_OMITTED]
    omitted = [f for f in kept if f.code == FINDINGS_OMITTED]
    assert decide(kept) == decide(findings)
    assert len(real) <= SMALL.max_findings
    for code in {f.code for f in real}:
        assert sum(1 for f in real if f.code == code) <= SMALL.max_findings_per_code
    dropped = sum(int(f.message.split()[0].replace(",", "")) for f in omitted)
    assert len(real) + dropped == len(findings)
    # What is kept is a subsequence of what was found, in the same order.
    it = iter(findings)
    assert all(any(f is g for g in it) for f in real)


def _container(header: bytes) -> bytes:
    return b"MBXR\x01" + struct.pack(">I", len(header)) + header


BASE: dict[str, Any] = {
    "v": 1,
    "instance_id": b"\x01" * 16,
    "instance_key": b"\x02" * 32,
    "vendor_key_id": VENDOR_ID,
    "created_ms": 1,
    "base_seq": 0,
    "base_hash": b"\x03" * 32,
    "frames_len": 0,
    "acked": None,
    "licenses": [],
}
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(BASE)), values)
def test_any_header_field_value_is_a_header_or_a_finding(field: str, value: object) -> None:
    header = msgpack.packb({**BASE, field: value}, use_bin_type=True)
    verifier = ReportVerifier({VENDOR_ID: VENDOR})

    got = verifier.read_header(io.BytesIO(_container(header)))

    if got is None:
        codes = {f.code for f in verifier.result.findings}
        assert codes & {F.REPORT_MALFORMED, F.REPORT_UNKNOWN_VERSION, F.REPORT_TRUNCATED}
    else:
        assert got.acked is None or 0 <= got.acked.seq < 2**63
        assert len(got.licenses) <= 256


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=40), st.integers(0, 30))
def test_the_decrement_check_agrees_with_a_running_sum(
    steps: list[tuple[bool, int]], prior: int
) -> None:
    check = EnforcementCheck({}, "lic")
    running, lowest = prior, prior
    for seq, (decrement, amount) in enumerate(steps):
        rtype = RecordType.USAGE_DECREMENT if decrement else RecordType.USAGE
        record = Record(seq, rtype, 0, 1_000, 1_000, {})
        check.usage(record, Usage(meter="m", amount=amount), "lic", decrement=decrement)
        running += -amount if decrement else amount
        lowest = min(lowest, running)

    found = check.findings(Prior(charged={("lic", "m", ""): prior}))

    assert (DECREMENT_UNCOVERED in {f.code for f in found}) == (lowest < 0)
