"""From a model folder to a validated, resolved config and its fingerprints.

Pipeline: read the four YAML files (strict loader, positions kept) -> follow `extends` chains and
deep-merge -> apply `--set` overrides -> validate each merged file against its schema -> fill
defaults and cast numbers -> semantic checks the schema can't express -> frozen dataclasses.
Every problem of every file is collected before anything is raised, so a user sees all at once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gitops.config import catalog, plugins, schema
from gitops.config.jsonschema_tools import copy_json, fill_defaults, format_path
from gitops.config.yamlio import Mark, YamlDoc, load_yaml_text, parse_scalar
from gitops.errors import ConfigError, GitopsError, OverrideError, Problem, UsageError
from gitops.records import record
from gitops.repo.tree import MODELS_DIR, FsTree, Tree, repository_root  # noqa: F401  (FsTree re-exported for commands)

MODEL_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")
FILE_KINDS = schema.KINDS
REQUIRED_KINDS = ("model", "train", "data")
MAX_EXTENDS_DEPTH = 16


def canonical_json(value: Any) -> str:
    """The bytes fingerprints hash: sorted keys, no whitespace, so formatting never matters."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_json(value: Any) -> str:
    """Hex SHA-256 of `canonical_json(value)` (UTF-8): the fingerprint of a JSON-able value, independent of key order
    and formatting. Raises ValueError for NaN/inf (allow_nan=False).
    """
    from gitops.checksums import sha256_new

    return sha256_new(canonical_json(value).encode("utf-8")).hexdigest()


def freeze(value: Any) -> Any:
    """Deep read-only view: mappings become MappingProxyType, lists tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again (for JSON, YAML and hashing)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


# --- typed views --------------------------------------------------------------------------------


@record(frozen=True)
class ModelConfig:
    """The resolved `model:` section: the architecture's registered name and its schema-checked parameters (read-only
    mapping).
    """
    architecture: str
    params: Mapping[str, Any]  # the architecture's own parameters (schema-checked)


@record(frozen=True)
class TrainConfig:
    """The resolved `train:` section (read-only): exactly one of `steps`/`epochs` is set; `batch_size` is examples
    per step over all devices; `log_every`/`eval_every` are in steps; `repeats` is the number of seeds.
    """
    seed: int
    batch_size: int
    steps: int | None
    epochs: int | None
    optimizer: Mapping[str, Any]
    schedule: Mapping[str, Any]
    grad_clip_norm: float | None
    gradient_accumulation: int
    loss: str | None
    label_smoothing: float
    precision: str
    log_every: int
    eval_every: int
    repeats: int
    parallelism: Mapping[str, Any]
    early_stopping: Mapping[str, Any] | None
    checkpoint: Mapping[str, Any]
    start_from: Mapping[str, Any] | None = None  # with `resolved: {model, version, sha256}` once resolved


@record(frozen=True)
class DataConfig:
    """The resolved `data:` section (read-only): the dataset entry, split fractions, preprocessing and the
    augmentation list, in order.
    """
    dataset: Mapping[str, Any]
    splits: Mapping[str, Any]
    preprocessing: Mapping[str, Any]
    augmentation: tuple[Mapping[str, Any], ...]


@record(frozen=True)
class ReleaseConfig:
    """The resolved `release:` section (read-only): description, owners, version bump rule, headline metric (None:
    the task's default), gates, serving settings and labels.
    """
    description: str
    owners: tuple[str, ...]
    bump: str
    headline_metric: str | None
    gates: tuple[Mapping[str, Any], ...]
    serving: Mapping[str, Any]
    labels: tuple[str, ...]


@record(frozen=True)
class ResolvedConfig:
    """A model's resolved config: what training, reports and releases consume."""

    name: str
    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    release: ReleaseConfig
    data_fingerprint: str
    training_fingerprint: str
    release_fingerprint: str
    files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> files of the extends chain
    plugins: Mapping[str, Any] | None = None  # {package, sha256[, written]} of the repository plugin package it uses
    parent_error: str | None = None  # start_from.model could not be resolved through the registry's tags
    # key paths whose checks wait for training: entries of a plugin package read as data (`plugins.deferring`)
    checked_when_training: tuple[str, ...] = ()

    @property
    def task(self) -> str:
        """The task the dataset implies (e.g. "classification" or "regression"), from the catalog's dataset entry."""
        return catalog.dataset_task({"dataset": dict(self.data.dataset)})

    @property
    def short_fingerprint(self) -> str:
        """The first 12 hex characters of `training_fingerprint`: run folder names and messages."""
        return self.training_fingerprint[:12]

    def as_dict(self) -> dict:
        """The resolved config as plain data: {model, train, data, release}."""
        model = {"architecture": self.model.architecture, **thaw(self.model.params)}
        doc = {
            "model": model,
            "train": _dataclass_dict(self.train),
            "data": _dataclass_dict(self.data),
            "release": _dataclass_dict(self.release),
        }
        if self.plugins:  # the plugin source it was resolved with travels in config.resolved.yaml
            doc["plugins"] = thaw(self.plugins)
        return doc

    def headline_metric(self) -> str:
        """The metric reports and releases lead with: `release.headline_metric` if set, else "test/accuracy" for
        classification and "test/loss" for other tasks.
        """
        if self.release.headline_metric:
            return self.release.headline_metric
        return "test/accuracy" if self.task == "classification" else "test/loss"


def _dataclass_dict(obj: Any) -> dict:
    return {name: thaw(getattr(obj, name)) for name in obj.__dataclass_fields__}


# --- loading ------------------------------------------------------------------------------------


@record
class _Merged:
    """One kind's merged document with the position of every value (from whichever file set it)."""

    data: Any
    marks: dict[tuple, Mark]
    key_marks: dict[tuple, Mark]
    files: list[str]
    doc_mark: Mark

    def mark(self, path: tuple, at_key: bool = False) -> Mark:
        table = self.key_marks if at_key else self.marks
        for cut in range(len(path), 0, -1):
            if path[:cut] in table:
                return table[path[:cut]]
            if path[:cut] in self.marks:
                return self.marks[path[:cut]]
        return self.doc_mark


def deep_merge(
    base: Any,
    override: Any,
    selectors: Mapping[tuple, str] | None = None,
    *,
    replaced: list[tuple] | None = None,
    _path: tuple = (),
) -> Any:
    """Mappings merge key by key; lists and scalars replace (DESIGN.md).

    A mapping at a path in `selectors` (e.g. ``("optimizer",): "name"``) whose selector key differs
    from the base's replaces the base's mapping whole: a child switching ``adamw`` to ``sgd`` must not
    inherit ``b1``. The same selector, or none written, merges as usual. Paths replaced that way are
    appended to `replaced` (so positions of the base's keys below them can be dropped).
    """
    if isinstance(base, dict) and isinstance(override, dict):
        key = selectors.get(_path) if selectors else None
        if key is not None and key in override and key in base and override[key] != base[key]:
            if replaced is not None:
                replaced.append(_path)
            return copy_json(override)
        merged = dict(base)
        for k, value in override.items():
            if k in base:
                merged[k] = deep_merge(base[k], value, selectors, replaced=replaced, _path=(*_path, k))
            else:
                merged[k] = copy_json(value)
        return merged
    return copy_json(override)


class _Loader:
    """Loads model folders from a Tree, collecting problems instead of stopping at the first."""

    def __init__(self, tree: Tree):
        self.tree = tree
        self.problems: list[Problem] = []
        self._docs: dict[str, YamlDoc | None] = {}

    def problem(self, mark: Mark, path: str, message: str) -> None:
        self.problems.append(Problem(mark.file, mark.line, mark.col, path, message))

    def doc(self, relpath: str) -> YamlDoc | None:
        if relpath not in self._docs:
            try:
                raw = self.tree.read(relpath)
            except ConfigError as exc:  # a refused path (a symbolic link under models/)
                self.problems.extend(p for p in exc.problems if p not in self.problems)
                self._docs[relpath] = None
                self._docs[relpath + "#failed"] = None
                return None
            if raw is None:
                self._docs[relpath] = None
            else:
                try:
                    doc = load_yaml_text(raw, self.tree.label(relpath))
                    self._docs[relpath] = self._upgraded(relpath, doc)
                except ConfigError as exc:
                    self.problems.extend(exc.problems)
                    self._docs[relpath] = None
                    self._docs[relpath + "#failed"] = None
        return self._docs[relpath]

    def _upgraded(self, relpath: str, doc: YamlDoc) -> YamlDoc:
        """Apply schema migrations in memory, so files written for older schemas keep loading."""
        from gitops.config import migrate

        kind = relpath.rsplit("/", 1)[-1].removesuffix(".yaml")
        if kind not in FILE_KINDS or not isinstance(doc.data, dict):
            return doc
        version = migrate.file_version(doc.data)
        if version > migrate.current_version():
            self.problem(doc.mark_for(("schema_version",)), f"{kind}.schema_version",
                         f"written for schema_version {version}; this gitops reads up to "
                         f"{migrate.current_version()}: upgrade gitops")
            return YamlDoc({}, doc.file, doc.marks, doc.key_marks)
        data, _ = migrate.upgrade(kind, doc.data)
        return doc if data is doc.data else YamlDoc(data, doc.file, doc.marks, doc.key_marks)

    def failed(self, relpath: str) -> bool:
        return relpath + "#failed" in self._docs

    def merged(self, model_rel: str, kind: str) -> _Merged | None:
        """Follow `extends` from models/<name>/<kind>.yaml and merge parent-first."""
        chain: list[tuple[str, YamlDoc]] = []
        relpath = f"{model_rel}/{kind}.yaml"
        seen: list[str] = []
        while True:
            doc = self.doc(relpath)
            if doc is None:
                if self.failed(relpath):
                    return None
                if chain:  # a parent named by extends lacks this file
                    child_rel, child = chain[-1]
                    self.problem(
                        child.mark_for(("extends",)),
                        f"{kind}.extends",
                        f"extends target {self.tree.label(relpath)} does not exist",
                    )
                    return None
                return _Merged({}, {}, {}, [], Mark(self.tree.label(relpath), 1, 1)) if kind == "release" else None
            if not isinstance(doc.data, dict):
                return None
            chain.append((relpath, doc))
            seen.append(relpath)
            parent = doc.data.get("extends")
            if parent is None:
                break
            mark = doc.mark_for(("extends",))
            if not isinstance(parent, str) or not re.fullmatch(r"\.\./[a-z][a-z0-9-]{0,61}[a-z0-9]", parent):
                self.problem(mark, f"{kind}.extends", f"expected '../<model-name>', got {parent!r}")
                return None
            parent_dir = f"{MODELS_DIR}/{parent[3:]}"
            parent_rel = f"{parent_dir}/{kind}.yaml"
            if not self.tree.is_dir(parent_dir):
                self.problem(mark, f"{kind}.extends", f"extends target {parent} does not exist (no folder {parent_dir})")
                return None
            if parent_rel in seen or len(chain) > MAX_EXTENDS_DEPTH:
                cycle = " -> ".join(self.tree.label(p) for p in [*seen, parent_rel])
                self.problem(mark, f"{kind}.extends", f"extends cycle: {cycle}")
                return None
            relpath = parent_rel
        data: dict = {}
        marks: dict[tuple, Mark] = {}
        key_marks: dict[tuple, Mark] = {}
        selectors = schema.selectors(kind) if kind in FILE_KINDS else {}
        for _, doc in reversed(chain):
            replaced: list[tuple] = []
            data = deep_merge(data, doc.data, selectors, replaced=replaced)
            for table in (marks, key_marks):
                _drop_below(table, replaced)
            _overlay_marks(marks, doc.marks, doc.data)
            _overlay_marks(key_marks, doc.key_marks, doc.data)
        data.pop("extends", None)
        files = [self.tree.label(p) for p, _ in chain]
        return _Merged(data, marks, key_marks, files, chain[0][1].mark_for(()))


def _overlay_marks(target: dict[tuple, Mark], source: dict[tuple, Mark], data: Any) -> None:
    """Child marks win; a list or scalar replaced by the child drops the parent's marks below it."""
    if not target:
        target.update(source)
        return
    for path, mark in source.items():
        if path and _replaces(data, path):
            for stale in [p for p in target if p[: len(path)] == path and len(p) > len(path)]:
                del target[stale]
        target[path] = mark


def _drop_below(table: dict[tuple, Mark], paths: list[tuple]) -> None:
    """Forget positions strictly below each path (a mapping the child replaced whole)."""
    for path in paths:
        for stale in [p for p in table if len(p) > len(path) and p[: len(path)] == path]:
            del table[stale]


def _replaces(data: Any, path: tuple) -> bool:
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    return not isinstance(node, dict)


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, tuple[str, ...], Any, Mark]]:
    """`train.optimizer.learning_rate=3e-4` -> (kind, key path, value parsed as a YAML scalar)."""
    parsed = []
    for index, text in enumerate(overrides, start=1):
        if "=" not in text:
            raise OverrideError(text, "no_value", FILE_KINDS)
        dotted, raw = text.split("=", 1)
        parts = tuple(dotted.strip().split("."))
        if len(parts) < 2 or parts[0] not in FILE_KINDS or not all(parts):
            raise OverrideError(text, "bad_path", FILE_KINDS)
        value = parse_scalar(raw, where=f"--set {dotted}", key=dotted.strip())
        parsed.append((parts[0], parts[1:], value, Mark("--set", index, 1)))
    return parsed


def _is_selector(kind: str, path: tuple[str, ...]) -> bool:
    return kind in FILE_KINDS and schema.selectors(kind).get(path[:-1]) == path[-1]


def _apply_override(merged: _Merged, path: tuple[str, ...], value: Any, mark: Mark, loader: _Loader, kind: str) -> None:
    node = merged.data
    for depth, key in enumerate(path[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            dotted = ".".join((kind, *path[: depth + 1]))
            loader.problem(mark, dotted, f"cannot set a key inside {type(child).__name__} value")
            return
        node = child
    if _is_selector(kind, path) and path[-1] in node and node[path[-1]] != value:
        node.clear()  # a different choice: the file's parameters for the old one don't apply
        _drop_below(merged.marks, [path[:-1]])
        _drop_below(merged.key_marks, [path[:-1]])
        if path[:-1]:
            merged.marks[path[:-1]] = mark
    node[path[-1]] = value
    for p in list(merged.marks):
        if p[: len(path)] == path:
            del merged.marks[p]
    for cut in range(1, len(path) + 1):
        merged.marks.setdefault(path[:cut], mark)
        merged.key_marks[path[:cut]] = mark
    merged.marks[path] = mark


def model_names(tree: Tree) -> list[str]:
    """Folders under models/, and links there (resolving one reports the refusal).

    Raises:
        ConfigError: `models/` itself is a symbolic link.
    """
    refused = tree.refused(MODELS_DIR)
    if refused is not None:
        raise ConfigError([refused])
    return [n for n in tree.listdir(MODELS_DIR)
            if tree.is_dir(f"{MODELS_DIR}/{n}") or tree.refused(f"{MODELS_DIR}/{n}") is not None]


def did_you_mean(name: str, tree: Tree | None = None, names: Iterable[str] | None = None) -> str:
    """" (did you mean 'digits-mlp'?)" for a model name with a close match among the repository's models."""
    from gitops.config.jsonschema_tools import suggest

    known = list(names) if names is not None else (model_names(tree) if tree is not None else [])
    found = suggest(name, [n for n in known if n != name])
    return f" (did you mean '{found}'?)" if found else ""


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder upwards holding `models/` or `.git`."""
    here = (start or Path.cwd()).resolve()
    folder = repository_root(here)
    if folder is not None:
        plugins.use_repository(folder)  # its plugin package (if any) is the one in view
        return folder
    raise UsageError(f"no models/ folder found in {here} or above; run inside a gitops repository, or start one with: gitops init")


def resolve(name: str, tree: Tree, overrides: Iterable[str] = ()) -> tuple[ResolvedConfig | None, list[Problem]]:
    """Resolve one model, returning it (or None) with every problem found."""
    plugins.use_repository(tree.root)  # the catalog merges this repository's plugin package (if any)
    loader = _Loader(tree)
    model_rel = f"{MODELS_DIR}/{name}"
    folder_mark = Mark(tree.label(model_rel), 1, 1)
    if not MODEL_NAME_RE.fullmatch(name):
        loader.problem(folder_mark, "", f"model name {name!r} must match {MODEL_NAME_RE.pattern}")
        return None, loader.problems
    refused = tree.refused(model_rel)
    if refused is not None:
        loader.problems.append(refused)
        return None, loader.problems
    if not tree.is_dir(model_rel):
        ref = getattr(tree, "ref", None)
        if ref is not None and (tree.root / model_rel).is_dir():
            # the folder is in the working tree but not in the commit read (release reads HEAD)
            raise GitopsError(f"{model_rel} is not committed; commit it first (it is not in {ref[:12]})")
        raise UsageError(f"no model {name!r}: {tree.label(model_rel)} is not a folder{did_you_mean(name, tree)}")
    merged: dict[str, _Merged] = {}
    for kind in FILE_KINDS:
        doc = loader.merged(model_rel, kind)
        if doc is None:
            relpath = f"{model_rel}/{kind}.yaml"
            if kind in REQUIRED_KINDS and not loader.failed(relpath) and tree.read(relpath) is None:
                loader.problem(folder_mark, "", f"missing {kind}.yaml")
            continue
        merged[kind] = doc
    parsed = parse_overrides(overrides)
    # an override switching a selector (train.optimizer.name=sgd) starts that mapping afresh, as a
    # child file would: applied first, so the other overrides of the same mapping land in the new one
    parsed.sort(key=lambda o: not _is_selector(o[0], o[1]))
    for kind, path, value, mark in parsed:
        if kind not in merged:
            if kind == "release":
                merged[kind] = _Merged({}, {}, {}, [], mark)
            else:
                continue
        _apply_override(merged[kind], path, value, mark, loader, kind)

    cleaned: dict[str, Any] = {}
    partial: dict[str, Any] = {}  # invalid documents' parts that parsed, for the semantic checks
    dropped: list[tuple] = []
    for kind, doc in merged.items():
        errors = schema.validate_document(kind, doc.data)
        for path, message, at_key in errors:
            loader.problem(doc.mark(path, at_key), format_path((kind, *path)), message)
        if not errors:
            cleaned[kind] = fill_defaults(schema.schema_for(kind), doc.data)
            continue
        saved, lost = schema.salvage(kind, doc.data)
        if saved is not None:
            partial[kind] = fill_defaults(schema.schema_for(kind), saved)
            dropped += [(kind, *p) for p in lost]
    blocked = plugins.blocked_package()
    if blocked and loader.problems:  # a name it provides looks unknown: say why instead
        raise plugins.PluginError(f"{model_rel}: {plugins.blocked_message(blocked)}; without it:\n"
                                  + "\n".join(str(p) for p in loader.problems))
    if any(k not in cleaned and k not in partial for k in FILE_KINDS):
        return None, loader.problems

    for path, message in _semantic_on({**cleaned, **partial}, tree, bool(partial)):
        if any(path[: len(d)] == d or d[: len(path)] == path for d in dropped):
            continue  # about a value already reported (or guessed): not a second error
        kind, rest = path[0], path[1:]
        loader.problem(merged[kind].mark(rest), format_path(path), message)
    if not loader.problems and cleaned["train"].get("start_from"):
        from gitops.config import parent_ref

        for path, message in parent_ref.cycle_problems(name, cleaned["train"]["start_from"], _train_reader(tree)):
            loader.problem(merged["train"].mark(path), format_path(("train", *path)), message)
    if loader.problems:
        return None, loader.problems
    files = {kind: tuple(merged[kind].files) for kind in FILE_KINDS}
    package = repo_plugin_package(cleaned)
    source: dict[str, Any] | None = None
    if package:
        source = {"package": package, "sha256": plugins.source_hash(tree, package)}
        written, waiting = _repo_parts(cleaned, {k: merged[k].data for k in ("model", "data")})
        if written:
            source["written"] = written
    parent_error = None
    if cleaned["train"].get("start_from"):
        from gitops.config import parent_ref  # jax-free: reads the registry's tags only

        parent_error = parent_ref.resolve_into(cleaned["train"], tree)
    cfg = build(name, cleaned, files, source)
    if package and waiting:
        cfg = dataclasses.replace(cfg, checked_when_training=tuple(waiting))
    return (dataclasses.replace(cfg, parent_error=parent_error) if parent_error else cfg), []


def _repo_parts(cleaned: dict[str, Any], written_docs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The parts of a config that entries of the repository plugin package own, as written: ({key path: value},
    the paths of those whose package is read as data only, checked when training).

    Those parts join the training fingerprint as written (after `extends` and `--set`), not defaults-filled: the
    package's source is hashed beside them, and so `ci plan` computes the fingerprint training records without
    importing a pull request's plugin code (`plugins.deferring`).
    """
    written: dict[str, Any] = {}
    waiting: list[str] = []
    parts = [("model", catalog.ARCHITECTURES.entry(cleaned["model"]["architecture"]),
              {k: v for k, v in written_docs["model"].items() if k not in ("extends", "schema_version")}),
             ("data.dataset", catalog.DATASETS.entry(cleaned["data"]["dataset"]["name"]),
              written_docs["data"]["dataset"])]
    parts += [(f"data.augmentation.{i}", catalog.AUGMENTATIONS.entry(aug["name"]), written_docs["data"]["augmentation"][i])
              for i, aug in enumerate(cleaned["data"].get("augmentation") or ())]
    for path, entry, value in parts:
        if entry is not None and entry.info.get("repo_package"):
            written[path] = copy_json(value)
            if entry.info.get("deferred"):
                head, _, index = path.rpartition(".")
                waiting.append(f"{head}[{index}]" if index.isdigit() else path)
    for path, metric in _named_metrics(cleaned):
        found = catalog.METRICS.found(metric)
        if found is not None and found.plugin.info.get("deferred"):
            waiting.append(format_path(path))
    return written, waiting


def _named_metrics(cleaned: dict[str, Any]) -> list[tuple[tuple, str]]:
    """(key path, metric name without its split) of every metric a config names: best checkpoint, early stopping,
    headline metric, gates."""
    train, release = cleaned["train"], cleaned.get("release") or {}
    refs = [(("train", "checkpoint", "best_metric"), (train.get("checkpoint") or {}).get("best_metric")),
            (("train", "early_stopping", "metric"), (train.get("early_stopping") or {}).get("metric")),
            (("release", "headline_metric"), release.get("headline_metric"))]
    refs += [(("release", "gates", i, "metric"), g.get("metric")) for i, g in enumerate(release.get("gates") or ())]
    return [(path, name.partition("/")[2]) for path, name in refs if isinstance(name, str) and "/" in name]


def _train_reader(tree: Tree) -> Callable[[str], Any]:
    """model name -> its merged train document in `tree` (None: no such model folder), problems ignored."""
    loader = _Loader(tree)

    def train_of(model: str) -> Any:
        rel = f"{MODELS_DIR}/{model}"
        if not tree.is_dir(rel):
            return None
        merged = loader.merged(rel, "train")
        return merged.data if merged is not None and isinstance(merged.data, dict) else {}

    return train_of


def _semantic_on(docs: dict[str, Any], tree: Tree, partial: bool) -> list[tuple[tuple, str]]:
    """semantic_problems; on salvaged documents a check that trips over a guessed value is skipped.

    Inside `plugins.deferring`, an architecture or dataset of the package read as data declares no facts yet:
    the checks that need them (inputs, task, classes, sizes) wait for training, where the package is imported.
    """
    waiting = _deferred_sections(docs)
    if waiting:
        try:
            found = semantic_problems(docs, tree)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return []
        keep = (("train", "steps"), ("train", "schedule"), ("train", "start_from"))
        return [(path, message) for path, message in found
                if ("dataset" not in waiting or path[:2] in keep) and not ("model" in waiting and path[0] == "model")]
    if not partial:
        return semantic_problems(docs, tree)
    try:
        return semantic_problems(docs, tree)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return []  # the schema errors already reported say what to fix first


EXECUTION_ONLY_TRAIN_KEYS = frozenset({"parallelism"})


def _deferred_sections(docs: dict[str, Any]) -> set[str]:
    """{"model", "dataset"}: which of the architecture and dataset are entries of a package read as data only."""
    if plugins.deferred_state() is None:
        return set()
    out = set()
    for section, registry, name in (("model", catalog.ARCHITECTURES, (docs.get("model") or {}).get("architecture")),
                                    ("dataset", catalog.DATASETS,
                                     ((docs.get("data") or {}).get("dataset") or {}).get("name"))):
        found = registry.found(name) if isinstance(name, str) else None
        if found is not None and found.plugin.info.get("deferred"):
            out.add(section)
    return out


def repo_plugin_package(cleaned: dict[str, Any]) -> str | None:
    """The repository plugin package a model uses (architecture, dataset, augmentation, or a metric of its task)."""
    used = [catalog.ARCHITECTURES.entry(cleaned["model"]["architecture"]),
            catalog.DATASETS.entry(cleaned["data"]["dataset"]["name"])]
    used += [catalog.AUGMENTATIONS.entry(a["name"]) for a in cleaned["data"].get("augmentation") or ()]
    for entry in used:
        if entry is not None and entry.info.get("repo_package"):
            return entry.info["repo_package"]
    task = catalog.dataset_task(cleaned["data"])
    for metric in catalog.METRICS.values():
        package = getattr(metric, "repo_package", None)
        if package and task in metric.tasks:
            return package
    for _path, name in _named_metrics(cleaned):  # a metric the package adds (read as data: plugins.deferring)
        package = getattr(catalog.METRICS.entry(name), "repo_package", None)
        if package:
            return package
    deferred = plugins.deferred_state()
    if deferred is not None and task in deferred.metric_tasks:
        return deferred.package
    return None


def build(name: str, cleaned: dict[str, Any], files: Mapping[str, tuple[str, ...]] | None = None,
          plugin_source: Mapping[str, Any] | None = None) -> ResolvedConfig:
    """Typed config and fingerprints from already validated, defaults-filled documents.

    `plugin_source` ({package, sha256} of the repository plugin package the model uses; else taken
    from a resolved config's `plugins` key) joins the training fingerprint, so editing the plugin
    retrains exactly the models that use it.
    """
    docs = {k: {key: v for key, v in cleaned[k].items() if key not in ("extends", "schema_version")} for k in FILE_KINDS}
    docs["train"] = _with_optional_train_keys(docs["train"])
    plugin_source = thaw(plugin_source or cleaned.get("plugins") or None)
    # a repository plugin's parts are hashed as written (with the package's source): see `_repo_parts`
    hashed_model, data_doc = _as_written(docs["model"], docs["data"], (plugin_source or {}).get("written") or {})
    data_fp = data_fingerprint(data_doc)
    # how a run is spread over devices (train.parallelism) does not change what it computes: not hashed
    # start_from: absent and null hash alike (configs from before it existed keep their fingerprints);
    # a resolved parent ({model, version, sha256} under start_from.resolved) is hashed with it
    hashed_train = {k: v for k, v in docs["train"].items()
                    if k not in EXECUTION_ONLY_TRAIN_KEYS and not (k == "start_from" and v is None)}
    identity = {"model": hashed_model, "train": hashed_train, "data": hashed_data(data_doc),
                "data_fingerprint": data_fp}
    if plugin_source:
        identity["plugins"] = {"package": plugin_source["package"], "sha256": plugin_source["sha256"]}
    training_fp = sha256_json(identity)
    release_fp = sha256_json({"training_fingerprint": training_fp, "release": docs["release"]})
    model_doc = dict(docs["model"])
    architecture = model_doc.pop("architecture")
    return ResolvedConfig(
        name=name,
        model=ModelConfig(architecture, freeze(model_doc)),
        train=TrainConfig(**{k: freeze(v) for k, v in docs["train"].items()}),
        data=DataConfig(**{k: freeze(v) for k, v in docs["data"].items()}),
        release=ReleaseConfig(**{k: freeze(v) for k, v in docs["release"].items()}),
        data_fingerprint=data_fp,
        training_fingerprint=training_fp,
        release_fingerprint=release_fp,
        files=freeze(dict(files or {})),
        plugins=freeze(dict(plugin_source)) if plugin_source else None,
    )


def _as_written(model: dict, data: dict, written: Mapping[str, Any]) -> tuple[dict, dict]:
    """`model` and `data` with the parts a repository plugin's entries own replaced by their written form."""
    if not written:
        return model, data
    model = {k: v for k, v in written["model"].items() if k not in ("extends", "schema_version")} \
        if "model" in written else model
    data = dict(data)
    if "data.dataset" in written:
        data["dataset"] = written["data.dataset"]
    augmentation = list(data.get("augmentation") or ())
    for i in range(len(augmentation)):
        augmentation[i] = written.get(f"data.augmentation.{i}", augmentation[i])
    if augmentation:
        data["augmentation"] = augmentation
    return model, data


def _with_optional_train_keys(train: dict) -> dict:
    # parallelism: configs resolved before it existed (old run folders, releases) still build
    return {"steps": None, "epochs": None, "parallelism": {"strategy": "data"}, "start_from": None, **train}


@functools.cache
def _package_version(package: str) -> str | None:
    from gitops import distinfo  # importlib.metadata costs a quarter of `validate`'s start-up

    return distinfo.version(package)


# How language-modelling text reaches the model; part of its data fingerprint. "grain-packed-1": packed once into a
# cache and fed through the Grain pipeline (shuffled by Grain); text runs before it were in memory, so their
# results and fingerprints differ.
TEXT_PIPELINE = "grain-packed-1"

# streaming-dataset keys that change how fast data arrives, never which data (gitops.learn.streaming.EXECUTION_KEYS)
EXECUTION_ONLY_DATASET_KEYS = ("workers", "prefetch")


def hashed_data(data: dict) -> dict:
    """The data spec as fingerprinted: a streaming source's worker and prefetch counts left out, and its
    `remainder` when it is the default `drop` (configs written before the key existed keep their fingerprints)."""
    ds = data.get("dataset") or {}
    if not any(k in ds for k in EXECUTION_ONLY_DATASET_KEYS) and ds.get("remainder") != "drop":
        return data
    return {**data, "dataset": {k: v for k, v in ds.items()
                                if k not in EXECUTION_ONLY_DATASET_KEYS and not (k == "remainder" and v == "drop")}}


def data_fingerprint(data: dict) -> str:
    """Identity of the data without loading it: the spec, SHA-256 pins, and the shipping package's version.

    A streaming source is pinned by its checksum list's SHA-256 (`checksums_sha256`): neither the list
    nor the data is read here.
    """
    entry = catalog.DATASETS[data["dataset"]["name"]]
    data = hashed_data(data)
    identity: dict[str, Any] = {"spec": data}
    package = entry.info.get("package")
    if package:
        identity["package"] = {"name": package, "version": _package_version(package)}
    if "sha256" in data["dataset"]:
        identity["pins"] = [data["dataset"]["sha256"]]
    if "checksums_sha256" in data["dataset"]:
        identity["pins"] = [data["dataset"]["checksums_sha256"]]
    if catalog.dataset_task(data) == "language_modeling":  # results follow how text is packed and fed
        identity["text_pipeline"] = TEXT_PIPELINE
    return sha256_json(identity)


# --- semantic checks -----------------------------------------------------------------------------


def train_split_size(data: dict) -> int | None:
    """Examples in the training split (the total less ceil'd validation and test fractions), or None when the
    dataset's size is unknown before loading. Expects a schema-valid `data` dict.
    """
    entry = catalog.DATASETS[data["dataset"]["name"]]
    total = entry.info.get("examples") or data["dataset"].get("n_samples")
    if not total:
        return None
    held_out = data["splits"]["validation"] + data["splits"]["test"]
    return max(0, total - math.ceil(total * data["splits"]["validation"]) - math.ceil(total * data["splits"]["test"])) if held_out else total


def total_steps(train: dict, data: dict) -> int | None:
    """Optimizer steps the run will take: `train.steps`, or `epochs * (train examples // batch_size)` (at least one
    step per epoch); None when it depends on a dataset size not known yet.
    """
    if train.get("steps"):
        return int(train["steps"])
    n_train = train_split_size(data)
    if not train.get("epochs") or not n_train:
        return None
    return train["epochs"] * max(1, n_train // train["batch_size"])


def input_shape(data: dict) -> list[int] | None:
    """Shape of one input example, without the batch axis (e.g. [28, 28, 1] for an image, [n_features] for a vector),
    from the catalog entry or the dataset's own keys; None when unknown until the data is read.
    """
    ds = data["dataset"]
    entry = catalog.DATASETS[ds["name"]]
    if "input_shape" in entry.info:
        return list(entry.info["input_shape"])
    if ds["name"] == "blobs":
        return [ds["n_features"]]
    if ds["name"] == "sequences":
        return [ds["length"]]
    if ds["name"] == "image_folder":
        return [*ds["image_size"], ds["channels"]]
    if ds["name"] == "parquet" and ds.get("features"):
        return [len(ds["features"])]
    if ds["name"] == "array_record" and ds.get("input_shape"):
        return list(ds["input_shape"])
    if ds["name"] == "text" or (ds.get("text") and ds["name"] in catalog.TEXT_COLUMN_SOURCES):
        return [ds["sequence_length"]] if ds.get("sequence_length") else None
    return None


def num_classes(data: dict) -> int | None:
    """Number of target classes of a classification dataset, from the catalog entry or the dataset's keys; None when
    not declared (streaming sources are checked against the data when training).
    """
    ds = data["dataset"]
    entry = catalog.DATASETS[ds["name"]]
    if "num_classes" in entry.info:
        return entry.info["num_classes"]
    if ds["name"] == "blobs":
        return ds["centers"]
    if ds["name"] == "sequences":
        return {"majority": ds["vocab_size"], "first_last_equal": 2, "sorted": 2}[ds["rule"]]
    return ds.get("num_classes")  # streaming sources may declare it (checked against the data when training)


def metric_problem(name: str, task: str, classes: int | None) -> str | None:
    """Why `name` ("split/metric", e.g. "test/top5_accuracy") cannot be used for a `task` model with `classes`
    classes: an unknown metric (with a spelling suggestion) or top-k with k >= classes; None when it is fine.
    """
    split, _, metric = name.partition("/")
    entry = catalog.METRICS.entry(metric)
    valid = sorted(m for m, e in catalog.METRICS.items() if task in e.tasks)
    if entry is None or task not in entry.tasks:
        from gitops.config.jsonschema_tools import suggest

        guess = suggest(metric, valid)
        hint = f" (did you mean '{split}/{guess}'?)" if guess else ""
        return f"{task} models produce no metric {metric!r}{hint}; they produce {split}/ + one of: {', '.join(valid)}"
    k = {"top3_accuracy": 3, "top5_accuracy": 5}.get(metric)
    if k and classes is not None and classes <= k:
        return f"{metric} needs more than {k} classes; this dataset has {classes}"
    return None


def semantic_problems(cfg: dict[str, dict], tree: Tree | None = None) -> list[tuple[tuple, str]]:
    """Checks across files that JSON Schema can't express; (path, message) pairs."""
    model, train, data, release = cfg["model"], _with_optional_train_keys(cfg["train"]), cfg["data"], cfg["release"]
    problems: list[tuple[tuple, str]] = []
    task = catalog.dataset_task(data)
    arch = catalog.ARCHITECTURES[model["architecture"]]
    shape = input_shape(data)
    classes = num_classes(data)
    dataset_name = data["dataset"]["name"]
    dataset_inputs = catalog.DATASETS[dataset_name].info.get("inputs", "image" if shape and len(shape) == 3 else "vector")
    if task == "language_modeling":
        dataset_inputs = "tokens"

    if (train["steps"] is None) == (train["epochs"] is None):
        problems.append((("train", "steps"), "set exactly one of steps or epochs"))
    wants = arch.info.get("inputs")
    if wants == "image" and shape is not None and len(shape) != 3:
        problems.append((("model", "architecture"), f"{arch.name} needs image inputs (height, width, channels); "
                         f"dataset {dataset_name!r} gives shape {tuple(shape)}"))
    if wants == "tokens" and dataset_inputs != "tokens":
        problems.append((("model", "architecture"), f"{arch.name} needs token sequences; dataset {dataset_name!r} gives "
                         f"{'images' if dataset_inputs == 'image' else 'feature vectors'}"))
    if wants != "tokens" and dataset_inputs == "tokens" and arch.name != "mlp":
        problems.append((("model", "architecture"), f"{arch.name} cannot read token sequences; use transformer or mlp"))
    lm_arch = "language_modeling" in arch.info.get("tasks", ())
    if task == "language_modeling" and not lm_arch:
        problems.append((("model", "architecture"), f"{arch.name} is not a language model; language modelling data "
                         f"({dataset_name!r}) needs architecture: decoder"))
    if lm_arch and task != "language_modeling":
        problems.append((("model", "architecture"), f"{arch.name} is a language model; dataset {dataset_name!r} is "
                         f"{task} data (use dataset: text)"))
    if model["architecture"] == "decoder":
        heads, kv = model["num_heads"], model.get("num_kv_heads") or model["num_heads"]
        if model["embed_dim"] % heads:
            problems.append((("model", "embed_dim"), f"embed_dim {model['embed_dim']} is not divisible by num_heads {heads}"))
        elif (model["embed_dim"] // heads) % 2:
            problems.append((("model", "embed_dim"), f"head size embed_dim/num_heads = {model['embed_dim'] // heads} must "
                             "be even for rotary positions"))
        if heads % kv:
            problems.append((("model", "num_kv_heads"), f"num_kv_heads {kv} must divide num_heads {heads}"))
    problems += _text_problems(data["dataset"])
    tok = data["dataset"].get("tokenizer") if task == "language_modeling" else None
    if tok and tok.get("name") == "file":
        for key in ("path", "sha256"):
            if not tok.get(key):
                problems.append((("data", "dataset", "tokenizer"), f"tokenizer name: file needs {key}"))
        if tok.get("path") and tree is not None and tree.read(tok["path"]) is None:
            problems.append((("data", "dataset", "tokenizer", "path"), f"no file {tok['path']} in the repository"))
    if model["architecture"] == "transformer" and model["embed_dim"] % model["num_heads"]:
        problems.append((("model", "embed_dim"), f"embed_dim {model['embed_dim']} is not divisible by num_heads {model['num_heads']}"))
    if wants == "tokens" and data["preprocessing"]["scale"] != "none":
        problems.append((("data", "preprocessing", "scale"), f"{arch.name} reads token ids, which must not be scaled: "
                         "set preprocessing.scale: none"))
    data_vocab = data["dataset"].get("vocab_size") if dataset_inputs == "tokens" else None
    if wants == "tokens" and data_vocab and model.get("vocab_size", data_vocab) < data_vocab:
        problems.append((("model", "vocab_size"), f"vocab_size {model['vocab_size']} is smaller than the dataset's "
                         f"vocab_size {data_vocab}; token ids would not fit the embedding table"))

    loss = train.get("loss")
    if loss and loss not in catalog.TASK_LOSSES[task]:
        problems.append((("train", "loss"), f"loss {loss!r} does not fit a {task} task; use one of {', '.join(catalog.TASK_LOSSES[task])}"))
    if train.get("label_smoothing") and task != "classification":
        problems.append((("train", "label_smoothing"), "label smoothing applies to classification only"))

    n_train = train_split_size(data)
    if n_train is not None:
        if n_train == 0:
            problems.append((("data", "splits"), "the training split is empty"))
        elif train["batch_size"] > n_train:
            problems.append((("train", "batch_size"), f"batch size {train['batch_size']} is larger than the training split "
                             f"({n_train} examples of {dataset_name})"))
    steps = total_steps(train, data)
    warmup = train["schedule"].get("warmup_steps", 0)
    if steps is not None and warmup >= steps:
        problems.append((("train", "schedule", "warmup_steps"), f"warm-up ({warmup} steps) must be shorter than the run ({steps} steps)"))
    if train["schedule"]["name"] == "piecewise":
        bounds, scales = train["schedule"]["boundaries"], train["schedule"]["scales"]
        if len(bounds) != len(scales):
            problems.append((("train", "schedule", "scales"), f"{len(scales)} scales for {len(bounds)} boundaries; give one per boundary"))
        if list(bounds) != sorted(set(bounds)):
            problems.append((("train", "schedule", "boundaries"), "boundaries must be strictly increasing"))
    if steps is not None and train["checkpoint"]["every_steps"] > steps:
        pass  # a final checkpoint is always written; nothing to report

    metric_refs = [(("train", "checkpoint", "best_metric"), train["checkpoint"].get("best_metric"))]
    if train.get("early_stopping"):
        metric_refs.append((("train", "early_stopping", "metric"), train["early_stopping"]["metric"]))
    metric_refs.append((("release", "headline_metric"), release.get("headline_metric")))
    metric_refs += [(("release", "gates", i, "metric"), g["metric"]) for i, g in enumerate(release["gates"])]
    for path, name in metric_refs:
        if name:
            message = metric_problem(name, task, classes)
            if message:
                problems.append((path, message))
    for i, aug in enumerate(data["augmentation"]):
        if aug["name"] in ("shift", "flip", "crop") and (shape is None or len(shape) != 3):
            problems.append((("data", "augmentation", i, "name"), f"{aug['name']} needs image inputs; dataset {dataset_name!r} is not images"))
    if release["labels"] and classes is not None and len(release["labels"]) != classes:
        problems.append((("release", "labels"), f"{len(release['labels'])} labels for {classes} classes"))
    if train.get("start_from"):
        from gitops.config import parent_ref

        problems += [(("train", "start_from", *path), message)
                     for path, message in parent_ref.form_problems(train["start_from"], model["architecture"], tree)]
    problems += _streaming_problems(data["dataset"], tree)
    if data["dataset"].get("remainder") == "pad" and task == "language_modeling":
        problems.append((("data", "dataset", "remainder"), "pad is for record datasets; packed text rows always "
                         "drop the epoch's last partial batch"))
    if data["dataset"].get("remainder") == "pad" and (model["architecture"] == "resnet" or model.get("batch_norm")):
        problems.append((("data", "dataset", "remainder"), "pad puts weight-0 rows into BatchNorm's batch statistics "
                         f"({model['architecture']}); use remainder: drop with BatchNorm"))
    if dataset_name in ("file", "text") and tree is not None and data["dataset"].get("sha256"):
        try:
            if tree.read(data["dataset"]["path"]) is None:
                problems.append((("data", "dataset", "path"), f"no file {data['dataset']['path']} in the repository"))
        except ConfigError as exc:  # a path leading out of the repository
            problems.append((("data", "dataset", "path"), "; ".join(str(p) for p in exc.problems)))
    return problems


def _text_problems(ds: dict) -> list[tuple[tuple, str]]:
    """Checks of language-modelling text: how `text` is pinned, and what a `text:` column excludes."""
    problems: list[tuple[tuple, str]] = []
    name = ds["name"]
    if name == "text":
        listed = bool(ds.get("checksums") or ds.get("checksums_sha256"))
        if bool(ds.get("sha256")) == listed:
            problems.append((("data", "dataset", "sha256"), "pin the text with exactly one of sha256 (one file) or "
                             "checksums + checksums_sha256 (files under a folder or URL prefix)"))
        elif listed and not (ds.get("checksums") and ds.get("checksums_sha256")):
            missing = "checksums_sha256" if ds.get("checksums") else "checksums"
            problems.append((("data", "dataset", missing), f"a checksum list needs both checksums and checksums_sha256; "
                             f"set {missing}"))
        if ds.get("sha256") and "://" in ds["path"]:
            problems.append((("data", "dataset", "path"), "a URL prefix is pinned by a checksum list (checksums + "
                             "checksums_sha256), not sha256"))
        return problems
    lm_keys = [k for k in ("sequence_length", "tokenizer", "encoding_errors") if k in ds]
    if name not in catalog.TEXT_COLUMN_SOURCES:
        return problems
    if ds.get("text"):
        if not ds.get("sequence_length"):
            problems.append((("data", "dataset", "sequence_length"), "a text column needs sequence_length (tokens per "
                             "training sequence)"))
        for key in ("label", "features", "feature_prefix", "num_classes", "split_column"):
            if key in ds:
                problems.append((("data", "dataset", key), f"{key} does not apply to a text column (language modelling); "
                                 "remove it"))
    else:
        for key in lm_keys:
            problems.append((("data", "dataset", key), f"{key} applies to language modelling only: set text: <column>"))
        if name == "parquet" and not ds.get("label"):
            problems.append((("data", "dataset", "label"), "parquet needs label (the target column), or text: <column> "
                             "for language modelling"))
    return problems


def _streaming_problems(ds: dict, tree: Tree | None) -> list[tuple[tuple, str]]:
    """Checks of a streaming source that read the checksum list (small, in the repository), never the data."""
    problems: list[tuple[tuple, str]] = []
    if "checksums_sha256" not in ds:
        return problems
    if ds.get("split_files") and ds.get("split_column"):
        problems.append((("data", "dataset", "split_files"), "set split_files or split_column, not both"))
    if "val" in (ds.get("split_files") or {}) and "validation" in ds["split_files"]:
        problems.append((("data", "dataset", "split_files"), "give val or validation, not both"))
    if ds["name"] == "parquet" and not ds.get("text") and bool(ds.get("features")) == bool(ds.get("feature_prefix")):
        problems.append((("data", "dataset", "features"), "set exactly one of features or feature_prefix"))
    if (ds["name"] == "array_record" and not ds.get("text") and ds.get("task", "classification") == "classification"
            and not ds.get("num_classes")):
        problems.append((("data", "dataset", "num_classes"), "array_record classification needs num_classes"))
    if tree is None:
        return problems
    try:
        listed = tree.read(ds["checksums"])
    except ConfigError as exc:  # a path leading out of the repository (a symlink, ..)
        problems.append((("data", "dataset", "checksums"), "; ".join(str(p) for p in exc.problems)))
        return problems
    if listed is None:
        problems.append((("data", "dataset", "checksums"), f"no file {ds['checksums']} in the repository; write it with "
                         f"`gitops data checksums {ds['path']} --out {ds['checksums']}`"))
    else:
        from gitops.checksums import sha256_new  # Python's built-in SHA-256: no OpenSSL load at start-up

        actual = sha256_new(listed).hexdigest()
        if actual != ds["checksums_sha256"]:
            problems.append((("data", "dataset", "checksums_sha256"), f"{ds['checksums']} has SHA-256 {actual}; "
                             "update the pin if the list changed on purpose"))
        problems += _listed_problems(ds, listed)
    return problems


def _listed_problems(ds: dict, listed: bytes) -> list[tuple[tuple, str]]:
    """What training would refuse in the checksum list itself: malformed or no lines, split_files
    patterns matching no listed file, a file in no split or in two (read from the list, not the data)."""
    from gitops.learn import checksum_list  # jax-free; only for streaming datasets

    try:
        entries = checksum_list.parse(listed.decode("utf-8", errors="replace"), ds["checksums"])
    except GitopsError as exc:
        return [(("data", "dataset", "checksums"), str(exc))]
    split_files = ds.get("split_files")
    if not split_files or ("val" in split_files and "validation" in split_files):
        return []
    _, found = checksum_list.assign_splits(split_files, [e.path for e in entries], ds["checksums"])
    return [(("data", "dataset", "split_files", *((key,) if key else ())), message) for key, message in found]


# --- convenience --------------------------------------------------------------------------------


def load(name: str, root: Path | None = None, overrides: Iterable[str] = (), tree: Tree | None = None) -> ResolvedConfig:
    """Resolve one model or raise ConfigError listing every problem."""
    tree = tree or FsTree(find_root(root))
    cfg, problems = resolve(name, tree, overrides)
    if cfg is None:
        raise ConfigError(problems)
    return cfg


def model_name_from_arg(arg: str, root: Path) -> str:
    """Accept `digits-mlp`, `models/digits-mlp` or a path to the folder."""
    path = Path(arg)
    if len(path.parts) > 1 or path.is_dir():
        try:
            # lexically, without following links: a linked model folder is refused when resolved
            rel = Path(os.path.abspath(Path.cwd() / path)).relative_to(root / MODELS_DIR)
        except ValueError:
            raise UsageError(f"{arg}: not a folder under {root / MODELS_DIR}") from None
        if len(rel.parts) != 1:
            raise UsageError(f"{arg}: expected models/<name>")
        return rel.parts[0]
    return arg
