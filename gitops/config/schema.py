"""JSON Schemas for the four model files, built from `gitops.config.catalog`, and validation with positions.

The files in `schemas/` are generated from here (`gitops schemas --write`) and a test keeps them
in step, so a name or parameter is declared once. Validation turns jsonschema's errors into
`Problem`s that point at the file, line and column the offending value came from (after `extends`),
with "did you mean" for unknown keys and enum values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from gitops.config import catalog, plugins
from gitops.config.catalog import Entry
from gitops.config.jsonschema_tools import (
    _suggest,
    branch_applies,
    compiled_validator,
    copy_json,
    describe_error,
    enum,
    integer,
    number,
    strict_validator_class,
    suggest,
)
from gitops.config.registries import Registry

KINDS = ("model", "train", "data", "release")
SCHEMA_VERSION = 1
SCHEMA_BASE_URI = "https://gitops-nn.dev/schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

_COMMON = {
    "extends": {
        "type": "string",
        "pattern": r"^\.\./[a-z][a-z0-9-]{0,61}[a-z0-9]$",
        "description": "Inherit the same file of another model (`../other-model`), deep-merged: "
        "mappings merge, lists and scalars replace, and a mapping whose selector (`name:` of an optimizer, "
        "schedule, dataset or augmentation; `architecture:`) differs from the parent's replaces it whole. "
        "Keys the parent gives may be left out.",
    },
    "schema_version": {
        "type": "integer",
        "minimum": 1,
        "description": "Format version of this file (absent: 1). Older files load through migrations; "
        "`gitops migrate` rewrites them.",
    },
}


def _choice(key: str, entries: Registry[Entry], description: str, extra: dict[str, dict] | None = None) -> dict:
    """An object whose `key` names a registry entry; the entry's parameters decide the other keys."""
    extra = extra or {}
    base_props = {key: enum(description, sorted(entries)), **extra}
    if entries.kind in plugins.GROUPS and plugins.deferred_state() is not None:
        # `ci plan` over a commit whose plugin package is read as data: any name may be one of its entries,
        # whose parameters are checked when training (the built-ins' branches below still apply)
        pattern = (plugins.METRIC_NAME_RE if entries.kind == "metric" else plugins.NAME_RE).pattern
        base_props[key] = {"type": "string", "pattern": pattern, "description": description}
    branches = []
    for name, entry in sorted(entries.items()):
        props = {**base_props, key: {"const": name, "description": entry.description}, **entry.params}
        branches.append(
            {
                "if": {"properties": {key: {"const": name}}, "required": [key]},
                "then": {
                    "properties": props,
                    "required": [key, *entry.required],
                    "additionalProperties": False,
                },
            }
        )
    return {"type": "object", "properties": base_props, "required": [key], "allOf": branches}


def _document(kind: str, title: str, body: dict) -> dict:
    """Wrap a kind's schema with $schema/$id and the keys every file may carry."""
    body = copy_json(body)  # a JSON copy: copy.deepcopy cost several ms per CLI start
    body.setdefault("properties", {}).update(copy_json(_COMMON))
    for branch in body.get("allOf", []):
        branch["then"]["properties"].update(copy_json(_COMMON))
    return {
        "$schema": DRAFT,
        "$id": f"{SCHEMA_BASE_URI}/{kind}.v{SCHEMA_VERSION}.schema.json",
        "title": title,
        **body,
    }


def _model_schema() -> dict:
    return _document(
        "model",
        "model.yaml: the architecture and its parameters",
        _choice("architecture", catalog.ARCHITECTURES, "Which registered architecture to build."),
    )


def _train_schema() -> dict:
    all_losses = sorted({loss for losses in catalog.TASK_LOSSES.values() for loss in losses})
    optimizer = _choice("name", catalog.OPTIMIZERS, "Which registered optimizer to use.")
    optimizer["description"] = "The optimizer and its hyper-parameters."
    schedule = _choice("name", catalog.SCHEDULES, "Which learning-rate schedule to use.")
    schedule["description"] = "Learning-rate schedule applied to the optimizer's learning_rate."
    schedule["default"] = {"name": "constant"}
    metric_name = {"type": "string", "pattern": r"^(train|val|test)/[a-z0-9_]+$"}
    return _document(
        "train",
        "train.yaml: optimizer, schedule, batch size, length, seed, precision, checkpointing",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["optimizer", "batch_size"],
            "properties": {
                "seed": integer("Seed for initialisation, dropout, shuffling and augmentation.", 0, 0, 2**31 - 1),
                "batch_size": integer("Examples per optimizer step (the global batch).", None, 1, 1_000_000),
                "steps": integer("Optimizer steps to train (set this or epochs).", None, 1, 100_000_000),
                "epochs": integer("Passes over the training split (set this or steps).", None, 1, 1_000_000),
                "optimizer": optimizer,
                "schedule": schedule,
                "grad_clip_norm": {
                    "type": ["number", "null"],
                    "exclusiveMinimum": 0,
                    "default": None,
                    "description": "Clip gradients to this global norm (null: no clipping).",
                },
                "gradient_accumulation": integer("Micro-batches accumulated per optimizer step.", 1, 1, 4096),
                "loss": {
                    "type": ["string", "null"],
                    "enum": [*all_losses, None],
                    "default": None,
                    "description": "Training loss (null: cross_entropy for classification, mse for regression).",
                },
                "label_smoothing": number("Label smoothing for cross-entropy.", 0.0, 0.0, None, None, 1.0),
                "precision": enum("Compute dtype; parameters stay float32.", catalog.PRECISIONS, "float32"),
                "log_every": integer("Steps between logged training metrics.", 50, 1),
                "eval_every": integer("Steps between validation passes.", 200, 1),
                "parallelism": {
                    "type": "object",
                    "default": {},
                    "additionalProperties": False,
                    "description": "How training spreads over several devices or hosts (no effect on one device). "
                                   "Not part of the training fingerprint: the result does not depend on it beyond "
                                   "floating-point summation order.",
                    "properties": {
                        "strategy": enum(
                            "; ".join(f"{k}: {v.rstrip('.')}" for k, v in catalog.PARALLELISM.items()) + ".", list(catalog.PARALLELISM), "data"
                        ),
                    },
                },
                "start_from": _start_from_schema(),
                "repeats": integer("Train this many seeds (seed, seed+1, ...) and report mean and spread.", 1, 1, 32),
                "early_stopping": {
                    "type": ["object", "null"],
                    "default": None,
                    "description": "Stop when a validation metric stops improving.",
                    "additionalProperties": False,
                    "required": ["metric"],
                    "properties": {
                        "metric": {**metric_name, "description": "Validation metric to watch, e.g. val/loss."},
                        "patience": integer("Evaluations without improvement before stopping.", 5, 1),
                        "min_delta": number("Smallest change that counts as improvement.", 0.0, 0.0),
                    },
                },
                "checkpoint": {
                    "type": "object",
                    "description": "Orbax checkpointing of the run.",
                    "default": {},
                    "additionalProperties": False,
                    "properties": {
                        "every_steps": integer("Steps between checkpoints (a final one is always written).", 500, 1),
                        "keep": integer("Most recent checkpoints kept (besides the best).", 2, 1, 1000),
                        "best_metric": {
                            "type": ["string", "null"],
                            "pattern": r"^val/[a-z0-9_]+$",
                            "default": None,
                            "description": "Validation metric choosing the checkpoint handed on (null: the last).",
                        },
                    },
                },
            },
        },
    )


def _start_from_schema() -> dict:
    """train.start_from: a released version of this registry, or a pinned single weights file."""
    common = {
        "params": enum("Which parameters load: all, or backbone (all but the final classifier/regression head; "
                       "docs/start-from.md lists the paths per architecture).", ["all", "backbone"], "all"),
        "strict": {"type": "boolean", "default": True,
                   "description": "true: a parameter whose shape differs (or that the source lacks) is an error; "
                                  "false: it is skipped and keeps its fresh initialisation."},
        "freeze": {"type": "array", "default": [], "uniqueItems": True,
                   "items": {"type": "string", "minLength": 1, "pattern": r"^[A-Za-z0-9_*?\[\]/.-]+$"},
                   "description": "Parameter path patterns (fnmatch, e.g. hidden/0/*) that get no updates "
                                  "(optax.multi_transform with set_to_zero)."},
    }
    return {
        "type": ["object", "null"],
        "description": "Initialise from a released version (model: NAME@VERSION or NAME@STAGE), a pinned weights "
                       "file ({path|url, sha256, format}) or a pinned Orbax folder ({path|url, format: orbax, "
                       "checksums, checksums_sha256}) instead of random initialisation.",
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "minLength": 1,
                      "description": "MODEL@vX.Y.Z (fixed, reproducible) or MODEL@STAGE (resolved when a run starts)."},
            "path": {"type": "string", "minLength": 1,
                     "description": "A weights file (or, format: orbax, a folder) in the repository."},
            "url": {"type": "string", "pattern": r"^https?://",
                    "description": "A weights file to download (format: orbax: the folder's URL prefix)."},
            "sha256": {"type": "string", "pattern": r"^[0-9a-f]{64}$", "description": "SHA-256 of the weights file."},
            "format": {"type": "string", "enum": ["safetensors", "npz", "orbax"],
                       "description": "safetensors (default) or npz: a single file pinned by sha256; orbax: a "
                                      "folder (Orbax pytree checkpoint) pinned by checksums + checksums_sha256."},
            "checksums": {"type": "string", "minLength": 1,
                          "description": "format: orbax: the folder's checksum list in the repository (sha256sum "
                                         "format; `gitops data checksums` writes it)."},
            "checksums_sha256": {"type": "string", "pattern": r"^[0-9a-f]{64}$",
                                 "description": "SHA-256 of the checksum list: the Orbax folder's pin."},
            **common,
        },
        "oneOf": [{"required": ["model"]}, {"required": ["path", "sha256"]}, {"required": ["url", "sha256"]},
                  {"required": ["path", "checksums", "checksums_sha256"]},
                  {"required": ["url", "checksums", "checksums_sha256"]}],
    }


def _data_schema() -> dict:
    dataset = _choice("name", catalog.DATASETS, "Which registered dataset to load.")
    dataset["description"] = "The data source: a bundled or generated set, or a pinned file or URL."
    augmentation = _choice("name", catalog.AUGMENTATIONS, "Which registered augmentation to apply.")
    fraction = {"type": "number", "minimum": 0.0, "maximum": 0.5}
    return _document(
        "data",
        "data.yaml: data source, splits, preprocessing, augmentation",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["dataset"],
            "properties": {
                "dataset": dataset,
                "splits": {
                    "type": "object",
                    "default": {},
                    "description": "Deterministic train/validation/test split fractions.",
                    "additionalProperties": False,
                    "properties": {
                        "validation": {**fraction, "default": 0.15, "description": "Fraction held out for validation."},
                        "test": {**fraction, "default": 0.15, "description": "Fraction held out for the final test."},
                        "seed": integer("Seed of the shuffle before splitting (kept apart from train.seed).", 0, 0),
                    },
                },
                "preprocessing": {
                    "type": "object",
                    "default": {},
                    "description": "Feature scaling fitted on the training split only.",
                    "additionalProperties": False,
                    "properties": {
                        "scale": enum("Feature scaling.", ["standardize", "minmax", "none"], "standardize"),
                    },
                },
                "augmentation": {
                    "type": "array",
                    "default": [],
                    "maxItems": 16,
                    "items": augmentation,
                    "description": "On-device augmentations applied to training batches, in order.",
                },
            },
        },
    )


def _release_schema() -> dict:
    gate = {
        "type": "object",
        "additionalProperties": False,
        "required": ["metric"],
        "anyOf": [{"required": ["min"]}, {"required": ["max"]}, {"required": ["max_regression"]}],
        "properties": {
            "metric": {
                "type": "string",
                "pattern": r"^(train|val|test)/[a-z0-9_]+$",
                "description": "Metric the gate checks, e.g. test/accuracy.",
            },
            "min": {"type": "number", "description": "Absolute floor."},
            "max": {"type": "number", "description": "Absolute ceiling."},
            "max_regression": number(
                "Allowed change for the worse against the baseline, in the metric's units.", None, 0.0
            ),
        },
    }
    return _document(
        "release",
        "release.yaml: version policy, quality gates, owners, description",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "description": {"type": "string", "default": "", "description": "What the model is for (model card)."},
                "owners": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": [],
                    "description": "Who answers for this model (GitHub handles or emails).",
                },
                "bump": enum("Version bump policy for releases.", ["auto", "major", "minor", "patch"], "auto"),
                "headline_metric": {
                    "type": ["string", "null"],
                    "default": None,
                    "pattern": r"^(train|val|test)/[a-z0-9_]+$",
                    "description": "Metric shown first in history and the registry (null: test accuracy or loss).",
                },
                "gates": {
                    "type": "array",
                    "default": [],
                    "items": gate,
                    "description": "Quality gates; a failed gate fails the PR check and blocks the release.",
                },
                "serving": {
                    "type": "object",
                    "default": {},
                    "additionalProperties": False,
                    "description": "Inference server settings.",
                    "properties": {
                        "max_batch_size": integer("Largest dynamic batch.", 32, 1, 65536),
                        "max_wait_ms": number("Longest a request waits for a batch to fill.", 2.0, 0.0),
                    },
                },
                "labels": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": [],
                    "description": "Names of the output classes, in index order (for predictions).",
                },
            },
        },
    )


_BUILDERS: dict[str, Callable[[], dict]] = {
    "model": _model_schema,
    "train": _train_schema,
    "data": _data_schema,
    "release": _release_schema,
}
_CACHE: dict[str, dict] = {}
_CACHE_STATE: list[tuple | None] = [None]


def _sync() -> None:
    """Drop built schemas and validators when the plugins in view change (another repository's package)."""
    from gitops.config.plugins import state_key

    key = state_key()
    if _CACHE_STATE[0] != key:
        _CACHE.clear()
        _VALIDATORS.clear()
        _FAST.clear()
        _CACHE_STATE[0] = key


def schema_for(kind: str) -> dict:
    """The JSON Schema of one file kind (built once per set of plugins in view)."""
    _sync()
    if kind not in _CACHE:
        _CACHE[kind] = _BUILDERS[kind]()
    return _CACHE[kind]


def file_schema(kind: str) -> dict:
    """The schema editors and schema tools apply to one *file* (`schemas/<kind>.schema.json`).

    A file that `extends:` another model may leave out anything its parent gives, down to a nested
    choice's selector (``optimizer: {learning_rate: 0.1}``), so every `required` reachable through
    mappings only applies when `extends` is absent (``if: {required: [extends]}``, ``else:`` the
    required keys). Types, ranges, enums and closed objects apply to every file. Requirements inside
    list items stay: a list replaces its parent's whole. gitops itself validates the merged document
    against `schema_for(kind)`, where everything required is.
    """
    doc = copy_json(schema_for(kind))
    head = {k: doc.pop(k) for k in ("$schema", "$id", "title") if k in doc}
    partial, required = _split_required(doc)
    out = {**head, **partial}
    if required:
        out["if"] = {"required": ["extends"]}
        out["else"] = required
    return out


def _split_required(node: dict) -> tuple[dict, dict | None]:
    """(node without the `required` constraints reachable through properties and if/then branches,
    a schema of those constraints alone, at the same places; None when there are none)."""
    partial = dict(node)
    required: dict[str, Any] = {}
    if "required" in partial:
        required["required"] = partial.pop("required")
    if isinstance(partial.get("properties"), dict):
        props, req_props = {}, {}
        for key, sub in partial["properties"].items():
            props[key], sub_required = _split_required(sub) if isinstance(sub, dict) else (sub, None)
            if sub_required:
                req_props[key] = sub_required
        partial["properties"] = props
        if req_props:
            required["properties"] = req_props
    if isinstance(partial.get("allOf"), list):
        branches, req_branches = [], []
        for branch in partial["allOf"]:
            if isinstance(branch.get("then"), dict):
                then, then_required = _split_required(branch["then"])
                branches.append({**branch, "then": then})
                if then_required:
                    req_branches.append({"if": branch["if"], "then": then_required})
            else:
                branches.append(branch)
        partial["allOf"] = branches
        if req_branches:
            required["allOf"] = req_branches
    if required and "type" in node:  # strict tools (ajv) want the type beside object keywords
        required = {"type": node["type"], **required}
    return partial, required or None


def render(kind: str) -> str:
    """The text of `schemas/<kind>.schema.json` (see `file_schema`)."""
    return json.dumps(file_schema(kind), indent=2, sort_keys=False, allow_nan=False) + "\n"


# --- selectors (the `extends` merge rule) -----------------------------------------------------------

_SELECTORS: dict[str, dict[tuple, str]] = {}


def selectors(kind: str) -> dict[tuple, str]:
    """Mappings of a file kind whose registry choice is made by one key: {key path: selector key}.

    E.g. train: ``{("optimizer",): "name", ("schedule",): "name"}``; model: ``{(): "architecture"}``.
    Found in the schema itself (an object whose `allOf` branches switch on one key's const), so a
    plugin's choice is a selector too. Mappings inside lists are left out: lists replace whole anyway.
    DESIGN.md: a mapping whose selector differs from the parent's replaces it whole when merging.
    """
    if kind not in _SELECTORS:
        found: dict[tuple, str] = {}

        def walk(node: dict, path: tuple) -> None:
            keys = {
                k
                for branch in node.get("allOf", ())
                for k, sub in branch.get("if", {}).get("properties", {}).items()
                if "const" in sub
            }
            if len(keys) == 1:
                found[path] = keys.pop()
            for key, sub in node.get("properties", {}).items():
                if isinstance(sub, dict):
                    walk(sub, (*path, key))

        walk(schema_for(kind), ())
        _SELECTORS[kind] = found
    return _SELECTORS[kind]


# --- validation ------------------------------------------------------------------------------------

_VALIDATORS: dict[str, Any] = {}
def _validator(kind: str):
    _sync()
    if kind not in _VALIDATORS:
        _VALIDATORS[kind] = strict_validator_class()(schema_for(kind))
    return _VALIDATORS[kind]


_FAST: dict[str, Callable[[Any], Any]] = {}


def _fast_check(kind: str) -> Callable[[Any], Any]:
    """A compiled validator (fastjsonschema) for the common case: a valid document, in microseconds."""
    _sync()
    if kind not in _FAST:
        _FAST[kind] = compiled_validator(schema_for(kind))
    return _FAST[kind]


def validate_document(kind: str, data: Any) -> list[tuple[tuple, str, bool]]:
    """All schema errors of one merged document as (path, message, at_key) triples, deterministic order.

    The compiled validator answers "valid" fast; only an invalid document pays for jsonschema's
    complete error list (every error at once, with paths). A selector that names nothing
    (`architecture: MLP`) hides its branch's checks in JSON Schema; here the rest of that mapping
    is checked against the branch the selector most likely meant, or, with no close name, its
    keys against every branch's keys, so a misspelled key shows in the same pass.
    """
    import fastjsonschema

    try:
        _fast_check(kind)(data)
        return []
    except fastjsonschema.JsonSchemaException:
        pass
    out: list[tuple[tuple, str, bool]] = []
    seen: set[tuple] = set()

    def add(items: list[tuple[tuple, str, bool]]) -> None:
        for item in items:
            if item[:2] not in seen:
                seen.add(item[:2])
                out.append(item)

    add(_errors(kind, data))
    choices = list(_bad_selectors(schema_for(kind), data, ()))
    if choices:
        patched = copy_json(data)
        selector_paths = []
        for path, key, names, union in choices:
            node = _at(patched, path)
            guess = suggest(node.get(key), names) if isinstance(node.get(key), str) else None
            selector_paths.append(path + (key,))
            if guess is not None:
                node[key] = guess
                continue
            for extra in sorted(k for k in node if k not in union):
                add([(path + (extra,), f"unknown key '{extra}'{_suggest(extra, sorted(union))} (no "
                      f"{key} has it)", True)])
            for extra in [k for k in node if k not in union]:
                del node[extra]
        add([e for e in _errors(kind, patched) if e[0] not in selector_paths])
    return sorted(out, key=lambda e: (list(map(str, e[0])), e[1]))


def _errors(kind: str, data: Any) -> list[tuple[tuple, str, bool]]:
    errors = sorted(_validator(kind).iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    out: list[tuple[tuple, str, bool]] = []
    seen = set()
    for error in errors:
        # An if/then branch failing because the discriminator itself is wrong repeats the enum error.
        for item in describe_error(error):
            if item[:2] not in seen:
                seen.add(item[:2])
                out.append(item)
    return out


def _at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def _selector(schema: dict) -> tuple[str, list[str], set[str]] | None:
    """(selector key, its names, every key some branch allows) for a `_choice` schema, else None."""
    branches = [b for b in schema.get("allOf", ()) if isinstance(b, dict) and "if" in b]
    if not branches:
        return None
    key = next(iter(branches[0]["if"].get("properties", {})), None)
    if key is None:
        return None
    names = [b["if"]["properties"][key]["const"] for b in branches if key in b["if"].get("properties", {})]
    union = set(schema.get("properties", {}))
    for b in branches:
        union |= set(b.get("then", {}).get("properties", {}))
    return key, names, union


def _bad_selectors(schema: dict, data: Any, path: tuple):
    """(path, key, names, allowed keys) of each mapping whose selector names no branch, depth first."""
    if isinstance(data, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(data):
                yield from _bad_selectors(items, item, path + (i,))
        return
    if not isinstance(data, dict):
        return
    found = _selector(schema)
    props = dict(schema.get("properties", {}))
    if found is not None:
        key, names, union = found
        open_name = props.get(key, {}).get("pattern")  # `_choice` inside plugins.deferring: checked when training
        if open_name and data.get(key) not in names and isinstance(data.get(key), str) \
                and re.fullmatch(open_name, data[key]):
            return
        if data.get(key) not in names:
            yield path, key, names, union
            return
        for b in schema.get("allOf", ()):
            if branch_applies(b.get("if", {}), data):
                props.update(b.get("then", {}).get("properties", {}))
    for key, sub in props.items():
        if key in data and isinstance(sub, dict):
            yield from _bad_selectors(sub, data[key], path + (key,))


def _salvage_one(doc: dict, error: Any, dropped: list[tuple]) -> bool | str | None:
    """Repair `doc` where one error points; True if it changed, None when the document can't be saved."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties":
        node = _at(doc, path)
        allowed = set(error.schema.get("properties", {}))
        extras = [k for k in node if k not in allowed]
        for extra in extras:
            del node[extra]
            dropped.append(path + (extra,))
        return bool(extras)
    if error.validator == "required":
        node = _at(doc, path)
        missing = [k for k in error.validator_value if k not in node]
        for key in missing:
            prop = error.schema.get("properties", {}).get(key, {})
            if "default" in prop:
                node[key] = copy_json(prop["default"])
            elif prop.get("type") == "integer" and "minimum" in prop:
                node[key] = prop["minimum"]
            else:
                return None
            dropped.append(path + (key,))
        return bool(missing)
    if not path:
        return None
    parent, leaf = _at(doc, path[:-1]), path[-1]
    guess = (suggest(error.instance, [o for o in error.validator_value if isinstance(o, str)])
             if error.validator == "enum" and isinstance(error.instance, str) else None)
    if guess is not None:
        parent[leaf] = guess  # a misspelled selector: the branch it most likely meant
    elif isinstance(parent, dict) and leaf in parent:
        del parent[leaf]
    elif isinstance(parent, list) and isinstance(leaf, int) and leaf < len(parent):
        parent.pop(leaf)
        dropped.append(path)
        return "shifted"  # later indices moved: validate again before the next repair
    else:
        return False
    dropped.append(path)
    return True


def salvage(kind: str, data: Any) -> tuple[dict | None, list[tuple]]:
    """The parts of an invalid document that parsed: (a valid copy, paths dropped or guessed).

    Offending keys are dropped (their defaults fill in), list items removed, a misspelled selector
    replaced by its closest name, and a required integer with a type error set to its minimum. The
    semantic checks then run on what is left, so one pass reports them beside the schema errors;
    the caller hides semantic findings at or under a dropped path. None when nothing usable is left.
    """
    if not isinstance(data, dict):
        return None, []
    doc = copy_json(data)
    dropped: list[tuple] = []
    for _round in range(24):
        errors = list(_validator(kind).iter_errors(doc))
        if not errors:
            return doc, dropped
        progressed = False
        for error in sorted(errors, key=lambda e: -len(e.absolute_path)):
            try:
                outcome = _salvage_one(doc, error, dropped)
            except (KeyError, IndexError, TypeError):
                continue  # already dropped with an enclosing value
            if outcome is None:
                return None, dropped
            progressed = progressed or bool(outcome)
            if outcome == "shifted":
                break
        if not progressed:
            return None, dropped
    return None, dropped


# --- defaults and number casting (after validation) ---------------------------------------------
