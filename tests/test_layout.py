"""The layout is the architecture: the package's import graph (read with ast, nothing
imported) has no cycle, and production code never imports the development parts."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alicode_gw"
DEV = "alicode_gw.dev"
# The command line may start the dev server and the mock upstream (``alicode-gw dev``,
# ``alicode-gw mock-upstream``); nothing else outside dev/ may reach them.
MAY_IMPORT_DEV = ("alicode_gw.cli", DEV)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere (function level and
    ``TYPE_CHECKING`` blocks included: a type that needs another module is a tie)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: imports_of(path, modules) - {name} for name, path in paths.items()}
    for name in graph:  # importing a.b.c runs a/__init__ and a/b/__init__ first: no tie
        graph[name] = {
            dep for dep in graph[name] if not (name.startswith(dep + ".") and dep in paths)
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_finder_sees_a_cycle_and_a_tie_to_dev() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert len(import_graph()) > 50  # it reads the real package


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_production_code_does_not_import_dev_parts() -> None:
    offenders = sorted(
        f"{name} -> {dep}"
        for name, deps in import_graph().items()
        if not name.startswith(MAY_IMPORT_DEV)
        for dep in deps
        if dep == DEV or dep.startswith(DEV + ".")
    )
    assert offenders == []
