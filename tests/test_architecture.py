"""The layering rules of docs/architecture.md, checked on the source itself.

* **The layer table.** :data:`LAYERS` is the table of docs/architecture.md: every subpackage or
  top-level module of ``lungseg`` (a *unit*) and the units it may import. An import of another unit
  that the table does not allow fails, and so does a unit the table does not know.
* **No import cycle between modules.** The module import graph (an edge per ``import lungseg.x`` or
  ``from lungseg.x import y``, to the submodule when ``y`` is one) has no strongly connected
  component of more than one module.
* The library layers never import the Kedro pipelines or the web UI: the pipelines wire the library,
  not the other way round.

Imports inside functions count too, so the test reads every import statement with ``ast``. The size
of a file (over :data:`MAX_LINES` lines) is only warned about.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lungseg"
LIBRARY = ("imaging", "models", "evaluation", "inference", "datasets", "synthetic")
LIBRARY_MODULES = ("config.py", "layout.py", "tracking.py", "errors.py", "volume.py", "ingest.py")
FORBIDDEN = ("lungseg.pipelines", "lungseg.app")
#: Files that may exceed the size limit without a warning: the synthetic phantom's anatomy tables.
LONG_FILES_ALLOWED = {"synthetic/phantom.py"}
MAX_LINES = 400

# ------------------------------------------------------------------------------- the layer table
#: The convention modules: they may import one another (the cycle check keeps that a tree) and nothing else.
CONVENTIONS = frozenset({"errors", "layout", "config", "volume", "tf_quiet"})
_LIBRARY_LAYERS: dict[str, frozenset[str]] = {
    **{unit: CONVENTIONS for unit in CONVENTIONS},
    "limits": CONVENTIONS,
    "parallel": CONVENTIONS,
    "imaging": CONVENTIONS,
    "models": CONVENTIONS | {"imaging", "parallel"},
    "inference": CONVENTIONS | {"limits", "imaging", "models", "parallel"},
    "evaluation": CONVENTIONS | {"limits", "imaging", "models", "inference"},
    "serving": CONVENTIONS | {"limits", "imaging", "models", "inference"},
    "tracking": CONVENTIONS,
    "datasets": CONVENTIONS | {"models", "tracking", "serving", "parallel"},
    "synthetic": CONVENTIONS | {"datasets"},
    "fetch": CONVENTIONS | {"limits"},
    "ingest": CONVENTIONS | {"imaging", "parallel"},
}
KEDRO = frozenset({"pipelines", "pipeline_registry", "hooks", "settings", "runner"})
FRONT_ENDS = frozenset({"cli", "cli_predict", "cli_train_worker", "app", "__main__"})
#: The package itself (``lungseg/__init__.py``: its version and warning filters): below every unit.
ROOT = "__init__"
#: unit -> the other units it may import (docs/architecture.md, "Layers: what may import what").
LAYERS: dict[str, frozenset[str]] = {
    **{unit: allowed | {ROOT} for unit, allowed in _LIBRARY_LAYERS.items()},
    **{unit: frozenset(_LIBRARY_LAYERS) | KEDRO | {ROOT} for unit in KEDRO},
    **{unit: frozenset(_LIBRARY_LAYERS) | FRONT_ENDS | {ROOT} for unit in FRONT_ENDS},
    ROOT: frozenset(),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in ``path``, inside functions too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package folder ``src``."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ``modules`` that ``name`` (a module or a name in one) belongs to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(src: Path) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` among the modules of the package at ``src``.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
    Imports inside functions count; relative imports are not used in lungseg and are not read.
    """
    modules = _modules(src)
    root = src.name
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            else:
                continue
            for name in names:
                if name == root or name.startswith(root + "."):
                    target = _owner(name, modules)
                    if target and target != module:
                        edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def unit_of(module: str) -> str:
    """The layer-table unit of a module: ``lungseg.inference.models`` -> ``inference``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def layer_violations(graph: dict[str, dict[str, int]], layers: dict[str, frozenset[str]]) -> list[str]:
    """Every import between units that ``layers`` does not allow, and every unit it does not know."""
    problems = []
    for module, edges in sorted(graph.items()):
        unit = unit_of(module)
        if unit not in layers:
            problems.append(f"{module}: unit {unit!r} is not in the layer table")
            continue
        for target, line in sorted(edges.items()):
            other = unit_of(target)
            if other != unit and other not in layers[unit]:
                problems.append(f"{module} line {line}: imports {target} ({unit} may not import {other})")
    return problems


# ------------------------------------------------------------------------------------- the tests
def test_no_import_cycle_between_modules():
    cycles = import_cycles(import_graph(SRC))
    assert not cycles, f"import cycles between modules: {cycles}"


def test_every_import_is_allowed_by_the_layer_table():
    problems = layer_violations(import_graph(SRC), LAYERS)
    assert not problems, "imports the layer table of docs/architecture.md forbids:\n" + "\n".join(problems)


def test_the_layer_table_orders_its_layers():
    """Between layers the table allows imports one way only (within one it is the cycle check's job)."""
    def layer(unit):
        return next((group for group in (CONVENTIONS, KEDRO, FRONT_ENDS) if unit in group), frozenset({unit}))

    table = {unit: {other: 0 for other in allowed if other not in layer(unit)} for unit, allowed in LAYERS.items()}
    assert not import_cycles(table)


def test_the_layer_table_is_the_one_in_the_docs():
    """Each layer of the table in docs/architecture.md names its units as the test does."""
    text = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    for unit in set(LAYERS) - {ROOT, "__main__", "cli_predict", "cli_train_worker"}:
        assert f"`lungseg.{unit}`" in text or f"`{unit}`" in text, f"docs/architecture.md does not name {unit}"


@pytest.mark.parametrize("path", [p for layer in LIBRARY for p in sorted((SRC / layer).rglob("*.py"))]
                         + [SRC / name for name in LIBRARY_MODULES if (SRC / name).exists()],
                         ids=lambda p: str(p.relative_to(SRC)))
def test_library_modules_never_import_pipelines_or_the_ui(path):
    bad = [f"line {line}: {name}" for line, name in _imports(path) if name.startswith(FORBIDDEN)]
    assert not bad, f"{path.relative_to(SRC)} imports a higher layer: {bad}"


def test_the_layering_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from lungseg.pipelines.training import nodes\n    import lungseg.app.logic\n")
    assert [name for _, name in _imports(probe)] == ["lungseg.pipelines.training", "lungseg.app.logic"]


def _planted(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "lungseg"
    for name, text in {"__init__.py": "", **files}.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def test_the_checks_see_a_planted_cycle_and_a_forbidden_import(tmp_path):
    src = _planted(tmp_path, {
        "inference/__init__.py": "",
        "inference/batch.py": "def score():\n    from lungseg.evaluation.metrics import dice\n",
        "evaluation/__init__.py": "",
        "evaluation/metrics.py": "from lungseg.inference import batch\n\ndice = None\n",
        "layout.py": "from lungseg.errors import ConfigError\n",
        "errors.py": "ConfigError = None\n",
    })
    graph = import_graph(src)
    assert graph["lungseg.inference.batch"] == {"lungseg.evaluation.metrics": 2}
    assert graph["lungseg.evaluation.metrics"] == {"lungseg.inference.batch": 1}  # `from pkg import module`
    assert import_cycles(graph) == [["lungseg.evaluation.metrics", "lungseg.inference.batch"]]
    assert layer_violations(graph, LAYERS) == [
        "lungseg.inference.batch line 2: imports lungseg.evaluation.metrics (inference may not import evaluation)"
    ]


def test_the_checks_pass_a_clean_tree_and_name_an_unknown_unit(tmp_path):
    src = _planted(tmp_path, {
        "errors.py": "",
        "layout.py": "import lungseg.errors\n",
        "imaging/__init__.py": "from lungseg.imaging.masks import fill\n",
        "imaging/masks.py": "from lungseg.layout import TASKS\n\nfill = None\n",
        "gadgets.py": "from lungseg import layout\n",
    })
    graph = import_graph(src)
    assert import_cycles(graph) == []  # a package importing its own submodule is no cycle
    assert layer_violations(graph, LAYERS) == ["lungseg.gadgets: unit 'gadgets' is not in the layer table"]


def test_source_files_over_the_size_limit_are_warned_about():
    too_long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(SRC)) not in LONG_FILES_ALLOWED
    }
    if too_long:
        warnings.warn(f"files over {MAX_LINES} lines (split them when convenient): {too_long}", stacklevel=1)
