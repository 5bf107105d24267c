"""One small generic registry: implementations attach themselves to the names `gitops.catalog` declares.

A config never names a Python import path; it names an entry (`mlp`, `adamw`, `cosine`, ...), and the
code that builds runtime objects looks it up here. An unknown name is a user error listing the valid
ones, never a KeyError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from gitops.errors import GitopsError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> implementation, filled by `@registry.register("name")` at import time."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none)"
            raise GitopsError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
