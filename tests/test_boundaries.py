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


PACKAGES = ("harness", "methods", "analysis")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports anywhere (function bodies included)."""
    files = {_module_name(p): p for p in _modules(*PACKAGES)}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parent + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in wanted:
                while target and target not in files:  # pkg.mod.Name -> pkg.mod
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path a -> ... -> a, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle_among_the_project_modules():
    # lazy imports in function bodies count: a cycle through them is still a layering knot
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_checker_finds_cycles():
    graph = _import_graph()
    assert "harness.cache" in graph["harness.envs.generate"]  # `from harness import cache`
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
