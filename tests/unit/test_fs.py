"""Durable writes and private-mode checks of meterbox._fs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meterbox._fs import (
    atomic_write,
    check_private_dir,
    check_private_file,
    write_new_file,
)
from meterbox.errors import StateError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "token"
    atomic_write(target, b"old contents, longer than the new ones")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_atomic_write_sets_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "public", b"x", mode=0o644)
    finally:
        os.umask(old)
    atomic_write(tmp_path / "secret", b"x")
    assert _mode(tmp_path / "public") == 0o644
    assert _mode(tmp_path / "secret") == 0o600


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path,
) -> None:
    # A directory in the way makes the rename fail after the data was written.
    target = tmp_path / "in-the-way"
    target.mkdir()
    (target / "keep").write_bytes(b"old")
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert (target / "keep").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-the-way"]


def test_write_new_file_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "key"
    write_new_file(target, b"one")
    with pytest.raises(StateError, match="refusing to overwrite") as info:
        write_new_file(target, b"two")
    assert target.read_bytes() == b"one"
    assert str(target) in (info.value.found or "")
    assert _mode(target) == 0o600


def test_a_world_writable_directory_is_refused_with_the_chmod_that_fixes_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    check_private_dir(data)
    data.chmod(0o777)
    with pytest.raises(StateError, match="world-writable") as info:
        check_private_dir(data)
    assert info.value.hint == f"run: chmod 700 {data}"


def test_a_secret_readable_by_others_is_refused_and_a_missing_one_reported(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "k.key"
    assert check_private_file(secret) is False
    write_new_file(secret, b"s")
    assert check_private_file(secret) is True
    secret.chmod(0o640)
    with pytest.raises(StateError, match="vendor key is readable by other users") as info:
        check_private_file(secret, what="vendor key")
    assert "chmod 600" in (info.value.hint or "")
