"""The layering rules of docs/architecture.md, checked on the source itself.

The library layers (imaging, models, evaluation, inference, and the small shared modules) never
import the Kedro pipelines or the web UI: the pipelines wire the library, not the other way round.
Imports inside functions count too, so the test reads every import statement with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lungseg"
LIBRARY = ("imaging", "models", "evaluation", "inference", "datasets", "synthetic")
LIBRARY_MODULES = ("config.py", "layout.py", "tracking.py", "errors.py", "volume.py")
FORBIDDEN = ("lungseg.pipelines", "lungseg.app")
#: Files that may exceed the size limit: the synthetic phantom's anatomy tables.
LONG_FILES_ALLOWED = {"synthetic/phantom.py"}
MAX_LINES = 400


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _library_files() -> list[Path]:
    files = [p for layer in LIBRARY for p in sorted((SRC / layer).rglob("*.py"))]
    return files + [SRC / name for name in LIBRARY_MODULES if (SRC / name).exists()]


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_library_modules_never_import_pipelines_or_the_ui(path):
    bad = [f"line {line}: {name}" for line, name in _imports(path) if name.startswith(FORBIDDEN)]
    assert not bad, f"{path.relative_to(SRC)} imports a higher layer: {bad}"


def test_the_layering_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from lungseg.pipelines.training import nodes\n    import lungseg.app.logic\n")
    assert [name for _, name in _imports(probe)] == ["lungseg.pipelines.training", "lungseg.app.logic"]


def test_no_source_file_is_over_the_size_limit():
    too_long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(SRC)) not in LONG_FILES_ALLOWED
    }
    assert not too_long, f"files over {MAX_LINES} lines: {too_long}"
