"""Everything the site shows, read from one backend into plain dataclasses: `collect_registry`.

Tags carry what a table row needs (version, date, author, commit, bump reason, metrics,
fingerprints, stages): one `list_tags()` call answers all models. The rest of a version's story
(training curves, resolved config, package versions, device) lives in its release archive; we
download it once into a cache, check its SHA-256 against the tag and SHA256SUMS, and read only four
small members from the tar stream, by name, never writing a member path to disk.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops import jsonio
from gitops.backends.base import Backend
from gitops.errors import GitopsError
from gitops.registry import archive as archive_format
from gitops.registry import runs, tags, versions
from gitops.registry.pull import fetch_archive

# Members we read from a release archive, stored in the cache under these same names.
WANTED = ("manifest.json", "metrics.json", "history.jsonl", "config.resolved.yaml")
MAX_MEMBER_BYTES = 32 * 1024**2
MAX_MEMBERS = 200_000
CACHE_DIR = Path(".gitops") / "cache" / "site"
_COMPLETE = ".complete"
_PR_RES = (re.compile(r"Merge pull request #(\d+)"), re.compile(r"\(#(\d+)\)\s*$", re.M))


@dataclass
class VersionData:
    """One released version: tag facts plus what its archive holds (empty when unavailable)."""

    model: str
    version: str  # "v1.2.0"
    tag: str
    date: str  # ISO 8601, from the tag
    author: str  # "Name <email>", the tagger
    commit: str
    active: bool = True  # False once deregistered
    stages: list[str] = field(default_factory=list)
    bump: str | None = None
    reason: str = ""
    headline_metric: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training_fingerprint: str | None = None
    release_fingerprint: str | None = None
    data_fingerprint: str | None = None
    trained_at_commit: str | None = None
    reproduced_at_commit: str | None = None  # a run trained from uncommitted files: the commit that reproduces it
    pr: int | None = None
    packages: dict[str, str] = field(default_factory=dict)
    device: str | None = None  # "cpu x1"
    param_count: int | None = None
    steps: int | None = None
    checkpoint_step: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)  # history.jsonl rows
    note: str | None = None  # why archive details are missing, if they are
    parent: dict[str, Any] | None = None  # train.start_from record of the tag message (lineage across models)

    @property
    def semver(self) -> tags.SemVer:
        """The version as a `tags.SemVer` (for ordering and the pre-release check); UsageError if malformed."""
        return tags.SemVer.parse(self.version)

    @property
    def ref(self) -> str:
        """The version's reference, `MODEL@vX.Y.Z`, as `gitops pull` and `gitops serve` accept it."""
        return f"{self.model}@{self.version}"


@dataclass
class StageEvent:
    """One registry event of a model: a release, a stage assignment or removal, a deprecation."""

    date: str
    action: str  # register | deregister | assign | unassign | deprecate
    tag: str
    author: str
    version: str | None = None
    stage: str | None = None


@dataclass
class ModelData:
    """One model's page: its versions (oldest first), stages (stage -> version) and registry events."""

    name: str
    versions: list[VersionData] = field(default_factory=list)  # oldest first (SemVer order)
    stages: dict[str, str] = field(default_factory=dict)  # stage -> version
    events: list[StageEvent] = field(default_factory=list)  # oldest first
    deprecated: bool = False
    description: str = ""

    @property
    def latest(self) -> VersionData | None:
        """The highest active release; a pre-release never is (exact references only)."""
        active = [v for v in self.versions if v.active and not v.semver.is_prerelease]
        return active[-1] if active else None

    @property
    def headline_metric(self) -> str | None:
        """The metric the site shows first: the newest version's declared headline metric, else the first
        `test/` metric by name, else the first metric; None when no version has metrics.
        """
        for v in reversed(self.versions):
            if v.headline_metric:
                return v.headline_metric
        names = sorted({k for v in self.versions for k in v.metrics})
        tests = [n for n in names if n.startswith("test/")]
        return (tests or names or [None])[0]

    @property
    def metric_names(self) -> list[str]:
        """Names of the numeric metrics any version has, sorted (the charts' choices)."""
        return sorted({k for v in self.versions for k, x in v.metrics.items() if _is_number(x)})

    @property
    def last_change(self) -> StageEvent | None:
        """The newest registry event of the model, or None when it has none."""
        return self.events[-1] if self.events else None


@dataclass
class RegistryData:
    """Everything the site shows: models sorted by name, the backend's name, and `as_of`, the newest event's
    date (ISO 8601; "" for an empty registry).
    """

    models: list[ModelData]  # sorted by name
    backend: str
    as_of: str  # date of the newest event ("" for an empty registry)


# --- collecting ----------------------------------------------------------------------------------


def collect_registry(root: Path, backend: Backend, cache: Path | None = None) -> RegistryData:
    """Read every model's versions, stages and events, with each version's archive details.

    Args:
        root: the repository root (for the cache folder and commit messages, when present).
        backend: where tags and release assets live.
        cache: folder for extracted archive members (default `.gitops/cache/site/` under `root`).

    Returns:
        RegistryData; a version whose archive is missing or fails its checksum keeps its tag facts
        and says why in `note` (one bad release never stops the site).
    """
    root = Path(root)
    cache = Path(cache) if cache is not None else root / CACHE_DIR
    states = tags.registry_state(backend.list_tags())
    models = []
    for name in sorted(states):
        state = states[name]
        model = ModelData(name, stages=dict(sorted(state.stages.items())), deprecated=state.deprecated)
        for vs in sorted(state.versions.values(), key=lambda v: v.semver):
            model.versions.append(_version(root, backend, name, vs, cache))
        model.events = [StageEvent(e.date, e.action.value, e.tag, e.tagger, e.version, e.stage) for e in state.events]
        for v in reversed(model.versions):
            description = (v.config.get("release") or {}).get("description")
            if isinstance(description, str) and description.strip():
                model.description = description.strip()
                break
        if model.versions or model.events:
            models.append(model)
    # the newest instant, not the largest text: tagger dates carry offsets
    as_of = max((e.date for m in models for e in m.events), key=lambda d: tags.instant(d) or 0.0, default="")
    return RegistryData(models, backend.name, as_of)


def _version(root: Path, backend: Backend, model: str, vs: tags.VersionState, cache: Path) -> VersionData:
    meta = versions.release_metadata(vs.message)
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    reason = meta.get("reason") or _first_line(vs.message)
    v = VersionData(
        model=model, version=vs.version, tag=vs.tag, date=vs.date, author=vs.tagger, commit=vs.commit,
        active=vs.active, stages=sorted(vs.stages), bump=meta.get("bump"), reason=str(reason or ""),
        headline_metric=meta.get("headline_metric"), metrics=dict(metrics),
        training_fingerprint=meta.get("training_fingerprint"), release_fingerprint=meta.get("release_fingerprint"),
        data_fingerprint=meta.get("data_fingerprint"), trained_at_commit=meta.get("trained_at_commit"),
        reproduced_at_commit=meta.get("reproduced_at_commit"),
        pr=_int(meta.get("pr")) or _pr_from_commit(root, vs.commit),
        steps=_int(meta.get("steps")), checkpoint_step=_int(meta.get("checkpoint_step")),
        parent=meta.get("start_from") if isinstance(meta.get("start_from"), dict) else None,
    )
    try:
        files = release_files(backend, vs, meta, cache, root=root)
    except GitopsError as exc:
        v.note = exc.message
        return v
    _apply_files(v, files)
    return v


def _apply_files(v: VersionData, files: dict[str, bytes]) -> None:
    manifest = _json(files.get("manifest.json")) or {}
    if isinstance(manifest, dict):
        packages = manifest.get("packages")
        if isinstance(packages, dict):
            v.packages = {str(k): str(x) for k, x in sorted(packages.items()) if x is not None}
        if manifest.get("device_kind"):
            v.device = f"{manifest['device_kind']} x{manifest.get('device_count') or 1}"
        v.param_count = _int(manifest.get("param_count"))
        v.steps = v.steps or _int(manifest.get("steps_done") or manifest.get("steps"))
        v.checkpoint_step = v.checkpoint_step or _int(manifest.get("checkpoint_step"))
        v.trained_at_commit = v.trained_at_commit or runs.text_field(manifest, "git_commit") or None
        for key in ("training_fingerprint", "release_fingerprint", "data_fingerprint"):
            if not getattr(v, key) and manifest.get(key):
                setattr(v, key, manifest[key])
    metrics = _json(files.get("metrics.json"))
    if not v.metrics and isinstance(metrics, dict):
        v.metrics = metrics
    if "config.resolved.yaml" in files:
        from gitops.config.yamlio import load_yaml_text

        try:
            data = load_yaml_text(files["config.resolved.yaml"], f"{v.tag}:config.resolved.yaml",
                                  max_bytes=MAX_MEMBER_BYTES).data
            v.config = data if isinstance(data, dict) else {}
        except GitopsError as exc:
            v.note = f"config.resolved.yaml unreadable: {exc.message}"
    if "history.jsonl" in files:
        for line in files["history.jsonl"].decode("utf-8", "replace").splitlines():
            row = _json(line.encode())
            if isinstance(row, dict) and isinstance(row.get("step"), int | float):
                v.curve.append(row)


# --- release archives ------------------------------------------------------------------------------


def release_files(backend: Backend, vs: tags.VersionState, meta: dict, cache: Path,
                  root: Path | None = None) -> dict[str, bytes]:
    """The WANTED members of a version's archive, from the cache or downloaded and verified.

    `root` is the repository whose gitops.yaml names the artifact store (None: the one around the
    working folder).

    Raises:
        GitopsError: no archive, a checksum that differs, or an archive that cannot be read.
    """
    digest = meta.get("sha256") if isinstance(meta.get("sha256"), str) else None
    slot = cache / vs.tag.replace("@", "/") / (digest or "unverified") if digest else None
    if slot is not None and (slot / _COMPLETE).is_file():
        return {name: (slot / name).read_bytes() for name in WANTED if (slot / name).is_file()}
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        archive = fetch_archive(backend, vs, meta, Path(tmp), root)  # every checksum verified
        files = read_members(archive)
    if slot is not None:
        _store(slot, files)
    return files


def read_members(archive: Path) -> dict[str, bytes]:
    """WANTED members of a tar.gz, read from the stream into memory (nothing is extracted).

    A member counts at the archive's top level or one folder down (a run folder packed with its
    name); the shallower wins. Links, devices, absolute paths and `..` are skipped, not followed.
    """
    try:
        return archive_format.read_members(archive, WANTED, max_members=MAX_MEMBERS,
                                           max_member_bytes=MAX_MEMBER_BYTES, skip_folders=("config", "checkpoints"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise GitopsError(f"{archive.name}: unreadable archive ({exc})") from None


def _store(slot: Path, files: dict[str, bytes]) -> None:
    slot.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".slot-", dir=slot.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / _COMPLETE).write_text("", encoding="utf-8")
        if slot.exists():
            shutil.rmtree(slot)
        tmp.rename(slot)
    except OSError:
        pass  # a cache we cannot write only costs a download next time
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- config diffs ------------------------------------------------------------------------------------


def flatten_config(value: Any, prefix: str = "") -> dict[str, str]:
    """`{"train.optimizer.learning_rate": "0.003", ...}`: dotted keys, values as canonical JSON.

    Lists are leaves (they replace as a whole on merge). The page's diff script compares these
    strings; `config_diff` does the same here, so both always agree.
    """
    if isinstance(value, dict):
        if not value and prefix:
            return {prefix: "{}"}
        out: dict[str, str] = {}
        for key in sorted(value, key=str):
            out.update(flatten_config(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: jsonio.dumps(value, sort_keys=True, ensure_ascii=False)}


def config_diff(old: dict, new: dict) -> list[tuple[str, str | None, str | None]]:
    """(key, old value, new value) for every differing key; None where a side lacks the key."""
    a, b = flatten_config(old), flatten_config(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --- small helpers -----------------------------------------------------------------------------------


def _pr_from_commit(root: Path, commit: str) -> int | None:
    """The PR number a merge or squash commit's message names ("Merge pull request #12", "(#12)")."""
    if not commit or not (root / ".git").exists():
        return None
    try:
        proc = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%B", commit],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    for pattern in _PR_RES:
        m = pattern.search(proc.stdout)
        if m:
            return int(m.group(1))
    return None


def _json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return jsonio.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _first_line(text: str) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""
