"""The model registry read from tags: release metadata, refs, stages, history, garbage collection.

Everything a report, `history` or `gc` needs is in the annotated tags themselves (the release tag's
message carries fingerprints and metrics as a JSON block), so none of them downloads anything.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops import config, gitutil, jsonio, killpoints, tags
from gitops.backends.base import Backend, TagExistsError
from gitops.errors import GitopsError, UsageError

RELEASE_JSON_RE = re.compile(r"```json\n(?P<body>.*?)\n```", re.S)
RUNS_DIR = "runs"


# --- run folders -------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """A run folder's files, read as data (no jax)."""

    path: Path
    config: dict
    manifest: dict
    metrics: dict
    history: list[dict] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.manifest.get("model") or self.path.parent.name

    @property
    def training_fingerprint(self) -> str:
        return text_field(self.manifest, "training_fingerprint")

    @property
    def finished(self) -> bool:
        return bool(self.manifest.get("finished_at")) and bool(self.metrics)


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
    from gitops.yamlio import load_yaml_text

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: no such run folder")
    manifest = _read_json(path / "manifest.json")
    if manifest is None:
        raise UsageError(f"{path}: not a run folder (no manifest.json)")
    metrics = _read_json(path / "metrics.json") or {}
    cfg: dict = {}
    resolved = path / "config.resolved.yaml"
    if resolved.is_file():
        cfg = load_yaml_text(resolved.read_bytes(), str(resolved), max_bytes=10_000_000).data or {}
    history = []
    hist = path / "history.jsonl"
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
    try:
        cfg = config.build(info.model, info.config)
    except (GitopsError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return cfg.training_fingerprint


def find_run(root: Path, model: str, training_fingerprint: str, *, warn=None) -> Path | None:
    """A finished run with this fingerprint: `runs/<model>/<fp12>/` or `$GITOPS_RUN_CACHE/<model>/<fp12>/`.

    The fingerprint is recomputed from each candidate's own config.resolved.yaml; a candidate whose
    config hashes to another fingerprint is skipped, with a line to `warn` (stderr by default).
    """
    import os
    import sys

    warn = warn or (lambda text: sys.stderr.write(text + "\n"))
    fp12 = training_fingerprint[:12]
    candidates = [root / RUNS_DIR / model / fp12]
    cache = os.environ.get("GITOPS_RUN_CACHE")
    if cache:
        candidates.append(Path(cache) / model / fp12)
    for folder in candidates:
        try:
            info = read_run(folder)
        except (UsageError, GitopsError):
            continue
        if not (info.finished and info.training_fingerprint == training_fingerprint):
            continue
        actual = recompute_fingerprint(info)
        if actual != training_fingerprint:
            warn(f"warning: {folder}: its config.resolved.yaml hashes to training fingerprint "
                 f"{(actual or 'unreadable')[:12]}, not {fp12} as its manifest says; skipping it")
            continue
        return folder
    return None


# --- release tag messages ----------------------------------------------------------------------


def release_metadata(message: str) -> dict:
    """The JSON block of a release tag's message ({} for tags made by other tools)."""
    m = RELEASE_JSON_RE.search(message or "")
    if not m:
        return {}
    try:
        data = jsonio.loads(m.group("body"))  # bare NaN of old tags still reads
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def missing_assets(backend: Backend, tag: str, meta: dict) -> list[str]:
    """The assets a release tag's metadata promises that its release lacks ([] for tags gitops did not make)."""
    archive = meta.get("archive")
    if not isinstance(archive, str) or not meta.get("sha256"):
        return []
    parts = int(meta.get("parts") or 0)
    if meta.get("objects"):  # the archive lives in an artifact store; the release holds its objects list
        wanted = ["SHA256SUMS", f"{archive}.objects.json"]
    else:
        wanted = ["SHA256SUMS", *([f"{archive}.part{i:03d}" for i in range(parts)] if parts else [archive])]
    have = set(backend.list_assets(tag))
    return [name for name in wanted if name not in have]


def headline(metrics: dict, name: str | None) -> str:
    if name and name in metrics:
        return f"{name} {format_number(metrics[name])}"
    return ", ".join(f"{k} {format_number(v)}" for k, v in sorted(metrics.items())[:2])


def format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


# --- refs ---------------------------------------------------------------------------------------


def state(backend: Backend, model: str) -> tags.ModelState:
    return tags.model_state(backend.list_tags(), model)


def resolve(backend: Backend, ref: str | tags.Ref) -> tuple[tags.ModelState, tags.VersionState]:
    """`MODEL`, `MODEL@v1.2.0`, `MODEL@1.2.0` or `MODEL@STAGE` -> the version it names."""
    parsed = tags.parse_ref(ref) if isinstance(ref, str) else ref
    all_tags = backend.list_tags()
    st = tags.model_state(all_tags, parsed.model)
    if not st.events:
        hint = unknown_model_hint(all_tags, parsed.model)
        if hint:
            raise UsageError(f"{parsed.model} has no releases{hint}")
    return st, tags.resolve_ref(st, parsed)


def unknown_model_hint(all_tags: list, model: str) -> str:
    """" (did you mean 'x'?)" when another model with releases has a close name, else ""."""
    from gitops.config import did_you_mean

    return did_you_mean(model, names=tags.registry_state(all_tags))


# --- stages and lifecycle ------------------------------------------------------------------------


def _create_counted(backend: Backend, make_name, commit: str, message: str, model: str) -> str:
    """Create a GTO tag with a per-model counter; a lost race takes the next number."""
    for _ in range(10):
        name = make_name(tags.next_counter(backend.list_tags(), model))
        try:
            backend.create_tag(name, commit, message)
            return name
        except TagExistsError:
            continue
    raise GitopsError(f"could not create a tag for {model}: the counter kept being taken")


def promote(backend: Backend, ref: str, stage: str, note: str = "", *, root: Path | None = None) -> str:
    """Assign `stage` to a version: tag `<model>#<stage>#<N>` on the version's commit.

    With `root`, the stage must be one `<root>/.gto` allows (as `gto assign` checks).
    `note` is appended to the tag message (a protected stage's `promotion:`/`pull-request:` lines).
    """
    _check_stage(stage, root)
    st, version = resolve(backend, ref)
    if st.stages.get(stage) == version.version:  # e.g. a rerun of a promote killed after its tag: done
        assigned = [e.tag for e in st.events if e.stage == stage and e.version == version.version]
        return assigned[-1] if assigned else tags.assign_tag(st.model, stage, 0)
    missing = missing_assets(backend, version.tag, release_metadata(version.message))
    if missing:
        raise GitopsError(f"{version.tag} has no {', '.join(missing)}; repair it first "
                          f"(`gitops release {st.model} --repair {version.version}`)")
    message = f"Promote {st.model} {version.version} to {stage}\n\nversion: {version.version}\n{note}"
    killpoints.reached("promote.before_tag")
    tag = _create_counted(backend, lambda n: tags.assign_tag(st.model, stage, n), version.commit, message, st.model)
    killpoints.reached("promote.tagged")
    return tag


def demote(backend: Backend, model: str, stage: str, *, root: Path | None = None) -> str:
    """Unassign `stage` from the version holding it: `<model>#<stage>!#<N>` on that version's commit.

    With `root`, the stage must be one `<root>/.gto` allows (as `gto unassign` checks).
    """
    _check_stage(stage, root)
    st = state(backend, model)
    holder = st.stages.get(stage)
    if holder is None:
        hint = unknown_model_hint(backend.list_tags(), model) if not st.events else ""
        raise UsageError(f"no version of {model} is in stage {stage!r}{hint}")
    version = st.versions[holder]
    message = f"Demote {model} {holder} from {stage}\n\nversion: {holder}\n"
    return _create_counted(backend, lambda n: tags.unassign_tag(model, stage, n), version.commit, message, model)


def _check_stage(stage: str, root: Path | None) -> None:
    tags.check_stage(stage)
    if root is not None:
        from gitops import gto_config

        gto_config.load(root).check_stage(stage)


def deprecate(backend: Backend, ref: str, root: Path) -> str:
    """`MODEL@VERSION`: deregister that version (`<model>@vX.Y.Z!#N`); `MODEL`: deprecate the model."""
    parsed = tags.parse_ref(ref)
    if parsed.stage:
        raise UsageError("deprecate takes MODEL@VERSION (deregister one version) or MODEL (the whole model)")
    st = state(backend, parsed.model)
    if parsed.version:
        version = tags.resolve_ref(st, parsed)
        if not version.active:
            raise UsageError(f"{parsed.model}@{version.version} is already deregistered")
        message = f"Deregister {parsed.model} {version.version}\n"
        return _create_counted(backend, lambda n: tags.deregister_tag(parsed.model, version.version, n),
                               version.commit, message, parsed.model)
    if not st.events:
        raise UsageError(f"{parsed.model} has no registry tags{unknown_model_hint(backend.list_tags(), parsed.model)}")
    if st.deprecated:
        raise UsageError(f"{parsed.model} is already deprecated")
    message = f"Deprecate {parsed.model}\n"
    return _create_counted(backend, lambda n: tags.deprecate_tag(parsed.model, n),
                           gitutil.head_commit(root), message, parsed.model)


# --- history -------------------------------------------------------------------------------------


def history(backend: Backend, model: str) -> dict:
    """Versions and stage moves of `model`, from tags only."""
    all_tags = backend.list_tags()
    st = tags.model_state(all_tags, model)
    if not st.events:
        raise UsageError(f"{model} has no releases or stage tags{unknown_model_hint(all_tags, model)}")
    versions = []
    for v in sorted(st.versions.values(), key=lambda v: v.semver):
        meta = release_metadata(v.message)
        metrics = meta.get("metrics", {})
        versions.append({
            "version": v.version,
            "date": v.date,
            "author": v.tagger,
            "commit": v.commit,
            "tag": v.tag,
            "active": v.active,
            "prerelease": v.prerelease,
            "stages": sorted(v.stages),
            "bump": meta.get("bump"),
            "reason": meta.get("reason") or _first_line(v.message),
            "headline_metric": meta.get("headline_metric"),
            "headline": {k: metrics[k] for k in [meta.get("headline_metric")] if k in metrics},
            "metrics": metrics,
            "training_fingerprint": meta.get("training_fingerprint"),
            "release_fingerprint": meta.get("release_fingerprint"),
            "start_from": meta.get("start_from"),
        })
    events = [
        {"event": e.action.value, "tag": e.tag, "date": e.date, "author": e.tagger, "commit": e.commit,
         "version": e.version, "stage": e.stage}
        for e in st.events
    ]
    return {"model": model, "deprecated": st.deprecated, "stages": dict(sorted(st.stages.items())),
            "versions": versions, "events": events}


def _who(tagger: str) -> str:
    return tagger.split(" <")[0] if tagger else "unknown"


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def columns(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Rows of cells as aligned text: each column as wide as its widest cell, two spaces apart."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))).rstrip() for row in rows]


def format_history(doc: dict) -> str:
    """`gitops history` as text: aligned columns under a header, so no value runs into the next."""
    lines = [f"{doc['model']}" + ("  (deprecated)" if doc["deprecated"] else "")]
    if doc["stages"]:
        lines.append("stages: " + ", ".join(f"{s} -> {v}" for s, v in doc["stages"].items()))
    lines.append("")
    lines.append("versions:")
    rows = [["VERSION", "DATE (UTC)", "COMMIT", "HEADLINE", "BUMP", "REASON", "AUTHOR", "STATUS"]]
    for v in reversed(doc["versions"]):
        head = ", ".join(f"{k} {format_number(x)}" for k, x in v["headline"].items()) or "-"
        flags = []
        if not v["active"]:
            flags.append("deregistered")
        if v.get("prerelease"):
            flags.append("pre-release")
        flags += [f"[{s}]" for s in v["stages"]]
        rows.append([v["version"], (v["date"] or "")[:19].replace("T", " "), (v["commit"] or "")[:10], head,
                     v["bump"] or "-", v["reason"] or "-", _who(v["author"]), " ".join(flags)])
    lines += columns(rows)
    parents = [v for v in reversed(doc["versions"]) if v.get("start_from")]
    if parents:
        from gitops.lineage import describe_parent

        lines.append("")
        lines.append("parents (train.start_from):")
        lines += columns([["VERSION", "PARENT"], *([v["version"], describe_parent(v["start_from"])] for v in parents)])
    moves = [e for e in doc["events"] if e["event"] != "register"]
    if moves:
        lines.append("")
        lines.append("stage moves and lifecycle (the #N in a tag counts every registry event of the model):")
        rows = [["DATE (UTC)", "EVENT", "TAG", "AUTHOR"]]
        unapproved: list[str | None] = []
        for e in reversed(moves):
            if e["event"] == "assign":
                what = f"{e['stage']} <- {e['version']}"
            elif e["event"] == "unassign":
                what = f"{e['stage']} removed from {e['version']}"
            elif e["event"] == "deregister":
                what = f"deregistered {e['version']}"
            elif e["event"] == "deprecate":
                what = "model deprecated"
            else:
                what = e["event"]
            rows.append([(e["date"] or "")[:19].replace("T", " "), what, e["tag"], _who(e["author"])])
            unapproved.append(e.get("unapproved"))
        for line, why in zip(columns(rows), [None, *unapproved], strict=True):
            lines.append(line)
            if why:
                lines.append(f"    UNAPPROVED: {why}")
    return "\n".join(lines)


# --- garbage collection ----------------------------------------------------------------------------


def referenced_fingerprints(backend: Backend) -> set[str]:
    """Training fingerprints (first 12 hex) of every released version (stages point at versions)."""
    keep = set()
    for model_state in tags.registry_state(backend.list_tags()).values():
        for v in model_state.versions.values():
            fp = release_metadata(v.message).get("training_fingerprint")
            if fp:
                keep.add((model_state.model, fp[:12]))
    return keep


def gc(root: Path, backend: Backend, dry_run: bool = False, keep_current: bool = True) -> list[Path]:
    """Remove run folders under runs/ that no release (and so no stage) refers to.

    With `keep_current`, runs matching a model's config in the working tree stay too (the run a PR
    is about to report on or release).
    """
    keep = referenced_fingerprints(backend)
    if keep_current:
        from gitops.tree import FsTree

        tree = FsTree(root)
        for name in config.model_names(tree):
            cfg, _ = config.resolve(name, tree)
            if cfg is not None:
                keep.add((name, cfg.short_fingerprint))
    removed = []
    runs = root / RUNS_DIR
    if not runs.is_dir():
        return removed
    for model_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        for run_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            if (model_dir.name, run_dir.name) in keep:
                continue
            removed.append(run_dir)
            if not dry_run:
                shutil.rmtree(run_dir)
    return removed


# --- rollback --------------------------------------------------------------------------------------


class _Overlay:
    """The working folder with some files replaced (None: removed), to resolve before writing."""

    def __init__(self, base, replaced: dict[str, bytes | None]):
        self.base, self.replaced, self.root = base, replaced, base.root

    def read(self, relpath: str) -> bytes | None:
        return self.replaced[relpath] if relpath in self.replaced else self.base.read(relpath)

    def listdir(self, relpath: str) -> list[str]:
        names = set(self.base.listdir(relpath))
        prefix = relpath.rstrip("/") + "/"
        for path, content in self.replaced.items():
            if path.startswith(prefix) and "/" not in path[len(prefix):]:
                (names.add if content is not None else names.discard)(path[len(prefix):])
        return sorted(names)

    def is_dir(self, relpath: str) -> bool:
        return self.base.is_dir(relpath) or any(p.startswith(relpath.rstrip("/") + "/") for p in self.replaced)

    def label(self, relpath: str) -> str:
        return self.base.label(relpath)

    def refused(self, relpath: str):
        """The base tree's refusal (symbolic links under models/), unless the file is replaced here."""
        return None if relpath in self.replaced else self.base.refused(relpath)


@dataclass
class RollbackResult:
    branch: str
    commit: str
    version: str
    inlined: list[str]
    pull_request: str | None
    training_fingerprint: str


def _inline(kind: str, model: str, values: dict) -> bytes:
    from gitops.yamlio import dump_yaml

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
    from gitops.tree import FsTree, GitTree

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


# --- Python API ----------------------------------------------------------------------------------------


def resolve_to_folder(ref: str, root: Path | None = None, backend_name: str | None = None) -> Path:
    """`name@v1.2.0`, `name@1.2.0` or `name@stage` -> the verified, unpacked release folder.

    Called by `gitops.load` / `gitops.api.load`: pulls into `.gitops/pulled/<model>/v<version>/` of
    the repository (a cache: a folder already holding that release is reused).
    """
    from gitops import pull
    from gitops.backends import get_backend

    root = root or config.find_root()
    return pull.pull(root, get_backend(backend_name, root), ref)
