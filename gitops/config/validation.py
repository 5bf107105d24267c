"""Validate many model folders at once and report every problem (the library behind `gitops validate`)."""

from __future__ import annotations

import os
from pathlib import Path

from gitops import config
from gitops.errors import Problem, UsageError
from gitops.records import record
from gitops.repo.tree import FsTree, Tree


@record(frozen=True)
class ValidationResult:
    """What `validate` found: model name (or gitops.yaml) -> its problems, [] for a valid one."""

    models: dict[str, list[Problem]]  # model name -> problems ([] when valid)

    @property
    def problems(self) -> list[Problem]:
        """Every problem of every model, sorted (by file, line, column)."""
        return sorted(p for probs in self.models.values() for p in probs)

    @property
    def ok(self) -> bool:
        """True when no model has a problem."""
        return not self.problems


def models_for_paths(root: Path, paths: list[Path]) -> list[str]:
    """Model names named by paths: model folders, files inside them, `models/` itself, or a model's name
    (as every other command takes it) when no such path exists here."""
    models_dir = Path(os.path.abspath(root / config.MODELS_DIR))
    names: list[str] = []
    for raw in paths:
        path = Path(os.path.abspath(Path.cwd() / raw))  # links are not followed: resolving refuses them
        if not os.path.lexists(path):
            known = config.model_names(FsTree(root))
            if str(raw) in known:
                names.append(str(raw))
                continue
            raise UsageError(f"{raw}: no such model, file or folder{config.did_you_mean(path.name, names=known)}")
        if path == models_dir or path == root.resolve():
            names.extend(config.model_names(FsTree(root)))
            continue
        try:
            rel = path.relative_to(models_dir)
        except ValueError:
            raise UsageError(f"{raw}: not inside {models_dir}") from None
        names.append(rel.parts[0])
    return list(dict.fromkeys(names))


def validate(root: Path, names: list[str] | None = None, tree: Tree | None = None) -> ValidationResult:
    """Check gitops.yaml, every named model (all under models/ when `names` is None) and its sweep.yaml.

    Never raises for a bad config: each problem (file, line, key path, message) is collected per model.
    `tree` reads another view (a git commit) instead of the working folder.
    """
    tree = tree or FsTree(root)
    names = names if names is not None else config.model_names(tree)
    results: dict[str, list[Problem]] = {}
    from gitops.config.settings import SETTINGS_FILE, load_settings
    from gitops.errors import ConfigError

    try:
        load_settings(tree)
    except ConfigError as exc:
        results[SETTINGS_FILE] = exc.problems
    from gitops.config import sweep

    for name in names:
        cfg, problems = config.resolve(name, tree)
        results[name] = problems + sweep.check(name, tree, cfg)
    return ValidationResult(results)


def annotation(problem: Problem) -> str:
    """A GitHub Actions workflow command that annotates the offending line of the PR diff."""
    message = f"{problem.path}: {problem.message}" if problem.path else problem.message
    message = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    file = problem.file.replace(",", "%2C").replace(":", "%3A")
    return f"::error file={file},line={problem.line},col={problem.col},title=gitops validate::{message}"
