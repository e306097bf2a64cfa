"""The checked-in TPM attestation vectors verify exactly as their JSON declares.

The vectors (tests/vectors/tpm/, captured by scripts/capture_vectors_tpm.py from swtpm)
pin docs/spec/tpm-attestation.md: another verifier can be checked against the same files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
VECTORS = ROOT / "tests" / "vectors" / "tpm"
sys.path.insert(0, str(ROOT / "scripts"))
from capture_vectors_tpm import run_case  # noqa: E402


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
