"""Every public function, class and method of the package says what it is for (STYLE.md: docstrings
that give shapes, units, errors and sources). A new public name without one fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "gitops"


def _missing(path: Path, root: Path = ROOT) -> list[str]:
    out: list[str] = []

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} {prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    walk(node.body, f"{node.name}.")

    walk(ast.parse(path.read_text(encoding="utf-8")).body, "")
    return out


def test_every_public_function_class_and_method_has_a_docstring() -> None:
    missing = [m for path in sorted(ROOT.rglob("*.py")) for m in _missing(path)]
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)


def test_the_check_sees_a_missing_docstring(tmp_path: Path) -> None:
    package = tmp_path / "gitops"
    package.mkdir()
    (package / "m.py").write_text('def f():\n    """Doc."""\n\n\nclass C:\n    def g(self):\n        pass\n\n'
                                  '    def _h(self):\n        pass\n')
    assert _missing(package / "m.py", package) == ["gitops/m.py:5 C", "gitops/m.py:6 C.g"]
