"""The package's layering, read from the source: no rebound globals, no sniffed backends.

Import circles are `tests/test_import_graph.py`'s (strict: none anywhere in the package).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gitops"
@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


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
