"""The run folder `gitops train` writes (DESIGN.md, "Run folder"), and reading it back.

```
runs/<model>/<training-fingerprint, first 12 hex>/
  config.resolved.yaml   manifest.json   history.jsonl   metrics.json   preprocessing.json   checkpoints/
```
JSON files are written atomically (temporary file, then rename), so a reader never sees half a file and
a killed run leaves the previous version.

This module owns the run folder: its file names, writing it (`RunFolder`, used by `gitops.learn.train`),
reading it back as data (`read_run` -> `RunInfo`, used by release, report, trackers, sweeps), the one
rule for "finished" (`is_finished`), finding a run by training fingerprint (`find_run`: `runs/` and
the run cache) and the run cache itself (`cache_dir`, `$GITOPS_RUN_CACHE`). It imports no jax:
reports and releases read run folders cheaply.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from gitops import jsonio, scratch
from gitops.errors import GitopsError, UsageError
from gitops.records import record

CONFIG_FILE = "config.resolved.yaml"
MANIFEST_FILE = "manifest.json"
HISTORY_FILE = "history.jsonl"
METRICS_FILE = "metrics.json"
PREPROCESSING_FILE = "preprocessing.json"
SPREAD_FILE = "metrics_spread.json"  # train.repeats > 1 only: per-seed values, mean, std, min, max
CHECKPOINTS_DIR = "checkpoints"
RUN_CACHE_ENV = "GITOPS_RUN_CACHE"
RUNS_DIR = "runs"  # a repository's run folders: runs/<model>/<fp12>/


def is_finished(manifest: Any, metrics: Any) -> bool:
    """The one rule for a finished run: its manifest has `finished_at` and its metrics.json holds metrics.

    Training writes metrics.json first and the manifest's `finished_at` last (each atomically), so a
    run killed at any point is unfinished, and a folder with `finished_at` but no metrics (a copy
    that lost a file, a hand-made folder) is never released, reported or reused as a cache hit.
    """
    return isinstance(manifest, dict) and bool(manifest.get("finished_at")) and bool(metrics)


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, flushed, then renamed over `path`."""
    write_text(path, jsonio.dumps(value, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write a run file atomically and durably (`gitops.scratch.write_text_atomic`, fsynced)."""
    scratch.write_text_atomic(path, text)


def read_json(path: Path) -> Any:
    """A JSON file's value (strict JSON; raises OSError or ValueError)."""
    return jsonio.loads(Path(path).read_text(encoding="utf-8"))


def run_path(out_dir: Path, model: str, training_fingerprint: str) -> Path:
    """`<out_dir>/<model>/<first 12 hex of the training fingerprint>`: where a run of that config lives."""
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
        """`config.resolved.yaml`: the fully resolved config the run trained with (its fingerprint's source)."""
        return self.path / CONFIG_FILE

    @property
    def manifest_path(self) -> Path:
        """`manifest.json`: the run's record (training fingerprint, git commit, device...); `finished_at` once done."""
        return self.path / MANIFEST_FILE

    @property
    def metrics_path(self) -> Path:
        """`metrics.json`: the run's metrics as {"split/name": value}, e.g. {"test/accuracy": 0.97}."""
        return self.path / METRICS_FILE

    @property
    def history_path(self) -> Path:
        """`history.jsonl`: one JSON record per line, appended during training."""
        return self.path / HISTORY_FILE

    @property
    def preprocessing_path(self) -> Path:
        """`preprocessing.json`: the model's input preprocessing, which serving reads (the input signature)."""
        return self.path / PREPROCESSING_FILE

    @property
    def checkpoints_dir(self) -> Path:
        """`checkpoints/`: the Orbax checkpoint folders of the run."""
        return self.path / CHECKPOINTS_DIR

    @property
    def exists(self) -> bool:
        """Whether the folder has a manifest.json (a run was started here)."""
        return self.manifest_path.is_file()

    @property
    def manifest(self) -> dict:
        """manifest.json, read now (raises OSError or ValueError while missing or unreadable)."""
        return read_json(self.manifest_path)

    @property
    def metrics(self) -> dict[str, float]:
        """metrics.json, read now ({} while it does not exist)."""
        return read_json(self.metrics_path) if self.metrics_path.is_file() else {}

    @property
    def preprocessing(self) -> dict:
        """preprocessing.json, read now (raises OSError or ValueError while missing or unreadable)."""
        return read_json(self.preprocessing_path)

    @property
    def is_finished(self) -> bool:
        """`is_finished` of this folder's manifest and metrics (False while either is unreadable)."""
        try:
            return is_finished(self.manifest, self.metrics)
        except (OSError, ValueError):
            return False

    def read(self) -> RunInfo:
        """The folder's files read once, as data (`read_run`)."""
        return read_run(self.path)

    @property
    def checkpoint_step(self) -> int | None:
        """The handed-on checkpoint's step (the manifest's `checkpoint_step`; None until the run finished)."""
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
        records = [jsonio.loads(line) for line in self.history_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r for r in records if split is None or r.get("split") == split]

    # --- writing (used by gitops.learn.train) ---
    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        """Replace manifest.json atomically (no-op unless this process writes)."""
        if self.writer:
            write_json(self.manifest_path, dict(manifest))

    def write_metrics(self, metrics: Mapping[str, float]) -> None:
        """Replace metrics.json atomically (no-op unless this process writes)."""
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
        """Empty history.jsonl (a run starting from step 0)."""
        if self.writer:
            write_text(self.history_path, "")

    def append_history(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append records to history.jsonl, one JSON object a line."""
        if not self.writer:
            return
        with self.history_path.open("a", encoding="utf-8") as fh:
            for record in records:
                fh.write(jsonio.dumps(dict(record)) + "\n")

    def truncate_history(self, after_step: int) -> None:
        """Drop records past `after_step` (a resumed run replays those steps)."""
        if not self.writer:
            return
        kept = [r for r in self.history() if r.get("step", 0) <= after_step]
        write_text(self.history_path, "".join(jsonio.dumps(r) + "\n" for r in kept))


def read_spread(run_dir: str | os.PathLike) -> dict | None:
    """The metrics_spread.json of a run folder (a repeated run's per-seed metrics), or None (a single-seed
    run, or a file that is not a JSON object)."""
    path = Path(run_dir) / SPREAD_FILE
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def cache_dir() -> Path | None:
    """The shared run cache (`$GITOPS_RUN_CACHE`, blank: none): the one place that reads the variable."""
    value = os.environ.get(RUN_CACHE_ENV, "").strip()
    return Path(value) if value else None


def run_roots(root: Path) -> list[Path]:
    """Where finished runs are looked for, in order: the repository's `runs/`, then the run cache."""
    cache = cache_dir()
    return [Path(root) / RUNS_DIR, *([cache] if cache is not None else [])]


# --- reading a run folder back as data --------------------------------------------------------------


@record
class RunInfo:
    """A run folder's files, read once as data (no jax): what release, report, trackers and sweeps use."""

    path: Path
    config: dict
    manifest: dict
    metrics: dict
    history: list[dict] = field(default_factory=list)

    @property
    def model(self) -> str:
        """The manifest's model name, else the parent folder's name (`runs/<model>/<fp12>`)."""
        return self.manifest.get("model") or self.path.parent.name

    @property
    def training_fingerprint(self) -> str:
        """The manifest's training fingerprint (64 hex), "" when it records none."""
        return text_field(self.manifest, "training_fingerprint")

    @property
    def finished(self) -> bool:
        """`is_finished`: `finished_at` in the manifest and metrics in metrics.json."""
        return is_finished(self.manifest, self.metrics)


def text_field(manifest: dict, key: str, absent: str = "") -> str:
    """A manifest's optional text field (`git_commit`, fingerprints...) as text; `absent` when null or missing.

    Manifests written outside git, before a repository's first commit, or by older versions carry
    `null` for what they could not record: every formatter reads optional fields through here.
    """
    value = manifest.get(key) if isinstance(manifest, dict) else None
    return value if isinstance(value, str) and value else absent


def int_field(manifest: dict, key: str) -> int | None:
    """A manifest's optional integer field (`steps`, `checkpoint_step`, `param_count`); None when absent."""
    value = manifest.get(key) if isinstance(manifest, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def device_text(manifest: dict) -> str:
    """`<device_kind> x<device_count>` ("unknown x1" for what the manifest lacks)."""
    count = int_field(manifest, "device_count")
    return f"{text_field(manifest, 'device_kind', 'unknown')} x{count or 1}"


def commit_text(manifest: dict) -> str:
    """Where a run was trained, for people: the commit (and whether the tree had uncommitted changes)."""
    commit = text_field(manifest, "git_commit")
    if not commit:
        return "not recorded (trained outside git or before the first commit)"
    return commit + (" (with uncommitted changes)" if manifest.get("git_dirty") is True else "")


def read_run(path: Path) -> RunInfo:
    """A run folder's manifest, metrics, resolved config and history (unreadable history lines skipped).

    Raises:
        UsageError: `path` is not a folder, or has no manifest.json.
        GitopsError: manifest.json or metrics.json is not JSON; config.resolved.yaml is not YAML.
    """
    from gitops.config.yamlio import load_yaml_text

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: no such run folder")
    manifest = _read_json(path / MANIFEST_FILE)
    if manifest is None:
        raise UsageError(f"{path}: not a run folder (no {MANIFEST_FILE})")
    metrics = _read_json(path / METRICS_FILE) or {}
    cfg: dict = {}
    resolved = path / CONFIG_FILE
    if resolved.is_file():
        cfg = load_yaml_text(resolved.read_bytes(), str(resolved), max_bytes=10_000_000).data or {}
    history = []
    hist = path / HISTORY_FILE
    if hist.is_file():
        for line in hist.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    history.append(jsonio.loads(line))
                except json.JSONDecodeError:
                    continue
    return RunInfo(path, cfg, manifest, metrics, history)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return jsonio.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GitopsError(f"{path}: unreadable JSON ({exc})") from None


def recompute_fingerprint(info: RunInfo) -> str | None:
    """The training fingerprint of a run, recomputed from its own `config.resolved.yaml` (None: unreadable).

    A run folder's manifest can say anything (a forged cache entry, a copy of another run): what the
    run was trained from is its resolved config, so reuse is decided by hashing that.
    """
    if not info.config:
        return None
    from gitops import config

    try:
        cfg = config.build(info.model, info.config)
    except (GitopsError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return cfg.training_fingerprint


def trusted_run(folder: Path, fingerprint: str, *, warn: Callable[[str], None] | None = None) -> RunInfo | None:
    """`folder` read, when it is a finished run of `fingerprint` (full, or a prefix such as the 12-hex
    folder name) by its manifest AND by its own config.resolved.yaml; else None.

    A folder whose manifest claims the fingerprint but whose config hashes to another one is skipped
    with a line to `warn` (stderr by default): a forged cache entry or artifact, a copy of another run.
    """
    warn = warn or (lambda text: sys.stderr.write(text + "\n"))
    try:
        info = read_run(folder)
    except GitopsError:  # UsageError included: no folder, no manifest
        return None
    if not (info.finished and info.training_fingerprint.startswith(fingerprint)):
        return None
    actual = recompute_fingerprint(info) or ""
    if not actual.startswith(fingerprint):
        warn(f"warning: {folder}: its config.resolved.yaml hashes to training fingerprint "
             f"{actual[:12] or 'none (unreadable)'}, not {fingerprint[:12]}; skipping it")
        return None
    return info


def find_run(root: Path, model: str, training_fingerprint: str, *,
             warn: Callable[[str], None] | None = None) -> Path | None:
    """A finished run with this fingerprint: `runs/<model>/<fp12>/` or `$GITOPS_RUN_CACHE/<model>/<fp12>/`.

    Each candidate is checked by `trusted_run` (its manifest and its recomputed fingerprint must be
    exactly `training_fingerprint`); the first that passes is returned.
    """
    if not training_fingerprint:
        return None
    for base in run_roots(root):
        folder = run_path(base, model, training_fingerprint)
        info = trusted_run(folder, training_fingerprint, warn=warn)
        if info is not None and info.training_fingerprint == training_fingerprint:
            return folder
    return None


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
