"""The architecture, held by the imports: who may import whom (docs/architecture.md).

Every ``import`` in the package is parsed, including imports inside functions and under
``TYPE_CHECKING``, so a lazy import cannot hide a wrong dependency. Two checks run in a
fresh interpreter as well, because what really loads is what a user pays for: importing
``napari_sam`` loads neither torch nor napari, and no engine, io, batch or training module
loads the GUI stack.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_sam"
GUI = ("napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")

# The rooms, lowest first. A module may import its own room and the rooms listed in its
# entry; the package root (``napari_sam``, for __version__) and ``errors`` are open to all.
ROOMS = {
    "errors": (),
    "engine": (),
    "io": ("engine",),
    "training": ("engine", "io"),
    "batch": ("engine", "io", "training"),  # --learn trains an instance head
    "commands": ("engine", "io", "training", "batch"),
    "cli": ("engine", "io", "training", "batch", "commands", "demo"),
    "demo": ("engine", "io"),
    "_widgets": ("engine", "io", "training", "batch"),
}
# Inside the engine: a subpackage may import those listed (and metrics, the leaf).
ENGINE = {
    "metrics": (),
    "network": (),
    "model": ("network",),
    "prediction": ("network", "model"),
    "tiling": ("network", "model", "prediction"),
    "everything": ("network", "model", "prediction", "tiling"),
    "annotation": ("network", "model", "prediction", "tiling"),
    "instances": ("network", "model", "prediction", "tiling", "everything"),
}
ROOTS = {"napari_sam", "napari_sam.errors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every napari_sam module or third-party top name imported."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: use absolute imports")
            module = node.module or ""
            found.append((node.lineno, module))
            # `from napari_sam.engine.prediction import prompts` imports a module too
            found += [
                (node.lineno, f"{module}.{alias.name}")
                for alias in node.names
                if (PACKAGE.parent / (module + "." + alias.name).replace(".", "/"))
                .with_suffix(".py")
                .is_file()
            ]
    return found


def room(module: str) -> tuple[str, str | None]:
    """('engine', 'prediction') for napari_sam.engine.prediction.predictor, ..."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    sub = parts[2] if top == "engine" and len(parts) > 2 else None
    return top, sub


def allowed(importer: str, imported: str) -> bool:
    if imported in ROOTS:
        return True
    (top, sub), (other_top, other_sub) = room(importer), room(imported)
    if other_top != top:
        return other_top in ROOMS.get(top, ())
    if top != "engine" or sub is None or other_sub is None or sub == other_sub:
        return top != "engine" or other_sub is not None or imported == "napari_sam.engine"
    return other_sub == "metrics" or other_sub in ENGINE.get(sub, ())


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_room_is_known():
    """A new folder or top-level module must be given its place in ROOMS/ENGINE first."""
    for module in all_modules():
        top, sub = room(module)
        assert module == "napari_sam" or top in ROOMS, f"{module}: add its room to ROOMS"
        if top == "engine" and sub is not None:
            assert sub in ENGINE, f"{module}: add its engine subpackage to ENGINE"


def test_imports_go_down_only():
    wrong = []
    for module, path in all_modules().items():
        for line, name in imported_modules(path):
            if name.startswith("napari_sam") and not allowed(module, name):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {name}")
    assert wrong == [], "imports against the layering:\n" + "\n".join(wrong)


def test_only_the_widgets_import_the_gui_stack():
    wrong = []
    for module, path in all_modules().items():
        if room(module)[0] == "_widgets":
            continue
        for line, name in imported_modules(path):
            if name.split(".")[0] in GUI:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name}")
    assert wrong == [], "GUI imports outside napari_sam._widgets:\n" + "\n".join(wrong)


def test_no_module_imports_another_modules_private_names():
    """``from napari_sam.x import _name`` reaches into x's internals: make the name public."""
    wrong = []
    for module, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_sam"):
                private = [
                    a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"
                ]
                if private and node.module != module:
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {private}")
    assert wrong == []


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each cycle found by depth-first search, as "a -> b -> a"."""
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                cycles.append(" -> ".join(trail[trail.index(child) :] + [child]))
            elif child not in state:
                visit(child, [*trail, child])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles():
    """Imports between our modules form no cycle (lazy imports included)."""
    modules = all_modules()
    graph = {
        module: {name for _, name in imported_modules(path) if name in modules and name != module}
        for module, path in modules.items()
    }
    # A package's __init__ importing its own modules is how packages re-export; not a cycle.
    for module in graph:
        graph[module] = {name for name in graph[module] if not module.startswith(name + ".")}
    assert find_cycles(graph) == []


def test_the_rules_catch_a_violation():
    """The checks above can fail: known-bad imports are refused."""
    assert not allowed("napari_sam.engine.prediction.predictor", "napari_sam.io.volumes")
    assert not allowed("napari_sam.engine.model.loading", "napari_sam.engine.prediction.results")
    assert not allowed(
        "napari_sam.engine.everything.session", "napari_sam.engine.annotation.session"
    )
    assert not allowed("napari_sam.io.embedding_cache", "napari_sam.batch.tasks")
    assert not allowed("napari_sam.training.loop", "napari_sam._widgets.finetune")
    assert not allowed("napari_sam.commands.training", "napari_sam._widgets.finetune")
    assert allowed("napari_sam.batch.tasks", "napari_sam.engine.everything.segmenter")
    assert allowed("napari_sam.engine.tiling.prompting", "napari_sam.engine.prediction.predictor")
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def _fresh_interpreter(statement: str) -> dict:
    """Run ``statement`` in a new Python; return its loaded modules and environment changes."""
    code = (
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        f"{statement}\n"
        "print(json.dumps({'modules': sorted(sys.modules), "
        "'environ_changed': before != dict(os.environ)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(result.stdout.splitlines()[-1])


def _loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names)


@pytest.mark.parametrize(
    "statement",
    [
        "import napari_sam",
        "import napari_sam.io.samples",
        # every subcommand's flags and help, defaults included: `napari-sam --help` stays instant
        "from napari_sam.cli import build_parser; build_parser()",
    ],
)
def test_cheap_imports_load_neither_torch_nor_napari(statement):
    state = _fresh_interpreter(statement)
    assert _loaded(state["modules"], ("torch", "napari")) == []
    assert not state["environ_changed"]


def test_nothing_below_the_widgets_loads_the_gui_stack():
    below = [m for m in all_modules() if room(m)[0] not in ("_widgets", "")]
    state = _fresh_interpreter("\n".join(f"import {m}" for m in below))
    assert "torch" in state["modules"]  # the imports really happened
    assert _loaded(state["modules"], GUI) == []
