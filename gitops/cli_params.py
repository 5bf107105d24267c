"""Command-line values converted without pydantic, so commands that only read configs start fast.

typer 0.2x converts every parameter through a pydantic `TypeAdapter`, built the first time the
parameter is processed, even for a default of None. Importing pydantic and building the adapters
costs about as much as importing typer itself (measured by `benchmarks/cli_startup.py`), which
doubled the start-up of `validate`, `show`, `diff` and `ci plan`. Our parameters are plain: str,
pathlib.Path without constraints, flags, and lists of them. For those, a value converts exactly as
typer would (`Path(value)`, `str`, a bool kept), a parameter left at None needs no converter at
all, and anything else (numbers, paths that must exist, enums) is handed to typer's own converter,
built on first use, so behaviour and messages stay typer's.

`install()` wraps `typer.core.build_runtime_param`, the one function typer's parameters call to
get their converter; with a typer that has no such function (older or newer internals) it does
nothing, and typer converts everything itself.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

_SIMPLE = (str, Path, bool, int, float)  # int and float values go to typer (ranges); their None defaults don't


def _simple(annotation: Any) -> tuple[type | None, bool]:
    """(the leaf type, is a list) for str, Path, `X | None` and `list[X]` of those; (None, False) otherwise."""
    origin = typing.get_origin(annotation)
    if origin is list:
        args = typing.get_args(annotation)
        inner, _ = _simple(args[0]) if len(args) == 1 else (None, False)
        return inner, inner is not None
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _simple(args[0]) if len(args) == 1 else (None, False)
    return (annotation, False) if annotation in _SIMPLE else (None, False)


def _plain_path_info(info: Any) -> bool:
    """True when a Path parameter has none of typer's checks (exists, resolve, dash, writable, path_type)."""
    return not any(getattr(info, name, False) for name in ("exists", "resolve_path", "allow_dash", "writable",
                                                           "path_type", "parser", "click_type"))


def install() -> bool:
    """Route plain parameters around pydantic (see the module docstring); True when installed."""
    try:
        import typer.core as core
        from typer._coercion import RuntimeParam
    except ImportError:
        return False
    original = getattr(core, "build_runtime_param", None)
    if original is None or getattr(original, "_gitops_fast", False):
        return original is not None

    class FastParam(RuntimeParam):
        """str/Path values converted directly; anything else by typer's converter, built when needed."""

        def __init__(self, descriptor: Any, leaf: type, many: bool) -> None:  # RuntimeParam is a frozen dataclass
            for name, value in (("descriptor", descriptor), ("leaf", leaf), ("many", many), ("_typer", []),
                                ("parameter_info", descriptor.parameter_info), ("annotation", descriptor.annotation)):
                object.__setattr__(self, name, value)

        def _fallback(self) -> Any:
            if not self._typer:
                self._typer.append(original(self.descriptor))
            return self._typer[0]

        def _one(self, value: Any) -> Any:
            if (self.leaf is str and isinstance(value, str)) or (self.leaf is bool and isinstance(value, bool)):
                return value
            if self.leaf is Path and isinstance(value, str | Path):
                path = Path(value)
                if not getattr(self.parameter_info, "readable", True) or not os.path.exists(path) or \
                        os.access(path, os.R_OK):
                    return path
            raise LookupError  # not plain: typer decides

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if self.many and isinstance(value, list | tuple):
                    return [self._one(v) for v in value]
                if not self.many:
                    return self._one(value)
            except LookupError:
                pass
            return self._fallback()._coerce_value(value, param=param, ctx=ctx)

    def build_runtime_param(descriptor: Any) -> Any:
        if getattr(descriptor, "file_annotation", None) is None:
            leaf, many = _simple(descriptor.annotation)
            if leaf is not None and (leaf is not Path or _plain_path_info(descriptor.parameter_info)):
                return FastParam(descriptor, leaf, many)
        return original(descriptor)

    build_runtime_param._gitops_fast = True  # type: ignore[attr-defined]
    core.build_runtime_param = build_runtime_param
    return True
