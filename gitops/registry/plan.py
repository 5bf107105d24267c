"""What changed between two commits: which models to train, which only to release, which are gone.

`ci plan` resolves every model at the PR's base and head commits (through `GitTree`, the same code
`validate` runs) and compares fingerprints, so comment or formatting edits plan nothing. Imports
stay jax-free: this runs on a GitHub-hosted runner before any GPU job starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from gitops import config, jsonio
from gitops.config.yamlio import load_yaml_text
from gitops.errors import ConfigError, GitopsError, Problem, UsageError
from gitops.records import record
from gitops.repo import gitutil
from gitops.repo.tree import FsTree, GitTree, Tree

_MISSING = object()


@record
class ModelChange:
    """One model in a plan and why (`reason`): its training and release fingerprints at head (64 hex) and
    the changed config keys as (key path, old, new).
    """

    model: str
    reason: str
    fingerprint: str = ""  # training fingerprint at head (full)
    release_fingerprint: str = ""
    diff: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key.path, old, new)
    # key paths owned by entries of a plugin package read as data only: checked when training
    checked_when_training: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The change as JSON for `gitops ci plan --json` (`fingerprint` is the 12-hex short form;
        `checked_when_training` only when some part of the config waits for training to be checked).
        """
        out = {
            "model": self.model,
            "reason": self.reason,
            "fingerprint": self.fingerprint[:12],
            "training_fingerprint": self.fingerprint,
            "release_fingerprint": self.release_fingerprint,
        }
        if self.checked_when_training:
            out["checked_when_training"] = list(self.checked_when_training)
        return out


@record
class Plan:
    """What a PR changes between commits `base` and `head`: models to train, to release without training,
    deleted, and sweeps to run.
    """

    base: str
    head: str
    train: list[ModelChange] = field(default_factory=list)
    release_only: list[ModelChange] = field(default_factory=list)
    deleted: list[ModelChange] = field(default_factory=list)
    sweeps: list[SweepPlan] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The plan as the JSON `gitops ci plan` writes (the workflow reads `matrix` from it)."""
        return {
            "base": self.base,
            "head": self.head,
            "train": [c.as_dict() for c in self.train],
            "release_only": [c.as_dict() for c in self.release_only],
            "deleted": [{"model": c.model, "reason": c.reason} for c in self.deleted],
            "sweeps": [s.as_dict() for s in self.sweeps],
            "matrix": self.matrix(),
        }

    def matrix(self) -> dict:
        """The GitHub Actions job matrix, `{"include": [{"model", "fingerprint", ["trial"]}...]}`: one training job
        per distinct (model, 12-hex fingerprint); a sweep trial equal to the model's own config is not repeated.
        """
        entries = [{"model": c.model, "fingerprint": c.fingerprint[:12]} for c in self.train]
        seen = {(c.model, c.fingerprint[:12]) for c in self.train}
        for sweep_plan in self.sweeps:
            for trial in sweep_plan.trials:
                key = (sweep_plan.model, trial["fingerprint"][:12])
                if key not in seen:  # a trial equal to the model's own config trains once
                    seen.add(key)
                    entries.append({"model": sweep_plan.model, "fingerprint": trial["fingerprint"][:12],
                                    "trial": trial["trial"]})
        return {"include": entries}


@record
class SweepPlan:
    """A model's new or changed sweep: every trial trains (cached ones cost nothing)."""

    model: str
    reason: str
    metric: str
    trials: list[dict]  # {trial, fingerprint, set}
    sampled_from: int | None = None  # the full number of trials when `over_budget: sample` cut them
    over_budget: str = "refuse"
    seed: int = 0

    def as_dict(self) -> dict:
        """The sweep plan as JSON; each trial carries its 12-hex `fingerprint` and full `training_fingerprint`."""
        return {"model": self.model, "reason": self.reason, "metric": self.metric,
                "trials": [{**t, "fingerprint": t["fingerprint"][:12], "training_fingerprint": t["fingerprint"]}
                           for t in self.trials],
                "sampled_from": self.sampled_from}


# --- config diffs ------------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"train.optimizer.learning_rate": 0.003, ...}; lists are leaves (they replace as a whole)."""
    if isinstance(value, dict):
        if not value and prefix:
            return {prefix: {}}
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_diff(old: dict | None, new: dict | None) -> list[tuple[str, Any, Any]]:
    """Changed key paths with old and new values (`_MISSING` stands for an absent key).

    `plugins.written` (a repository plugin's parts as written, which the fingerprint hashes) repeats keys
    shown where they live: left out.
    """
    a, b = ({k: v for k, v in flatten(doc or {}).items() if not k.startswith("plugins.written.")} for doc in (old, new))
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va != vb or type(va) is not type(vb):
            if isinstance(va, int | float) and isinstance(vb, int | float) and va == vb:
                continue
            changes.append((key, va, vb))
    return changes


def show_value(value: Any) -> str:
    """A config value as a diff shows it: JSON (unicode kept), `(absent)` for a missing key."""
    if value is _MISSING:
        return "(absent)"
    return jsonio.dumps(value, ensure_ascii=False)


def is_missing(value: Any) -> bool:
    """True for the marker `config_diff` uses for a key absent on one side."""
    return value is _MISSING


# --- resolving at a commit ----------------------------------------------------------------------


def _resolve_all(tree: Tree, names: list[str] | None = None, mode: Any = None
                 ) -> tuple[dict[str, config.ResolvedConfig], dict[str, list[Problem]]]:
    """Resolve models of `tree` (all when `names` is None); `mode`: a `plugins.Deferred` to read its package as data."""
    from gitops.config import plugins

    names = config.model_names(tree) if names is None else names
    if isinstance(tree, GitTree):
        tree.read_many([f"{config.MODELS_DIR}/{n}/{k}.yaml" for n in names for k in config.FILE_KINDS])
    resolved, problems = {}, {}
    with plugins.deferring(mode):
        for name in names:
            cfg, found = config.resolve(name, tree)
            if cfg is None:
                problems[name] = found
            else:
                resolved[name] = cfg
    return resolved, problems


def plugin_mode(root: Path, tree: Tree) -> Any:
    """How to resolve `tree`'s configs: None (as usual), or a `plugins.Deferred` when the plugin package it declares
    must not be imported here: its files differ from this checkout's (the one this process may import), or
    $GITOPS_REPO_PLUGINS is off.

    pr-train.yml's plan runs base-branch code and reads the pull request's head as git objects: a plugin package
    the PR adds or edits is hashed from those objects and never imported. A name only that package can declare
    is taken as one of its entries; the parts of the config it owns are checked when training, where the PR's
    code runs (after the approval gate), and are fingerprinted as written, so the plan's fingerprint is the one
    training records.
    """
    if not isinstance(tree, GitTree):
        return None
    from gitops.config import plugins
    from gitops.config.settings import load_settings

    try:
        package = load_settings(tree).plugins.package
    except GitopsError:  # a broken gitops.yaml: validation reports it
        return None
    if package is None:
        return None
    checkout = Path(root).resolve()
    same = (not plugins.repo_plugins_off() and plugins.repo_package(checkout) == package
            and plugins.source_hash(FsTree(checkout), package) == plugins.source_hash(tree, package))
    if same:
        return None
    metric_tasks = plugins.scanned_metric_tasks(tree, package) | _checkout_metric_tasks(checkout, package)
    return plugins.Deferred(package, tree.ref, metric_tasks)


def reading(root: Path, tree: Tree) -> Any:
    """A context in which `config.resolve(..., tree)` reads `tree` as `plan` does (see `plugin_mode`)."""
    from gitops.config import plugins

    return plugins.deferring(plugin_mode(root, tree))


def _checkout_metric_tasks(root: Path, package: str) -> frozenset[str]:
    """Tasks this checkout's copy of `package` declares metrics for (none when it may not be imported here)."""
    from gitops.config import catalog, plugins

    if plugins.repo_plugins_off() or plugins.repo_package(root) != package:
        return frozenset()
    plugins.use_repository(root)
    try:
        return frozenset(t for m in catalog.METRICS.values() if m.repo_package == package for t in m.tasks)
    except GitopsError:  # a broken package: resolving the checkout's configs says why
        return frozenset()


def _inputs(tree: Tree, name: str, cfg: config.ResolvedConfig) -> list[str] | None:
    """Every file `cfg`'s resolution read: its own four, each `extends` parent, a pinned data file, a checksum
    list, a tokenizer file."""
    if cfg.plugins:  # it also reads the plugin package's source: resolve it at base too (hash compared there)
        return None
    paths = {f"{config.MODELS_DIR}/{name}/{k}.yaml" for k in config.FILE_KINDS}
    for chain in cfg.files.values():
        for label in chain:
            if isinstance(tree, GitTree):
                paths.add(label.split(":", 1)[1])
            else:
                try:
                    paths.add(Path(label).absolute().relative_to(tree.root).as_posix())
                except ValueError:
                    return None
    ds = cfg.data.dataset
    tokenizer = ds.get("tokenizer")
    # the files resolution reads besides the YAML: a pinned data file, a checksum list, a tokenizer file
    for path in (ds.get("path"), ds.get("checksums"), tokenizer.get("path") if isinstance(tokenizer, Mapping) else None):
        if path:
            paths.add(str(path))
    return sorted(paths)


def _unchanged(base_tree: Tree, head_tree: Tree, new: dict[str, config.ResolvedConfig]) -> set[str]:
    """Models whose every input file has the same bytes at base: their base resolution is the head's.

    Resolution is a function of those bytes and of this code's schemas, so `ci plan` resolves at base
    only the models that may differ (1,000 models with 10 changed: ~2x faster).
    """
    inputs = {name: _inputs(head_tree, name, cfg) for name, cfg in new.items()}
    if isinstance(base_tree, GitTree):
        base_tree.read_many(sorted({p for paths in inputs.values() if paths for p in paths}))
    return {name for name, paths in inputs.items()
            if paths is not None and all(base_tree.read(p) == head_tree.read(p) for p in paths)}


def _content(tree: Tree, relpath: str) -> Any:
    """A YAML file's data (comments and formatting dropped), or _MISSING / the raw bytes if unreadable."""
    raw = tree.read(relpath)
    if raw is None:
        return _MISSING
    try:
        return load_yaml_text(raw, relpath).data
    except Exception:  # an unparsable file compares by bytes
        return raw


def _reason(name: str, base_tree: Tree, head_tree: Tree, head_cfg: config.ResolvedConfig,
            base_cfg: config.ResolvedConfig | None = None) -> str:
    own = [f"{k}.yaml" for k in config.FILE_KINDS
           if _content(base_tree, f"{config.MODELS_DIR}/{name}/{k}.yaml")
           != _content(head_tree, f"{config.MODELS_DIR}/{name}/{k}.yaml")]
    parents: list[str] = []
    for _kind, chain in head_cfg.files.items():
        for label in chain:
            relpath = label.rsplit(":", 1)[-1]  # a GitTree labels files "<ref>:<path>"
            parts = relpath.split("/")
            if len(parts) >= 3 and parts[1] != name and parts[1] not in parents:
                if _content(base_tree, relpath) != _content(head_tree, relpath):
                    parents.append(parts[1])
    pieces = []
    if own:
        pieces.append("own files changed: " + ", ".join(own))
    pieces += [f"parent {p} changed (extends)" for p in parents]
    before = {k: v for k, v in (base_cfg.plugins or {}).items() if k != "written"} if base_cfg is not None else {}
    after = {k: v for k, v in (head_cfg.plugins or {}).items() if k != "written"}
    if before != after:
        package = after.get("package") or before.get("package")
        pieces.append(f"plugin package {package}/ changed" if before and after else
                      f"{'uses' if after else 'no longer uses'} the plugin package {package}/")
    return "; ".join(pieces) or "resolved config changed (schema/defaults)"


def plan(root: Path, base: str, head: str | None) -> Plan:
    """Compare every model between `base` and `head` (None: the working folder)."""
    base_sha = gitutil.ensure_commit(root, base)
    base_tree: Tree = GitTree(root, base_sha)
    if head is None:
        head_tree: Tree = FsTree(root)
        head_label = "working tree"
    else:
        head_label = gitutil.ensure_commit(root, head)
        head_tree = GitTree(root, head_label)
    head_mode = plugin_mode(root, head_tree)
    new, new_problems = _resolve_all(head_tree, mode=head_mode)
    if new_problems:
        raise ConfigError([p for ps in new_problems.values() for p in ps])
    old_names = set(config.model_names(base_tree))
    same = _unchanged(base_tree, head_tree, {n: c for n, c in new.items() if n in old_names})
    old, _old_problems = _resolve_all(base_tree, sorted(old_names - same), plugin_mode(root, base_tree))
    old.update({name: new[name] for name in same})
    result = Plan(base_sha, head_label)
    for name in sorted(new):
        cfg = new[name]
        before = old.get(name)
        if name not in old_names:
            change = ModelChange(name, "new model", cfg.training_fingerprint, cfg.release_fingerprint,
                                 config_diff(None, cfg.as_dict()))
            result.train.append(change)
        elif before is None:
            change = ModelChange(name, "config was invalid at base", cfg.training_fingerprint,
                                 cfg.release_fingerprint, config_diff(None, cfg.as_dict()))
            result.train.append(change)
        elif before.training_fingerprint != cfg.training_fingerprint:
            result.train.append(ModelChange(name, _reason(name, base_tree, head_tree, cfg, before), cfg.training_fingerprint,
                                            cfg.release_fingerprint, config_diff(before.as_dict(), cfg.as_dict())))
        elif before.release_fingerprint != cfg.release_fingerprint:
            result.release_only.append(ModelChange(name, "release.yaml changed", cfg.training_fingerprint,
                                                   cfg.release_fingerprint,
                                                   config_diff(before.as_dict(), cfg.as_dict())))
    _parents(root, new, result)
    for change in result.train + result.release_only:
        change.checked_when_training = list(new[change.model].checked_when_training)
    for name in sorted(old_names - set(config.model_names(head_tree))):
        result.deleted.append(ModelChange(name, "model folder removed"))
    from gitops.config import plugins

    with plugins.deferring(head_mode):
        result.sweeps = _sweeps(base_tree, head_tree, new, old_names)
    return result


def _parents(root: Path, new: dict[str, config.ResolvedConfig], result: Plan) -> None:
    """`start_from`: a parent stage that moved since a child's latest release retrains the child; a
    child to train whose parent does not resolve (no such version or stage) is an error (exit 1)."""
    children = {n: c for n, c in new.items() if c.train.start_from and "model" in c.train.start_from}
    if not children:
        return
    from gitops.config import parent_ref
    from gitops.registry import lineage

    tag_list = parent_ref.registry_tags(root) or []
    planned = {c.model: c for c in result.train}
    for moved in lineage.moved_parents(children, tag_list):
        name, cfg = moved["model"], new[moved["model"]]
        if name in planned:
            planned[name].reason += f"; {moved['reason']}"
            continue
        result.release_only = [c for c in result.release_only if c.model != name]
        change = ModelChange(name, moved["reason"], cfg.training_fingerprint, cfg.release_fingerprint,
                             [("train.start_from.resolved.version", moved["was"], moved["now"])])
        result.train.append(change)
        planned[name] = change
    result.train.sort(key=lambda c: c.model)
    broken = [f"{n}: train.start_from: {new[n].parent_error}" for n in sorted(planned) if new[n].parent_error]
    if broken:
        raise GitopsError("; ".join(broken))


def _sweeps(base_tree: Tree, head_tree: Tree, new: dict[str, config.ResolvedConfig],
            old_names: set[str]) -> list[SweepPlan]:
    """Sweeps whose sweep.yaml is new or changed (its content, not its comments): all their trials.

    Only an edit of sweep.yaml runs a sweep again: a PR that changes the model's other files trains
    the model alone, and committing the winner (`gitops sweep apply`) trains nothing new, since the
    model's fingerprint is then the winning trial's, whose run already exists.
    """
    from gitops.config import sweep

    plans = []
    for name, cfg in sorted(new.items()):
        relpath = sweep.sweep_path(name)
        head_content = _content(head_tree, relpath)
        if is_missing(head_content):
            continue
        if name in old_names and _content(base_tree, relpath) == head_content:
            continue
        head_sweep, problems = sweep.load(name, head_tree)
        if problems:
            raise ConfigError(problems)
        resolved, problems = sweep.resolve_trials(head_sweep, head_tree)
        if problems:
            raise ConfigError(problems)
        was = name in old_names and not is_missing(_content(base_tree, relpath))
        reason = "sweep.yaml changed" if was else "sweep.yaml added"
        trials = [{"trial": t.index, "fingerprint": c.training_fingerprint, "set": t.overrides()} for t, c in resolved]
        plans.append(SweepPlan(name, reason, sweep.metric_of(head_sweep, cfg), trials,
                               over_budget=head_sweep.over_budget, seed=head_sweep.seed))
    return plans


def write_github_output(result: Plan, path: str | None = None) -> None:
    """Append `matrix=<json>` and `has_train=true|false` to $GITHUB_OUTPUT."""
    target = path or os.environ.get("GITHUB_OUTPUT")
    if not target:
        raise UsageError("--github-output needs $GITHUB_OUTPUT to name a file (it is set inside GitHub Actions)")
    matrix = jsonio.dumps(result.matrix(), separators=(",", ":"))
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(f"matrix={matrix}\n")
        fh.write(f"has_train={'true' if result.matrix()['include'] else 'false'}\n")


def format_diff(result: Plan) -> str:
    """The human view of a plan (`gitops diff`)."""
    lines: list[str] = []
    for title, changes in (("train", result.train), ("release only", result.release_only)):
        for change in changes:
            lines.append(f"{change.model} ({title}: {change.reason})")
            if change.checked_when_training:
                lines.append(f"  checked when training (plugin code not imported here): "
                             f"{', '.join(change.checked_when_training)}")
            for key, a, b in change.diff:
                lines.append(f"  {key}: {show_value(a)} -> {show_value(b)}")
    for change in result.deleted:
        lines.append(f"{change.model} (deleted)")
    for sweep_plan in result.sweeps:
        lines.append(f"{sweep_plan.model} (sweep: {len(sweep_plan.trials)} trial(s) ranked by {sweep_plan.metric}: "
                     f"{sweep_plan.reason})")
        for trial in sweep_plan.trials:
            lines.append(f"  #{trial['trial']}: " + " ".join(f"--set {line}" for line in trial["set"]))
    if not lines:
        lines.append(f"no model changed between {result.base[:12]} and "
                     f"{result.head if result.head == 'working tree' else result.head[:12]}")
    return "\n".join(lines)
