"""Fuzz what `meterbox server import` takes: receipts, top-ups and licenses, on a real instance.

Each test sets up a real server instance (ledger, state store, licenses), then feeds
``ServerInstance.import_bytes`` generated and mutated documents. A refused document
must leave everything as it was: the ledger head, every byte in the data directory,
the engine's balances and the license list.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.crypto import HASH_LEN
from meterbox.licenses import Receipt, Topup
from meterbox.server._instance import ServerInstance
from support.fuzz import (
    Site,
    assert_clean_error,
    call_parser,
    fuzz_settings,
    make_site,
    mutate,
    tree_digest,
)


@dataclass
class Opened:
    site: Site
    instance: ServerInstance
    loop: asyncio.AbstractEventLoop

    def snapshot(self) -> tuple[Any, ...]:
        service = self.instance.service
        now = service.now()
        return (
            self.instance.writer.head,
            tree_digest(self.site.data),
            [(b["meter"], b["limit"], b["used"]) for b in service.engine.balances(now)],
            sorted(lic.license_id for lic, _ in self.instance.licenses),
            service.engine.last_receipt,
        )

    def do_import(self, blob: bytes) -> tuple[Any, Any]:
        return call_parser(
            "import", lambda: self.loop.run_until_complete(self.instance.import_bytes(blob))
        )

    def check_refused_changes_nothing(self, blob: bytes) -> Any:
        before = self.snapshot()
        value, error = self.do_import(blob)
        if error is not None:
            assert self.snapshot() == before, f"refused import changed state: {error}"
        return value


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Opened]:
    site = make_site(tmp_path_factory.mktemp("import"))
    instance = ServerInstance.open(site.data)
    loop = asyncio.new_event_loop()
    try:
        yield Opened(site, instance, loop)
    finally:
        instance.close()
        loop.close()


def _topup(site: Site, units: int = 5, topup_id: str = "top-1") -> bytes:
    t = Topup(
        topup_id, site.license.license_id, "runs", units, datetime.now(UTC).replace(microsecond=0)
    )
    return t.sign(site.keys.signer())


def _receipt(op: Opened, *, seq: int | None = None, head_hash: bytes | None = None) -> bytes:
    head = op.instance.writer.head
    r = Receipt(
        receipt_id="rcpt-1",
        instance_id=op.instance.writer.instance_id.hex(),
        license_ids=(op.site.license.license_id,),
        head_seq=head.seq if seq is None else seq,
        head_hash=(head.hash if head_hash is None else head_hash).hex(),
        previous_head_seq=None,
        vendor_time=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1),
        report_digest="00" * HASH_LEN,
    )
    return r.sign(op.site.keys.signer())


@fuzz_settings()
@given(st.binary(max_size=4096))
def test_random_bytes_import_changes_nothing(opened: Opened, blob: bytes) -> None:
    assert opened.check_refused_changes_nothing(blob) is None


@fuzz_settings(weight=2)
@given(kind=st.sampled_from(["topup", "receipt", "license"]), seed=st.integers(0, 2**32 - 1))
def test_mutated_documents_import_changes_nothing(opened: Opened, kind: str, seed: int) -> None:
    original = {
        "topup": lambda: _topup(opened.site, topup_id=f"top-{seed}"),
        "receipt": lambda: _receipt(opened),
        "license": lambda: opened.site.license_bytes,
    }[kind]()
    data = mutate(original, random.Random(seed))
    if data == original:
        return
    value = opened.check_refused_changes_nothing(data)
    assert value is None, f"a changed {kind} was imported: {value}"


@fuzz_settings()
@given(
    seq=st.integers(0, 2**63 - 1),
    head_hash=st.binary(min_size=HASH_LEN, max_size=HASH_LEN),
)
def test_receipts_for_heads_this_ledger_never_had_change_nothing(
    opened: Opened, seq: int, head_hash: bytes
) -> None:
    # Signed by the right vendor, so only the ledger check stands between it and compaction.
    blob = _receipt(opened, seq=seq, head_hash=head_hash)
    before = opened.snapshot()
    value, error = opened.do_import(blob)
    assert value is None and error is not None, "a receipt for a foreign head was imported"
    assert_clean_error(error, "receipt")
    assert opened.snapshot() == before


def test_topup_for_unknown_license_or_meter_changes_nothing(opened: Opened) -> None:
    signer = opened.site.keys.signer()
    now = datetime.now(UTC).replace(microsecond=0)
    for topup in (
        Topup("top-x1", "lic-other", "runs", 5, now),
        Topup("top-x2", opened.site.license.license_id, "no-such-meter", 5, now),
    ):
        before = opened.snapshot()
        value, error = opened.do_import(topup.sign(signer))
        assert value is None and error is not None
        assert opened.snapshot() == before


def test_documents_of_another_vendor_change_nothing(opened: Opened, tmp_path: Path) -> None:
    other = make_site(tmp_path, license_id=opened.site.license.license_id)
    for blob in (other.license_bytes, _topup(other, topup_id="top-foreign")):
        before = opened.snapshot()
        value, error = opened.do_import(blob)
        assert value is None and error is not None
        assert "key" in str(error).lower() or "signature" in str(error).lower()
        assert opened.snapshot() == before
