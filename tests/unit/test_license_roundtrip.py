"""Property tests: documents round-trip, and no single-byte change survives verification."""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterbox.errors import MeterboxError
from meterbox.licenses import (
    MAX_BORROW_HOURS,
    CryptolensSection,
    DataObject,
    Feature,
    License,
    Meter,
    Receipt,
    Topup,
    VendorPublicBundle,
    open_document,
)
from meterbox.vendorkit.keys import VendorKeyPair

CLOCK = datetime(2025, 1, 1, tzinfo=UTC)
PAIR = VendorKeyPair.from_raw(b"\x01" * 32, b"\x02" * 32, CLOCK)
BUNDLE = VendorPublicBundle((PAIR.public,), PAIR.key_id)
SIGNER = PAIR.signer()

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True)
texts = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_characters="\x7f"),
    min_size=1,
    max_size=30,
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
hexes = lambda n: st.binary(min_size=n, max_size=n).map(bytes.hex)  # noqa: E731
features = st.builds(
    Feature,
    seats=st.integers(0, 10_000),
    overdraft=st.integers(0, 100),
    lease_seconds=st.integers(5, 86_400),
)
meters = st.builds(
    Meter,
    limit=st.none() | st.integers(1, 2**62),
    period=st.sampled_from(["total", "month"]),
    over_limit=st.sampled_from(["refuse", "allow"]),
)


@st.composite
def licenses(draw: st.DrawFn) -> License:
    feats = draw(st.dictionaries(names, features, max_size=3))
    mets = draw(st.dictionaries(names, meters, min_size=0 if feats else 1, max_size=3))
    issued = draw(times)
    cryptolens = None
    if draw(st.booleans()):
        objects: tuple[DataObject, ...] = ()
        if mets:
            objects = tuple(
                DataObject(
                    i + 1,
                    draw(texts),
                    draw(st.sampled_from(sorted(mets))),
                    "",
                    draw(st.integers(-(2**31), 2**31 - 1)),
                    draw(st.sampled_from(["increment", "decrement"])),
                )
                for i in range(draw(st.integers(0, 2)))
            )
        if draw(st.booleans()):
            # Format 2: an unmetered feature template.
            template = DataObject(99, "cryptolens_features", None, '["f1",["f2",["voice"]]]')
            objects = (*objects, template)
        cryptolens = CryptolensSection(
            product_id=draw(st.integers(1, 2**31 - 1)),
            key="-".join(
                draw(st.text(string.ascii_uppercase, min_size=5, max_size=5)) for _ in range(4)
            ),
            feature=draw(st.none() | st.sampled_from(sorted(feats))) if feats else None,
            flags=tuple(draw(st.lists(st.booleans(), min_size=8, max_size=8))),  # type: ignore[arg-type]
            notes=draw(st.just("") | texts),
            allowed_machines=tuple(draw(st.lists(texts, max_size=2, unique=True))),
            data_objects=objects,
            max_machines=draw(st.none() | st.integers(0, 1_000_000)),
            block=draw(st.booleans()),
            trial_activation=draw(st.booleans()),
            allow_deactivation=draw(st.booleans()),
        )
    return License(
        license_id=draw(names),
        customer=draw(texts),
        product=draw(texts),
        issued=issued,
        vendor_key_id=PAIR.key_id.hex(),
        features=feats,
        meters=mets,
        expires=draw(
            st.none()
            | st.timedeltas(timedelta(seconds=1), timedelta(days=4000)).map(lambda d: issued + d)
        ),
        report_every_days=draw(st.none() | st.integers(1, 365)),
        grace_days=draw(st.integers(0, 60)),
        site_fingerprint=draw(st.none() | texts),
        cryptolens=cryptolens,
        require_tpm=draw(st.booleans()),
        max_borrow_hours=draw(st.sampled_from([0, 0, 1, 336, MAX_BORROW_HOURS])),
        cluster_size=draw(st.just(1) | st.integers(1, 256)),
    )


topups = st.builds(Topup, names, names, names, st.integers(1, 2**62), times)


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    head = draw(st.integers(0, 2**40))
    return Receipt(
        receipt_id=draw(names),
        instance_id=draw(hexes(16)),
        license_ids=tuple(draw(st.lists(names, max_size=3, unique=True))),
        head_seq=head,
        head_hash=draw(hexes(32)),
        previous_head_seq=draw(st.none() | st.integers(0, head)),
        vendor_time=draw(times),
        report_digest=draw(hexes(32)),
        totals=draw(st.dictionaries(names, st.integers(0, 2**40), max_size=3)),
        status=draw(st.sampled_from(["accepted", "accepted_with_findings"])),
        finding_codes=tuple(draw(st.lists(names, max_size=3))),
        # Version 2 (docs/adr/0036): a TPM credential challenge for the server to answer.
        tpm_challenge=draw(st.none() | st.binary(min_size=1, max_size=600)),
    )


documents = licenses() | topups | receipts()


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_document_round_trips_through_sign_and_verify(doc: License | Topup | Receipt) -> None:
    data = doc.sign(SIGNER)
    assert type(doc).from_bytes(data, BUNDLE) == doc
    assert open_document(data, BUNDLE) == doc
    assert type(doc).from_payload(doc.to_payload()) == doc
    if isinstance(doc, Receipt):
        # Written in the lowest version that expresses it: version 1 unless it challenges.
        assert json.loads(data)["format"] == f"meterbox-receipt/{doc.format_version}"
        assert (doc.format_version == 2) is (doc.tpm_challenge is not None)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.data())
def test_any_single_byte_change_is_rejected_with_a_meterbox_error(
    doc: License | Topup | Receipt, data: st.DataObject
) -> None:
    signed = doc.sign(SIGNER)
    at = data.draw(st.integers(0, len(signed) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != signed[at]))
    mutated = signed[:at] + bytes([new]) + signed[at + 1 :]
    with pytest.raises(MeterboxError):
        type(doc).from_bytes(mutated, BUNDLE)
    with pytest.raises(MeterboxError):
        open_document(mutated, BUNDLE)


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_a_meterbox_error(blob: bytes) -> None:
    with pytest.raises(MeterboxError):
        open_document(blob, BUNDLE)
