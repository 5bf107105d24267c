"""The one door for every name a config may use: one `Registry` per kind, built-ins and plugins alike.

A config never names a Python import path; it names an entry (`mlp`, `adamw`, `cosine`, ...). Each
kind (architecture, optimizer, schedule, dataset, augmentation, loss, metric) has one `Registry`,
declared in `gitops.config.catalog`. An entry goes in through one call, `Registry.add(entry, build)`: the
catalog adds the built-ins with it at import, and the same call adds each plugin (`gitops.config.plugins`)
when the registry first looks at the repository in view. An entry is its declaration (description,
JSON Schema of its parameters, facts the semantic checks use; jax-free) plus `build`, a lazy
"module:attribute" reference to the implementation, imported on first `get` (so validation never
imports jax). An unknown name is a user error listing the valid ones, never a KeyError.

The idea of one small generic registry whose entries are found by name follows big_vision's
`pp/registry.py` and Levanter's registered config classes (docs/STYLE.md).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from gitops.config import plugins
from gitops.errors import GitopsError
from gitops.records import record

E = TypeVar("E")  # the declaration record of a kind (catalog.Entry, catalog.Metric)

BUILT_IN = "built-in"


@record(frozen=True)
class _Slot(Generic[E]):
    """One registered name: its declaration and where its implementation comes from."""

    entry: E
    build: str | Callable[..., Any] | None  # "module:attribute" (relative to `package` if it starts with ".")
    package: str | None = None
    origin: str = BUILT_IN  # for messages: "built-in" or a plugin's entry point / repository package
    plugin: plugins.Found | None = None


class Registry(Generic[E]):
    """Name -> declaration (and lazy implementation) of one kind; plugin entries join at first use.

    Reads like a read-only mapping of declarations (`reg[name]`, `name in reg`, `reg.items()`,
    `reg.entry(name)`); `get(name)` returns the implementation.

    Args:
        kind: "architecture", "optimizer", ... (plugins may extend the kinds in `gitops.config.plugins.GROUPS`).
        from_plugin: turns a checked plugin (`gitops.config.plugins.Found`) into this kind's declaration record.
    """

    def __init__(self, kind: str, from_plugin: Callable[[plugins.Found], E] | None = None):
        self.kind = kind
        self._from_plugin = from_plugin
        self._builtin: dict[str, _Slot[E]] = {}
        self._view: tuple[tuple, dict[str, _Slot[E]]] | None = None

    # --- the one way in ------------------------------------------------------------------------------
    def add(self, entry: E, build: str | Callable[..., Any] | None, *, package: str | None = None,
            origin: str = BUILT_IN, _into: dict[str, _Slot[E]] | None = None,
            _found: plugins.Found | None = None) -> E:
        """Register `entry` (its `name`) with its implementation reference `build`; returns `entry`.

        Built-ins are added by `gitops.config.catalog` at import; plugins through the same call when the
        registry merges the repository in view (`_into` is that merged table).

        Raises:
            ValueError: a built-in name registered twice (a bug in the catalog).
            gitops.config.plugins.PluginError: a plugin name a built-in or another plugin already has.
        """
        table = self._builtin if _into is None else _into
        name = entry.name  # type: ignore[attr-defined]
        if name in table:
            if _found is None:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            raise plugins.PluginError(_collision(self.kind, name, _found, table[name]))
        table[name] = _Slot(entry, build, package, origin, _found)
        return entry

    # --- declarations --------------------------------------------------------------------------------
    @property
    def builtin(self) -> Mapping[str, E]:
        """The built-in declarations alone (no plugins)."""
        return {name: slot.entry for name, slot in self._builtin.items()}

    def _slots(self) -> dict[str, _Slot[E]]:
        if self.kind not in plugins.GROUPS:  # no plugin may extend this kind
            return self._builtin
        key = plugins.state_key()
        if self._view is None or self._view[0] != key:
            merged = dict(self._builtin)
            for found in plugins.discovered().get(self.kind, {}).values():
                if self._from_plugin is None:
                    raise GitopsError(f"plugins cannot declare a {self.kind}")
                self.add(self._from_plugin(found), found.plugin.build, package=found.package, origin=found.origin,
                         _into=merged, _found=found)
            self._view = (key, merged)
        return self._view[1]

    def _slot(self, name: Any) -> _Slot[E] | None:
        """`name`'s slot; inside `plugins.deferring`, a placeholder for a name only the unread package may declare."""
        slot = self._slots().get(name)
        if slot is None and self._from_plugin is not None:
            found = plugins.placeholder(self.kind, name)
            if found is not None:  # never built: `get` refuses it (training imports the package instead)
                slot = _Slot(self._from_plugin(found), None, found.package, found.origin, found)
        return slot

    def entry(self, name: str) -> E | None:
        """The declaration of `name` (built-in or plugin), or None."""
        slot = self._slot(name)
        return slot.entry if slot is not None else None

    def __getitem__(self, name: str) -> E:
        slot = self._slot(name)
        if slot is None:
            raise KeyError(name)
        return slot.entry

    def __contains__(self, name: object) -> bool:
        return self._slot(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots())

    def __len__(self) -> int:
        return len(self._slots())

    def keys(self) -> list[str]:
        """Names of every declaration, built-in then plugin, as a list (a fresh copy)."""
        return list(self._slots())

    def values(self) -> list[E]:
        """The declarations (built-in and plugin), in `keys` order."""
        return [slot.entry for slot in self._slots().values()]

    def items(self) -> list[tuple[str, E]]:
        """(name, declaration) pairs, built-in and plugin, in `keys` order."""
        return [(name, slot.entry) for name, slot in self._slots().items()]

    def plugin_names(self) -> list[str]:
        """Names that plugins (installed or the repository's package) declared, sorted."""
        return sorted(name for name, slot in self._slots().items() if slot.plugin is not None)

    def found(self, name: str) -> plugins.Found | None:
        """Where a plugin entry came from (None for a built-in or an unknown name)."""
        slot = self._slot(name)
        return slot.plugin if slot is not None else None

    # --- implementations -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names that have an implementation (built-in or plugin), sorted."""
        return sorted(name for name, slot in self._slots().items() if slot.build is not None)

    def get(self, name: str) -> Any:
        """The implementation registered as `name` (its `build` imported on first use).

        Raises:
            GitopsError: no entry of that name has an implementation (the message lists the valid ones).
            gitops.config.plugins.PluginError: a plugin's `build` reference does not import.
        """
        slot = self._slots().get(name)
        if slot is None or slot.build is None:
            valid = ", ".join(self.names()) or "(none)"
            raise GitopsError(f"unknown {self.kind} {name!r}; valid: {valid}")
        if callable(slot.build):
            return slot.build
        state = plugins.state_key() if slot.plugin is not None else None  # another repository: import again
        return _load(state, self.kind, name, slot.build, slot.package, slot.origin)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._slots())})"


def _collision(kind: str, name: str, found: plugins.Found, taken: _Slot) -> str:
    if taken.plugin is None:  # a built-in
        if found.repo_package:
            return f"plugin {found.origin} collides with the built-in {kind} {name!r}; rename it"
        return (f"plugin {kind} {name!r} from {found.origin} collides with the built-in {kind} {name!r}; "
                "rename the plugin's entry")
    return f"plugin {kind} {name!r} is registered twice: by {taken.origin} and by {found.origin}"


@functools.cache
def _load(_state: tuple | None, kind: str, name: str, build: str, package: str | None, origin: str) -> Any:
    module_name, _, attribute = build.partition(":")
    try:
        obj: Any = importlib.import_module(module_name, package=package if module_name.startswith(".") else None)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        where = "built-in" if origin == BUILT_IN else f"plugin {kind} {name!r} ({origin})"
        raise plugins.PluginError(f"{where}: build {build!r} does not import: {type(exc).__name__}: {exc}") from None
    return obj
