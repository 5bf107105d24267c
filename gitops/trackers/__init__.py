"""Experiment trackers: every finished run also appears in TensorBoard and/or an MLflow server.

The run folder stays the source of truth; trackers are sinks fed from it after training, listed under
`trackers:` in `gitops.yaml` (never in a model's files, so turning one on changes no fingerprint and
retrains nothing). `--track`/`--no-track` on `train`, `release`, `promote` and `demote` override it for
one command.

Failure never loses a run: each sink call is retried with back-off, then the sink is skipped with a
warning on stderr and `{"status": "skipped", "warning": ...}` under `trackers.<sink>` in the run's
manifest.json; the command itself succeeds. `gitops track` sends such runs later (backfill), matching
what is already there by training fingerprint, so nothing is duplicated.

Sinks: `gitops.trackers.tensorboard` (tensorboardX) and `gitops.trackers.mlflow` (MLflow's client),
each an optional extra (`pip install 'gitops-nn[tensorboard]'`, `'gitops-nn[mlflow]'`).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops.config.settings import TrackerSpec
from gitops.errors import GitopsError, UsageError
from gitops.trackers.base import Outcome, RunData, describe, pr_number, read_run_data, with_retries

NAMES = ("tensorboard", "mlflow")
# sink -> (module it imports, the extra that installs it)
EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow")}

Warn = Callable[[str], None]


def _stderr(text: str) -> None:
    sys.stderr.write(text + "\n")


def specs_for(root: Path, track: bool | None = None, names: Sequence[str] = ()) -> list[TrackerSpec]:
    """The sinks one command uses.

    Args:
        root: repository root (its gitops.yaml lists the trackers).
        track: None: those in gitops.yaml; False: none (--no-track); True: those in gitops.yaml, and it
            is a usage error when there are none (--track).
        names: use these sinks (with their gitops.yaml options, else the defaults) instead of the list.

    Raises:
        UsageError: --track with no trackers configured, or an unknown sink name.
        ConfigError: gitops.yaml is invalid.
        GitopsError: a sink's extra is not installed (exit 1; the message names the extra).
    """
    from gitops.config.settings import load_settings
    from gitops.repo.tree import FsTree

    if track is False:
        return []
    settings = load_settings(FsTree(root))
    if names:
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            raise UsageError(f"unknown tracker {unknown[0]!r}; choose from {', '.join(NAMES)}")
        specs = [settings.tracker(n) or TrackerSpec(n) for n in dict.fromkeys(names)]
    else:
        specs = list(settings.trackers)
    if track is True and not specs:
        raise UsageError("--track: gitops.yaml lists no trackers (add `trackers: [{name: mlflow}]` or "
                         "`[{name: tensorboard}]`)")
    require_extras(specs)
    return specs


def require_extras(specs: Iterable[TrackerSpec]) -> None:
    """GitopsError (exit 1) naming the extra to install when a sink's library is missing."""
    for spec in specs:
        module, extra = EXTRAS[spec.name]
        if importlib.util.find_spec(module) is None:
            raise GitopsError(f"gitops.yaml: trackers: {spec.name} needs the {module} package; install it with "
                              f"`pip install 'gitops-nn[{extra}]'` (or run with --no-track)")


def build(spec: TrackerSpec, root: Path) -> Any:
    """The sink object for `spec`: a `TensorBoardSink` (event files under `root`) or an `MlflowSink`.

    Imports the sink's module only here, so `gitops` runs without tensorboardX or mlflow installed
    (`require_extras` reports a missing one first).
    """
    if spec.name == "tensorboard":
        from gitops.trackers.tensorboard import TensorBoardSink

        return TensorBoardSink(spec, root)
    from gitops.trackers.mlflow import MlflowSink

    return MlflowSink(spec)


def _attempt(spec: TrackerSpec, call: Callable[[], Outcome], what: str, warn: Warn) -> Outcome:
    result, attempts, error = with_retries(call, attempts=spec.attempts, backoff_s=spec.backoff_s)
    if error is not None or result is None:
        warning = describe(error) if error is not None else "no result"
        tries = f" after {attempts} attempt(s)" if attempts > 1 else ""
        warn(f"warning: tracker {spec.name}: skipped {what}{tries}: {warning}")
        return Outcome("skipped", attempts, warning=warning)
    result.attempts = attempts
    return result


def track_run(root: Path, run_dir: Path, specs: Sequence[TrackerSpec], *, context: Mapping[str, str] | None = None,
              record: bool = True, warn: Warn = _stderr) -> dict[str, Outcome]:
    """Send one finished run folder to every sink; record the outcomes in its manifest.

    Never raises for a tracker's failure (it becomes a "skipped" outcome and a warning); raises
    GitopsError only when `run_dir` is not a finished run.
    """
    if not specs:
        return {}
    run = read_run_data(run_dir)
    ctx = {"pr": pr_number() or "", **(context or {})}
    outcomes = {spec.name: _attempt(spec, lambda s=spec: build(s, root).log_run(run, ctx), f"run {_label(run)}", warn)
                for spec in specs}
    if record:
        _record(run_dir, outcomes, warn)
    return outcomes


def _label(run: RunData) -> str:
    return f"{run.model}/{run.short_fingerprint}"


def _record(run_dir: Path, outcomes: Mapping[str, Outcome], warn: Warn) -> None:
    from gitops.registry.runs import RunFolder

    try:
        RunFolder(run_dir).record_trackers({k: o.record() for k, o in outcomes.items()})
    except (OSError, ValueError) as exc:
        warn(f"warning: could not record tracker outcomes in {run_dir}/manifest.json: {exc}")


def track_release(root: Path, specs: Sequence[TrackerSpec], run_dir: Path, version: str, stages: Mapping[str, str],
                  *, record: bool = True, warn: Warn = _stderr) -> dict[str, Outcome]:
    """After a release: the run in every sink, a model version (MLflow), stage aliases in step.

    Args:
        root: repository root.
        specs: the sinks.
        run_dir: the released run folder.
        version: "v1.2.0".
        stages: {stage: version} of the model, from its registry tags.
        record: write the outcomes into the run's manifest (False for a pulled release's folder).
        warn: where warnings go (stderr).
    """
    if not specs:
        return {}
    run = read_run_data(run_dir)
    ctx = {"pr": pr_number() or "", "version": version}
    outcomes: dict[str, Outcome] = {}
    for spec in specs:
        sink = build(spec, root)
        if spec.name == "mlflow":
            outcome = _attempt(spec, lambda s=sink: s.register_version(run, version, ctx),
                               f"{run.model}@{version}", warn)
            if outcome.ok:
                aliases = _attempt(spec, lambda s=sink: Outcome("logged", details={
                    "aliases": s.sync_aliases(run.model, stages)}), f"stage aliases of {run.model}", warn)
                outcome.details.update(aliases.details)
                if not aliases.ok:
                    outcome.warning = f"stage aliases not synced: {aliases.warning}"
        else:
            outcome = _attempt(spec, lambda s=sink: s.log_run(run, ctx), f"run {_label(run)}", warn)
        outcomes[spec.name] = outcome
    if record:
        _record(run_dir, outcomes, warn)
    return outcomes


def sync_stages(specs: Sequence[TrackerSpec], model: str, stages: Mapping[str, str], *,
                warn: Warn = _stderr) -> dict[str, Outcome]:
    """After promote/demote: the MLflow registry's aliases set to what the stage tags say."""
    outcomes = {}
    for spec in specs:
        if spec.name != "mlflow":
            continue
        from gitops.trackers.mlflow import MlflowSink

        sink = MlflowSink(spec)
        outcomes[spec.name] = _attempt(spec, lambda s=sink: Outcome("logged", details={
            "aliases": s.sync_aliases(model, stages)}), f"stage aliases of {model}", warn)
    return outcomes


@dataclass
class BackfillResult:
    """What `gitops track` did, per model."""

    runs: list[tuple[str, str, dict[str, Outcome]]] = field(default_factory=list)  # (model, fp12, outcomes)
    versions: list[tuple[str, str, dict[str, Outcome]]] = field(default_factory=list)  # (model, version, outcomes)

    @property
    def skipped(self) -> int:
        """How many (run or version, sink) pairs were skipped (failed after retries or not configured)."""
        return sum(1 for _, _, o in [*self.runs, *self.versions] for x in o.values() if not x.ok)


def backfill(root: Path, backend: Any, specs: Sequence[TrackerSpec], models: Sequence[str], *,
             runs_dir: Path | None = None, warn: Warn = _stderr) -> BackfillResult:
    """Send existing run folders and releases of `models` to the sinks (idempotent).

    Run folders: every finished `<runs_dir>/<model>/<fingerprint>/`. Releases (MLflow): each active
    version becomes a model version (its run taken from runs/, the run cache, or pulled and verified),
    then the stage aliases follow the registry's tags.
    """
    from gitops.registry import runs, versions
    from gitops.registry.runs import RunFolder

    runs_dir = Path(runs_dir) if runs_dir else root / runs.RUNS_DIR
    result = BackfillResult()
    for model in models:
        folder = runs_dir / model
        for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
            if RunFolder(run_dir).is_finished:
                result.runs.append((model, run_dir.name, track_run(root, run_dir, specs, warn=warn)))
        registry_specs = [s for s in specs if s.name == "mlflow"]
        if not registry_specs or backend is None:
            continue
        st = versions.state(backend, model)
        for v in sorted(st.versions.values(), key=lambda v: v.semver):
            if not v.active:
                continue
            fingerprint = versions.release_metadata(v.message).get("training_fingerprint")
            local = runs.find_run(root, model, fingerprint) if fingerprint else None
            if local is None:
                from gitops.registry.pull import pull

                try:
                    local = pull(root, backend, f"{model}@{v.version}")
                except GitopsError as exc:
                    warn(f"warning: {model}@{v.version}: could not pull the release to send it: {exc.message}")
                    continue
                record = False
            else:
                record = True
            outcomes = track_release(root, registry_specs, local, v.version, st.stages, record=record, warn=warn)
            result.versions.append((model, v.version, outcomes))
    return result


def links(manifest: Mapping[str, Any]) -> list[dict[str, str]]:
    """[{name, url}] of the trackers that hold this run and have a web address (for reports)."""
    out = []
    for name, entry in sorted((manifest.get("trackers") or {}).items()):
        url = (entry or {}).get("url") if isinstance(entry, Mapping) else None
        if name in NAMES and (entry or {}).get("status") in ("logged", "matched") and isinstance(url, str) \
                and url.startswith(("https://", "http://")):
            out.append({"name": name, "url": url})
    return out
