"""Plugins: architectures, datasets, augmentations and metrics from installed packages (entry points)
or from a package inside the repository (`plugins: {package: plugins}` in gitops.yaml).

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

Each kind's registry (`gitops.config.registries`, declared in `gitops.config.catalog`) adds plugin entries through the
same call as its built-ins at first use; a plugin whose name is already taken, by a built-in or
another plugin, is an error naming both. Configs still name entries only, never import paths. This
module only finds and checks plugins: it imports nothing of the catalog or the registry.

A repository package (see `repo_package`) lists its specs in its `__init__.py` as
`GITOPS_PLUGINS = {"architectures": [...], "datasets": [...], "augmentations": [...], "metrics": [...]}`
and goes through the same checks. `build` references may be relative to the spec's package
(`".model:TinyLinear"`), so one package works installed (entry points) and copied into a repository.
Its source files are hashed (`source_hash`) into the training fingerprint of every model that uses
one of its entries; the parameters of its entries are fingerprinted as written (not defaults-filled), so a
fingerprint never needs the package imported. It is code from pull requests: with `GITOPS_REPO_PLUGINS=off`
(set in workflow jobs that hold write tokens) it is never imported, and `ci plan` reads a pull request's copy
as data (`deferring`): names only it declares are placeholders, checked when training.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from gitops.config.settings import load_settings
from gitops.errors import GitopsError
from gitops.records import record
from gitops.repo.tree import FsTree, repository_root

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
# `GITOPS_PLUGINS` keys of a repository package -> kind
REPO_KEYS = {"architectures": "architecture", "datasets": "dataset", "augmentations": "augmentation", "metrics": "metric"}
REPO_PLUGINS_ENV = "GITOPS_REPO_PLUGINS"  # "off": never import the repository's plugin package
PACKAGE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class PluginError(GitopsError):
    """A plugin that cannot be used: broken metadata, a name collision, an implementation that won't import (exit 1)."""


@record(frozen=True)
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
        higher_is_better: metrics only, required: True when higher values are better. `gitops.registry.gates` reads
            it for the best checkpoint, early stopping, sweep ranking, report verdicts and gates.
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


@record(frozen=True)
class Found:
    """A plugin with where it came from (for messages and the data fingerprint)."""

    kind: str
    plugin: Plugin
    entry_point: str  # "name = module:attr"
    distribution: str | None
    version: str | None
    package: str | None = None  # the package relative `build` references start from
    repo_package: str | None = None  # set for a repository's plugin package (its folder name)

    @property
    def origin(self) -> str:
        """Where the plugin came from, in words for error messages: the entry point, its group and distribution (name
        and version), or the repository plugin package named in gitops.yaml.
        """
        if self.repo_package:
            return (f"{self.kind} '{self.plugin.name}' in GITOPS_PLUGINS of the repository package "
                    f"{self.repo_package}/ (gitops.yaml plugins.package)")
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
    raise PluginError(f"plugin {where}: expected a gitops.config.plugins.Plugin (or a dict of its fields), got {type(obj).__name__}")


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
            raise PluginError(f"plugin {where}: metric {plugin.name!r} must declare higher_is_better: True when "
                              "higher values are better (like accuracy), False when lower are (like a loss); "
                              "no direction is guessed from a metric's name")
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
            module = (getattr(ep, "module", None) or ep.value.partition(":")[0]).strip()
            entry = Found(kind, plugin, label, probe.distribution, probe.version,
                          package=module.rpartition(".")[0] or module)
            if plugin.name in taken:
                raise PluginError(f"plugin {kind} {plugin.name!r} from {entry.origin} collides with the built-in "
                                  f"{kind} {plugin.name!r}; rename the plugin's entry")
            if plugin.name in found[kind]:
                other = found[kind][plugin.name]
                raise PluginError(f"plugin {kind} {plugin.name!r} is registered twice: by {other.origin} "
                                  f"and by {entry.origin}")
            found[kind][plugin.name] = entry
    return found


@functools.cache
def _installed() -> dict[str, dict[str, Found]]:
    """Every installed plugin (entry points; loaded once per process); kind -> name -> Found.

    A name a built-in has is refused by the registry that adds the plugin (`gitops.config.registries`).
    """
    from gitops import distinfo  # the dist-info folders read directly: importlib.metadata is slow to import

    eps = {kind: distinfo.entry_points(group) for kind, group in GROUPS.items()}
    return collect(eps, {})


# --- the repository's own plugin package --------------------------------------------------------------

_active_root: list[Path | None] = [None]
_state_memo: list[tuple | None] = [None]  # set by config.resolve (the tree's root); else found from cwd
_root_of_cwd: dict[str, Path | None] = {}
_package_of_root: dict[tuple[Path, int], str | None] = {}
_settings_paths: dict[Path, str] = {}


def use_repository(root: Path | None) -> None:
    """Make `root`'s plugin package (if gitops.yaml declares one) the one the catalog merges in.

    Called by `config.find_root` and for every model `config.resolve` reads; it is also when gitops.yaml
    and $GITOPS_REPO_PLUGINS are looked at again (`state_key` is remembered until the next call).
    """
    _active_root[0] = Path(root).resolve() if root is not None else None
    _state_memo[0] = None


def _current_root() -> Path | None:
    if _active_root[0] is not None:
        return _active_root[0]
    cwd = os.getcwd()
    if cwd not in _root_of_cwd:
        _root_of_cwd[cwd] = root = repository_root(Path(cwd))
        if root is not None:
            use_repository(root)  # as `config.find_root` does: the repository found stays in view
    return _root_of_cwd[cwd]


def repo_package(root: Path | None) -> str | None:
    """The plugin package gitops.yaml at `root` declares (`plugins: {package: NAME}`), or None."""
    if root is None:
        return None
    settings_path = _settings_paths.get(root)
    if settings_path is None:  # called for every catalog lookup: strings and one stat, no pathlib
        settings_path = _settings_paths[root] = os.path.join(root, "gitops.yaml")
    try:
        mtime = os.stat(settings_path).st_mtime_ns
    except OSError:
        return None
    key = (root, mtime)
    if key not in _package_of_root:
        _package_of_root[key] = load_settings(FsTree(root)).plugins.package
    return _package_of_root[key]


def _package_folder(root: Path, package: str) -> Path:
    """`root/package`, checked: a plain folder inside the repository holding `__init__.py`."""
    if not PACKAGE_RE.fullmatch(package):
        raise PluginError(f"gitops.yaml: plugins.package {package!r} must be a Python package name (a folder at the "
                          "repository root)")
    folder = root / package
    if folder.is_symlink() or not folder.is_dir() or not (folder / "__init__.py").is_file():
        raise PluginError(f"gitops.yaml: plugins.package {package!r}: {folder} is not a package folder (a folder "
                          "with __init__.py, not a link)")
    if not folder.resolve().is_relative_to(root.resolve()):
        raise PluginError(f"gitops.yaml: plugins.package {package!r} resolves outside the repository")
    return folder


_loaded_by_us: dict[str, Path] = {}


@functools.cache
def _repo_plugins(root: Path, package: str) -> dict[str, dict[str, Found]]:
    """Import the repository's plugin package (jax-free specs only) and check its GITOPS_PLUGINS."""
    if repo_plugins_off():
        raise PluginError(blocked_message(package))
    folder = _package_folder(root, package)
    init = folder / "__init__.py"
    loaded = sys.modules.get(package)
    if loaded is not None and _loaded_by_us.get(package) not in (None, init.resolve()):
        # another repository's plugin package of the same name (one process, several repositories)
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        loaded = None
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() != init.resolve():
            raise PluginError(f"gitops.yaml: plugins.package {package!r} is already imported from "
                              f"{getattr(loaded, '__file__', '?')}; rename the folder (names must not shadow installed modules)")
        module = loaded
    else:
        spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(folder)])
        if spec is None or spec.loader is None:
            raise PluginError(f"{init}: cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        _loaded_by_us[package] = init.resolve()
        jax_before = "jax" in sys.modules
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[package]
            raise PluginError(f"{init}: does not import: {type(exc).__name__}: {exc}") from None
        if not jax_before and "jax" in sys.modules:
            raise PluginError(f"{init} imports jax when its metadata loads; keep the specs jax-free and name "
                              "implementations as build='.module:attribute'")
    table = getattr(module, "GITOPS_PLUGINS", None)
    if not isinstance(table, Mapping) or not set(table) <= set(REPO_KEYS):
        raise PluginError(f"{init}: GITOPS_PLUGINS must map some of {', '.join(REPO_KEYS)} to lists of "
                          "gitops.config.plugins.Plugin")
    found: dict[str, dict[str, Found]] = {kind: {} for kind in GROUPS}
    for key, specs in table.items():
        kind = REPO_KEYS[key]
        for obj in specs:
            where = f"GITOPS_PLUGINS[{key!r}] of the repository package {package}/"
            plugin = _coerce(obj, getattr(obj, "name", "?"), where)
            check(kind, plugin, where)
            entry = Found(kind, plugin, f"{plugin.name} = {package}", None, None, package=package,
                          repo_package=package)
            if plugin.name in found[kind]:
                raise PluginError(f"plugin {kind} {plugin.name!r} is listed twice in {where}")
            found[kind][plugin.name] = entry
    return found


def source_hash(tree: Any, package: str) -> str:
    """SHA-256 over the package's files (paths and bytes, sorted; caches like __pycache__ skipped) in `tree`.

    Read through a `gitops.repo.tree.Tree`, so `ci plan` hashes the package as it is at each commit.
    """
    from gitops.checksums import sha256_new  # small source files: Python's built-in SHA-256, no OpenSSL load

    digest = sha256_new()
    stack = [package]
    files = []
    while stack:
        rel = stack.pop()
        for name in tree.listdir(rel):
            if name == "__pycache__" or name.endswith((".pyc", ".pyo")):
                continue
            path = f"{rel}/{name}"
            (stack.append(path) if tree.is_dir(path) else files.append(path))
    for path in sorted(files):
        data = tree.read(path) or b""
        digest.update(f"{path}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


_merged_cache: dict[tuple, dict[str, dict[str, Found]]] = {}


def repo_plugins_off() -> bool:
    """True in jobs that must not run repository code ($GITOPS_REPO_PLUGINS=off: those holding write tokens)."""
    return os.environ.get(REPO_PLUGINS_ENV, "").lower() in ("off", "0", "false", "no")


def blocked_message(package: str) -> str:
    """The message that explains why the repository plugin package `package` is not imported ($GITOPS_REPO_PLUGINS=off
    in jobs that hold a write token); callers raise it as a PluginError.
    """
    return (f"the repository plugin package {package}/ is not imported here ({REPO_PLUGINS_ENV}=off): this job "
            "holds a write token and plugin code comes from pull requests (docs/plugins.md)")


def blocked_package() -> str | None:
    """The current repository's plugin package when it is declared but must not be imported here (None inside
    `deferring`: unknown names are then the read-only package's, checked when training)."""
    if _deferred[0] is not None:
        return None
    return repo_package(_current_root()) if repo_plugins_off() else None


def discovered() -> dict[str, dict[str, Found]]:
    """Every plugin: installed ones plus the current repository's package; kind -> name -> Found."""
    key = state_key()
    root, package = key[0], key[1]
    if key not in _merged_cache:
        installed = _installed()
        if root is None or package is None or repo_plugins_off() or _deferred[0] is not None:
            # off: names it provides stay unknown; deferred: they are placeholders (`placeholder`)
            _merged_cache[key] = installed
        else:
            local = _repo_plugins(root, package)
            merged: dict[str, dict[str, Found]] = {}
            for kind in GROUPS:
                mine, theirs = local.get(kind, {}), installed.get(kind, {})
                for name, entry in mine.items():
                    if name in theirs:
                        raise PluginError(f"plugin {kind} {name!r} is registered twice: by {theirs[name].origin} and "
                                          f"by {entry.origin}")
                merged[kind] = {**theirs, **mine}
            _merged_cache[key] = merged
    return _merged_cache[key]


def state_key() -> tuple:
    """Changes when the set of plugins may change (another repository, another gitops.yaml, the guard)."""
    if _state_memo[0] is not None:  # every catalog lookup asks: remembered until use_repository()
        return _state_memo[0]
    root = _current_root()
    key = (root, repo_package(root), repo_plugins_off(), _deferred[0])
    if _active_root[0] is not None:
        _state_memo[0] = key
    return key


# --- a package read as data only: `ci plan` over a commit whose plugin package this process must not import ---------


@record(frozen=True)
class Deferred:
    """A repository plugin package known only as files at a commit (`ci plan` of a pull request's head).

    While `deferring(...)` is active, no repository plugin package is imported; a name of a plugin kind that no
    built-in or installed plugin declares is taken to be one of `package`'s entries (`placeholder`): its parameters
    are fingerprinted as written (as always for repository entries) and checked when training, where the package is
    imported. `metric_tasks` are the tasks the package declares metrics for, as far as can be known without
    running it (`scanned_metric_tasks`, and the checkout's copy where this process may import it).
    """

    package: str
    ref: str  # the commit, for messages
    metric_tasks: frozenset[str] = frozenset()


_deferred: list[Deferred | None] = [None]
MAX_SCANNED_BYTES = 1024**2  # a source file larger than this is not scanned (`scanned_metric_tasks`)


def scanned_metric_tasks(tree: Any, package: str) -> frozenset[str]:
    """Tasks the metric specs in `package`'s source at `tree` declare as literals, read without running any of it.

    Each `.py` file is parsed (`ast`, never executed); every call or dict literal with both `tasks` and
    `higher_is_better` (a metric `Plugin`) contributes the task names written as a tuple or list of strings.
    Specs built another way are not seen: training, where the package is imported, knows them all.
    """
    import ast

    tasks: set[str] = set()
    stack = [package]
    while stack:
        rel = stack.pop()
        for name in tree.listdir(rel):
            path = f"{rel}/{name}"
            if name == "__pycache__":
                continue
            if tree.is_dir(path):
                stack.append(path)
                continue
            if not name.endswith(".py"):
                continue
            data = tree.read(path) or b""
            if len(data) > MAX_SCANNED_BYTES:
                continue
            try:
                module = ast.parse(data, filename=path)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                continue
            for node in ast.walk(module):
                if isinstance(node, ast.Call):
                    fields = {k.arg: k.value for k in node.keywords if k.arg}
                elif isinstance(node, ast.Dict):
                    fields = {k.value: v for k, v in zip(node.keys, node.values, strict=True)
                              if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                else:
                    continue
                if "higher_is_better" in fields and isinstance(fields.get("tasks"), ast.Tuple | ast.List):
                    tasks.update(e.value for e in fields["tasks"].elts
                                 if isinstance(e, ast.Constant) and e.value in TASKS)
    return frozenset(tasks)


@contextlib.contextmanager
def deferring(state: Deferred | None) -> Iterator[None]:
    """Resolve configs with `state`'s package read as data, never imported (None: as usual)."""
    previous = _deferred[0]
    _deferred[0] = state
    _state_memo[0] = None
    try:
        yield
    finally:
        _deferred[0] = previous
        _state_memo[0] = None


def deferred_state() -> Deferred | None:
    """The package read as data only (`deferring`), or None."""
    return _deferred[0]


_placeholders: dict[tuple, Found] = {}


def placeholder(kind: str, name: Any) -> Found | None:
    """Inside `deferring`: a stand-in entry of the deferred package for an unknown `name` of `kind`, else None.

    Its parameters are open (no schema: they are checked when training) and it declares no facts, so the checks
    that need them wait for training too; a metric stand-in fits every task.
    """
    state = _deferred[0]
    if state is None or kind not in GROUPS or not isinstance(name, str):
        return None
    if not (METRIC_NAME_RE if kind == "metric" else NAME_RE).fullmatch(name):
        return None
    key = (state, kind, name)
    if key not in _placeholders:
        plugin = Plugin(name, f"from {state.package}/ at {state.ref[:12]}: not imported here, checked when training",
                        "-:-", info={"deferred": True}, higher_is_better=True if kind == "metric" else None,
                        tasks=TASKS if kind == "metric" else ())
        _placeholders[key] = Found(kind, plugin, f"{name} = {state.package}", None, None, package=state.package,
                                   repo_package=state.package)
    return _placeholders[key]
