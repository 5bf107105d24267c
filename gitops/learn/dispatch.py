"""Training dispatch: which training a resolved config gets, and where its run folder ends up.

`train(cfg, out_dir)` is what `gitops train`, `gitops sweep run` and on-demand training before a
release call: it answers from the run cache when it can (a finished run folder with the same training
fingerprint, locally or under `$GITOPS_RUN_CACHE`, whose own config hashes to that fingerprint), and
otherwise trains into `<out_dir>/<model>/<fingerprint[:12]>/`, resuming an unfinished folder of the same
fingerprint. `run_training(cfg, workdir)` is the training itself: `gitops.learn.repeats` for
`train.repeats > 1` (N seeds, each a `gitops.learn.train.train_and_evaluate` run), else
`gitops.learn.train.train_and_evaluate` directly.

The two training modules import neither this module nor each other's callers: `gitops.learn.train` trains one
seed, `gitops.learn.repeats` calls it once per seed, and only this module knows both.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitops import config as config_lib
from gitops.config import registries
from gitops.errors import GitopsError, RunInterrupted, TrainingError
from gitops.learn import parallel, repeats
from gitops.learn import train as train_lib
from gitops.registry.runs import RunFolder, cache_dir, copy_tree_atomic, replace_dir, run_path


def run_training(
    cfg: Any,
    workdir: Path,
    *,
    root: Path | None = None,
    resume: bool = False,
    reporter: Any = None,
    dataset: Any = None,
) -> dict[str, float]:
    """Train `cfg` into the run folder `workdir` (every seed of `train.repeats`); returns the final metrics.

    Args:
        cfg: a `gitops.config.ResolvedConfig`.
        workdir: the run folder (created; DESIGN.md's "Run folder"; with `train.repeats: N` the layout
            of `gitops.learn.repeats`).
        root: the repository root (data files, git commit); default: found from the working directory.
        resume: continue from the latest checkpoint(s) in `workdir` if there are any.
        reporter: progress sink (`gitops.learn.train.Reporter`); silent by default.
        dataset: an already loaded `gitops.learn.data.Dataset`, else loaded once here.

    Returns:
        metric name -> value (`test/...`, `val/...`; the mean over seeds for repeats).

    Raises:
        TrainingError: the run diverged or the data did not fit (the message names the seed for repeats).
        RunInterrupted: Ctrl-C or SIGTERM; a checkpoint of the current step was committed first.
    """
    if int(cfg.train.repeats) > 1:
        return repeats.train_repeats(cfg, workdir, root=root, resume=resume, reporter=reporter, dataset=dataset)
    return train_lib.train_and_evaluate(cfg, workdir, root=root, resume=resume, reporter=reporter, dataset=dataset)


@dataclass(frozen=True)
class TrainResult:
    """What `train` did: the run folder, its final metrics, and whether they came from the run cache."""

    run: RunFolder
    metrics: dict[str, float]
    cache_hit: bool
    source: str | None = None  # "local" or "cache" for a cache hit


def train(
    cfg: Any,
    out_dir: str | os.PathLike = "runs",
    *,
    root: Path | None = None,
    resume: bool = False,
    force: bool = False,
    reporter: Any = None,
) -> TrainResult:
    """Train `cfg` unless a finished run of the same training fingerprint exists (locally or in the cache).

    Args:
        cfg: a ResolvedConfig.
        out_dir: folder of run folders; the run goes to `<out_dir>/<model>/<fingerprint[:12]>/`.
        root: repository root (default: found from the working directory).
        resume: kept for the command line; an unfinished run folder of the same fingerprint is always
            resumed from its newest checkpoint that restores (never deleted).
        force: retrain even when a finished run exists; the new run replaces it only once finished; an
            unfinished run is moved aside (`.<fp12>.aside-<time>`) for `gitops gc`.
        reporter: progress sink.

    Returns:
        TrainResult with the run folder, its metrics and whether it was a cache hit.

    Raises:
        TrainingError: the run diverged, or `out_dir` holds an unfinished run of another config.
        ConfigError: `train.start_from` names a parent version that cannot be resolved.
        RunInterrupted: Ctrl-C or SIGTERM (the CLI names the command that resumes).
    """
    reporter = reporter or train_lib.SilentReporter()
    root = Path(root) if root else config_lib.find_root()
    from gitops.config import parent_ref

    parent_ref.require_resolved(cfg)  # an unknown parent version: exit 1 before any folder is touched
    out_dir = Path(out_dir)
    run = RunFolder(run_path(out_dir, cfg.name, cfg.training_fingerprint))
    shared = cache_dir()
    cached = RunFolder(run_path(shared, cfg.name, cfg.training_fingerprint)) if shared else None
    primary = parallel.is_primary()  # multi-host: process 0 moves folders, the others wait at barriers

    if not force:
        if run.is_finished:
            if _trusted(run, cfg, reporter):
                return TrainResult(run, run.metrics, True, "local")
            if primary:
                aside = move_aside(run.path)
                reporter.note(f"moved it to {aside}; training")
        if cached is not None and cached.is_finished and _trusted(cached, cfg, reporter):
            if primary:
                copy_tree_atomic(cached.path, run.path)
            parallel.barrier("gitops-train-cache-hit")
            return TrainResult(run, run.metrics, True, "cache")

    if force:
        run.path.parent.mkdir(parents=True, exist_ok=True)
        if primary and run.path.exists() and not run.is_finished:  # never deleted: moved aside for `gitops gc`
            aside = move_aside(run.path)
            reporter.note(f"--force: moved the unfinished run to {aside} (`gitops gc` removes it)")
        if parallel.joined():  # one scratch folder all processes agree on
            workdir = run.path.parent / f".{run.path.name}.force"
            if primary:
                shutil.rmtree(workdir, ignore_errors=True)
            parallel.barrier("gitops-train-force")
        else:
            workdir = Path(tempfile.mkdtemp(prefix=f".{run.path.name}.", suffix=".force", dir=run.path.parent))
        try:
            with registries.plugin_errors():
                metrics = run_training(cfg, workdir, root=root, reporter=reporter)
            if primary:
                replace_dir(workdir, run.path)
            parallel.barrier("gitops-train-force-done")
        except BaseException:
            if primary:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
    else:
        # An unfinished run of this fingerprint is resumed, never deleted (a CI re-run, a forgotten
        # --resume): resuming is bit-identical to training from the start.
        if run.path.exists():
            recorded = _recorded_fingerprint(run)
            if recorded not in (None, cfg.training_fingerprint):
                raise TrainingError(
                    f"{run.path} holds an unfinished run of another config (training fingerprint {recorded[:12]}, "
                    f"this one is {cfg.short_fingerprint}); pass --force to move it aside and start over")
            if _has_checkpoints(run.path):
                if not resume:
                    reporter.note(f"resuming the unfinished run in {run.path} (same training fingerprint; "
                                  "--force starts over)")
            elif resume:
                reporter.note(f"nothing to resume in {run.path}; starting from step 0")
        parallel.barrier("gitops-train-clean")
        fresh = not run.path.exists()
        try:
            with registries.plugin_errors():  # a plugin's code raising where no guarded call sees it
                metrics = run_training(cfg, run.path, root=root, resume=True, reporter=reporter)
        except GitopsError as exc:
            # a run that failed before its first checkpoint (a plugin that raised, a step that diverged)
            # leaves no folder behind; an interrupted one has a checkpoint and stays for --resume
            if primary and fresh and not isinstance(exc, RunInterrupted) and not _has_checkpoints(run.path):
                shutil.rmtree(run.path, ignore_errors=True)
                with contextlib.suppress(OSError):
                    run.path.parent.rmdir()  # runs/<model>/, when this was its only run
            raise

    if primary and cached is not None and not cached.is_finished:
        try:
            copy_tree_atomic(run.path, cached.path)
        except OSError as exc:
            reporter.note(f"could not copy the run into the cache {shared}: {exc}")
    return TrainResult(run, metrics, False)


def _trusted(run: RunFolder, cfg: Any, reporter: Any) -> bool:
    """Whether a finished run's own config.resolved.yaml hashes to `cfg`'s training fingerprint (a run
    cache entry can be written by anyone with access to the cache); else a warning and False."""
    from gitops.registry import runs

    try:
        actual = runs.recompute_fingerprint(runs.read_run(run.path)) or ""
    except GitopsError:
        actual = ""
    if actual == cfg.training_fingerprint:
        return True
    reporter.note(f"warning: {run.path}: its config.resolved.yaml hashes to training fingerprint "
                  f"{actual[:12] or 'none (unreadable)'}, not {cfg.short_fingerprint}; not reusing it")
    return False


def _has_checkpoints(path: Path) -> bool:
    return any(path.glob("checkpoints/*")) or any(path.glob("repeats/*/checkpoints/*"))


def _recorded_fingerprint(run: RunFolder) -> str | None:
    try:
        return run.manifest.get("training_fingerprint")
    except (OSError, ValueError):
        return None


def move_aside(path: Path) -> Path:
    """Rename a run folder to `.<name>.aside-<UTC time>` beside it (hidden from `runs/` listings; gc removes it)."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.parent / f".{path.name}.aside-{stamp}"
    os.replace(path, aside)
    return aside
