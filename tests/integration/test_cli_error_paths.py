"""Every failure a user can cause at the CLI: a message (expected / found / what to do),
the documented exit code, and never a traceback.

Exit codes (meterbox._cli_support, docs/api.md): 2 unusable input (a flag, file or
path), 3 a signature that does not verify, 4 local state (missing, locked, would
overwrite).
Each case runs the real `meterbox` process, so an exception that escapes shows up as
a traceback on stderr, exactly as an operator would see it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.server_proc import Data, make_data


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Data:
    return make_data(tmp_path_factory.mktemp("site"))


def meterbox(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "METERBOX_URL": "http://127.0.0.1:9"}
    return subprocess.run(
        [sys.executable, "-m", "meterbox", *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def assert_message(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == code, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_export_into_a_missing_directory_fails_before_building_the_report(
    site: Data, tmp_path: Path
) -> None:
    proc = meterbox(tmp_path, "server", "export", "--data", str(site.data), "-o", "nodir/r.mbr")
    assert_message(proc, 2, "nodir", "Expected", "Found")
    assert not (tmp_path / "nodir").exists()


def test_export_onto_a_directory_is_refused(site: Data, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    proc = meterbox(tmp_path, "server", "export", "--data", str(site.data), "-o", "out")
    assert_message(proc, 4, "output file exists")


def test_export_writes_the_report_whole_and_nothing_else(site: Data, tmp_path: Path) -> None:
    proc = meterbox(tmp_path, "server", "export", "--data", str(site.data), "-o", "r.mbr")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["r.mbr"]
    records, result = site.verify((tmp_path / "r.mbr").read_bytes())
    assert records and result is not None


def test_init_with_data_pointing_at_a_file(site: Data, tmp_path: Path) -> None:
    target = tmp_path / "plain-file"
    target.write_text("x\n")
    lic = site.home.parent / "site.lic"
    proc = meterbox(
        tmp_path, "server", "init", "--data", str(target),
        "--vendor-key", str(site.home / "vendor.pub"), "--license", str(lic),
    )  # fmt: skip
    assert_message(proc, 2, str(target), "directory")
    assert target.read_text() == "x\n"


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_import_of_a_file_that_cannot_be_read(site: Data, tmp_path: Path, what: str) -> None:
    path = tmp_path / "receipt.mbr"
    if what == "directory":
        path.mkdir()
    proc = meterbox(tmp_path, "server", "import", "--data", str(site.data), str(path))
    assert_message(proc, 2, str(path), "Expected")


def test_import_of_junk_is_refused_as_input(site: Data, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mbr"
    junk.write_bytes(b"not a signed document")
    proc = meterbox(tmp_path, "server", "import", "--data", str(site.data), str(junk))
    assert proc.returncode in (2, 3), proc.stderr
    assert_message(proc, proc.returncode, "Expected")


@pytest.mark.parametrize("command", ["status", "export", "import", "cryptolens-key"])
def test_data_directory_that_is_not_a_server(tmp_path: Path, command: str) -> None:
    extra = {"export": ["-o", "r.mbr"], "import": [str(tmp_path / "x")]}.get(command, [])
    (tmp_path / "x").write_bytes(b"x")
    proc = meterbox(tmp_path, "server", command, "--data", str(tmp_path / "empty"), *extra)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (2, 4), proc.stderr
    assert "Expected" in proc.stderr


def test_data_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    proc = meterbox(tmp_path, "server", "status", "--data", str(tmp_path / "f"))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (2, 4)
    assert "Expected" in proc.stderr


def test_client_spool_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    proc = meterbox(tmp_path, "client", "record", "runs", "--spool", str(tmp_path / "spool"))
    # The spool is local state (exit 4 in the shared table), named with a way out.
    assert_message(proc, 4, "spool", "METERBOX_SPOOL")


def test_client_bad_url(tmp_path: Path) -> None:
    proc = meterbox(tmp_path, "client", "balance", "--url", "ftp://x")
    assert_message(proc, 2, "ftp://x")


def test_vendor_home_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("x")
    proc = meterbox(tmp_path, "vendor", "licenses", "--home", str(tmp_path / "home"))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (2, 4)
    assert "Expected" in proc.stderr


def test_vendor_ingest_of_a_directory(site: Data, tmp_path: Path) -> None:
    proc = meterbox(tmp_path, "vendor", "ingest", "--home", str(site.home), str(tmp_path))
    assert_message(proc, 2, "report file not found")


def test_vendor_bill_with_a_bad_period(site: Data, tmp_path: Path) -> None:
    proc = meterbox(tmp_path, "vendor", "bill", "--home", str(site.home), "--period", "2026-13")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2
    assert "2026-13" in proc.stderr


def test_server_config_file_that_is_a_directory(tmp_path: Path) -> None:
    proc = meterbox(tmp_path, "server", "run", "--data", str(tmp_path), "--config", str(tmp_path))
    assert_message(proc, 2, "is a directory")


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    proc = meterbox(tmp_path, "server", "stauts")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
