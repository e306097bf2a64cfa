"""File hardening: private modes, world-writable data dirs, path traversal, import and export.

Every refusal here is checked through the real CLI (exit code and message) and by
hashing the whole data directory before and after: a refused command changes nothing.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meterbox.errors import FormatError, StateError
from support.fuzz import Site, make_site, tree_digest


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterbox", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def test_secrets_are_written_with_mode_0600(site: Site) -> None:
    assert _mode(site.data / "admin.token") == 0o600
    assert _mode(site.data / "cryptolens.pem") == 0o600
    assert _mode(site.data / "ledger" / "chain.key") == 0o600
    assert _mode(site.data / "ledger" / "instance.key") == 0o600
    assert _mode(site.data) == 0o700
    keys = list((site.home / "keys").glob("*.key"))
    assert keys and all(_mode(k) == 0o600 for k in keys)


@pytest.mark.parametrize("command", ["run", "status", "export"])
def test_world_writable_data_dir_is_refused(site: Site, tmp_path: Path, command: str) -> None:
    site.data.chmod(0o777)
    before = tree_digest(site.data)
    extra = ["-o", str(tmp_path / "r.report")] if command == "export" else []
    proc = _cli("server", command, "--data", str(site.data), *extra)
    assert proc.returncode == 4, proc.stderr
    assert "world-writable" in proc.stderr and "chmod 700" in proc.stderr
    assert tree_digest(site.data) == before
    assert not (tmp_path / "r.report").exists()


def test_ledger_writer_refuses_a_world_writable_directory(site: Site) -> None:
    from meterbox.clock import SystemClock
    from meterbox.ledger import LedgerWriter

    (site.data / "ledger").chmod(0o777)
    with pytest.raises(StateError) as info:
        LedgerWriter.open(site.data / "ledger", clock=SystemClock())
    assert info.value.expected and info.value.found


@pytest.mark.parametrize("bad", ["../evil", "a/b", "/abs", "..", ".hidden", "a\\b", "a b"])
def test_license_id_with_path_characters_is_refused_before_any_file(bad: str) -> None:
    from meterbox.licenses import Feature, License

    issued = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(FormatError) as info:
        License(
            license_id=bad,
            customer="c",
            product="p",
            issued=issued,
            vendor_key_id="00" * 8,
            features={"cad": Feature(seats=1)},
            meters={},
            expires=issued + timedelta(days=1),
        )
    assert info.value.expected and info.value.found


def _import_refused(site: Site, path: Path, code: int, words: tuple[str, ...]) -> None:
    before = tree_digest(site.data)
    proc = _cli("server", "import", "--data", str(site.data), str(path))
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert all(w in proc.stderr.lower() for w in words), proc.stderr
    assert tree_digest(site.data) == before


def test_import_of_a_non_document_changes_nothing(site: Site, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01not a document")
    _import_refused(site, junk, 2, ("expected",))


def test_import_of_a_report_changes_nothing(site: Site, tmp_path: Path) -> None:
    report = tmp_path / "r.report"
    proc = _cli("server", "export", "--data", str(site.data), "-o", str(report))
    assert proc.returncode == 0, proc.stderr
    _import_refused(site, report, 2, ("expected",))


def test_import_of_a_too_large_file_changes_nothing(site: Site, tmp_path: Path) -> None:
    big = tmp_path / "big.lic"
    big.write_bytes(b"{" + b" " * (2 << 20) + b"}")
    _import_refused(site, big, 2, ("too large", "expected"))


def test_import_of_another_vendors_document_changes_nothing(site: Site, tmp_path: Path) -> None:
    other = make_site(tmp_path / "other", license_id="lic-other")
    lic = tmp_path / "other.lic"
    lic.write_bytes(other.license_bytes)
    _import_refused(site, lic, 3, ("expected",))


def test_import_of_a_missing_file_is_a_clear_error(site: Site, tmp_path: Path) -> None:
    _import_refused(site, tmp_path / "nope.rcpt", 2, ("cannot read",))


def test_export_refuses_to_overwrite_an_existing_file(site: Site, tmp_path: Path) -> None:
    target = tmp_path / "existing.report"
    target.write_bytes(b"keep me")
    before = tree_digest(site.data)
    proc = _cli("server", "export", "--data", str(site.data), "-o", str(target))
    assert proc.returncode == 4
    assert "exists" in proc.stderr
    assert target.read_bytes() == b"keep me"
    assert tree_digest(site.data) == before
