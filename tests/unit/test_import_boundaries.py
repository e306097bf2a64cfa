"""No module imports a private module or name of another package.

A private module (``_name``) or a private name belongs to the package that holds
it: a module inside ``meterbox.server`` may import ``meterbox.server._state``, and
every module under ``meterbox`` may import ``meterbox._fs``, but
``meterbox.vendorkit.x`` may not import ``meterbox.server._state`` or
``meterbox.licenses._license.MAX_LEASE_SECONDS``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
MODULES = sorted(SRC.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _owner(dotted: str) -> str | None:
    """The package that owns the first private part of ``dotted``, or None if all are public."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def _inside(package: str, owner: str) -> bool:
    return package == owner or package.startswith(owner + ".")


def _violations(path: Path, text: str | None = None) -> list[str]:
    """Imports in ``path`` (or in ``text``, parsed as if it were ``path``) that cross a boundary."""
    package = _package_of(path)
    tree = ast.parse(path.read_text() if text is None else text, filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names if alias.name != "*"]
        for dotted in targets:
            if not dotted.startswith("meterbox"):
                continue
            owner = _owner(dotted)
            if owner is not None and not _inside(package, owner):
                found.append(f"{_module_name(path)}:{node.lineno} imports {dotted}")
    return found


def test_the_source_tree_is_found() -> None:
    assert any(p.name == "errors.py" for p in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p) or "meterbox")
def test_module_imports_no_private_part_of_another_package(path: Path) -> None:
    assert _violations(path) == []


def test_the_check_catches_private_imports_from_another_package() -> None:
    # A module of meterbox.vendorkit reaching into the server's and the licenses' internals.
    fake = SRC / "meterbox" / "vendorkit" / "x.py"
    text = (
        "from meterbox.server._state import X\n"
        "from meterbox.licenses._license import Y\n"
        "import meterbox.ledger._files\n"
        "from meterbox.licenses import _codec\n"
        "from ._ingest_store import Z\n"
        "from meterbox._fs import atomic_write\n"
    )
    assert [v.split(" imports ")[1] for v in _violations(fake, text)] == [
        "meterbox.server._state.X",
        "meterbox.licenses._license.Y",
        "meterbox.ledger._files",
        "meterbox.licenses._codec",
    ]


def test_the_check_allows_private_modules_of_the_own_package_and_its_parents() -> None:
    assert _inside("meterbox.server._core", "meterbox.server")
    assert _inside("meterbox.vendorkit", "meterbox")
    assert not _inside("meterbox.vendorkit", "meterbox.server")
