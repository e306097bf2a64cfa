"""The witness vectors (tests/vectors/witness) parse as listed and regenerate byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from meterbox import errors
from meterbox.ledger import RecordType, parse_payload
from meterbox.witness import WitnessHead, parse_head
from vectors import data_files
from vectors.witness import generate

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "witness"
DOC: dict[str, Any] = json.loads((VECTORS / "vectors.json").read_bytes())


@pytest.mark.parametrize("case", DOC["valid"], ids=lambda c: str(c["seq"]))
def test_valid_values_name_their_head(case: dict[str, Any]) -> None:
    head = parse_head(case["value"])
    assert head == WitnessHead(case["instance"], case["seq"], bytes.fromhex(case["hash"]))
    assert head.to_header() == case["value"]


@pytest.mark.parametrize("case", DOC["invalid"], ids=lambda c: c["value"][:24])
def test_invalid_values_raise_their_error(case: dict[str, Any]) -> None:
    expected = getattr(errors, case["error"])
    with pytest.raises(expected) as info:
        parse_head(case["value"])
    assert type(info.value) is expected
    assert info.value.expected is not None and info.value.found is not None


@pytest.mark.parametrize("case", DOC["records"], ids=lambda c: c["kind"])
def test_record_payloads_repack_to_their_exact_bytes(case: dict[str, Any]) -> None:
    packed = bytes.fromhex(case["msgpack"])
    rtype = RecordType(case["type"])
    assert rtype.kind == case["kind"]
    typed = parse_payload(rtype, msgpack.unpackb(packed, raw=False))
    assert msgpack.packb(typed.to_map(), use_bin_type=True) == packed


def test_vectors_regenerate_byte_for_byte() -> None:
    assert generate.build() == data_files(VECTORS)
