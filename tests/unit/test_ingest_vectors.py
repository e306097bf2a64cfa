"""Ingest outcome vectors: they regenerate byte for byte and the reports ingest as pinned.

tests/vectors/ingest/ pins what the vendor decides for fixed reports, keys, clock and
randomness: status, findings, totals, head and the receipt's bytes. A change to any of
them is a change of the vendor's output and shows here. ``v2/`` holds the same
scenarios as written by the server of ledger record version 2, kept as they were: a
vendor must keep ingesting reports of servers not yet upgraded, to the same outcome.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from meterbox.vendorkit.ingest import IngestConfig, ingest
from support.vendor_ingest import VENDOR_NOW, make_home
from vectors import data_files
from vectors.ingest import generate

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "ingest"
#: The scenarios as the version 2 server wrote them (not regenerated).
V2 = VECTORS / "v2"


def test_ingest_vectors_regenerate_byte_for_byte() -> None:
    fresh = generate.build()
    checked_in = {k: v for k, v in data_files(VECTORS).items() if not k.startswith("v2/")}
    assert sorted(fresh) == sorted(checked_in)
    for rel, data in fresh.items():
        assert data == checked_in[rel], f"{rel} drifted; rerun python -m vectors.ingest.generate"


def test_the_version_2_scenarios_are_kept() -> None:
    assert sorted(p.name for p in V2.iterdir() if p.is_dir()) == sorted(generate.SCENARIOS)


@pytest.mark.parametrize("base", [VECTORS, V2], ids=["v3", "v2"])
@pytest.mark.parametrize("scenario", sorted(generate.SCENARIOS))
def test_checked_in_reports_ingest_to_their_pinned_outcome(
    tmp_path: Path, scenario: str, base: Path
) -> None:
    pinned = json.loads((base / scenario / "outcome.json").read_bytes())
    home = make_home(tmp_path)
    generate.issue_license(home)
    config = replace(IngestConfig(), receipt_id=generate.receipt_ids())
    for step in pinned["reports"]:
        receipt_out = tmp_path / "receipt"
        out = ingest(
            home,
            base / scenario / step["report"],
            now=VENDOR_NOW,
            receipt_out=receipt_out,
            config=config,
        )
        got = generate.outcome(out, step["receipt"] if out.receipt_path else None)
        assert {"report": step["report"], **got} == step
        if step["receipt"] is not None:
            assert receipt_out.read_bytes() == (base / scenario / step["receipt"]).read_bytes()
