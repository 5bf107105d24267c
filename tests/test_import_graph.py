"""The import graph of the gitops package: no circles, and the library never calls up into the CLI.

Every module under gitops/ is parsed with `ast` (nothing is imported), and every import counts: at
module level, inside functions, under `if TYPE_CHECKING:`, relative or absolute. `from gitops import x`
is an edge to `gitops.x` when `x` is a module (else to `gitops` itself, the package's `__init__`);
`import gitops.a.b` is an edge to `gitops.a.b`. Imports of anything outside the package (jax, flax,
optax, orbax, the standard library) are not edges. A circle hidden in a function-level import is still
a circle: whoever reads one module must read the other first, and the order the two load in decides
which names exist.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "gitops"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# The command layer: the typer app and the modules that register commands on it. Only these (and a
# `gitops/__main__.py`, if there is one) may import them; the library below never calls back up.
COMMAND_LAYER = ("gitops.cli", "gitops.cli_app", "gitops.cli_params", "gitops.commands")
MAY_IMPORT_COMMANDS = (*COMMAND_LAYER, "gitops.__main__")



def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The gitops modules `name` imports anywhere in its file (the closest existing module of each)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = name if _is_package(name, modules) else name.rpartition(".")[0]
    found: set[str] = set()

    def closest(dotted: str) -> str | None:  # gitops.a.b.Thing -> gitops.a.b (the module that exists)
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.add(closest(alias.name) or PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..a import b
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            for alias in node.names:  # `from gitops import x`: the module gitops.x when it is one
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else closest(source) or PACKAGE)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the gitops modules it imports (module-level and function-level alike)."""
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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
                        components.append(sorted(component))
    return sorted(components)


def _cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete circle through the component's first module: a -> b -> ... -> a (breadth first)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return component


def cycles(graph: dict[str, set[str]] | None = None) -> list[list[str]]:
    """Every circle of the graph, as one path per strongly connected component."""
    graph = import_graph() if graph is None else graph
    return [_cycle_path(graph, c) for c in _strongly_connected(graph)]


def test_the_graph_reader_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "gitops.cli_app" in graph["gitops.cli"]  # module level
    assert "gitops.learn.interrupt" in graph["gitops.cli"]  # inside main()
    assert "gitops.backends.base" in graph["gitops.backends"] or any(
        m.startswith("gitops.backends.") for m in graph["gitops.backends"])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    graph = import_graph()
    left = cycles(graph)
    assert not left, "import circles among gitops modules (function-level imports count):\n" + "\n".join(
        " -> ".join(c) for c in left)


def test_the_library_never_imports_the_command_layer() -> None:
    def in_layer(module: str, layer: tuple[str, ...]) -> bool:
        return any(module == top or module.startswith(top + ".") for top in layer)

    upward = sorted(f"{name} imports {target}" for name, targets in import_graph().items()
                    if not in_layer(name, MAY_IMPORT_COMMANDS)
                    for target in targets if in_layer(target, COMMAND_LAYER))
    assert not upward, "library modules call up into the command layer:\n" + "\n".join(upward)
