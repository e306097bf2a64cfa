"""Power-loss images of the vendor's ingest: the store and the receipt it stages.

The vendor writes the signed receipt under a temporary name inside the ingest
transaction and renames it into place after the commit (ADR 0010). On every image:
the store opens; a receipt under its final name belongs to a report the store
holds (a receipt never exists for an ingest the store lost); and once ``ingest``
returned, both the stored report and its receipt are there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meterbox.vendorkit import VendorStore
from meterbox.vendorkit.ingest import ingest
from support.crash import report_count
from support.crashmodel import CrashPoint, Recorder, crash_images
from support.vendor_ingest import VENDOR_NOW, issue, make_home, make_site

MIN_IMAGES_PER_PATH = 300


def _checker(home_name: str, digests: dict[str, str]) -> Any:
    def check(root: Path, point: CrashPoint) -> None:
        home = root / home_name
        with VendorStore.open(home=home) as store:
            held = {name: store.get_report(d) is not None for name, d in digests.items()}
        if ":main-only" in point.variant:
            # The vendor's own -wal deleted: what it held is gone, but the store opens.
            return
        for name in digests:
            if (root / name).exists():
                assert held[name], f"receipt {name} exists but the store lost its ingest"
        for note in point.notes:
            if note[0] == "ingested":
                assert (root / note[1]).exists(), f"receipt {note[1]} of a finished ingest lost"
                assert held[note[1]], f"finished ingest of {note[1]} lost from the store"

    return check


def test_vendor_ingest_survives_every_power_loss_image(mem_path: Path) -> None:
    images = 0
    for reports, per_report in ((8, 2), (5, 6), (10, 1), (4, 15)):
        root = mem_path / f"vendor-{reports}-{per_report}"
        root.mkdir()
        home = make_home(root)
        site = make_site(home, mem_path / f"site-{reports}-{per_report}", [issue(home)])
        files = []
        for r in range(reports):
            for _ in range(per_report):
                site.use("solver", 1)
            files.append(site.export(mem_path / f"r{reports}-{per_report}-{r}.mbr"))
        digests: dict[str, str] = {}
        with Recorder(root) as rec:
            for r, path in enumerate(files):
                name = f"r{r}.receipt"
                outcome = ingest(home, path, receipt_out=root / name, now=VENDOR_NOW)
                assert outcome.receipt is not None
                digests[name] = outcome.receipt.report_digest
                rec.note(("ingested", name))
        report = crash_images(rec, _checker(home.name, digests), workdir=mem_path)
        report_count("vendor store and receipts", report, f"{reports} reports of {per_report}")
        assert not report.failures, report.summary()
        images += report.images
    assert images >= MIN_IMAGES_PER_PATH
