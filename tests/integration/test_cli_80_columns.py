"""The CLI's text output at 80 columns: nothing over the width, no Python reprs.

The whole `make demo` round trip runs once (vendor, server, clients, export, ingest,
bill, import) with COLUMNS=80; its output and then `server status`, `vendor licenses`
and `vendor bill` on the files it leaves are checked line by line. Rich tables fold
their cells to fit, so the limit holds for tables as well.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

WIDTH = 80
# What a Python repr leaking into text output looks like.
REPR = re.compile(r"\bNone\b|\{'|\['|\bTrue\b|\bFalse\b|datetime\.")


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(WIDTH), "METERBOX_DEMO_DIR": str(cwd)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env,
        timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("demo")
    done = run(root, "-m", "meterbox.demo")
    assert done.returncode == 0, done.stdout + done.stderr
    return root, done.stdout


def too_wide(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > WIDTH]


def test_demo_output_fits_80_columns(demo: tuple[Path, str]) -> None:
    _, output = demo
    assert "demo complete" in output
    assert too_wide(output) == []


@pytest.mark.parametrize(
    "args",
    [
        ["server", "status", "--data", "server"],
        ["vendor", "licenses", "--home", "vendor"],
        ["vendor", "bill", "--home", "vendor", "--period", time.strftime("%Y-%m", time.gmtime())],
    ],
    ids=["server-status", "vendor-licenses", "vendor-bill"],
)
def test_command_output_fits_80_columns_without_reprs(
    demo: tuple[Path, str], args: list[str]
) -> None:
    root, _ = demo
    done = run(root, "-m", "meterbox", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert too_wide(done.stdout) == []
    assert REPR.findall(done.stdout) == []


def test_license_ids_are_never_cut_with_an_ellipsis(demo: tuple[Path, str]) -> None:
    root, _ = demo
    done = run(root, "-m", "meterbox", "vendor", "licenses", "--home", "vendor")
    assert "…" not in done.stdout


def test_server_status_lines_are_one_fact_each(demo: tuple[Path, str]) -> None:
    root, _ = demo
    done = run(root, "-m", "meterbox", "server", "status", "--data", "server")
    labels = [line[:13].strip() for line in done.stdout.splitlines()]
    assert {"instance", "ledger seq", "ledger head", "last receipt", "quota"} <= set(labels)
    quota = [line for line in done.stdout.splitlines() if line.startswith("quota")]
    assert quota and all(re.search(r"\d+ of \d+ used, \d+ left", q) for q in quota)
