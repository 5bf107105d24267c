"""`train.start_from`, the jax-free half: the parent reference's form, cycles, and resolving it.

What config loading, `validate` and `ci plan` need, without jax and without the training code: the
reference's form, cycles across the working tree's models, and resolving `MODEL@VERSION|@STAGE`
through the registry's git tags to `{model, version, sha256}` (the archive checksum the release tag
recorded). `config.resolve` writes that under `start_from.resolved`, so the training fingerprint covers
the parent's bytes. Loading the parent's weights at training time is `gitops.learn.start_from`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from gitops.errors import GitopsError, UsageError
from gitops.registry import tags

# --- form (validate: no tags, no jax) --------------------------------------------------------------


def parse_model_ref(text: str) -> tags.Ref:
    """`MODEL@vX.Y.Z` or `MODEL@STAGE` (never a bare model or `latest`: a parent must be named).

    Raises:
        UsageError: any other form.
    """
    ref = tags.parse_ref(text)
    if not ref.version and not ref.stage:
        raise UsageError(f"{text!r} must name a version (MODEL@v1.2.0) or a stage (MODEL@production); "
                         "'latest' would change under a run without anyone deciding it")
    return ref


def safe_relpath(path: str) -> str | None:
    """A repository-relative POSIX path with no `..` and not absolute, or None."""
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or "\\" in path or not p.parts:
        return None
    return p.as_posix()


def form_problems(spec: Any, architecture: str, tree: Any = None) -> list[tuple[tuple, str]]:
    """What is wrong with a `start_from` mapping's form; [(path inside start_from, message)]."""
    problems: list[tuple[tuple, str]] = []
    if "model" in spec:
        try:
            parse_model_ref(spec["model"])
        except GitopsError as exc:
            problems.append((("model",), str(exc)))
        for key in ("format", "sha256"):
            if key in spec:
                problems.append(((key,), f"{key} belongs to a weights file (path or url), not to start_from.model"))
    folder = spec.get("format") == "orbax"
    if not folder and ("checksums" in spec or "checksums_sha256" in spec):
        problems.append((("checksums",), "a checksum list pins an Orbax folder: add format: orbax (a single "
                                         "safetensors/npz file is pinned by sha256)"))
    if folder:
        if "sha256" in spec:
            problems.append((("sha256",), "an Orbax folder is pinned by its checksum list (checksums + "
                                          "checksums_sha256), not by sha256"))
        for key in ("checksums", "checksums_sha256"):
            if key not in spec and ("path" in spec or "url" in spec):
                problems.append(((key,), f"format: orbax needs {key} (`gitops data checksums FOLDER --out LIST` "
                                         "writes the list; its own sha256 is the pin)"))
        if "checksums" in spec:
            rel = safe_relpath(spec["checksums"])
            if rel is None:
                problems.append((("checksums",), f"{spec['checksums']!r} must be a path inside the repository"))
            elif tree is not None and tree.read(rel) is None:
                problems.append((("checksums",), f"no file {rel} in the repository"))
    if "path" in spec:
        rel = safe_relpath(spec["path"])
        if rel is None:
            problems.append((("path",), f"{spec['path']!r} must be a path inside the repository (no '..', not absolute)"))
        elif tree is not None and not folder and tree.read(rel) is None:
            problems.append((("path",), f"no file {rel} in the repository"))
    return problems


def cycle_problems(name: str, spec: Any, train_of: Callable[[str], Any]) -> list[tuple[tuple, str]]:
    """A model starting from itself or from one of its descendants (followed through the working tree).

    Args:
        name: the model whose `train.start_from` is `spec`.
        spec: its `start_from` mapping.
        train_of: model name -> that model's merged train document in the working tree (None: no such
            model folder); config loading passes its own reader, so this module never imports it.
    """
    if "model" not in spec:
        return []
    chain = [name]
    try:
        current: str | None = parse_model_ref(spec["model"]).model
    except GitopsError:
        return []
    while current:
        if current in chain:
            return [(("start_from", "model"), "start_from forms a cycle: " + " -> ".join([*chain, current]))]
        chain.append(current)
        train = train_of(current)
        if train is None:
            return []
        parent = train.get("start_from") if isinstance(train, dict) else None
        try:
            current = parse_model_ref(parent["model"]).model if isinstance(parent, dict) and "model" in parent else None
        except (GitopsError, TypeError):
            return []
    return []


# --- resolving through the registry's tags (no jax) ------------------------------------------------


def registry_tags(root: Path | None) -> list | None:
    """Every tag of the repository at `root` (the local registry view), or None without a git repository."""
    if root is None or not (Path(root) / ".git").exists():
        return None
    from gitops.repo import git_tags  # the local backend's tag reader, without its asset machinery

    try:
        return git_tags.list_tags(Path(root).resolve())
    except GitopsError:
        return None


def resolve_ref(ref_text: str, tag_list: list) -> dict:
    """`{model, version, sha256}` of the active version `ref_text` names in `tag_list`.

    Raises:
        UsageError: no such model, version or stage, or the version is deregistered.
    """
    from gitops.registry.tag_message import release_metadata

    ref = parse_model_ref(ref_text)
    state = tags.model_state(tag_list, ref.model)
    if not state.versions:
        raise UsageError(f"parent {ref_text}: {ref.model} has no releases in this repository's tags "
                         "(fetch them: git fetch --tags)")
    try:
        version = tags.resolve_ref(state, ref)
    except UsageError as exc:
        raise UsageError(f"parent {ref_text}: {exc}") from None
    if not version.active:
        raise UsageError(f"parent {ref_text}: {ref.model}@{version.version} is deregistered")
    meta = release_metadata(version.message)
    return {"model": ref.model, "version": version.version, "sha256": meta.get("sha256")}


def resolve_into(train_doc: dict, tree: Any) -> str | None:
    """Write `start_from.resolved` into a validated train document; the reason when it can't (None: done).

    A version reference is fixed; a stage reference resolves to the version holding the stage now.
    """
    spec = train_doc.get("start_from")
    if not isinstance(spec, dict) or "model" not in spec:
        return None
    spec.pop("resolved", None)
    tag_list = registry_tags(getattr(tree, "root", None))
    if tag_list is None:
        return f"parent {spec['model']}: no git repository to read the registry's tags from"
    try:
        spec["resolved"] = resolve_ref(spec["model"], tag_list)
    except GitopsError as exc:
        return str(exc)
    return None


def require_resolved(cfg: Any) -> None:
    """Refuse to train a config whose parent is not resolved (exit 1, before any run folder exists)."""
    spec = cfg.train.start_from
    if spec and "model" in spec and "resolved" not in spec:
        raise GitopsError(f"{cfg.name}: train.start_from: {cfg.parent_error or 'parent not resolved'}")


def parent_of(cfg_or_doc: Any) -> dict | None:
    """The resolved parent identity of a config or a resolved train document (None: none or a file)."""
    train = cfg_or_doc.train.start_from if hasattr(cfg_or_doc, "train") else (cfg_or_doc or {}).get("start_from")
    if not train:
        return None
    resolved = train.get("resolved")
    return dict(resolved) if resolved else None
