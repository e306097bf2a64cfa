"""ReportVerifier step by step: typed header first, then records, then the result."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest

from meterbox.crypto import x25519_private_from_raw
from meterbox.errors import FormatError, UnknownVersionError
from meterbox.ledger import ChainState, Head, Known, ReportVerifier
from meterbox.ledger import findings as F
from meterbox.ledger._format import FILE_HEADER, FILE_MAGIC, FileHeader

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "ledger"
_KEYS = json.loads((VECTORS / "vendor_key.json").read_bytes())["vendor"]
VENDOR_KEYS = {
    bytes.fromhex(_KEYS["key_id"]): x25519_private_from_raw(bytes.fromhex(_KEYS["x25519_private"]))
}


def _case(name: str) -> tuple[dict[str, Any], bytes]:
    case = json.loads((VECTORS / f"{name}.json").read_bytes())
    return case, (VECTORS / f"{name}.report").read_bytes()


def _known(spec: dict[str, Any]) -> Known:
    return Known(
        head=Head(spec["head"]["seq"], bytes.fromhex(spec["head"]["hash"])),
        chain=ChainState(spec["chain"]["epoch"], bytes.fromhex(spec["chain"]["key"])),
        instance_key=bytes.fromhex(spec["instance_key"]),
    )


def test_header_is_read_and_typed_before_any_record() -> None:
    case, data = _case("v1/valid/minimal")
    verifier = ReportVerifier(VENDOR_KEYS)
    header = verifier.read_header(io.BytesIO(data))
    assert header is not None
    assert header.instance_id.hex() == case["instance_id"]
    assert header.instance_key.hex() == case["instance_key"]
    assert header.base_seq == case["base_seq"] == 0
    assert header.acked is None
    assert header.licenses == (b"placeholder for the bytes of lic_00112233445566aa.lic",)
    assert header.software == "meterbox vectors"
    assert header.frames_len == 489  # the example of docs/spec/report.md
    assert verifier.result.records == 0  # nothing past the header was read yet
    seqs = [record.seq for record, _ in verifier.records()]
    assert seqs == [r["seq"] for r in case["records"]]
    assert verifier.result.findings == []
    assert verifier.result.digest.hex() == case["digest"]


def test_known_given_after_the_header_verifies_like_known_given_up_front() -> None:
    case, data = _case("valid/continued")
    upfront = ReportVerifier(VENDOR_KEYS, known=_known(case["known"]))
    expected = [(r.seq, acked) for r, acked in upfront.records(io.BytesIO(data))]

    stepwise = ReportVerifier(VENDOR_KEYS)
    header = stepwise.read_header(io.BytesIO(data))
    assert header is not None and header.base_seq == 26
    stepwise.known = _known(case["known"])
    got = [(r.seq, acked) for r, acked in stepwise.records()]

    assert got == expected
    assert any(acked for _, acked in got) and not all(acked for _, acked in got)
    assert stepwise.result.findings == upfront.result.findings == []
    assert stepwise.result.head == upfront.result.head


def test_without_known_the_continued_report_is_only_unanchored() -> None:
    _, data = _case("valid/continued")
    verifier = ReportVerifier(VENDOR_KEYS)
    verifier.verify(io.BytesIO(data))
    assert verifier.result.codes == {F.LEDGER_UNANCHORED}


def test_unknown_report_version_stops_at_the_header() -> None:
    _, data = _case("invalid/unknown-report-version")
    verifier = ReportVerifier(VENDOR_KEYS)
    assert verifier.read_header(io.BytesIO(data)) is None
    assert list(verifier.records()) == []
    assert [f.code for f in verifier.result.findings] == [F.REPORT_UNKNOWN_VERSION]


def test_header_v_that_contradicts_the_version_byte_is_an_unknown_version() -> None:
    _, data = _case("valid/minimal")
    (length,) = struct.unpack_from(">I", data, 5)
    header = msgpack.unpackb(data[9 : 9 + length], raw=False)
    header["v"] = 2
    packed = msgpack.packb(header, use_bin_type=True)
    forged = data[:5] + struct.pack(">I", len(packed)) + packed + data[9 + length :]
    verifier = ReportVerifier(VENDOR_KEYS)
    assert verifier.read_header(io.BytesIO(forged)) is None
    assert [f.code for f in verifier.result.findings] == [F.REPORT_UNKNOWN_VERSION]
    assert "v = 2" in verifier.result.findings[0].message


def test_a_header_missing_a_field_is_malformed_not_unknown_version() -> None:
    _, data = _case("valid/minimal")
    (length,) = struct.unpack_from(">I", data, 5)
    header = msgpack.unpackb(data[9 : 9 + length], raw=False)
    del header["created_ms"]
    packed = msgpack.packb(header, use_bin_type=True)
    broken = data[:5] + struct.pack(">I", len(packed)) + packed + data[9 + length :]
    verifier = ReportVerifier(VENDOR_KEYS)
    assert verifier.read_header(io.BytesIO(broken)) is None
    assert [f.code for f in verifier.result.findings] == [F.REPORT_MALFORMED]
    # What could be read before the bad field is still named.
    assert verifier.result.instance_id == header["instance_id"]


def test_records_refuse_a_second_stream() -> None:
    _, data = _case("valid/minimal")
    verifier = ReportVerifier(VENDOR_KEYS)
    verifier.read_header(io.BytesIO(data))
    with pytest.raises(RuntimeError, match="stream read_header"):
        list(verifier.records(io.BytesIO(data)))
    fresh = ReportVerifier(VENDOR_KEYS)
    with pytest.raises(RuntimeError, match="needs the report stream"):
        list(fresh.records())


def test_unknown_ledger_file_version_is_a_typed_format_error() -> None:
    raw = FILE_HEADER.pack(FILE_MAGIC, 2, b"\x00" * 16, 0, b"\x00" * 32)
    with pytest.raises(UnknownVersionError) as caught:
        FileHeader.unpack(raw)
    assert isinstance(caught.value, FormatError)
    assert caught.value.code == "unknown_version"
    assert caught.value.found == "version 2"
