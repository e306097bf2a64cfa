"""Ingest rejects a report whose chain lacks a head a client witnessed."""

from __future__ import annotations

from pathlib import Path

from meterbox.ledger import RecordType
from meterbox.ledger.records import Witness
from support.vendor_ingest import codes, ingest_json, issue, make_home, make_site


def test_a_witness_the_chain_lacks_is_critical(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.use("solver", 3)
    head = site.writer.head
    site.use("solver", 4)
    # What a ledger re-sealed after the client saw ``head`` carries: the client's
    # witness of a head whose hash the chain no longer has.
    forged = Witness(client_id="ws-1", seq=head.seq, head_hash=bytes(32))
    site.writer.append(RecordType.WITNESS, forged.to_map())
    code, out = ingest_json(home, site.export(tmp_path / "r.mbr"))
    assert code == 1 and out["status"] == "accepted_with_findings", out
    assert "witness.head_missing" in codes(out)


def test_a_witness_the_chain_has_is_accepted(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    site.use("solver", 3)
    head = site.writer.head
    site.use("solver", 4)
    seen = Witness(client_id="ws-1", seq=head.seq, head_hash=head.hash)
    site.writer.append(RecordType.WITNESS, seen.to_map())
    code, out = ingest_json(home, site.export(tmp_path / "r.mbr"))
    assert code == 0, out
    assert not {"witness.head_missing", "witness.mismatch"} & codes(out)
