"""A witnessed head older than the server's index is judged from the ledger file itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meterbox.ledger import RecordType, recent_heads
from meterbox.server import ServerInstance
from meterbox.server._witness import Verdict, WitnessConfig, WitnessDesk
from meterbox.witness import WitnessHead
from support.server_proc import make_data


def test_old_heads_are_looked_up_in_the_file_and_the_answer_is_sealed(tmp_path: Path) -> None:
    site = make_data(tmp_path)
    instance = ServerInstance.open(site.data)
    service = instance.service
    # A tiny index, so every head but the last few needs the file.
    service.witnesses = WitnessDesk(service.instance_id, WitnessConfig(index_size=2))

    async def scenario() -> tuple[Verdict | None, Verdict | None, Verdict | None]:
        for i in range(10):
            await service.usage("runs", 1, "ws-1", f"k{i}")
        with instance.writer.snapshot() as snap:
            heads = dict(recent_heads(snap.header, snap.chunks(), keep=1000))
        old = min(s for s in heads if s > 3)
        good = WitnessHead(service.instance_id, old, heads[old])
        bad = WitnessHead(service.instance_id, old + 1, heads[old])
        first = await service.witness("ws-1", good)
        second = await service.witness("ws-2", bad)
        again = await service.witness("ws-2", bad)  # cached: no second look-up, no record
        # While a look-up runs, another old head is not looked up: it is sealed unchecked.
        async with service._witness_lookup:
            busy = await service.witness("ws-3", WitnessHead(service.instance_id, 3, heads[3]))
        assert busy is Verdict.UNCHECKED
        await service.write_heartbeat()  # the queued records share this batch
        return first, second, again

    try:
        verdicts = asyncio.run(scenario())
    finally:
        instance.close()
    assert verdicts == (Verdict.MATCH, Verdict.DIFFERS, Verdict.DIFFERS)
    assert service.counters["witness_mismatches"] == 1
    report = tmp_path / "r.mbr"
    instance = ServerInstance.open(site.data)
    try:
        report.write_bytes(instance.export_bytes())
    finally:
        instance.close()
    records, _ = site.verify(report.read_bytes())
    kinds = [r.type for r in records if r.type in (RecordType.WITNESS, RecordType.WITNESS_MISMATCH)]
    assert kinds == [RecordType.WITNESS, RecordType.WITNESS_MISMATCH, RecordType.WITNESS]
