"""MLflow sink: a run per training fingerprint in an experiment per model; releases in the model registry.

Sent through MLflow's own client (`MlflowClient`) to the server named by `$MLFLOW_TRACKING_URI` (which
wins over `tracking_uri:` in gitops.yaml, so a job's credentials reach only the server the job names):

- params: the flattened resolved config (`train.optimizer.learning_rate`, ...), lists as JSON;
- metrics: every logged value per step, batched (`log_batch`, at most 1,000 a call), plus
  metrics.json's final values at the handed-on checkpoint's step;
- tags: `gitops.model`, `gitops.training_fingerprint`, `gitops.release_fingerprint`,
  `gitops.data_fingerprint`, `mlflow.source.git.commit`, `gitops.git_dirty`, `gitops.pr` (from the
  GitHub event or `$GITOPS_PR`), `gitops.version` once released;
- artifacts: the run folder's small files (config, manifest, metrics, history, preprocessing), never
  checkpoints.

A run is complete once it carries `gitops.logged=1` (set last); a run found by fingerprint without it
was cut off half way and is deleted and sent again, so retries and backfills never duplicate a run.

A release registers a model version (registered model = experiment name = prefix + model name; tag
`gitops.version`)
and the registry's stages become aliases: stage `production` -> alias `production`. MLflow reserves
`latest` and `v<digits>` (its version aliases), and stage names can't contain `_`, so those stages map
to `stage_<name>` (`latest` -> `stage_latest`, `v2` -> `stage_v2`) with no clash possible. Git tags stay
the source: `sync_aliases` sets what the tags say and removes every other alias.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from gitops.config.settings import TrackerSpec
from gitops.trackers.base import (
    Outcome,
    RunData,
    TrackerUnavailable,
    flatten,
    iso_seconds,
    scalar_text,
    strip_credentials,
)

URI_ENV = "MLFLOW_TRACKING_URI"
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits per request
MAX_PARAM_CHARS = 6000
COMPLETE_TAG = "gitops.logged"
FINGERPRINT_TAG = "gitops.training_fingerprint"
VERSION_TAG = "gitops.version"
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.I)


def alias_for(stage: str) -> str:
    """The MLflow alias of a registry stage (see the module docstring for the rule)."""
    return f"stage_{stage}" if _RESERVED_ALIAS.fullmatch(stage) else stage


class MlflowSink:
    """The MLflow tracker: logs runs, registers released versions and mirrors stages as aliases.

    Follows MLflow's model registry (registered models, versions, aliases); see the module docstring for
    what is sent and how reserved alias names are mapped. `spec` is the `mlflow` entry of gitops.yaml.
    """

    name = "mlflow"

    def __init__(self, spec: TrackerSpec):
        self.spec = spec
        self.uri = os.environ.get(URI_ENV, "").strip() or (spec.tracking_uri or "")
        self._client: Any = None

    # --- plumbing ----------------------------------------------------------------------------------

    @property
    def target(self) -> str:
        """The tracking URI without credentials (safe to print and store)."""
        return strip_credentials(self.uri)

    def client(self) -> Any:
        """The `MlflowClient` for the tracking URI, created on first use.

        Raises TrackerUnavailable (skipped at once, no retries) when neither `$MLFLOW_TRACKING_URI` nor
        `tracking_uri:` names a server.
        """
        if not self.uri:
            raise TrackerUnavailable(f"no MLflow tracking server: set ${URI_ENV} (or tracking_uri: in gitops.yaml)")
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @contextlib.contextmanager
    def calls(self) -> Iterator[Any]:
        """The client with MLflow's own retries off (ours apply, with back-off) and its prints kept off stdout."""
        saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(self.spec.timeout_s)))
        logger = logging.getLogger("mlflow")
        level = logger.level
        logger.setLevel(max(level, logging.WARNING))  # "Waiting up to 300 seconds for model version..."
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield self.client()
        finally:
            logger.setLevel(level)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def experiment_name(self, model: str) -> str:
        """The experiment of `model`, which is also its registered model's name."""
        return f"{self.spec.experiment_prefix}{model}"

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        """The web UI link of a run (`<ui_url or http(s) tracking URI>/#/experiments/<id>/runs/<id>`), or None
        when no http(s) address is known.
        """
        base = self.spec.ui_url or (self.target if self.target.startswith(("http://", "https://")) else None)
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if base else None

    def _experiment(self, client: Any, model: str) -> str:
        name = self.experiment_name(model)
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return client.create_experiment(name, tags={"gitops.model": model})
        except Exception:  # a concurrent job created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _runs(self, client: Any, experiment_id: str, fingerprint: str) -> list[Any]:
        return list(client.search_runs([experiment_id], filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'",
                                       max_results=50))

    def find_run(self, client: Any, model: str, fingerprint: str) -> tuple[str, Any] | None:
        """(experiment id, complete run) of this training fingerprint, if the server has one."""
        experiment_id = self._experiment(client, model)
        complete = [r for r in self._runs(client, experiment_id, fingerprint) if r.data.tags.get(COMPLETE_TAG) == "1"]
        return (experiment_id, complete[0]) if complete else None

    # --- runs --------------------------------------------------------------------------------------

    def log_run(self, run: RunData, context: Mapping[str, str]) -> Outcome:
        """Send the run (or match the one already there); see the module docstring for what is sent."""
        with self.calls() as client:
            experiment_id = self._experiment(client, run.model)
            found = self._runs(client, experiment_id, run.training_fingerprint)
            complete = [r for r in found if r.data.tags.get(COMPLETE_TAG) == "1"]
            tags = _tags(run, context)
            if complete:
                run_id = complete[0].info.run_id
                if complete[0].info.status != "FINISHED":  # cut off between the last two calls
                    client.set_terminated(run_id, status="FINISHED")
                changed = {k: v for k, v in tags.items() if complete[0].data.tags.get(k) != v and k.startswith("gitops.")}
                for key, value in changed.items():  # a later PR or version; fingerprints never differ
                    client.set_tag(run_id, key, value)
                return self._outcome("matched", experiment_id, run_id)
            for stale in found:  # cut off half way by an earlier attempt
                client.delete_run(stale.info.run_id)
            started = iso_seconds(run.manifest.get("started_at"))
            created = client.create_run(experiment_id, start_time=int(started * 1000) if started else None,
                                        tags=tags, run_name=f"{run.model}-{run.short_fingerprint}")
            run_id = created.info.run_id
            self._log_data(client, run_id, run)
            for path in run.small_files():
                client.log_artifact(run_id, str(path), artifact_path="gitops")
            client.set_tag(run_id, COMPLETE_TAG, "1")
            finished = iso_seconds(run.manifest.get("finished_at"))
            client.set_terminated(run_id, status="FINISHED", end_time=int(finished * 1000) if finished else None)
            return self._outcome("logged", experiment_id, run_id)

    def _outcome(self, status: str, experiment_id: str, run_id: str) -> Outcome:
        return Outcome(status, url=self.run_url(experiment_id, run_id),
                       details={"target": self.target, "experiment_id": experiment_id, "run_id": run_id})

    def _log_data(self, client: Any, run_id: str, run: RunData) -> None:
        from mlflow.entities import Metric, Param

        params = [Param(key[:250], _param_value(value)) for key, value in sorted(flatten(run.config).items())]
        for i in range(0, len(params), MAX_PARAMS):
            client.log_batch(run_id, params=params[i:i + MAX_PARAMS])
        metrics = [Metric(name, value, int(when * 1000), step) for name, step, value, when in run.scalars()]
        seen = {(m.key, m.step) for m in metrics}
        final_step = int(run.manifest.get("checkpoint_step") or run.manifest.get("steps_done") or 0)
        final_time = int((iso_seconds(run.manifest.get("finished_at")) or 0) * 1000)
        metrics += [Metric(k, v, final_time, final_step) for k, v in sorted(run.final_metrics().items())
                    if (k, final_step) not in seen]
        for i in range(0, len(metrics), MAX_METRICS):
            client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS])

    # --- the model registry ------------------------------------------------------------------------

    def register_version(self, run: RunData, version: str, context: Mapping[str, str]) -> Outcome:
        """A model version for release `version` of `run` (idempotent: found by its `gitops.version` tag)."""
        outcome = self.log_run(run, context)  # the release's run is there (matched, or sent now)
        run_id = outcome.details["run_id"]
        with self.calls() as client:
            client.set_tag(run_id, VERSION_TAG, version)
            name = self.experiment_name(run.model)
            self._registered_model(client, name, run.model)
            existing = self._version_numbers(client, name)
            if version not in existing:
                created = client.create_model_version(
                    name, source=f"runs:/{run_id}/gitops", run_id=run_id,
                    tags={VERSION_TAG: version, FINGERPRINT_TAG: run.training_fingerprint},
                    description=f"{run.model} {version} (gitops release)")
                existing[version] = str(created.version)
                outcome.status = "logged"  # something new was sent, even if the run itself was there
        outcome.details["model_version"] = existing[version]
        return outcome

    def _registered_model(self, client: Any, name: str, model: str) -> None:
        try:
            client.get_registered_model(name)
        except Exception:
            with contextlib.suppress(Exception):  # a concurrent job may have created it
                client.create_registered_model(name, tags={"gitops.model": model})
            client.get_registered_model(name)

    def _version_numbers(self, client: Any, name: str) -> dict[str, str]:
        """{gitops version ("v1.2.0") -> MLflow model version number} of registered model `name`."""
        out: dict[str, str] = {}
        for mv in client.search_model_versions(f"name = '{name}'"):
            tag = (mv.tags or {}).get(VERSION_TAG)
            if tag:
                out[tag] = str(mv.version)
        return out

    def sync_aliases(self, model: str, stages: Mapping[str, str]) -> dict[str, str]:
        """Make the registered model's aliases say what the registry's stage tags say.

        Args:
            model: the model (= registered model) name.
            stages: {stage: version ("v1.2.0")} from the git tags.

        Returns:
            {alias: MLflow version number} as set. Stages whose version is not registered in MLflow
            (released before the tracker was configured; `gitops track` registers them) are left out.
        """
        name = self.experiment_name(model)
        with self.calls() as client:
            try:
                current = dict(client.get_registered_model(name).aliases or {})
            except Exception:
                if not stages:
                    return {}
                self._registered_model(client, name, model)
                current = {}
            numbers = self._version_numbers(client, name)
            wanted = {alias_for(stage): numbers[v] for stage, v in stages.items() if v in numbers}
            for alias in set(current) - set(wanted):
                client.delete_registered_model_alias(name, alias)
            for alias, number in wanted.items():
                if str(current.get(alias)) != number:
                    client.set_registered_model_alias(name, alias, number)
            return wanted


def _tags(run: RunData, context: Mapping[str, str]) -> dict[str, str]:
    m = run.manifest
    tags = {
        "gitops.model": run.model,
        FINGERPRINT_TAG: run.training_fingerprint,
        "gitops.release_fingerprint": m.get("release_fingerprint") or "",
        "gitops.data_fingerprint": m.get("data_fingerprint") or "",
        "mlflow.source.git.commit": m.get("git_commit") or "",
        "gitops.git_dirty": scalar_text(m.get("git_dirty")),
        "gitops.device": f"{m.get('device_kind', 'unknown')} x{m.get('device_count', 1)}",
    }
    tags.update({f"gitops.{k}": v for k, v in context.items() if v})
    return {k: v for k, v in tags.items() if v}


def _param_value(value: Any) -> str:
    text = scalar_text(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."
