"""The checked-in ledger/report vectors verify as their JSON says, and regenerate byte for byte.

The vectors pin the wire format of docs/spec/ledger.md and docs/spec/report.md:
another implementation of the verifier can be checked against the same files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.crypto import x25519_private_from_raw
from meterbox.ledger import ChainState, Head, Known, ReportVerifier
from meterbox.ledger._format import FILE_HEADER_LEN, FileHeader
from support.report_surgery import split
from vectors import data_files
from vectors.ledger import generate

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "ledger"
_KEYS = json.loads((VECTORS / "vendor_key.json").read_bytes())
VENDOR_KEYS = {
    bytes.fromhex(_KEYS["vendor"]["key_id"]): x25519_private_from_raw(
        bytes.fromhex(_KEYS["vendor"]["x25519_private"])
    )
}
#: Vectors of record versions 1 and 2, made by the writers of those versions and kept as
#: they were: reports of servers not yet upgraded must keep verifying. The generator
#: makes version 3 only.
V1 = VECTORS / "v1"
V2 = VECTORS / "v2"
VALID = sorted((VECTORS / "valid").glob("*.json"))
INVALID = sorted((VECTORS / "invalid").glob("*.json"))
VALID_V1 = sorted((V1 / "valid").glob("*.json"))
INVALID_V1 = sorted((V1 / "invalid").glob("*.json"))
VALID_V2 = sorted((V2 / "valid").glob("*.json"))
INVALID_V2 = sorted((V2 / "invalid").glob("*.json"))
VALID_OLD = VALID_V1 + VALID_V2
INVALID_OLD = INVALID_V1 + INVALID_V2


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _known(spec: dict[str, Any] | None) -> Known | None:
    if spec is None:
        return None
    chain = spec["chain"]
    return Known(
        head=Head(spec["head"]["seq"], bytes.fromhex(spec["head"]["hash"])),
        chain=None if chain is None else ChainState(chain["epoch"], bytes.fromhex(chain["key"])),
        instance_key=None if spec["instance_key"] is None else bytes.fromhex(spec["instance_key"]),
    )


def _load(path: Path) -> tuple[dict[str, Any], bytes]:
    case = json.loads(path.read_bytes())
    return case, (path.parent / case["report"]).read_bytes()


def test_vector_set_covers_the_specified_cases() -> None:
    names = {p.stem for p in INVALID}
    assert {
        "flipped-byte",
        "deleted-record",
        "duplicated-record",
        "swapped-records",
        "truncated-file",
        "truncated-resigned",
        "spliced-record",
        "spliced-epoch",
        "forged-epoch",
        "other-vendor",
        "unknown-report-version",
        "unknown-record-version",
    } <= names
    assert {"minimal", "full", "continued"} <= {p.stem for p in VALID}


@pytest.mark.parametrize(("old", "version"), [(V1, 1), (V2, 2)], ids=["v1", "v2"])
def test_vectors_of_earlier_record_versions_are_kept(old: Path, version: int) -> None:
    valid = sorted((old / "valid").glob("*.json"))
    # Every case of an earlier version is kept; cases added since (state-quota, revision
    # 1.10) exist only for the version that writes them.
    assert {p.stem for p in VALID} - {p.stem for p in valid} == {"state-quota"}
    assert {p.stem for p in (old / "invalid").glob("*.json")} <= {p.stem for p in INVALID}
    for path in valid:
        frames = split((path.parent / json.loads(path.read_bytes())["report"]).read_bytes())
        assert {f[2] for f in frames.frames} == {version}, path.name


def test_current_vectors_are_of_record_version_3() -> None:
    for path in VALID:
        frames = split((path.parent / json.loads(path.read_bytes())["report"]).read_bytes())
        assert {f[2] for f in frames.frames} == {3}, path.name


@pytest.mark.parametrize(
    "path", VALID + VALID_OLD, ids=lambda p: f"{p.parent.parent.name}-{p.stem}"
)
def test_valid_vector_verifies_to_its_records(path: Path) -> None:
    case, data = _load(path)
    verifier = ReportVerifier(VENDOR_KEYS, known=_known(case["known"]))
    records = [
        {
            "seq": r.seq,
            "epoch": r.epoch,
            "type": r.type.name,
            "wall_ms": r.wall_ms,
            "mono_ms": r.mono_ms,
            "payload": _json_safe(r.payload),
            "acked": acked,
        }
        for r, acked in verifier.records(io.BytesIO(data))
    ]
    result = verifier.result
    assert result.findings == []
    assert records == case["records"]
    assert result.head is not None and result.head.to_dict() == case["head"]
    assert result.chain is not None
    assert {"epoch": result.chain.epoch, "key": result.chain.key.hex()} == case["chain"]
    assert result.records == case["frames"]
    assert result.base_seq == case["base_seq"]
    assert result.instance_id.hex() == case["instance_id"]
    assert result.instance_key.hex() == case["instance_key"]
    assert result.digest.hex() == case["digest"]


@pytest.mark.parametrize(
    "path", INVALID + INVALID_OLD, ids=lambda p: f"{p.parent.parent.name}-{p.stem}"
)
def test_invalid_vector_gives_its_findings(path: Path) -> None:
    case, data = _load(path)
    result = ReportVerifier(VENDOR_KEYS, known=_known(case["known"])).verify(io.BytesIO(data))
    assert sorted(result.codes) == case["codes"]
    assert [
        {"code": f.code, "severity": f.severity, "seq": f.seq} for f in result.findings
    ] == case["findings"]
    assert result.critical is case["critical"]


def test_minimal_ledger_file_holds_the_frames_of_its_report() -> None:
    ledger = (VECTORS / "valid" / "minimal.mbl").read_bytes()
    report = (VECTORS / "valid" / "minimal.report").read_bytes()
    header = FileHeader.unpack(ledger)
    assert header.base_seq == 0
    frames = ledger[FILE_HEADER_LEN:]
    # The report copies the ledger's frames verbatim between its header and trailer.
    assert frames in report
    case = json.loads((VECTORS / "valid" / "minimal.json").read_bytes())
    assert header.instance_id.hex() == case["instance_id"]


@settings(max_examples=150, deadline=None)
@given(
    which=st.sampled_from([str(p.relative_to(VECTORS)) for p in VALID + VALID_OLD]),
    pos=st.integers(min_value=0),
    xor=st.integers(min_value=1, max_value=255),
)
def test_any_byte_change_to_a_valid_vector_is_critical(which: str, pos: int, xor: int) -> None:
    case, data = _load(VECTORS / which)
    mutated = bytearray(data)
    mutated[pos % len(data)] ^= xor
    result = ReportVerifier(VENDOR_KEYS, known=_known(case["known"])).verify(
        io.BytesIO(bytes(mutated))
    )
    assert result.critical


def test_vectors_regenerate_byte_for_byte() -> None:
    fresh = generate.build()
    checked_in = {k: v for k, v in data_files(VECTORS).items() if not k.startswith(("v1/", "v2/"))}
    assert sorted(fresh) == sorted(checked_in)
    for rel, data in fresh.items():
        assert data == checked_in[rel], f"{rel} drifted; rerun python -m vectors.ledger.generate"
