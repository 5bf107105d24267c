"""Repository-level settings (`gitops.yaml` at the root): budgets that cap what one PR may spend.

Validated with the same strict loader and positioned errors as model files. Absent file: no caps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gitops.catalog import integer, number
from gitops.errors import ConfigError, Problem
from gitops.tree import Tree

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
    },
}


@dataclass(frozen=True)
class Budgets:
    max_models_per_pr: int | None = None
    max_steps_per_model: int | None = None
    max_device_minutes_per_pr: float | None = None
    override_label: str = "gitops:budget-override"


@dataclass(frozen=True)
class DeploySettings:
    repository: str = ""
    path: str = "overlays/{stage}"
    image: str = ""
    gpu: bool = False
    replicas: int = 2


@dataclass(frozen=True)
class Settings:
    budgets: Budgets = Budgets()
    deploy: DeploySettings = DeploySettings()
    protected_stages: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (stage, approvers), in file order

    def approvers(self, stage: str) -> tuple[str, ...] | None:
        """Who may approve a promotion to `stage`; None when the stage is not protected."""
        return dict(self.protected_stages).get(stage)


def _settings(data: dict) -> Settings:
    protected = tuple((stage, tuple(v.get("approvers") or ())) for stage, v in (data.get("protected_stages") or {}).items())
    return Settings(Budgets(**(data.get("budgets") or {})), DeploySettings(**(data.get("deploy") or {})), protected)


def schema_text() -> str:
    return json.dumps(SETTINGS_SCHEMA, indent=2) + "\n"


def load_settings(tree: Tree) -> Settings:
    """Read `gitops.yaml` from a tree (working folder or a commit); defaults when absent."""
    import fastjsonschema

    from gitops import schema as schema_mod
    from gitops.yamlio import load_yaml_text

    raw = tree.read(SETTINGS_FILE)
    if raw is None:
        return Settings()
    doc = load_yaml_text(raw, tree.label(SETTINGS_FILE))
    try:  # the common case, valid settings, without importing jsonschema
        schema_mod.compiled_validator(SETTINGS_SCHEMA)(doc.data)
        return _settings(doc.data or {})
    except fastjsonschema.JsonSchemaException:
        pass
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(SETTINGS_SCHEMA).iter_errors(doc.data), key=lambda e: list(map(str, e.path)))
    problems = []
    for error in errors:
        for path, message, at_key in schema_mod._describe(error):
            mark = doc.key_mark_for(path) if at_key else doc.mark_for(path)
            problems.append(Problem(mark.file, mark.line, mark.col, schema_mod.format_path(path), message))
    if problems:
        raise ConfigError(problems)
    return _settings(doc.data or {})
