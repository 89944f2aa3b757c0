"""The layer map of docs/architecture.md holds: the core never imports napari, Qt, the CLI or an
adapter module (reader, writer, sample data, widgets, layers), so a headless user gets it all."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_clumps"
#: Modules that adapt the core to napari or a terminal; everything else is the core.
ADAPTERS = {"cli", "__main__"}
FORBIDDEN_PACKAGES = {"napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy", "npe2"}


def imported_modules(source: str) -> set[str]:
    """Every module a source imports, anywhere in it (lazy imports in functions too); relative
    imports of this package as ``.name``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .x import y
                if node.module:
                    found.add("." + node.module)
                else:
                    found |= {"." + alias.name for alias in node.names}
            else:
                found.add(node.module)
    return found


def outward_imports(source: str) -> list[str]:
    """Imports that a core module must not have."""
    bad = []
    for name in sorted(imported_modules(source)):
        if name.startswith("."):
            module = name[1:].split(".")[0]
            if module in ADAPTERS or module.startswith("_"):
                bad.append(name)
        elif name.split(".")[0] in FORBIDDEN_PACKAGES or name.split(".")[0] == "napari_clumps":
            bad.append(name)
    return bad


def core_modules() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.glob("*.py")
        if p.stem == "__init__" or (p.stem not in ADAPTERS and not p.stem.startswith("_"))
    )


def test_the_check_catches_outward_imports():
    source = (
        "import numpy\nfrom .io import read_image\n"
        "def f():\n    from .cli import main\n    import napari\n    from ._layers import x\n"
        "    from qtpy.QtWidgets import QWidget\n    from . import _reader\n"
    )
    assert outward_imports(source) == ["._layers", "._reader", ".cli", "napari", "qtpy.QtWidgets"]


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_core_module_imports_point_inward(path):
    assert outward_imports(path.read_text()) == []


def test_the_core_is_most_of_the_package():
    names = {p.stem for p in core_modules()}
    assert {
        "io",
        "inference",
        "model",
        "training",
        "metrics",
        "detections",
        "pixels",
        "host",
        "simulate",
        "settings",
    } <= names
