"""Fixtures of the crash-image tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def mem_path(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory in memory when the machine has /dev/shm.

    The harness checks hundreds of images, each opened with real fsyncs; on a disk
    that costs seconds per test for nothing the model depends on (the images are
    built from the log, not from what the disk kept).
    """
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="meterbox-crash-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per durable path: distinct crash images checked, over how many workloads."""
    from support.crash import COUNTS

    if not COUNTS:
        return
    terminalreporter.section("crash images per path")
    for name, c in sorted(COUNTS.items()):
        workloads = f" in {len(c.workloads)} workloads" if c.workloads else ""
        known = f", {c.known} known defect" if c.known else ""
        terminalreporter.write_line(
            f"{name:34} {c.images:6} images over {c.cuts:5} cuts{workloads}, "
            f"{c.failures} failing{known}"
        )
    total = sum(c.images for c in COUNTS.values())
    terminalreporter.write_line(f"{'total':34} {total:6} images")
