"""Releases: choose the version, find the finished run, package it reproducibly, tag and publish.

A release is the annotated tag `<model>@vX.Y.Z` on HEAD plus two kinds of asset: the run folder as
a deterministic `<model>-vX.Y.Z.tar.gz` (split into `.partNNN` files over the size limit) and
`SHA256SUMS` (`gitops.registry.archive`). The tag message (`gitops.registry.versions.tag_message`) carries everything
`history` and `report` need (fingerprints, metrics, the archive's checksum) as a JSON block, so they
never download anything. The bump rules are `gitops.registry.bumps`'s; run folders are `gitops.registry.runs`'s.

A release never trains: it takes a finished run (given, found by fingerprint, the latest release's, a
PR's run artifact) or, when there is none, asks the `train` callable its caller passed (the `gitops
release` command passes one that trains; without one the release stops with an error).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops import config, killpoints, scratch
from gitops.backends.base import Backend, TagExistsError
from gitops.errors import GitopsError, UsageError
from gitops.registry import archive, gates, lineage, runs, tags, versions
from gitops.registry.bumps import BUMPS, choose_bump
from gitops.repo import gitutil
from gitops.repo.tree import GitTree

DEFAULT_MAX_ASSET_BYTES = 2 * 1024**3 - 1024**2  # GitHub's 2 GiB asset limit, less a margin
MAX_TAG_RETRIES = 8
RUN_FILES = (runs.CONFIG_FILE, runs.MANIFEST_FILE, runs.METRICS_FILE, runs.HISTORY_FILE, runs.PREPROCESSING_FILE,
             runs.SPREAD_FILE)  # the last only for train.repeats > 1
Trainer = Callable[[config.ResolvedConfig], tuple[Path, bool]]  # cfg -> (finished run folder, trained now?)


@dataclass
class ReleaseResult:
    """What `release` did: the version made (None: nothing to release), its tag, bump and reason, where it
    was published, the assets, the run released (None when it was a pulled or scratch copy), whether it
    was trained now, and one sentence for people."""

    model: str
    version: str | None  # None: nothing to release
    tag: str | None = None
    bump: str | None = None
    reason: str = ""
    location: str = ""
    assets: list[Path] = field(default_factory=list)
    run: Path | None = None
    trained: bool = False
    message: str = ""

    def as_dict(self) -> dict:
        """The result as JSON-ready data (`gitops release --json`): asset names, the run as a path string."""
        return {"model": self.model, "version": self.version, "tag": self.tag, "bump": self.bump,
                "reason": self.reason, "location": self.location, "assets": [p.name for p in self.assets],
                "run": str(self.run) if self.run else None, "trained": self.trained}


def max_asset_bytes() -> int:
    """The backend's asset size limit in bytes ($GITOPS_MAX_ASSET_BYTES, default just under 2 GiB).

    Raises:
        UsageError: the variable is not a whole number of bytes of at least 1.
    """
    raw = os.environ.get("GITOPS_MAX_ASSET_BYTES")
    if not raw:
        return DEFAULT_MAX_ASSET_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"GITOPS_MAX_ASSET_BYTES={raw!r} is not a number of bytes") from None
    if value < 1:
        raise UsageError("GITOPS_MAX_ASSET_BYTES must be at least 1")
    return value


# --- packaging ---------------------------------------------------------------------------------------


def _checkpoint_entries(run: Path, step: Any) -> list[tuple[str, Path]]:
    ckpt = run / "checkpoints"
    if not ckpt.is_dir():
        raise GitopsError(f"{run}: no checkpoints/ folder; the run did not finish")
    steps = [p for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()]
    chosen = [p for p in steps if step is not None and int(p.name) == int(step)]
    if not chosen and steps:
        chosen = [max(steps, key=lambda p: int(p.name))]
    entries = []
    for item in ckpt.iterdir():  # the manager's own metadata, plus only the handed-on step
        if item.is_dir() and item.name.isdigit() and item not in chosen:
            continue
        if item.name.startswith(("tmp", ".")) or ".orbax-checkpoint-tmp" in item.name:
            continue
        if item.is_file():
            entries.append((f"checkpoints/{item.name}", item))
        else:
            for sub in item.rglob("*"):
                if sub.is_file() and not sub.is_symlink():
                    entries.append((f"checkpoints/{sub.relative_to(ckpt).as_posix()}", sub))
    return entries


def model_card(cfg: config.ResolvedConfig, version: str, bump: str, reason: str, run: runs.RunInfo,
               commit: str, previous: str | None, reproduced_at: str | None = None) -> str:
    """MODEL_CARD.md of a release: description, metrics (mean ± std for repeats), gates, labels, lineage, config."""
    from gitops.config.yamlio import dump_yaml

    rel = cfg.release
    lines = [f"# {cfg.name} {version}", ""]
    lines += [rel.description.strip() or "_No description in release.yaml._", ""]
    if rel.owners:
        lines += [f"Owners: {', '.join(rel.owners)}", ""]
    spread = runs.read_spread(run.path) or {}
    per_metric = spread.get("metrics") or {}
    seeds = f" (mean ± std of {spread.get('n')} seeds)" if per_metric else ""
    lines += ["## Metrics", "", f"| metric | value{seeds} |", "| --- | ---: |"]
    for key, value in sorted(run.metrics.items()):
        std = (per_metric.get(key) or {}).get("std")
        shown = versions.format_number(value) + (f" ± {std:.2g}" if isinstance(std, float) else "")
        lines.append(f"| {key} | {shown} |")
    if per_metric and spread.get("representative"):
        chosen = spread["representative"]
        lines += ["", f"The checkpoint is seed {chosen.get('seed')}'s, the seed {chosen.get('rule')} of "
                      f"{chosen.get('by')}; metrics_spread.json holds every seed's values."]
    if rel.gates:
        lines += ["", "Quality gates:", ""]
        for gate in rel.gates:
            bounds = ", ".join(f"{k} {gate[k]}" for k in ("min", "max", "max_regression") if k in gate)
            lines.append(f"- {gate['metric']}: {bounds}")
    if rel.labels:
        lines += ["", f"Labels (class index order): {', '.join(rel.labels)}"]
    m = run.manifest
    lines += ["", "## Lineage", "",
              f"- version: {version} ({bump}: {reason})",
              f"- previous version: {previous or 'none (first release)'}",
              f"- commit: {commit}",
              f"- trained at commit: {runs.commit_text(m)}",
              *([f"- reproduced at commit: {reproduced_at} (same training fingerprint)"] if reproduced_at else []),
              f"- training fingerprint: {cfg.training_fingerprint}",
              f"- release fingerprint: {cfg.release_fingerprint}",
              f"- data fingerprint: {cfg.data_fingerprint}",
              f"- checkpoint step: {_or_unknown(runs.int_field(m, 'checkpoint_step'))} of "
              f"{_or_unknown(runs.int_field(m, 'steps'))}",
              f"- device: {runs.device_text(m)}",
              f"- parameters: {_or_unknown(runs.int_field(m, 'param_count'))}",
              "", "## Config (resolved)", "", "```yaml", dump_yaml(cfg.as_dict()).rstrip(), "```", ""]
    return "\n".join(lines)


def _or_unknown(value: Any) -> str:
    return "unknown" if value is None else str(value)


def package(cfg: config.ResolvedConfig, run_dir: Path, tree: GitTree, version: str, meta: dict, card: str,
            out_dir: Path, *, split: bool = True) -> tuple[list[Path], str]:
    """Write the archive (or its parts) and SHA256SUMS into `out_dir`; (assets to upload, archive sha).

    The archive holds the run's files (RUN_FILES; config.resolved.yaml as released), the model's four
    YAML files under config/, the handed-on checkpoint, MODEL_CARD.md and release.json (`meta`).

    `split=False` (an artifact store is configured): never split at the backend's asset limit."""
    name = archive.archive_name(cfg.name, version)
    entries: list[tuple[str, bytes | Path]] = []
    from gitops.config.yamlio import dump_yaml

    for fname in RUN_FILES:
        if fname == runs.CONFIG_FILE:
            # The released config: a patch release reuses an older run but carries today's release.yaml.
            entries.append((fname, dump_yaml(cfg.as_dict()).encode("utf-8")))
        elif (run_dir / fname).is_file():
            entries.append((fname, run_dir / fname))
    for kind in config.FILE_KINDS:
        raw = tree.read(f"{config.MODELS_DIR}/{cfg.name}/{kind}.yaml")
        if raw is not None:
            entries.append((f"config/{kind}.yaml", raw))
    info = runs.read_run(run_dir)
    entries += _checkpoint_entries(run_dir, info.manifest.get("checkpoint_step"))
    entries.append((archive.CARD_FILE, card.encode("utf-8")))
    entries.append((archive.RELEASE_FILE, archive.release_record(meta)))
    return archive.pack(out_dir, name, entries, max_part_bytes=max_asset_bytes() if split else None)


# --- the release ---------------------------------------------------------------------------------------


def _run_for(root: Path, cfg: config.ResolvedConfig, run: Path | None, backend: Backend,
             latest: tags.VersionState | None, latest_meta: dict, workdir: Path,
             commit: str | None = None, train: Trainer | None = None) -> tuple[Path, bool]:
    """The finished run to release and whether it was trained now: given, found by fingerprint (runs/,
    the run cache), the latest release's (patch), the PR's run artifact (github backend, built from an
    ancestor of `commit`), or what `train(cfg)` returns (GitopsError when there is no `train`)."""
    if run is not None:
        info = runs.read_run(run)
        actual = runs.recompute_fingerprint(info) or "unreadable"
        if actual != cfg.training_fingerprint or info.training_fingerprint != cfg.training_fingerprint:
            raise GitopsError(
                f"{run} was trained from another config: its config.resolved.yaml has training fingerprint "
                f"{actual[:12]} (its manifest says {info.training_fingerprint[:12] or 'none'}), HEAD's {cfg.name} "
                f"is {cfg.short_fingerprint}; release the matching run or omit --run"
            )
        if not info.finished:
            raise UsageError(f"{run} has not finished training")
        return Path(run), False
    found = runs.find_run(root, cfg.name, cfg.training_fingerprint)
    if found is not None:
        return found, False
    if latest is not None and latest_meta.get("training_fingerprint") == cfg.training_fingerprint:
        from gitops.registry.pull import pull  # a patch release: reuse the released run itself

        return pull(root, backend, f"{cfg.name}@{latest.version}", to=workdir / "previous"), False
    if commit is not None and backend.keeps_ci_artifacts:
        from gitops.registry import artifacts

        found_run, why = artifacts.reuse_released_run(root, backend, cfg.name, cfg.training_fingerprint, commit,
                                                       root / runs.RUNS_DIR)
        typer_echo(f"{cfg.name}: {why}")
        if found_run is not None:
            return found_run, False
    if train is None:
        raise GitopsError(f"{cfg.name}: no finished run with training fingerprint {cfg.short_fingerprint} (runs/, "
                          f"$GITOPS_RUN_CACHE); train it first (`gitops train {cfg.name}`) or pass --run DIR")
    return train(cfg)


def lineage_check(info: runs.RunInfo, cfg: config.ResolvedConfig, head: str) -> str | None:
    """The commit that reproduces a run trained from uncommitted files (None for a clean run); warns.

    A run records the commit it was trained at and whether the files it read matched it
    (`git_dirty`, see `gitutil.lineage`). Training before committing is the normal local loop, so a
    dirty run is released when the release commit reproduces its training fingerprint: the committed
    config, data pins and plugin sources hash to what the run was trained from. `_run_for` only ever
    hands on such a run (a `--run` trained from another config is refused), so this warns and
    records the reproducing commit in the release metadata and model card.

    Raises:
        UsageError: the run's training fingerprint is not the release commit's (no commit reproduces it).
    """
    commit = runs.text_field(info.manifest, "git_commit")
    dirty = info.manifest.get("git_dirty")
    if commit and dirty is False:
        return None
    if info.training_fingerprint != cfg.training_fingerprint:
        raise UsageError(f"{info.path} was trained from files no commit holds (training fingerprint "
                         f"{info.training_fingerprint[:12]}; {head[:12]} gives {cfg.short_fingerprint})")
    if not commit:
        how = "outside git or before the repository's first commit"
    elif dirty is None:
        how = f"at {commit[:12]} without recording whether the tree was clean"
    else:
        listed = [str(p) for p in info.manifest.get("git_uncommitted") or []]
        shown = ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
        how = f"at {commit[:12]} with uncommitted files" + (f" ({shown})" if shown else "")
    typer_echo(f"warning: {cfg.name}: run {info.path.name} was trained {how}; commit {head[:12]} reproduces its "
               f"training fingerprint {cfg.short_fingerprint}, so the release records {head[:12]} as the commit "
               "that reproduces it (retrain from a clean checkout for a run with exact lineage)")
    return head


def typer_echo(text: str) -> None:
    """One line for people on stderr (stdout carries the command's result)."""
    sys.stderr.write(text + "\n")


ARCHIVE_KEYS = ("archive", "sha256", "parts", "objects")  # added to the metadata once the archive exists


def build_assets(cfg: config.ResolvedConfig, run_dir: Path, tree: GitTree, meta: dict, info: runs.RunInfo,
                 out_dir: Path) -> tuple[list[Path], dict]:
    """The assets of the version `meta` describes, and `meta` completed with the archive's name and sha256.

    A function of (the commit's files, the run folder, `meta`) only, so a rerun rebuilds the same
    bytes: that is how a version whose assets went missing is repaired (its tag records the sha256).
    """
    base = {k: v for k, v in meta.items() if k not in ARCHIVE_KEYS}
    card = model_card(cfg, base["version"], base["bump"], base["reason"], info, base["commit"], base.get("previous"),
                      base.get("reproduced_at_commit"))
    from gitops.registry import artifact_store

    store = artifact_store.for_tree(tree)  # gitops.yaml's artifacts: at the released commit
    name = archive.archive_name(cfg.name, base["version"])
    assets, digest = package(cfg, run_dir, tree, base["version"], base, card, out_dir, split=store is None)
    if store is not None:  # the archive goes to the store; the backend keeps SHA256SUMS and the objects list
        assets, objects = artifact_store.publish_archive(store, assets[0], out_dir, digest)
        return assets, {**base, "archive": name, "sha256": digest,
                        "parts": len(objects) if len(objects) > 1 else 0, "objects": objects}
    parts = sum(1 for asset in assets if archive.is_part_of(asset.name, name))  # 0: not split
    return assets, {**base, "archive": name, "sha256": digest, "parts": parts}


class CannotRepair(GitopsError):
    """A version's assets are missing and cannot be rebuilt with the bytes its tag records (exit 1)."""


def _work_folder(root: Path, model: str) -> Path:
    """This release's scratch folder under `.gitops/tmp/`; ones that killed releases left are removed."""
    parent = root / ".gitops" / "tmp"
    scratch.sweep(parent, "release-")
    return scratch.make(parent, "release-")


def _keep_in_dist(dist: Path | None, assets: list[Path], archive: Path) -> list[Path]:
    """Copy a version's assets (and its archive, which an artifact store keeps outside the backend's
    assets but which the release workflow attests) into `dist`; returns the copies ([] without `dist`)."""
    if dist is None:
        return []
    dist.mkdir(parents=True, exist_ok=True)
    kept = []
    for asset in assets + ([archive] if archive not in assets and archive.is_file() else []):
        shutil.copyfile(asset, dist / asset.name)
        kept.append(dist / asset.name)
    return kept


def repair(root: Path, backend: Backend, model: str, version: tags.VersionState, *, run: Path | None = None,
           workdir: Path, dist: Path | None = None) -> ReleaseResult:
    """Re-publish the assets of `version` from a run, if the rebuilt archive's sha256 is the tag's.

    `dist`: also copy the re-published assets there (as a new release does), so the release workflow
    attests the repaired bytes too.

    Raises:
        CannotRepair: no run of the tag's training fingerprint, the config at the tag's commit no
            longer resolves to the same release fingerprint, or the rebuilt bytes differ.
    """
    tag = version.tag
    meta = versions.release_metadata(version.message)
    try:
        gitutil.ensure_commit(root, version.commit)
        tree = GitTree(root, version.commit)
        cfg = config.load(model, root, tree=tree)
    except GitopsError as exc:
        raise CannotRepair(f"the config at {version.commit[:12]} does not load here ({exc.message})") from None
    if cfg.release_fingerprint != meta.get("release_fingerprint"):
        raise CannotRepair("the config at the tag's commit resolves to another release fingerprint with this "
                           "version of gitops")
    if run is not None:
        info = runs.read_run(run)
        if _recomputed_fingerprint(info) != meta.get("training_fingerprint"):
            raise CannotRepair(f"{run} is not a run of {tag}'s training fingerprint "
                               f"{str(meta.get('training_fingerprint'))[:12]}")
        run_dir = Path(run)
    else:
        run_dir = runs.find_run(root, model, meta.get("training_fingerprint", ""))
        if run_dir is None:
            raise CannotRepair(f"no finished run with training fingerprint {str(meta.get('training_fingerprint'))[:12]} "
                               "is here (runs/ or $GITOPS_RUN_CACHE)")
        info = runs.read_run(run_dir)
    out_dir = workdir / f"repair-{version.version}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    assets, full = build_assets(cfg, run_dir, tree, meta, info, out_dir)
    if full["sha256"] != meta.get("sha256"):
        raise CannotRepair(f"the archive rebuilt from {run_dir} has sha256 {full['sha256'][:12]}, the tag records "
                           f"{str(meta.get('sha256'))[:12]} (a retrain that is not bit-identical, or another run)")
    notes = versions.tag_message(cfg, version.version, full["bump"], full["reason"], full)
    title = f"{model} {version.version}"
    with backend.release_lock(model):
        backend.stage_release(tag, version.commit, title, notes, assets)
    location = backend.finalize_release(tag, title, notes)
    kept = _keep_in_dist(dist, assets, out_dir / full["archive"])
    return ReleaseResult(model, version.version, tag, full["bump"], full["reason"], location, kept or assets, run_dir,
                         message=f"repaired {tag}: its assets are published again (sha256 {full['sha256'][:12]} "
                                 f"matches the tag) -> {location}")


def _recomputed_fingerprint(info: runs.RunInfo) -> str:
    """The training fingerprint of a run folder, recomputed from its own config.resolved.yaml."""
    return runs.recompute_fingerprint(info) or ""


def _repair_or_fail(root: Path, backend: Backend, model: str, version: tags.VersionState, run: Path | None,
                    workdir: Path, missing: list[str], dist: Path | None) -> ReleaseResult:
    try:
        return repair(root, backend, model, version, run=run, workdir=workdir, dist=dist)
    except CannotRepair as exc:
        raise GitopsError(
            f"{version.tag} has no {', '.join(missing)} (a release interrupted before this fix) and cannot be "
            f"rebuilt with the bytes its tag records: {exc.message}. Run `gitops release {model} --repair "
            f"{version.version}` (with --run DIR to re-publish from that run; otherwise the empty version is "
            f"retired and the config released as a new version)"
        ) from None


def release(root: Path, backend: Backend, model: str, *, run: Path | None = None, bump: str = "auto",
            push: bool = False, dist: Path | None = None, repair_version: str | None = None,
            track: bool | None = None, train: Trainer | None = None) -> ReleaseResult:
    """Release `model` at HEAD (see the module docstring); idempotent against the latest release.

    `track` (None: as gitops.yaml says) also sends the run to the trackers and registers the version in
    MLflow's model registry; a tracker failure is a warning, never a failed release.

    Bytes first, tag last: every asset is staged and verified (`Backend.stage_release`) before the
    version tag is created, and the tag is the commit point. A latest version with the same release
    fingerprint whose assets are missing is repaired (rebuilt; published when its sha256 is the tag's).
    `repair_version` ("v1.2.0"): repair that version from `run` (or the run found by its fingerprint),
    or, when it can't be rebuilt identically, retire it (deregister) and release HEAD as a new version.
    `train(cfg) -> (run folder, trained now?)`: called only when a new version is due and no finished
    run of HEAD's training fingerprint exists anywhere (the `gitops release` command passes one that
    trains); None: that case is a GitopsError.
    """
    if bump not in BUMPS:
        raise UsageError(f"--bump must be one of {', '.join(BUMPS)}")
    from gitops import trackers

    sinks = trackers.specs_for(root, track)  # a missing extra fails before any tag exists
    workdir = _work_folder(root, model)
    try:
        return _release(root, backend, model, run=run, bump=bump, push=push, dist=dist,
                        repair_version=repair_version, workdir=workdir, sinks=sinks, train=train)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _release(root: Path, backend: Backend, model: str, *, run: Path | None, bump: str, push: bool,
             dist: Path | None, repair_version: str | None, workdir: Path, sinks: list | None = None,
             train: Trainer | None = None) -> ReleaseResult:
    killpoints.reached("release.started")
    head = gitutil.head_commit(root)
    tree = GitTree(root, head)
    cfg = config.load(model, root, tree=tree)
    if gitutil.uncommitted(root, [f"{config.MODELS_DIR}/{model}"]):
        typer_echo(f"warning: models/{model} has uncommitted changes; releasing the committed config at "
                   f"{head[:12]}")
    st = versions.state(backend, model)
    if st.deprecated:
        raise UsageError(f"{model} is deprecated; it takes no new releases")
    if repair_version is not None:
        _, target = versions.resolve(backend, f"{model}@{repair_version}")
        missing = versions.missing_assets(backend, target.tag, versions.release_metadata(target.message))
        if not missing:
            return ReleaseResult(model, None, target.tag, message=f"nothing to repair: {target.tag} has all its assets")
        try:
            return repair(root, backend, model, target, run=run, workdir=workdir, dist=dist)
        except CannotRepair as exc:
            typer_echo(f"{target.tag} cannot be rebuilt identically ({exc.message}); retiring it (deregistered, its "
                       "number is never reused) and releasing HEAD as a new version")
            if target.active:
                versions.deprecate(backend, f"{model}@{target.version}", root)
            st = versions.state(backend, model)
            if run is not None and runs.read_run(run).training_fingerprint != cfg.training_fingerprint:
                run = None  # that run belongs to the retired version, not to HEAD
    latest = st.latest()
    latest_meta = versions.release_metadata(latest.message) if latest else {}
    if latest is not None and latest_meta.get("release_fingerprint") == cfg.release_fingerprint:
        missing = versions.missing_assets(backend, latest.tag, latest_meta)
        if missing:  # a tag made before its assets (an interrupted release of an older gitops)
            return _repair_or_fail(root, backend, model, latest, run, workdir, missing, dist)
        if not backend.is_published(latest.tag):  # killed between its tag and publishing: finish it
            location = backend.finalize_release(latest.tag, f"{model} {latest.version}", latest.message)
            return ReleaseResult(model, latest.version, latest.tag, latest_meta.get("bump"),
                                 latest_meta.get("reason", ""), location,
                                 message=f"published {latest.tag} (an interrupted release had staged and tagged it)"
                                         f" -> {location}")
        return ReleaseResult(model, None, latest.tag, message=f"nothing to release: {model}@{latest.version} "
                             f"already has release fingerprint {cfg.release_fingerprint[:12]}")
    old_cfg = None
    if latest is not None:
        try:
            gitutil.ensure_commit(root, latest.commit)
            old_cfg, _ = config.resolve(model, GitTree(root, latest.commit))
        except GitopsError:
            old_cfg = None
        part, reason = choose_bump(latest_meta, old_cfg, cfg, bump)
        same_run = [v.version for v in st.active_versions()
                    if versions.release_metadata(v.message).get("training_fingerprint") == cfg.training_fingerprint]
        if same_run and part != "patch":
            reason += f"; same training run as {same_run[0]} (restored config)"
    else:
        part, reason = "initial", "first release"

    run_dir, trained = _run_for(root, cfg, run, backend, latest, latest_meta, workdir, head, train)
    info = runs.read_run(run_dir)
    reproduced_at = (latest_meta.get("reproduced_at_commit")  # a patch reusing a run checked before
                     if latest_meta.get("training_fingerprint") == cfg.training_fingerprint else None)
    reproduced_at = reproduced_at or lineage_check(info, cfg, head)
    failed = gates.failed(gates.evaluate_gates([dict(g) for g in cfg.release.gates], info.metrics,
                                               latest_meta.get("metrics") if latest else None))
    if failed:
        detail = "; ".join(f"{g.metric} {g.kind} {g.threshold:g}: {g.note}" for g in failed)
        raise GitopsError(f"{model}: quality gate failed, not releasing ({detail})")

    for _attempt in range(MAX_TAG_RETRIES):
        with backend.release_lock(model):
            st = versions.state(backend, model)
            now = st.latest()
            if now is not None and now.tag != (latest.tag if latest else None) and versions.release_metadata(
                    now.message).get("release_fingerprint") == cfg.release_fingerprint:
                # A concurrent release of exactly this config got there first: two identical
                # releases make one version. (Another config: take the next version.)
                return ReleaseResult(model, None, now.tag, message=(
                    f"nothing to release: {model}@{now.version} was released concurrently with the same "
                    f"release fingerprint {cfg.release_fingerprint[:12]}"))
            highest = st.highest_ever()
            version = str(tags.FIRST_VERSION if highest is None else highest.bump(
                "minor" if part == "initial" else part))
            meta = {
                "gitops_release": 1,
                "model": model,
                "version": version,
                "bump": part,
                "reason": reason,
                "previous": latest.version if latest else None,
                "commit": head,
                "training_fingerprint": cfg.training_fingerprint,
                "release_fingerprint": cfg.release_fingerprint,
                "data_fingerprint": cfg.data_fingerprint,
                "headline_metric": cfg.headline_metric(),
                "metrics": info.metrics,
                **({"metrics_spread": spread} if (spread := runs.read_spread(run_dir)) else {}),
                "checkpoint_step": info.manifest.get("checkpoint_step"),
                "steps": info.manifest.get("steps"),
                "trained_at_commit": runs.text_field(info.manifest, "git_commit") or None,
                **({"reproduced_at_commit": reproduced_at} if reproduced_at else {}),
                **({"start_from": parent} if (parent := info.manifest.get("start_from")) else {}),
            }
            out_dir = workdir / f"out-{version}"
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir()
            assets, meta = build_assets(cfg, run_dir, tree, meta, info, out_dir)
            killpoints.reached("release.packaged")
            tag = tags.version_tag(model, version)
            notes = versions.tag_message(cfg, version, part, reason, meta)
            title = f"{model} {version}"
            backend.stage_release(tag, head, title, notes, assets)  # bytes first: uploaded and verified
            killpoints.reached("release.staged")
            try:
                backend.create_tag(tag, head, notes)  # the commit point
            except TagExistsError:  # a concurrent release won this version: look again
                backend.discard_staged(tag)
                continue
            killpoints.reached("release.tagged")
            break
    else:
        raise GitopsError(f"{model}: could not claim a version tag after {MAX_TAG_RETRIES} tries")

    location = backend.finalize_release(tag, title, notes)
    killpoints.reached("release.published")
    if push:
        backend.push_tags([tag])
    kept = _keep_in_dist(dist, assets, out_dir / meta["archive"])
    final_run = None if run_dir.is_relative_to(workdir) else run_dir
    if sinks:
        from gitops import trackers

        trackers.track_release(root, sinks, run_dir, version, versions.state(backend, model).stages,
                               record=final_run is not None)
    return ReleaseResult(model, version, tag, part, reason, location, kept or [Path(location) / a.name for a in assets],
                         final_run, trained,
                         message=f"released {tag} ({part}: {reason}) -> {location}")


def release_pending(root: Path, backend: Backend, *, push: bool = False, dist: Path | None = None,
                    track: bool | None = None, train: Trainer | None = None,
                    ) -> tuple[list[ReleaseResult], list[tuple[str, str]]]:
    """Release every model whose release fingerprint differs from its latest release (parents first).

    Returns (the releases made, (model, error message) of each model that failed); `train` as for `release`.
    """
    from gitops.repo.tree import GitTree as _GitTree

    head = gitutil.head_commit(root)
    tree = _GitTree(root, head)
    all_state = tags.registry_state(backend.list_tags())
    results, failures = [], []
    for name in lineage.parents_first(config.model_names(tree), tree):  # a parent releases before its children
        st = all_state.get(name)
        if st is not None and st.deprecated:
            continue
        try:
            cfg = config.load(name, root, tree=tree)
            latest = st.latest() if st else None
            meta = versions.release_metadata(latest.message) if latest else {}
            if latest and meta.get("release_fingerprint") == cfg.release_fingerprint and not versions.missing_assets(
                    backend, latest.tag, meta) and backend.is_published(latest.tag):
                continue  # (a latest version missing its assets goes to release(), which repairs it)
            results.append(release(root, backend, name, push=push, dist=dist, track=track, train=train))
        except GitopsError as exc:
            failures.append((name, exc.message))
    return results, failures
