"""Durable file writes and private-mode checks, one correct copy for every package.

Invariants:

* :func:`atomic_write` leaves either the old or the new file at ``path``, whole, even
  across a crash or power loss: the data goes to a fresh temporary file in the same
  directory (created with ``O_EXCL``, so it never reuses or follows someone else's
  file), is written fully and fsync-ed, renamed over ``path``, and the directory is
  fsync-ed so the rename itself is durable. On any failure the temporary file is
  removed.
* :func:`write_new_file` never replaces an existing file (``O_EXCL``), and removes
  what it created when the write fails.
* :func:`write_all` and :func:`pwrite_all` write every byte or raise: a short write
  (how a filling disk answers first) is continued, never taken for a whole one.
* :func:`disk_error` turns an ``OSError`` from a durable write into the error a user
  sees: :class:`~meterbox.errors.DiskFullError` when the disk is full, naming the
  disk as the cause, else a :class:`~meterbox.errors.StateError`.
* Both set the requested mode explicitly (``fchmod``), whatever the umask.
* The checks raise :class:`meterbox.errors.StateError` that name the path, the mode
  found and the ``chmod`` that fixes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from meterbox.errors import DiskFullError, StateError

__all__ = [
    "atomic_write",
    "check_private_dir",
    "check_private_file",
    "disk_error",
    "fsync_dir",
    "is_disk_full",
    "publish",
    "pwrite_all",
    "stage_file",
    "write_all",
    "write_new_file",
]

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or SQLite's "database or disk is full") means no space."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    return "disk is full" in str(exc) or "SQLITE_FULL" in str(exc)


def disk_error(problem: str, exc: BaseException, *, hint: str | None = None) -> StateError:
    """The user-facing error for a durable write that failed with ``exc``."""
    found = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    filename = getattr(exc, "filename", None)
    if filename:
        found = f"{found} ({filename})"
    if is_disk_full(exc):
        return DiskFullError(
            problem,
            expected="free space on the disk that holds it",
            found=found,
            hint=hint or "free disk space, then retry; nothing acknowledged was lost",
        )
    return StateError(
        problem,
        expected="a writable disk",
        found=found,
        hint=hint or "check the disk and the directory's permissions, then retry",
    )


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` at the file position, continuing short writes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``, continuing short writes."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, mode: int) -> None:
    os.fchmod(fd, mode)
    write_all(fd, data)
    os.fsync(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole."""
    path = Path(path)
    publish(stage_file(path, data, mode=mode), path)


def stage_file(path: Path, data: bytes, *, mode: int = 0o600) -> Path:
    """Write ``data`` durably to a fresh temporary file beside ``path``; return its path.

    The first half of :func:`atomic_write`, for callers that must know the bytes are
    on disk before they commit something else (then :func:`publish` gives the file
    its name). On failure nothing is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            _write_all(fd, data, mode)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def publish(staged: Path, path: Path) -> None:
    """Rename a file from :func:`stage_file` to ``path`` and make the rename durable."""
    try:
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(staged).unlink()
        raise
    fsync_dir(Path(path).parent)


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
        try:
            _write_all(fd, data, mode)
        finally:
            os.close(fd)
    except BaseException:
        # A half-written file must not stay behind under the name the caller asked for.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
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
