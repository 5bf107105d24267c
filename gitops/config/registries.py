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

import contextlib
import functools
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
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
            implementation = slot.build
        else:
            state = plugins.state_key() if slot.plugin is not None else None  # another repository: import again
            implementation = _load(state, self.kind, name, slot.build, slot.package, slot.origin)
        if slot.plugin is None or not callable(implementation):
            return implementation
        found = slot.plugin  # an entry point's origin names the distribution; the package's names the entry too
        label = f"plugin {found.origin}" if found.repo_package else f"plugin {self.kind} {name!r} ({found.origin})"
        home = _home_of(implementation)
        if home is not None and home != _GITOPS_HOME:  # for its code that runs outside a guarded call (`plugin_failure`)
            _HOMES.setdefault(home, f"the repository plugin package {found.repo_package}/" if found.repo_package
                              else f"plugin distribution {found.distribution or found.entry_point}")
        # an augmentation's factory returns the function that runs on every batch: guarded too
        return _Guarded(implementation, label, self.kind == "augmentation")

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._slots())})"


class _Guarded:
    """A plugin's implementation, called through the registry: what it raises becomes one PluginError.

    Plugin code runs inside training (a model built with a value its class refuses, a dataset function
    that cannot find its file, a metric that fails to trace); without this the user sees a traceback
    from deep inside gitops and jax. The message names the entry, where it came from (entry point or
    repository package), the plugin's own line that raised, and the exception; the original exception
    is kept as `__cause__` for library users. GitopsErrors pass through unchanged (already clear).
    `wrap_result`: the call returns another callable of the plugin's (an augmentation's per-batch
    function), guarded the same way.
    """

    def __init__(self, implementation: Callable[..., Any], label: str, wrap_result: bool = False):
        self.implementation, self.label, self.wrap_result = implementation, label, wrap_result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            out = self.implementation(*args, **kwargs)
        except GitopsError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything the plugin's own code raises
            raise PluginFailure(_failure(self.label, self.implementation, exc)) from exc
        if self.wrap_result and callable(out):
            return _Guarded(out, self.label)
        return out

    def __repr__(self) -> str:
        return f"_Guarded({self.implementation!r})"


class PluginFailure(plugins.PluginError):
    """A plugin's own code raised while gitops called it (exit 1); the message names the plugin and its line."""


@contextlib.contextmanager
def used_in(where: str) -> Iterator[None]:
    """Prefix a PluginFailure raised inside with `where` (the config file and key that named the plugin)."""
    try:
        yield
    except PluginFailure as exc:
        raise PluginFailure(f"{where}: {exc}") from exc.__cause__


_HOMES: dict[str, str] = {}  # folder of a plugin package whose implementation was handed out -> its name in words
_GITOPS_HOME = str(Path(__file__).parents[1]) + "/"  # a plugin reusing our code does not own it


def _home_of(implementation: Any) -> str | None:
    """The folder (with a trailing "/") of the top-level package `implementation` was imported from, or None."""
    import sys

    module = sys.modules.get(getattr(implementation, "__module__", "") or "")
    top = sys.modules.get(module.__name__.split(".")[0]) if module is not None else None
    if top is None or not getattr(top, "__file__", None):
        return None
    return str(Path(top.__file__).parent) + "/"


def _where(frame: Any) -> str:
    """` at FILE:LINE` of a traceback frame, FILE relative to the working folder when inside it."""
    try:
        shown = os.path.relpath(frame.filename)
    except ValueError:
        shown = frame.filename
    return f" at {frame.filename if shown.startswith('..') else shown}:{frame.lineno}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _failure(label: str, implementation: Any, exc: BaseException) -> str:
    """`label failed at FILE:LINE: Type: first line of the message`; the line is the innermost
    frame in the plugin's own package (else the innermost frame at all)."""
    import traceback

    home = _home_of(implementation)
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if home and f.filename.startswith(home)]
    where = _where((own or frames)[-1]) if own or frames else ""
    return f"{label} failed{where}: {_first_line(exc)}"


def plugin_failure(exc: BaseException) -> PluginFailure | None:
    """A PluginFailure for `exc` when it was raised inside a plugin package's own code that no guarded
    call surrounded (an architecture's `__call__` while jax traces the training step), else None.

    The innermost frame in a package whose implementation the registry handed out names the place;
    GitopsErrors and exceptions of other code give None (a bug of ours keeps its traceback).
    """
    import traceback

    if isinstance(exc, GitopsError) or not isinstance(exc, Exception) or not _HOMES:
        return None
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        owner = next((name for home, name in _HOMES.items() if frame.filename.startswith(home)), None)
        if owner is not None:
            return PluginFailure(f"plugin code of {owner} failed{_where(frame)}: {_first_line(exc)}")
    return None


@contextlib.contextmanager
def plugin_errors() -> Iterator[None]:
    """Turn an exception raised in a plugin's own code (`plugin_failure`) into its PluginFailure."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it came from plugin code
        failure = plugin_failure(exc)
        if failure is None:
            raise
        raise failure from exc


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
