"""Every public package says what it exports, and exports what it says.

For each package under ``src/meterbox`` whose dotted name has no private part:
every name in ``__all__`` exists, and every public name the package's
``__init__`` defines (``def``, ``class``, assignment, or an import from a meterbox
module) is listed in ``__all__``. Imports from the standard library or third
parties used inside ``__init__`` are not exports and are not counted.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGES = sorted(
    ".".join(init.parent.relative_to(SRC).parts)
    for init in SRC.rglob("__init__.py")
    if not any(part.startswith("_") for part in init.parent.relative_to(SRC).parts)
)


def _init_path(package: str) -> Path:
    return SRC.joinpath(*package.split("."), "__init__.py")


def _defined_names(package: str) -> set[str]:
    """Public names bound at the top level of the package's ``__init__``."""
    tree = ast.parse(_init_path(package).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or "").startswith("meterbox")
        ):
            names.update(alias.asname or alias.name for alias in node.names)
    return {n for n in names if not n.startswith("_")}


def test_the_packages_are_found() -> None:
    assert {"meterbox", "meterbox.server", "meterbox.client", "meterbox.vendorkit"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_exists(package: str) -> None:
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{package} has no __all__ list"
    assert [name for name in exported if not hasattr(module, name)] == []
    assert len(set(exported)) == len(exported)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_defined_in_init_is_in_all(package: str) -> None:
    module = importlib.import_module(package)
    exported = set(getattr(module, "__all__", ()))
    assert sorted(_defined_names(package) - exported) == []
