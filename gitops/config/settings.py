"""Repository-level settings (`gitops.yaml` at the root): budgets that cap what one PR may spend, and
the experiment trackers every run is also sent to.

Validated with the same strict loader and positioned errors as model files. Absent file: no caps, no
trackers. Nothing here is part of a model's files, so no setting changes a fingerprint.
"""

from __future__ import annotations

import json
from typing import Any

from gitops.config.jsonschema_tools import (
    compiled_validator,
    describe_error,
    format_path,
    integer,
    number,
    strict_validator_class,
)
from gitops.errors import ConfigError, Problem
from gitops.records import record
from gitops.repo.tree import Tree

SETTINGS_FILE = "gitops.yaml"

SETTINGS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://gitops-nn.dev/schemas/settings.v1.schema.json",
    "title": "gitops.yaml: repository settings",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "budgets": {
            "type": "object",
            "description": "Caps on what one pull request may train; a maintainer label lifts them.",
            "default": {},
            "additionalProperties": False,
            "properties": {
                "max_models_per_pr": integer("Most models one PR may train.", None, 1),
                "max_steps_per_model": integer("Most optimizer steps (x repeats) one model may train.", None, 1),
                "max_device_minutes_per_pr": number(
                    "Most estimated device-minutes one PR may spend (from each model's last measured steps/s).",
                    None, None, None, 0.0,
                ),
                "override_label": {
                    "type": "string",
                    "default": "gitops:budget-override",
                    "description": "A PR label (set by a maintainer) that lifts the budgets.",
                },
            },
        },
        "deploy": {
            "type": "object",
            "description": "Where stage moves are deployed: a Kustomize deploy repository that Argo CD or Flux syncs.",
            "default": {},
            "additionalProperties": False,
            "properties": {
                "repository": {"type": "string", "default": "",
                               "description": "A folder of this repository (e.g. deploy) or a git URL; empty: no deploys."},
                "path": {"type": "string", "default": "overlays/{stage}",
                         "description": "Each stage's overlay folder inside the deploy repository ({stage} is replaced)."},
                "image": {"type": "string", "default": "",
                          "description": "The generic serving image (default ghcr.io/gitops-nn/gitops-serve:<gitops version>)."},
                "gpu": {"type": "boolean", "default": False, "description": "Ask for one nvidia.com/gpu per pod."},
                "replicas": integer("Deployment replicas (the autoscaler's minimum).", 2, 1),
            },
        },
        "protected_stages": {
            "type": "object",
            "description": "Stages a promotion PR must be reviewed for; the value names who may approve.",
            "default": {},
            "propertyNames": {"pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["approvers"],
                "properties": {
                    "approvers": {
                        "type": "array", "minItems": 1, "uniqueItems": True,
                        "description": "GitHub teams (@org/team) or users (@login) whose review is required (CODEOWNERS).",
                        "items": {"type": "string", "pattern": "^@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(/[A-Za-z0-9._-]+)?$"},
                    },
                },
            },
        },
        "artifacts": {
            "type": "object",
            "description": "An object store that holds release archives (content-addressed by sha256); the tags "
                           "(and GitHub releases) stay the index. Credentials come only from the SDK's environment.",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "pattern": "^(s3|gs|gcs|az|abfs|file)://[^\\s@?#]+$",
                        "description": "s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or "
                                       "file:///folder (one prefix per registry; no credentials in it)."},
                "endpoint_url": {"type": "string", "pattern": "^https?://[^\\s@]+$",
                                 "description": "S3-compatible stores (MinIO, Ceph, moto): the endpoint; default: "
                                                "the SDK's own (e.g. $AWS_ENDPOINT_URL)."},
                "part_size_mb": integer("Split archives into objects of this many MiB (default: one object).",
                                        None, 1),
                "block_size_mb": integer("Multipart upload block size in MiB.", 64, 5, 5120),
                "attempts": integer("Tries per store call before the command fails (exit 3).", 4, 1, 10),
                "backoff_s": number("First wait between attempts, doubled each time.", 1.0, 0.0, 60.0),
            },
        },
        "trackers": {
            "type": "array",
            "description": "Experiment trackers each run is also sent to (the run folder stays the source of "
                           "truth). Turned off for one command with --no-track.",
            "default": [],
            "maxItems": 8,
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"enum": ["tensorboard", "mlflow"],
                             "description": "tensorboard: event files (tensorboardX); mlflow: a tracking server."},
                    "tracking_uri": {
                        "type": "string", "minLength": 1, "pattern": "^(https?|file|sqlite|postgresql|mysql|databricks)[:+]",
                        "description": "mlflow: the tracking server when $MLFLOW_TRACKING_URI is unset (the "
                                       "environment wins, so a job's credentials go only to the server it names).",
                    },
                    "ui_url": {
                        "type": "string", "pattern": "^https?://[^\\s@]+$",
                        "description": "mlflow: the address people open in a browser, for links in reports "
                                       "(default: the tracking URI when it is http(s)).",
                    },
                    "experiment_prefix": {
                        "type": "string", "default": "", "pattern": "^[A-Za-z0-9_.-]{0,100}$",
                        "description": "mlflow: experiment and registered model name = prefix + model name "
                                       "(one experiment per model; a prefix shares one server between repositories).",
                    },
                    "logdir": {
                        "type": "string", "minLength": 1, "pattern": r"^(?!/)(?!(.*/)?\.\.(/|$))[^\\]+$",
                        "description": "tensorboard: a folder (relative to the repository, no '..') holding "
                                       "<model>/<fingerprint>/ per run; default: tensorboard/ inside each run folder.",
                    },
                    "attempts": integer("Calls tried before the sink is skipped for this run (with a warning "
                                        "recorded in manifest.json).", 4, 1, 10),
                    "backoff_s": number("First wait between attempts, doubled each time.", 1.0, 0.0, 60.0),
                    "timeout_s": number("mlflow: seconds one HTTP request may take.", 30.0, 0.1, 600.0),
                },
            },
        },
        "plugins": {
            "type": "object",
            "description": "Your own architectures, datasets, augmentations and metrics from a package in this "
                           "repository (docs/plugins.md). Its source joins the training fingerprint of the models "
                           "that use it.",
            "default": {},
            "additionalProperties": False,
            "properties": {
                "package": {
                    "type": "string",
                    "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                    "description": "A folder at the repository root holding a Python package whose __init__.py "
                                   "defines GITOPS_PLUGINS, e.g. plugins.",
                },
            },
        },
    },
}


@record(frozen=True)
class TrackerSpec:
    """One sink of `trackers:` (defaults as in the schema)."""

    name: str
    tracking_uri: str | None = None
    ui_url: str | None = None
    experiment_prefix: str = ""
    logdir: str | None = None
    attempts: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 30.0


@record(frozen=True)
class Budgets:
    """`gitops.yaml: budgets:`, the limits a pull request's training may use (None: no limit): models per PR, optimizer
    steps (x repeats) per model, estimated device-minutes per PR, and the label that lifts them.
    """

    max_models_per_pr: int | None = None
    max_steps_per_model: int | None = None
    max_device_minutes_per_pr: float | None = None
    override_label: str = "gitops:budget-override"


@record(frozen=True)
class PluginSettings:
    """`gitops.yaml: plugins:`: `package`, the repository's plugin package folder (None: none)."""

    package: str | None = None  # a package folder at the repository root (gitops.config.plugins)


@record(frozen=True)
class DeploySettings:
    """`gitops.yaml: deploy:`, where stage moves are deployed: the Kustomize deploy repository (a folder or git URL; ""
    for no deploys), the overlay path ({stage} replaced), serving image, GPU flag and replicas.
    """

    repository: str = ""
    path: str = "overlays/{stage}"
    image: str = ""
    gpu: bool = False
    replicas: int = 2


@record(frozen=True)
class StoreSettings:
    """`gitops.yaml: artifacts:` (defaults as in the settings schema)."""

    url: str
    endpoint_url: str | None = None
    part_size_mb: int | None = None  # None: one object per archive
    block_size_mb: int = 64  # multipart upload block
    attempts: int = 4
    backoff_s: float = 1.0


@record(frozen=True)
class Settings:
    """The repository's `gitops.yaml`, validated and with schema defaults filled in (`load_settings`); `Settings()` is
    what a repository without the file gets.
    """

    budgets: Budgets = Budgets()
    plugins: PluginSettings = PluginSettings()
    trackers: tuple[TrackerSpec, ...] = ()
    deploy: DeploySettings = DeploySettings()
    protected_stages: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (stage, approvers), in file order
    artifacts: StoreSettings | None = None  # None: assets stay with the backend

    def tracker(self, name: str) -> TrackerSpec | None:
        """The experiment-tracker spec named `name` in `trackers:`, or None when it is not configured."""
        return next((t for t in self.trackers if t.name == name), None)

    def approvers(self, stage: str) -> tuple[str, ...] | None:
        """Who may approve a promotion to `stage`; None when the stage is not protected."""
        return dict(self.protected_stages).get(stage)


def schema_text() -> str:
    """The JSON Schema of gitops.yaml as indented JSON text with a final newline, as written to settings.schema.json for
    editors.
    """
    return json.dumps(SETTINGS_SCHEMA, indent=2, allow_nan=False) + "\n"


def load_settings(tree: Tree) -> Settings:
    """Read `gitops.yaml` from a tree (working folder or a commit); defaults when absent."""
    import fastjsonschema

    from gitops.config.yamlio import load_yaml_text

    raw = tree.read(SETTINGS_FILE)
    if raw is None:
        return Settings()
    doc = load_yaml_text(raw, tree.label(SETTINGS_FILE))
    try:  # the common case, valid settings, without importing jsonschema
        compiled_validator(SETTINGS_SCHEMA)(doc.data)
        return _settings(doc)
    except fastjsonschema.JsonSchemaException:
        pass
    errors = sorted(strict_validator_class()(SETTINGS_SCHEMA).iter_errors(doc.data), key=lambda e: list(map(str, e.path)))
    problems = []
    for error in errors:
        for path, message, at_key in describe_error(error):
            mark = doc.key_mark_for(path) if at_key else doc.mark_for(path)
            problems.append(Problem(mark.file, mark.line, mark.col, format_path(path), message))
    if problems:
        raise ConfigError(problems)
    return _settings(doc)


def _settings(doc: Any) -> Settings:

    data = doc.data or {}
    trackers, seen = [], {}
    for index, raw in enumerate(data.get("trackers") or []):
        if raw["name"] in seen:
            mark = doc.mark_for(("trackers", index, "name"))
            raise ConfigError([Problem(mark.file, mark.line, mark.col, format_path(("trackers", index, "name")),
                                       f"{raw['name']!r} is listed twice (first as trackers[{seen[raw['name']]}])")])
        seen[raw["name"]] = index
        spec = TrackerSpec(**raw)
        for key in ("tracking_uri", "ui_url", "experiment_prefix") if spec.name == "tensorboard" else ("logdir",):
            if key in raw:
                mark = doc.key_mark_for(("trackers", index, key))
                raise ConfigError([Problem(mark.file, mark.line, mark.col, format_path(("trackers", index, key)),
                                           f"{key!r} is not an option of the {spec.name} tracker")])
        trackers.append(spec)
    protected = tuple((stage, tuple(v.get("approvers") or ())) for stage, v in (data.get("protected_stages") or {}).items())
    store = None
    if data.get("artifacts"):
        store = StoreSettings(**data["artifacts"])
    return Settings(budgets=Budgets(**(data.get("budgets") or {})), trackers=tuple(trackers),
                    plugins=PluginSettings(**(data.get("plugins") or {})),
                    deploy=DeploySettings(**(data.get("deploy") or {})), protected_stages=protected,
                    artifacts=store)
