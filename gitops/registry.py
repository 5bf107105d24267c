"""One small generic registry: implementations attach themselves to the names `gitops.catalog` declares.

A config never names a Python import path; it names an entry (`mlp`, `adamw`, `cosine`, ...), and the
code that builds runtime objects looks it up here. An unknown name is a user error listing the valid
ones, never a KeyError. Registries of the kinds plugins may extend (architecture, dataset,
augmentation, metric) fall back to installed plugins (`gitops.plugins`).
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
        """The implementation registered as `name`, else an installed plugin's (`gitops.plugins`)."""
        if name in self._items:
            return self._items[name]
        found = self._plugin(name)
        if found is not None:
            return found
        valid = ", ".join(self.names()) or "(none)"
        raise GitopsError(f"unknown {self.kind} {name!r}; valid: {valid}")

    def names(self) -> list[str]:
        """Built-in names and those of installed plugins of this kind."""
        return sorted({*self._items, *self._plugin_names()})

    def _plugin(self, name: str) -> T | None:
        from gitops import plugins

        return plugins.implementation(self.kind, name) if self.kind in plugins.GROUPS else None

    def _plugin_names(self) -> list[str]:
        from gitops import plugins

        return plugins.names(self.kind) if self.kind in plugins.GROUPS else []

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._plugin_names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
