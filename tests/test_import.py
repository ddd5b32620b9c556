"""Importing the package stays cheap, and the engine never pulls in the GUI stack.

Each check runs in a fresh interpreter, because this test session itself may already
have imported torch or napari.
"""

from __future__ import annotations

import json
import subprocess
import sys

GUI_MODULES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt")


def _import_in_fresh_interpreter(statement: str) -> dict:
    """Run ``statement`` in a new Python; return its loaded modules and environment changes."""
    code = (
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        f"{statement}\n"
        "print(json.dumps({'modules': sorted(sys.modules),"
        " 'environ_changed': before != dict(os.environ)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(result.stdout.splitlines()[-1])


def _loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m in names or m.split(".")[0] in names]


def test_package_import_is_cheap():
    state = _import_in_fresh_interpreter("import napari_sam")
    assert _loaded(state["modules"], ("torch", "napari")) == []
    assert not state["environ_changed"]


def test_samples_import_needs_neither_torch_nor_napari():
    state = _import_in_fresh_interpreter("import napari_sam.samples")
    assert _loaded(state["modules"], ("torch", "napari")) == []


def test_engine_predictor_does_not_import_gui():
    state = _import_in_fresh_interpreter("import napari_sam.engine.predictor")
    assert "torch" in state["modules"]  # the import really happened
    assert _loaded(state["modules"], GUI_MODULES) == []
