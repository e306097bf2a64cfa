"""Small durable-file helpers: private files, atomic replace, directory fsync."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meterbox.errors import StateError


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably, readable only by the owner."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def check_private_dir(directory: Path) -> None:
    """Refuse a data directory that other users could write into."""
    st = directory.stat()
    if st.st_mode & stat.S_IWOTH:
        raise StateError(
            f"data directory {directory} is world-writable",
            expected="a directory only its owner can write (for example mode 0700)",
            found=f"mode {stat.S_IMODE(st.st_mode):04o}",
            hint=f"run: chmod 700 {directory}",
        )
