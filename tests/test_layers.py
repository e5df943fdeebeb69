"""The layers of predictor/ hold: imports run one way, no cycles, small modules.

Layers, top to bottom (docs/architecture.md): the command and the server; the edges
(protocols); serving (models, their repository); tasks (what a model computes); runtime
(batches on devices); store (model directories); and the shared vocabulary (settings,
errors, metrics). A module may import its own layer and those below it, never one above.
Every import counts, also those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGE = ROOT / "predictor"
#: Layer of each top-level name under predictor/ (lower numbers sit higher).
LAYERS = {
    "__main__": 0,
    "cli": 0,
    "server": 0,
    "edge": 1,
    "serving": 2,
    "tasks": 3,
    "runtime": 4,
    "store": 5,
    "config": 6,
    "config_sources": 6,
    "cpus": 6,
    "errors": 6,
    "metrics": 6,
    "gpu_metrics": 6,
    "__init__": 6,
}
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS[top]


def imports_of(path: Path) -> set[str]:
    """The predictor modules ``path`` imports (``from predictor.x import y`` counts as
    ``predictor.x`` and, when ``y`` is a module, ``predictor.x.y``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("predictor")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("predictor"):
                continue
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                base = PACKAGE.parent / candidate.replace(".", "/")
                if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
                    found.add(candidate)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    for path in MODULES:
        layer_of(module_name(path))  # KeyError names a module outside the plan


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_run_down_the_layers(path: Path) -> None:
    name = module_name(path)
    mine = layer_of(name)
    upward = sorted(m for m in imports_of(path) if m != "predictor" and layer_of(m) < mine)
    assert not upward, f"{name} (layer {mine}) imports from a layer above: {upward}"


def test_no_import_cycles() -> None:
    graph = {module_name(p): {m for m in imports_of(p) if m != "predictor"} for p in MODULES}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = " -> ".join([*stack[stack.index(node) :], node])
            raise AssertionError(f"import cycle: {cycle}")
        if node in done:
            return
        for target in graph.get(node, ()):
            visit(target, [*stack, node])
        done.add(node)

    for node in graph:
        visit(node, [])


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines < MAX_LINES, f"{module_name(path)} has {lines} lines (limit {MAX_LINES})"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: a runtime module importing the edge is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from predictor.edge import protocols\nimport predictor.serving.model\n")
    imported = imports_of(bad)
    assert {"predictor.edge.protocols", "predictor.serving.model"} <= imported
    assert min(layer_of(m) for m in imported) < layer_of("predictor.runtime.batcher")
