"""Durable file writes and private-mode checks, one correct copy for every package.

Invariants:

* :func:`atomic_write` leaves either the old or the new file at ``path``, whole, even
  across a crash or power loss: the data goes to a fresh temporary file in the same
  directory (created with ``O_EXCL``, so it never reuses or follows someone else's
  file), is written fully and fsync-ed, renamed over ``path``, and the directory is
  fsync-ed so the rename itself is durable. On any failure the temporary file is
  removed.
* :func:`write_new_file` never replaces an existing file (``O_EXCL``).
* Both set the requested mode explicitly (``fchmod``), whatever the umask.
* The checks raise :class:`meterbox.errors.StateError` that name the path, the mode
  found and the ``chmod`` that fixes it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from meterbox.errors import StateError

__all__ = [
    "atomic_write",
    "check_private_dir",
    "check_private_file",
    "fsync_dir",
    "write_new_file",
]


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, mode: int) -> None:
    # os.write may write less than asked (signals, pipes, some file systems).
    os.fchmod(fd, mode)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            _write_all(fd, data, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_new_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data``; refuse (StateError) if it exists already."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise StateError(
            "refusing to overwrite an existing file",
            expected="a path that does not exist yet",
            found=str(path),
            hint="Choose another output path or move the existing file away",
        ) from None
    try:
        _write_all(fd, data, mode)
    finally:
        os.close(fd)
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


def check_private_file(path: Path, *, what: str = "private file") -> bool:
    """Refuse a secret file other users can read; False if the file does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise StateError(
            f"{what} is readable by other users",
            expected="mode 0600",
            found=f"mode {stat.S_IMODE(st.st_mode):04o} on {path}",
            hint=f"run `chmod 600 {path}` and check who may have copied it",
        )
    return True
