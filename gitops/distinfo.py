"""Installed distributions' versions and entry points, read from `*.dist-info` folders on sys.path.

`importlib.metadata` answers the same questions but importing it pulls in `email`, `zipfile`,
`csv` and friends: about a quarter of the start-up of `gitops validate`, which needs only the
version of the package behind a bundled dataset (for the data fingerprint) and the plugin entry
points. Scanning the folders costs a millisecond or two.

The answers match importlib.metadata's for what pip installs (a test compares both over the whole
environment): the first distribution of a name on sys.path wins, its `Name`/`Version` come from its
METADATA (PKG-INFO for `.egg-info`), entry points from `entry_points.txt`. Where sys.path holds
something this scan cannot read (a zip file, an egg), every call falls back to importlib.metadata.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Any

_SUFFIXES = (".dist-info", ".egg-info")


def normalize(name: str) -> str:
    """PEP 503 name normalisation: `Scikit_Learn` -> `scikit-learn`."""
    return re.sub(r"[-_.]+", "-", name).lower()


class Dist:
    """An installed distribution: name, version, its .dist-info / .egg-info folder (a plain class:
    dataclasses cost start-up time)."""

    __slots__ = ("name", "version", "path")

    def __init__(self, name: str, version: str, path: str) -> None:
        self.name, self.version, self.path = name, version, path


class EntryPoint:
    """What `importlib.metadata.EntryPoint` offers that we use: name, value, group, dist, load()."""

    __slots__ = ("name", "value", "group", "dist")

    def __init__(self, name: str, value: str, group: str, dist: Dist) -> None:
        self.name, self.value, self.group, self.dist = name, value, group, dist

    def __repr__(self) -> str:
        return f"EntryPoint(name={self.name!r}, value={self.value!r}, group={self.group!r})"

    def load(self) -> Any:
        """Import the module named before `:` in `value` and return the attribute after it (dotted attributes
        followed; an `[extras]` suffix ignored), like `importlib.metadata.EntryPoint.load`. Raises ImportError or
        AttributeError when the target does not exist.
        """
        import importlib

        module_name, _, attribute = self.value.partition(":")
        obj: Any = importlib.import_module(module_name.strip())
        for part in attribute.split("[", 1)[0].strip().split(".") if attribute else []:
            obj = getattr(obj, part)
        return obj


def _header(folder: str) -> tuple[str | None, str | None]:
    """(Name, Version) from METADATA / PKG-INFO headers (the lines before the first blank one)."""
    for file in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(folder, file), encoding="utf-8", errors="replace") as fh:
                name = version = None
                for line in fh:
                    if not line.strip():
                        break
                    if line.startswith("Name:"):
                        name = line[5:].strip()
                    elif line.startswith("Version:"):
                        version = line[8:].strip()
                    if name and version:
                        break
                return name, version
        except OSError:
            continue
    return None, None


def _index() -> dict[str, str] | None:
    """normalized dist name -> its folder, first on sys.path wins; None when sys.path can't be scanned.

    Cached per sys.path and per modification time of its folders, so a distribution installed (or a
    folder added to sys.path) while the process runs is seen, as with importlib.metadata.
    """
    key = []
    for entry in sys.path:
        try:
            key.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            key.append((entry, None))
    return _scan(tuple(key))


@functools.lru_cache(maxsize=8)
def _scan(key: tuple) -> dict[str, str] | None:
    found: dict[str, str] = {}
    for entry, _mtime in key:
        base = entry or "."
        if os.path.isfile(base):
            return None  # a zip file or egg on sys.path: leave it to importlib.metadata
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for item in names:
            if item.endswith(_SUFFIXES):
                stem = item[: -len(".dist-info")] if item.endswith(".dist-info") else item[: -len(".egg-info")]
                key = normalize(stem.split("-", 1)[0] if item.endswith(".dist-info") else stem.split("-", 1)[0])
                found.setdefault(key, os.path.join(base, item))
    return found


def version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    index = _index()
    if index is None:
        import importlib.metadata

        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None
    folder = index.get(normalize(name))
    return _header(folder)[1] if folder else None


def _parse_entry_points(text: str) -> dict[str, list[tuple[str, str]]]:
    groups: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1].strip(), [])
        elif current is not None and "=" in line:
            key, value = line.split("=", 1)
            current.append((key.strip(), value.strip()))
    return groups


def entry_points(group: str) -> list[Any]:
    """The entry points of `group` over all installed distributions (one per distribution name)."""
    index = _index()
    if index is None:
        import importlib.metadata

        return list(importlib.metadata.entry_points(group=group))
    found: list[Any] = []
    for folder in index.values():
        try:
            with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            continue
        if f"[{group}]" not in text.replace(" ", ""):
            continue
        name, ver = _header(folder)
        dist = Dist(name or os.path.basename(folder).split("-", 1)[0], ver or "", folder)
        found += [EntryPoint(n, v, group, dist) for n, v in _parse_entry_points(text).get(group, [])]
    return found


def refresh() -> None:
    """Forget every scan (the cache already notices changed folders; this is for tests)."""
    _scan.cache_clear()
