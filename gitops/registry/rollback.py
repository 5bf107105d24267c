"""`gitops rollback`: a branch whose one commit restores a model's files as they were at a released version.

The restored files must resolve to the version's release fingerprint with this version of gitops; when
a parent file (`extends`) or a default moved on since, the values are written out in full instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gitops import config
from gitops.backends.base import Backend
from gitops.errors import GitopsError, UsageError
from gitops.registry.versions import resolve
from gitops.repo import gitutil


class _Overlay:
    """The working folder with some files replaced (None: removed), to resolve before writing."""

    def __init__(self, base, replaced: dict[str, bytes | None]):
        self.base, self.replaced, self.root = base, replaced, base.root

    def read(self, relpath: str) -> bytes | None:
        """The replaced content (None: removed), else the base tree's file."""
        return self.replaced[relpath] if relpath in self.replaced else self.base.read(relpath)

    def listdir(self, relpath: str) -> list[str]:
        """The base folder's names with replaced files added and removed ones left out."""
        names = set(self.base.listdir(relpath))
        prefix = relpath.rstrip("/") + "/"
        for path, content in self.replaced.items():
            if path.startswith(prefix) and "/" not in path[len(prefix):]:
                (names.add if content is not None else names.discard)(path[len(prefix):])
        return sorted(names)

    def is_dir(self, relpath: str) -> bool:
        """A folder of the base tree, or one a replaced file lives in."""
        return self.base.is_dir(relpath) or any(p.startswith(relpath.rstrip("/") + "/") for p in self.replaced)

    def label(self, relpath: str) -> str:
        """The base tree's label for messages."""
        return self.base.label(relpath)

    def refused(self, relpath: str):
        """The base tree's refusal (symbolic links under models/), unless the file is replaced here."""
        return None if relpath in self.replaced else self.base.refused(relpath)


@dataclass
class RollbackResult:
    """The rollback branch, its commit, the version restored, files written out in full, the PR (or None)."""

    branch: str
    commit: str
    version: str
    inlined: list[str]
    pull_request: str | None
    training_fingerprint: str


def _inline(kind: str, model: str, values: dict) -> bytes:
    from gitops.config.yamlio import dump_yaml

    if kind == "train" and isinstance(values.get("start_from"), dict):  # the parent it resolved to is not a key to write
        values = {**values, "start_from": {k: v for k, v in values["start_from"].items() if k != "resolved"}}
    header = (f"# yaml-language-server: $schema=../../schemas/{kind}.schema.json\n"
              f"# Restored by `gitops rollback`: the values {model} was released with, inherited ones written out.\n")
    return (header + dump_yaml(_drop_nulls(values))).encode("utf-8")


def _drop_nulls(value):
    """Resolved configs spell unset optional keys as null; the files leave them out."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def rollback(root: Path, backend: Backend, model: str, version: str, branch: str | None = None) -> RollbackResult:
    """A new branch whose one commit restores `model`'s files as they were at `version`."""
    from gitops.repo.tree import FsTree, GitTree

    st, found = resolve(backend, f"{model}@{version}")  # a version, or a stage naming one
    folder = f"{config.MODELS_DIR}/{model}"
    changed = gitutil.uncommitted(root, [folder])  # untracked files too: the rollback commit would take them
    if changed:
        raise UsageError(f"{folder} has uncommitted changes ({', '.join(changed[:5])}); commit or discard them "
                         "before a rollback")
    gitutil.ensure_commit(root, found.commit)
    old_tree = GitTree(root, found.commit)
    old_cfg = config.load(model, root, tree=old_tree)
    old_files = {f"{folder}/{k}.yaml": old_tree.read(f"{folder}/{k}.yaml") for k in config.FILE_KINDS}
    fs = FsTree(root)

    def resolved(files: dict[str, bytes | None]) -> config.ResolvedConfig | None:
        return config.resolve(model, _Overlay(fs, files))[0]  # type: ignore[arg-type]

    def matches(files: dict[str, bytes | None]) -> bool:
        cfg = resolved(files)
        return cfg is not None and cfg.release_fingerprint == old_cfg.release_fingerprint

    files = dict(old_files)
    inlined: list[str] = []
    if not matches(files):
        values = old_cfg.as_dict()
        now = resolved(files)
        for kind in config.FILE_KINDS:  # parents changed since: inline the files that extend them
            raw = old_files[f"{folder}/{kind}.yaml"]
            if raw is None or b"extends" not in raw:
                continue
            if now is None or now.as_dict()[kind] != values[kind]:
                files[f"{folder}/{kind}.yaml"] = _inline(kind, model, values[kind])
                inlined.append(f"{kind}.yaml")
        if not matches(files):  # defaults moved on too: write every file out in full
            files = {f"{folder}/{k}.yaml": _inline(k, model, values[k]) for k in config.FILE_KINDS}
            inlined = [f"{k}.yaml" for k in config.FILE_KINDS]
        if not matches(files):
            raise GitopsError(f"cannot restore {model}@{found.version}'s config exactly with this version of gitops")
    current = {p: fs.read(p) for p in files}
    if current == files:
        raise UsageError(f"models/{model} already has {found.version}'s config; nothing to roll back")
    name = branch or f"rollback/{model}-{found.version}"
    base_branch = gitutil.current_branch(root) or "main"
    if gitutil.branch_exists(root, name):
        raise UsageError(f"branch {name!r} already exists; pass --branch NAME")
    gitutil.run(root, "switch", "--quiet", "-c", name)
    for rel, content in files.items():
        path = root / rel
        if content is None:
            if path.exists():
                path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    message = (f"Roll back {model} to {found.version}\n\nRestores the config released as {found.tag} "
               f"(commit {found.commit[:12]}).\nTraining fingerprint: {old_cfg.training_fingerprint}\n")
    gitutil.run(root, "add", "-A", "--", folder)
    gitutil.run(root, "commit", "--quiet", "-m", message, "--", folder, env=gitutil.identity_env(root))
    commit = gitutil.head_commit(root)
    pr = None
    if backend.hosts_pull_requests:
        gitutil.run(root, "push", "origin", f"refs/heads/{name}")
        pr = backend.open_pull_request(name, base_branch, f"Roll back {model} to {found.version}", message)
    return RollbackResult(name, commit, found.version, inlined, pr, old_cfg.training_fingerprint)
