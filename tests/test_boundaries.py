"""The architecture's import boundaries (architecture.md), checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules(*folders: str, exclude: str | None = None) -> list[Path]:
    files = [p for folder in folders for p in (REPO / folder).rglob("*.py")]
    return [p for p in files if exclude is None or exclude not in p.parts]


def test_only_the_env_layer_imports_the_engine():
    offenders = {str(p.relative_to(REPO)): _imports(p) & {"alfworld", "textworld"}
                 for p in _modules("harness", "methods", "analysis", exclude="envs")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_methods_see_only_tensors():
    offenders = {str(p.relative_to(REPO)): _imports(p) & {"harness", "alfworld", "textworld", "transformers"}
                 for p in _modules("methods")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_analysis_never_imports_torch_or_the_harness():
    offenders = {str(p.relative_to(REPO)): _imports(p) & {"torch", "harness", "transformers"}
                 for p in _modules("analysis")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_imports():
    # the checker itself must find the engine import where it is allowed
    assert "alfworld" in _imports(REPO / "harness" / "envs" / "scenes.py")
