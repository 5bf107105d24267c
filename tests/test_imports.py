"""The package's layering, read from the source: import circles, rebound globals, sniffed backends.

Every `import` counts, at module level or inside a function (a function-level import hides a circle,
it does not remove it); jax, flax, optax and orbax are not our modules, so their lazy imports are out.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gitops"
# The registry, config-schema and backend layers: none of these may sit on an import circle.
LAYERED = {"gitops.config.catalog", "gitops.config.registries", "gitops.config.plugins", "gitops.config.schema", "gitops.config.schema_files",
           "gitops.config.settings", "gitops.config.jsonschema_tools", "gitops.repo.tree", "gitops.config.migrate", "gitops.config.sweep",
           "gitops.learn.architectures", "gitops.learn.optim", "gitops.learn.metrics", "gitops.backends", "gitops.backends.base",
           "gitops.backends.local", "gitops.backends.github", "gitops.registry.artifacts", "gitops.registry.promotions"}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the gitops modules it imports anywhere in its source (a submodule, not its package)."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(_tree(path)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                found = owner(target)
                if found and found != name:
                    graph[name].add(found)
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_the_graph_walk_finds_a_circle_when_there_is_one() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    graph = import_graph()
    assert "gitops.config.registries" in graph["gitops.config.catalog"]  # a module-level import
    assert "gitops.config.catalog" in graph["gitops.learn.architectures"]


def test_registry_schema_and_backend_layers_sit_on_no_import_circle() -> None:
    stuck = [sorted(c) for c in circles(import_graph()) if c & LAYERED]
    assert stuck == []


def test_no_module_rebinds_its_globals() -> None:
    rebinding = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}" for path in PACKAGE.rglob("*.py")
                 for node in ast.walk(_tree(path)) if isinstance(node, ast.Global)]
    assert rebinding == []


def test_callers_ask_backends_by_capability_not_by_name_or_hasattr() -> None:
    """Outside gitops/backends/: no hasattr/getattr on a backend, no `backend.name == ...` branch."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "backends" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(_tree(path)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                    and node.args and "backend" in ast.unparse(node.args[0]).lower()):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Compare) and any(
                    isinstance(side, ast.Attribute) and side.attr == "name" and "backend" in ast.unparse(side.value).lower()
                    for side in (node.left, *node.comparators)):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
