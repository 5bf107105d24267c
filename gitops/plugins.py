"""Plugins: architectures, datasets, augmentations and metrics from installed packages (entry points).

A package registers an entry point in one group per kind:

    [project.entry-points."gitops.architectures"]   tiny-linear = "my_pkg.specs:TINY_LINEAR"
    [project.entry-points."gitops.datasets"]        xor-blobs   = "my_pkg.specs:XOR_BLOBS"
    [project.entry-points."gitops.augmentations"]   ...
    [project.entry-points."gitops.metrics"]         ...

Each entry point names a `Plugin` (or a dict of its fields): the metadata `gitops validate` needs
(name, description, a JSON Schema fragment of the parameters, facts for semantic checks) and a lazy
`build` reference ("module:attribute") to the implementation. Loading an entry point imports only the
spec's module, which must not import jax: validation, `show`, `ci plan` stay jax-free and fast. The
implementation is imported when training or `load` first needs it. See docs/plugins.md.

The catalog (`gitops.catalog`) merges plugin entries into its built-in ones at first use (once per
process); a plugin whose name is already taken, by a built-in or another plugin, is an error naming
both. Configs still name entries only, never import paths.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gitops.errors import GitopsError

# kind -> entry-point group
GROUPS: dict[str, str] = {
    "architecture": "gitops.architectures",
    "dataset": "gitops.datasets",
    "augmentation": "gitops.augmentations",
    "metric": "gitops.metrics",
}
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
METRIC_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # metrics appear in `split/name` references
TASKS = ("classification", "regression")


class PluginError(GitopsError):
    """A plugin that cannot be used: broken metadata, a name collision, an implementation that won't import (exit 1)."""


@dataclass(frozen=True)
class Plugin:
    """What a plugin entry point names. Only `name`, `description` and `build` are always needed.

    Args:
        name: the name configs use (`architecture: tiny-linear`, `dataset: {name: xor-blobs}`).
        description: one line; it becomes the schema's description (editors show it).
        build: the implementation, as "package.module:attribute" (imported on first use, so it may
            import jax) or the object itself (then the spec's module imports it: keep that jax-free).
            architecture: an `nnx.Module` class, called as `cls(input_shape=..., num_outputs=..., dtype=...,
            rngs=..., **params)`, then `model(x, rngs=...)` -> float32 outputs (batch, num_outputs);
            dataset: `fn(params, root) -> (x, y)` numpy arrays (x float32; y int class indexes or float targets);
            augmentation: `factory(**params) -> augment(key, x) -> x` (pure jax, on a training batch);
            metric: `fn(outputs, labels) -> per-example values` (jax; averaged over the split).
        params: JSON Schema of each parameter (`properties`): type, description, default, bounds.
        required: parameters without a default that configs must set.
        info: facts the semantic checks use. architecture: {"inputs": "image" | "tokens" | "any"};
            dataset: {"task": "classification" | "regression", "input_shape": [...], "num_classes": N,
            "examples": N, "inputs": "vector" | "image" | "tokens"}.
        higher_is_better: metrics only: the direction reports and gates use.
        tasks: metrics only: the tasks whose models compute it.
    """

    name: str
    description: str
    build: str | Callable[..., Any]
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    higher_is_better: bool | None = None
    tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Found:
    """A plugin with where it came from (for messages and the data fingerprint)."""

    kind: str
    plugin: Plugin
    entry_point: str  # "name = module:attr"
    distribution: str | None
    version: str | None

    @property
    def origin(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "an unknown distribution"
        return f"entry point '{self.entry_point}' in group {GROUPS[self.kind]} of {dist}"


def _coerce(obj: Any, ep_name: str, where: str) -> Plugin:
    """A `Plugin` from what an entry point names (a Plugin, or a mapping of its fields)."""
    if isinstance(obj, Plugin):
        return obj
    if isinstance(obj, Mapping):
        fields = dict(obj)
        fields.setdefault("name", ep_name)
        try:
            return Plugin(**fields)
        except TypeError as exc:
            raise PluginError(f"plugin {where}: {exc}") from None
    # duck typing: an object with the same attributes
    if all(hasattr(obj, a) for a in ("name", "description", "build")):
        names = Plugin.__dataclass_fields__
        return Plugin(**{k: getattr(obj, k) for k in names if hasattr(obj, k)})
    raise PluginError(f"plugin {where}: expected a gitops.plugins.Plugin (or a dict of its fields), got {type(obj).__name__}")


def check(kind: str, plugin: Plugin, where: str) -> None:
    """Raise PluginError if the plugin's metadata is unusable (bad name, bad parameter schema)."""
    pattern = METRIC_NAME_RE if kind == "metric" else NAME_RE
    if not isinstance(plugin.name, str) or not pattern.fullmatch(plugin.name):
        raise PluginError(f"plugin {where}: name {plugin.name!r} must match {pattern.pattern}")
    if not isinstance(plugin.description, str) or not plugin.description.strip():
        raise PluginError(f"plugin {where}: a description is required")
    if not (isinstance(plugin.build, str) and ":" in plugin.build) and not callable(plugin.build):
        raise PluginError(f"plugin {where}: build must be 'module:attribute' or a callable")
    if not isinstance(plugin.params, Mapping) or not all(isinstance(v, Mapping) for v in plugin.params.values()):
        raise PluginError(f"plugin {where}: params must map each parameter name to a JSON Schema")
    for key, prop in plugin.params.items():
        if key == "name" or key in ("extends", "schema_version", "architecture"):
            raise PluginError(f"plugin {where}: parameter name {key!r} is reserved")
        if "description" not in prop:
            raise PluginError(f"plugin {where}: parameter {key!r} needs a description")
    unknown = [r for r in plugin.required if r not in plugin.params]
    if unknown:
        raise PluginError(f"plugin {where}: required parameter {unknown[0]!r} is not in params")
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    fragment = {"type": "object", "properties": dict(plugin.params), "required": list(plugin.required)}
    try:
        Draft202012Validator.check_schema(fragment)
    except SchemaError as exc:
        raise PluginError(f"plugin {where}: params is not valid JSON Schema: {exc.message}") from None
    if kind == "metric":
        if not isinstance(plugin.higher_is_better, bool):
            raise PluginError(f"plugin {where}: a metric must say higher_is_better (true or false)")
        if not plugin.tasks or any(t not in TASKS for t in plugin.tasks):
            raise PluginError(f"plugin {where}: tasks must list some of {', '.join(TASKS)}")


def collect(
    entry_points: Mapping[str, Iterable[Any]],  # importlib.metadata.EntryPoint or distinfo.EntryPoint
    builtin: Mapping[str, Iterable[str]],
) -> dict[str, dict[str, Found]]:
    """Load and check the plugins of every kind; kind -> name -> Found.

    Args:
        entry_points: kind -> its group's entry points.
        builtin: kind -> the built-in names a plugin must not take.

    Raises:
        PluginError: a spec that does not load or check out, or a name taken twice (both named).
    """
    found: dict[str, dict[str, Found]] = {}
    for kind, eps in entry_points.items():
        taken = set(builtin.get(kind, ()))
        found[kind] = {}
        for ep in sorted(eps, key=lambda e: (e.name, e.value)):
            dist = getattr(ep, "dist", None)
            label = f"{ep.name} = {ep.value}"
            probe = Found(kind, Plugin(ep.name, "-", "-:-"), label, dist.name if dist else None,
                          dist.version if dist else None)
            jax_before = "jax" in sys.modules
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin {probe.origin} does not load: {type(exc).__name__}: {exc}") from None
            if not jax_before and "jax" in sys.modules:
                raise PluginError(f"plugin {probe.origin} imports jax when its metadata loads; keep the spec's "
                                  "module jax-free and name the implementation as build='module:attribute'")
            plugin = _coerce(obj, ep.name, probe.origin)
            check(kind, plugin, probe.origin)
            entry = Found(kind, plugin, label, probe.distribution, probe.version)
            if plugin.name in taken:
                raise PluginError(f"plugin {kind} {plugin.name!r} from {entry.origin} collides with the built-in "
                                  f"{kind} {plugin.name!r}; rename the plugin's entry")
            if plugin.name in found[kind]:
                other = found[kind][plugin.name]
                raise PluginError(f"plugin {kind} {plugin.name!r} is registered twice: by {other.origin} "
                                  f"and by {entry.origin}")
            found[kind][plugin.name] = entry
    return found


_BUILTIN: dict[str, Mapping[str, Any]] = {}


@functools.cache
def discovered() -> dict[str, dict[str, Found]]:
    """Every installed plugin (loaded once per process); kind -> name -> Found."""
    from gitops import (
        catalog,  # noqa: F401  (fills _BUILTIN)
        distinfo,  # the dist-info folders read directly: importlib.metadata is slow to import
    )

    eps = {kind: distinfo.entry_points(group) for kind, group in GROUPS.items()}
    return collect(eps, {kind: list(names) for kind, names in _BUILTIN.items()})


def found(kind: str, name: str) -> Found | None:
    return discovered().get(kind, {}).get(name)


def names(kind: str) -> list[str]:
    return sorted(discovered().get(kind, {}))


@functools.cache
def implementation(kind: str, name: str) -> Any:
    """The plugin's implementation object (its `build` imported), or None when no plugin has that name."""
    entry = found(kind, name) if kind in GROUPS else None
    if entry is None:
        return None
    build = entry.plugin.build
    if callable(build):
        return build
    module_name, _, attribute = build.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"plugin {kind} {name!r} ({entry.origin}): build {build!r} does not import: "
                          f"{type(exc).__name__}: {exc}") from None
    return obj


class PluginCatalog(Mapping):
    """A catalog table (name -> Entry or Metric) whose plugin entries join the built-in ones at first use."""

    def __init__(self, kind: str, builtin: Mapping[str, Any], convert: Callable[[Found], Any]):
        self.kind = kind
        self.builtin = builtin
        self._convert = convert
        self._merged: dict[str, Any] | None = None
        _BUILTIN[kind] = builtin

    def _all(self) -> dict[str, Any]:
        if self._merged is None:
            plugins = discovered().get(self.kind, {})
            self._merged = {**self.builtin, **{name: self._convert(f) for name, f in plugins.items()}}
        return self._merged

    def __getitem__(self, name: str) -> Any:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"PluginCatalog({self.kind!r}, {sorted(self._all())})"
