"""The run folder `gitops train` writes (DESIGN.md, "Run folder"), and reading it back.

```
runs/<model>/<training-fingerprint, first 12 hex>/
  config.resolved.yaml   manifest.json   history.jsonl   metrics.json   preprocessing.json   checkpoints/
```
JSON files are written atomically (temporary file, then rename), so a reader never sees half a file and
a killed run leaves the previous version. A run is finished when its manifest has `finished_at`.
This module imports no jax: reports and releases read run folders cheaply.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.resolved.yaml"
MANIFEST_FILE = "manifest.json"
HISTORY_FILE = "history.jsonl"
METRICS_FILE = "metrics.json"
PREPROCESSING_FILE = "preprocessing.json"
CHECKPOINTS_DIR = "checkpoints"
RUN_CACHE_ENV = "GITOPS_RUN_CACHE"


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, flushed, then renamed over `path`."""
    write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def run_path(out_dir: Path, model: str, training_fingerprint: str) -> Path:
    return Path(out_dir) / model / training_fingerprint[:12]


class RunFolder:
    """A run folder on disk. Cheap to create; every property reads the files when asked.

    `writer=False` makes the writing methods no-ops: in multi-host training only process 0 writes.
    """

    def __init__(self, path: str | os.PathLike, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def preprocessing_path(self) -> Path:
        return self.path / PREPROCESSING_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    @property
    def manifest(self) -> dict:
        return read_json(self.manifest_path)

    @property
    def metrics(self) -> dict[str, float]:
        return read_json(self.metrics_path) if self.metrics_path.is_file() else {}

    @property
    def preprocessing(self) -> dict:
        return read_json(self.preprocessing_path)

    @property
    def is_finished(self) -> bool:
        try:
            return bool(self.manifest.get("finished_at"))
        except (OSError, ValueError):
            return False

    @property
    def checkpoint_step(self) -> int | None:
        return self.manifest.get("checkpoint_step")

    @property
    def checkpoint_path(self) -> Path | None:
        """`checkpoints/<step>` of the handed-on checkpoint (its `state` item restores with plain Orbax)."""
        step = self.checkpoint_step
        return None if step is None else self.checkpoints_dir / str(step)

    def history(self, split: str | None = None) -> list[dict]:
        """The logged records in order, optionally only one split ("train", "val")."""
        if not self.history_path.is_file():
            return []
        records = [json.loads(line) for line in self.history_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r for r in records if split is None or r.get("split") == split]

    # --- writing (used by gitops.train) ---
    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        if self.writer:
            write_json(self.manifest_path, dict(manifest))

    def write_metrics(self, metrics: Mapping[str, float]) -> None:
        if self.writer:
            write_json(self.metrics_path, dict(metrics))

    def record_trackers(self, outcomes: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge tracker outcomes into the manifest's `trackers` ({sink name: {status, ...}}).

        Written by `gitops.trackers` after a run finished; never part of any fingerprint.
        """
        if not self.writer or not outcomes:
            return
        manifest = self.manifest
        manifest["trackers"] = {**(manifest.get("trackers") or {}), **{k: dict(v) for k, v in outcomes.items()}}
        write_json(self.manifest_path, manifest)

    def clear_history(self) -> None:
        if self.writer:
            write_text(self.history_path, "")

    def append_history(self, records: Iterable[Mapping[str, Any]]) -> None:
        if not self.writer:
            return
        with self.history_path.open("a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(dict(record), allow_nan=True) + "\n")

    def truncate_history(self, after_step: int) -> None:
        """Drop records past `after_step` (a resumed run replays those steps)."""
        if not self.writer:
            return
        kept = [r for r in self.history() if r.get("step", 0) <= after_step]
        write_text(self.history_path, "".join(json.dumps(r) + "\n" for r in kept))


def find_run(out_dir: Path, cfg: Any) -> RunFolder | None:
    """The finished run of this config (same training fingerprint) under `out_dir`, if any."""
    run = RunFolder(run_path(out_dir, cfg.name, cfg.training_fingerprint))
    return run if run.is_finished else None


def cache_dir() -> Path | None:
    value = os.environ.get(RUN_CACHE_ENV, "").strip()
    return Path(value) if value else None


def copy_tree_atomic(source: Path, target: Path) -> None:
    """Copy a folder to `target` via a temporary sibling and a rename; replaces an existing target."""
    from gitops import scratch

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch.sweep(target.parent, f".{target.name}.copy-")
    tmp = scratch.make(target.parent, f".{target.name}.copy-")
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` at `target` by renames: `target` is never a half-copied folder, only briefly absent."""
    from gitops import scratch

    scratch.sweep(target.parent, f".{target.name}.old-")
    if target.exists():
        trash = scratch.make(target.parent, f".{target.name}.old-")
        os.replace(target, trash / target.name)
        os.replace(new, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(new, target)
