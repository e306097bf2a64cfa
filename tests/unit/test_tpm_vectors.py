"""The checked-in TPM attestation vectors verify exactly as their JSON declares.

The vectors (tests/vectors/tpm/, captured by tests/vectors/tpm/capture.py from swtpm)
pin docs/spec/tpm-attestation.md: another verifier can be checked against the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vectors.tpm.capture import run_case

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "tpm"


def _cases(name: str) -> list[dict[str, Any]]:
    doc = json.loads((VECTORS / name).read_text())
    assert doc["format"] == "meterbox-tpm-attestation/1"
    return list(doc["cases"])


@pytest.mark.parametrize("case", _cases("verify.json"), ids=lambda c: c["name"])
def test_valid_vector_verifies_to_its_declared_result(case: dict[str, Any]) -> None:
    assert run_case(case) == case["expected"]


@pytest.mark.parametrize("case", _cases("invalid.json"), ids=lambda c: c["name"])
def test_invalid_vector_yields_its_finding_code(case: dict[str, Any]) -> None:
    assert run_case(case) == case["expected"]


def test_every_finding_code_has_a_vector() -> None:
    found = {c["expected"]["finding"] for c in _cases("invalid.json") + _cases("verify.json")}
    assert found >= {
        "tpm.quote.ok",
        "tpm.quote.replayed",
        "tpm.quote.foreign",
        "tpm.quote.forged",
        "tpm.counter.rollback",
        "tpm.missing",
    }
