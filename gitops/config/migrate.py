"""Schema migrations: old model files keep loading, and `gitops migrate` rewrites them in place.

A file states its format with `schema_version` (absent means 1, the first). When a schema changes
in a breaking way, `SCHEMA_VERSION` goes up and a migration from the previous version is registered
here; the loader applies migrations in memory (so a config restored from an old release still
loads and hashes the same), and `gitops migrate` rewrites the files with ruamel.yaml so comments and
layout survive. `schema_version` itself is never part of a fingerprint.
"""

from __future__ import annotations

import io
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from gitops.config import schema
from gitops.errors import ConfigError
from gitops.records import record
from gitops.repo.tree import FsTree

Migration = Callable[[MutableMapping], None]  # edits one file's top-level mapping in place


@record(frozen=True)
class Step:
    """One schema migration: what it changes (`description`) and the function that edits a file's mapping."""

    description: str
    apply: Migration


# kind -> from_version -> the step that produces from_version + 1. Empty while every schema is at v1.
MIGRATIONS: dict[str, dict[int, Step]] = {kind: {} for kind in schema.KINDS}


def current_version() -> int:
    """The schema version this gitops writes and reads (`schema.SCHEMA_VERSION`)."""
    return schema.SCHEMA_VERSION


def file_version(data: Any) -> int:
    """A config file's `schema_version` (1 when absent or not an integer)."""
    version = data.get("schema_version", 1) if isinstance(data, dict) else 1
    return version if isinstance(version, int) and not isinstance(version, bool) else 1


def rename_key(doc: MutableMapping, old: str, new: str) -> None:
    """Rename a key in place, keeping its position and its comment (ruamel maps) — for migrations."""
    if old not in doc:
        return
    keys = list(doc)
    position = keys.index(old)
    comments = getattr(getattr(doc, "ca", None), "items", None)
    comment = comments.pop(old, None) if comments is not None else None
    value = doc.pop(old)
    if hasattr(doc, "insert"):
        doc.insert(position, new, value)
        if comment is not None:
            comments[new] = comment
    else:
        items = list(doc.items())
        items.insert(position, (new, value))
        doc.clear()
        doc.update(items)


def _unchanged(doc: MutableMapping) -> None:
    return None


def pending(kind: str, version: int) -> list[Step]:
    """Steps that bring a `kind` file from `version` to the current one."""
    steps = []
    for v in range(version, current_version()):
        # A version in which this kind's format did not change needs no step of its own.
        steps.append(MIGRATIONS.get(kind, {}).get(v) or Step(f"schema_version {v + 1} (no change to {kind}.yaml)", _unchanged))
    return steps


def upgrade(kind: str, data: dict) -> tuple[dict, list[str]]:
    """An upgraded copy of a plain document and the descriptions of the steps applied."""
    version = file_version(data)
    steps = pending(kind, version) if version < current_version() else []
    if not steps:
        return data, []
    import copy

    upgraded = copy.deepcopy(data)
    for step in steps:
        step.apply(upgraded)
    upgraded["schema_version"] = current_version()
    return upgraded, [s.description for s in steps]


def migrate_file(path: Path, kind: str, *, write: bool = True) -> list[str]:
    """Rewrite one file to the current schema, keeping comments; returns the steps applied."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    text = path.read_text(encoding="utf-8")
    data = yaml.load(text)
    if not isinstance(data, MutableMapping):
        return []
    version = file_version(dict(data))
    if version >= current_version():
        return []
    steps = pending(kind, version)
    for step in steps:
        step.apply(data)
    data["schema_version"] = current_version()
    if write:
        buffer = io.StringIO()
        yaml.dump(data, buffer)
        from gitops.scratch import write_text_atomic

        write_text_atomic(path, buffer.getvalue())
    return [s.description for s in steps]


def migrate_tree(root: Path, names: list[str], *, write: bool = True) -> dict[str, list[str]]:
    """Migrate every file of the named models; {relative path: steps} for files that changed."""
    changed: dict[str, list[str]] = {}
    for name in names:
        for kind in schema.KINDS:
            path = root / "models" / name / f"{kind}.yaml"
            refused = FsTree(root).refused(f"models/{name}/{kind}.yaml")
            if refused is not None:  # never rewrite through a link (it may point outside the repository)
                raise ConfigError([refused])
            if path.is_file():
                steps = migrate_file(path, kind, write=write)
                if steps:
                    changed[str(path.relative_to(root))] = steps
    return changed
