"""Checked-in test vectors, each set beside the generator that makes it.

``<set>/generate.py`` rebuilds ``<set>/`` byte for byte; run it from ``tests/`` as
``python -m vectors.<set>.generate`` (``make vectors`` runs them all). The drift test
of each set imports its generator and compares a fresh build with :func:`data_files`.
"""

from __future__ import annotations

from pathlib import Path


def data_files(directory: Path) -> dict[str, bytes]:
    """Every vector file under ``directory`` by relative path, the generator's code excluded.

    The Python modules and their bytecode caches sit in the same tree as the data, but
    they are not vectors: a generator never writes them, so they must not count as drift.
    """
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    }
