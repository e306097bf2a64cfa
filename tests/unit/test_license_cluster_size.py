"""``cluster_size`` (license format 4): one encoding, old versions untouched, bad values refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.errors import FormatError, MeterboxError
from meterbox.licenses import (
    LICENSE_FORMATS,
    MAX_CLUSTER_SIZE,
    Feature,
    License,
    VendorPublicBundle,
)
from meterbox.licenses._envelope import seal
from meterbox.vendorkit.keys import VendorKeyPair

CLOCK = datetime(2025, 1, 1, 12, tzinfo=UTC)
KEY = VendorKeyPair.from_raw(bytes(range(32)), bytes(range(32, 64)), CLOCK)
BUNDLE = VendorPublicBundle((KEY.public,), KEY.key_id)


def _license(cluster_size: int = 1, *, require_tpm: bool = False) -> License:
    return License(
        license_id="lic_cluster",
        customer="ACME",
        product="Solver",
        issued=CLOCK,
        vendor_key_id=KEY.key_id.hex(),
        features={"cad": Feature(seats=3)},
        require_tpm=require_tpm,
        cluster_size=cluster_size,
    )


@given(st.integers(2, MAX_CLUSTER_SIZE), st.booleans())
def test_a_cluster_license_is_version_4_and_round_trips(size: int, tpm: bool) -> None:
    lic = _license(size, require_tpm=tpm)
    data = lic.sign(KEY.signer())
    assert b'"format":"meterbox-license/4"' in data
    back = License.from_bytes(data, BUNDLE)
    assert back == lic
    assert back.cluster_size == size
    assert back.require_tpm is tpm


@given(st.booleans())
def test_a_single_server_license_keeps_its_old_version(tpm: bool) -> None:
    data = _license(1, require_tpm=tpm).sign(KEY.signer())
    expected = "meterbox-license/3" if tpm else "meterbox-license/1"
    assert f'"format":"{expected}"'.encode() in data
    assert b"cluster_size" not in data
    assert License.from_bytes(data, BUNDLE).cluster_size == 1


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_CLUSTER_SIZE + 1)))
def test_a_cluster_size_out_of_range_is_refused_at_construction(size: int) -> None:
    with pytest.raises(FormatError) as info:
        _license(size)
    assert info.value.expected == f"1 <= value <= {MAX_CLUSTER_SIZE}"


@given(
    st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=MAX_CLUSTER_SIZE + 1),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
        st.floats(allow_nan=False, allow_infinity=False),
    )
)
def test_a_signed_version_4_payload_with_a_bad_cluster_size_is_a_format_error(
    value: object,
) -> None:
    payload = {**_license(2).to_payload(), "cluster_size": value}
    data = seal(LICENSE_FORMATS[3], payload, KEY.signer())
    with pytest.raises(FormatError):
        License.from_bytes(data, BUNDLE)


@given(st.sampled_from(LICENSE_FORMATS[:3]), st.integers(1, MAX_CLUSTER_SIZE))
def test_cluster_size_under_an_older_version_is_an_unknown_field(fmt: str, size: int) -> None:
    payload = {**_license(2, require_tpm=True).to_payload(), "cluster_size": size}
    if fmt != LICENSE_FORMATS[2]:
        del payload["require_tpm"]
    with pytest.raises(FormatError):
        License.from_bytes(seal(fmt, payload, KEY.signer()), BUNDLE)


def test_version_4_without_cluster_size_is_refused() -> None:
    payload = _license(3).to_payload()
    del payload["cluster_size"]
    with pytest.raises(MeterboxError):
        License.from_bytes(seal(LICENSE_FORMATS[3], payload, KEY.signer()), BUNDLE)


def test_payload_without_envelope_reads_its_version_from_cluster_size() -> None:
    lic = _license(5)
    assert License.from_payload(lic.to_payload()) == lic
