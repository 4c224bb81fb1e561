"""The shape of the house, read from the source: dependencies run one way (``autotune``
-> ``probes`` -> ``trainers``), no import cycles, the planner and the reports import no
JAX, records are stdlib-only, and no function is over 100 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("autotune", "probes", "trainers")  # top to bottom


def _modules() -> dict[str, Path]:
    out = {}
    for layer in LAYERS:
        for path in sorted((REPO / layer).glob("*.py")):
            name = f"{layer}.{path.stem}" if path.stem != "__init__" else layer
            out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _project_imports() -> dict[str, set[str]]:
    mods = _modules()
    return {name: {m for m in _imports(path) if m in mods and m != name}
            for name, path in mods.items()}


def test_dependencies_run_one_way():
    wrong = []
    for name, deps in _project_imports().items():
        layer = LAYERS.index(name.split(".")[0])
        for dep in deps:
            if LAYERS.index(dep.split(".")[0]) < layer:
                wrong.append(f"{name} imports {dep}")
    assert wrong == [], "imports that run up the layers:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = _project_imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


RECORD_MODULES = ["trainers.records", "trainers.options", "trainers.summaries", "probes.records"]
NO_JAX = ["autotune.planner", "autotune.runs", "autotune.compare", "autotune.costs",
          "autotune.render", "autotune.probe_report", "autotune.results"] + RECORD_MODULES


def test_planner_reports_and_records_import_no_jax():
    code = ("import importlib, sys\n"
            f"for m in {NO_JAX!r}:\n"
            "    importlib.import_module(m)\n"
            "heavy = [m for m in ('jax', 'flax', 'optax', 'cv2', 'grain', 'orbax') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("module", RECORD_MODULES)
def test_record_modules_are_stdlib_only(module):
    path = _modules()[module]
    allowed = set(RECORD_MODULES)
    bad = [m for m in _imports(path)
           if m.split(".")[0] in LAYERS and m not in allowed
           and not any(m.startswith(r + ".") for r in allowed)]
    third_party = [m for m in _imports(path)
                   if m.split(".")[0] not in LAYERS and m.split(".")[0] not in sys.stdlib_module_names
                   and m.split(".")[0] != "__future__"]
    assert bad == [] and third_party == [], (bad, third_party)


def test_no_function_is_over_100_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert long == [], "\n".join(long)
