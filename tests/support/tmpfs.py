"""A real, small tmpfs for disk-full tests, and a filler that takes every free byte.

No tests of its own. Mounting needs root (the test machines run as root); a test
that cannot mount fails, it never skips: a skipped disk-full test would pass for a
machine that never checked anything.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "256k") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``where`` (created) for the duration of the block."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        check=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(path: Path) -> int:
    """Write ``path`` until the file system refuses: then not one more byte fits."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    written += f.write(b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return written


def reserve(path: Path, size: int) -> None:
    """A file of ``size`` bytes to delete later: frees exactly that much space."""
    path.write_bytes(b"\0" * size)


def says_disk(text: str) -> bool:
    """Whether an error text names the full disk as the cause (and not, say, damage)."""
    t = text.lower()
    return ("disk" in t or "space" in t) and "damaged" not in t and "backup" not in t
