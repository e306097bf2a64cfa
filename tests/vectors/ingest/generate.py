"""Generate the ingest outcome vectors in tests/vectors/ingest/.

A vendor outcome pinned for fixed reports, keys, clock and randomness (issue 12,
part 14): each scenario is a site whose ledger the real LedgerWriter writes under a
manual clock with counter randomness, exported by the real exporter, and ingested in
order into a fresh vendor store (fixed vendor keys, fixed vendor time, receipt ids
from a counter). HPKE's ephemeral key and the report's software string are pinned as
for the ledger vectors (``vectors.ledger.generate.pinned``).

Layout, one directory per scenario:

- ``<scenario>/<n>-<step>.mbr``       the reports, in the order they are ingested
- ``<scenario>/<n>-<step>.receipt``   the receipt signed for it, when accepted
- ``<scenario>/outcome.json``         per report: status, findings (code, severity,
  seq), totals, head, records, and the receipt file name

``v2/<scenario>/`` holds the same scenarios as the server of ledger record version 2
wrote them; they are kept, not regenerated, so the vendor's outcome for reports of
servers not yet upgraded stays pinned.

Usage, from ``tests/`` (``make vectors``): ``python -m vectors.ingest.generate [--out DIR]``.
The drift test (tests/unit/test_ingest_vectors.py) rebuilds them and compares bytes,
and ingests the checked-in reports to compare outcomes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from meterbox.clock import ManualClock
from meterbox.ledger import LedgerWriter
from meterbox.licenses import Feature, Meter
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit.ingest import IngestConfig, IngestOutcome, ingest
from support.ledger import counter_random
from support.vendor_ingest import SITE_START_MS, VENDOR_NOW, Site, issue, make_home
from vectors.ledger.generate import pinned

HERE = Path(__file__).resolve().parent
INSTANCE_ID = bytes(range(0x10, 0x20))


def issue_license(home: Path) -> bytes:
    """The one license of every scenario, signed (deterministically) and stored."""
    return issue(
        home,
        features={"cad": Feature(2, overdraft=1)},
        meters={"solver": Meter(100, "month", "refuse"), "exports": Meter(None)},
    )


def _site(home: Path, directory: Path, seed: int) -> Site:
    doc = issue_license(home)
    pair = vendor_keys.VendorKeys.load(home).pair()
    clock = ManualClock(wall_ms=SITE_START_MS, mono_ms=1_000)
    writer = LedgerWriter.create(
        directory,
        vendor_ledger_key=pair.ledger_private.public_key(),
        vendor_key_id=pair.key_id,
        clock=clock,
        genesis={"l": ["lic_acme"]},
        instance_id=INSTANCE_ID,
        random=counter_random(seed),
    )
    return Site(writer, clock, directory, [doc], "lic_acme")


def receipt_ids() -> Callable[[], str]:
    n = iter(range(1, 1_000_000))
    return lambda: f"rcpt_{next(n):016x}"


def outcome(out: IngestOutcome, receipt: str | None) -> dict[str, Any]:
    return {
        "status": out.status,
        "findings": [{"code": f.code, "severity": f.severity, "seq": f.seq} for f in out.findings],
        "totals": dict(out.totals),
        "head": None if out.head is None else {"seq": out.head.seq, "hash": out.head.hash.hex()},
        "records": out.records,
        "new_records": out.new_records,
        "receipt": receipt,
    }


def _flip(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x01
    out = path.with_name(path.stem + "-edited.mbr")
    out.write_bytes(bytes(data))
    return out


# --------------------------------------------------------------------- scenarios
def accepted(s: Site) -> Iterator[tuple[str, Path | None]]:
    s.checkout("lease-1")
    s.use("solver", 7)
    s.use("exports", 2)
    s.release("lease-1")
    s.heartbeat()
    yield "report", None


def extension(s: Site) -> Iterator[tuple[str, Path | None]]:
    s.use("solver", 10)
    yield "first", None
    s.use("solver", 5)
    s.checkout("lease-2")
    yield "second", None


def over_limit(s: Site) -> Iterator[tuple[str, Path | None]]:
    s.use("solver", 60)
    s.use("solver", 60)
    yield "report", None


def uncovered_refund(s: Site) -> Iterator[tuple[str, Path | None]]:
    s.use("solver", 5)
    s.refund("solver", 9)
    yield "report", None


def edited(s: Site) -> Iterator[tuple[str, Path | None]]:
    s.use("solver", 3)
    yield "report", None
    yield "edited", _flip


def replayed(s: Site) -> Iterator[tuple[str, Path | None]]:
    s.use("solver", 4)
    yield "report", None
    yield "again", None  # the very same file once more


SCENARIOS: dict[str, Callable[[Site], Iterator[tuple[str, Any]]]] = {
    "accepted": accepted,
    "extension": extension,
    "over-limit": over_limit,
    "uncovered-refund": uncovered_refund,
    "edited": edited,
    "replayed": replayed,
}


def build() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp, pinned():
        return _build(Path(tmp))


def _build(tmp: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for seed, (name, scenario) in enumerate(sorted(SCENARIOS.items()), start=11):
        root = tmp / name
        home = make_home(root)
        site = _site(home, root / "ledger", seed)
        config = replace(IngestConfig(), receipt_id=receipt_ids())
        outcomes: list[dict[str, Any]] = []
        last: Path | None = None
        for n, (step, edit) in enumerate(scenario(site), start=1):
            if step == "again" and last is not None:
                path = last
            else:
                path = site.export(root / f"{n}-{step}.mbr")
                if edit is not None:
                    path = edit(path)
                    path = path.rename(root / f"{n}-{step}.mbr")
            last = path
            receipt_out = root / f"{n}-{step}.receipt"
            out = ingest(home, path, now=VENDOR_NOW, receipt_out=receipt_out, config=config)
            files[f"{name}/{n}-{step}.mbr"] = path.read_bytes()
            receipt = None
            if out.receipt_path is not None:
                receipt = receipt_out.name
                files[f"{name}/{receipt}"] = receipt_out.read_bytes()
            outcomes.append({"report": f"{n}-{step}.mbr", **outcome(out, receipt)})
        site.writer.close()
        files[f"{name}/outcome.json"] = (
            json.dumps({"vendor_now": VENDOR_NOW.isoformat(), "reports": outcomes}, indent=2) + "\n"
        ).encode()
    return dict(sorted(files.items()))


def write(out: Path) -> None:
    files = build()
    for name in SCENARIOS:
        if (out / name).exists():
            shutil.rmtree(out / name)
    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    write(args.out)
    print(f"wrote ingest vectors to {args.out}")


if __name__ == "__main__":
    main()
