"""The layers point one way: trm_core (the engine) < trm_lab (study, report) < submission < bundle <
trm_cli (the `trm` script); tools and tests on top. A module may import its own layer and the ones
below, never one above. Checked on the imports themselves (an AST scan: `import x`, `from x import
y`, importlib.import_module("x"), in any function too), so a lazy import inside a command counts as
much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"trm_core": 0, "trm_lab": 1, "submission": 2, "bundle": 3, "trm_cli": 4, "tools": 5, "tests": 5}

def imported_names(source: str) -> set[str]:
    """Top-level package of every absolute import in `source`, lazy ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "__import__")):
            names.add(node.args[0].value.split(".")[0])
    return names


def layer_violations(root: Path) -> set[tuple[str, str]]:
    """(file, package) for every import of a layer above the file's own."""
    found = set()
    for layer, rank in LAYERS.items():
        for path in sorted((root / layer).rglob("*.py")):
            for name in imported_names(path.read_text()):
                if LAYERS.get(name, -1) > rank:
                    found.add((path.relative_to(root).as_posix(), name))
    return found


def test_trm_core_is_a_leaf() -> None:
    above = {(f, name) for f, name in layer_violations(ROOT) if f.startswith("trm_core/")}
    assert above == set(), f"trm_core imports a layer above it: {sorted(above)}"


def test_no_module_imports_a_layer_above_it() -> None:
    new = layer_violations(ROOT)
    assert new == set(), f"imports of a layer above: {sorted(new)} (order: {' < '.join(LAYERS)})"


def test_the_scan_finds_every_form_of_import(tmp_path: Path) -> None:
    (tmp_path / "trm_core").mkdir()
    (tmp_path / "submission").mkdir()
    (tmp_path / "trm_core" / "ok.py").write_text("import numpy\nfrom trm_core import model\nfrom . import x\n")
    (tmp_path / "trm_core" / "top.py").write_text("import bundle.build\n")
    (tmp_path / "trm_core" / "lazy.py").write_text("def f():\n    from submission.run import main\n")
    (tmp_path / "trm_core" / "dynamic.py").write_text("import importlib\nimportlib.import_module('tools.study')\n")
    (tmp_path / "submission" / "down.py").write_text("from trm_core.tasks import load_tasks\n")
    (tmp_path / "submission" / "up.py").write_text("import trm_cli\n")
    assert layer_violations(tmp_path) == {("trm_core/top.py", "bundle"), ("trm_core/lazy.py", "submission"),
                                          ("trm_core/dynamic.py", "tools"), ("submission/up.py", "trm_cli")}


@pytest.mark.parametrize("needle", ["arc-prize", "kaggle_secrets", "import kaggle"])
def test_trm_core_carries_no_competition_slug_or_kaggle_client(needle: str) -> None:
    hits = [p.relative_to(ROOT).as_posix() for p in (ROOT / "trm_core").rglob("*.py") if needle in p.read_text()]
    assert hits == []
