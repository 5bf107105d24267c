"""Sweeps: a hyperparameter search declared in `models/<name>/sweep.yaml`, expanded into trials.

A sweep is part of the reviewed config but never of the model's fingerprints: each *trial* is the
model's resolved config plus the trial's overrides (the same `KEY.PATH=VALUE` lines as `--set`), so
a trial is an ordinary run with its own training fingerprint, and the run cache, resume and PR
artifacts work unchanged. Once the winning values are committed (`gitops sweep apply`), the model's
fingerprint equals the winning trial's and the release reuses that run.

This module owns the file format (schema, loading with positions, expansion, validation) and stays
jax-free: `validate` and `ci plan` call it on GitHub-hosted runners.

Expansion (grid and random search as in Bergstra & Bengio, "Random Search for Hyper-Parameter
Optimization", JMLR 2012):
- `grid`: the cartesian product of every parameter's points, in the order the parameters are
  written; a range gives `count` points, evenly spaced (`scale: linear`) or evenly spaced in log
  space (`scale: log`).
- `random`: `trials` draws, each parameter drawn independently: uniformly from `values`, or from
  the range (log-uniform for `scale: log`; integers when both ends are integers), seeded by `seed`.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import TYPE_CHECKING, Any

from gitops import jsonio
from gitops.config.yamlio import Mark, YamlDoc, load_yaml_text
from gitops.errors import ConfigError, Problem
from gitops.records import record
from gitops.repo.tree import Tree

if TYPE_CHECKING:  # random loads when trials are drawn, not when `validate` checks sweep.yaml
    import random

SWEEP_FILE = "sweep.yaml"
SWEEP_KIND = "sweep"
KEY_PATH_PATTERN = r"^(model|train|data)(\.[A-Za-z0-9_-]+)+$"
DEFAULT_TRIALS_CAP = 20
FLOAT_DIGITS = 6  # significant digits of a computed point (log grids, random draws): readable --set lines

_NUMBER = {"type": "number"}
SWEEP_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://gitops-nn.dev/schemas/sweep.v1.schema.json",
    "title": "sweep.yaml: a hyperparameter search over this model's resolved config",
    "type": "object",
    "additionalProperties": False,
    "required": ["parameters"],
    "properties": {
        "method": {"enum": ["grid", "random"], "default": "grid",
                   "description": "grid: every combination of the parameters' points; random: `trials` draws."},
        "seed": {"type": "integer", "minimum": 0, "default": 0,
                 "description": "Seed of the random draws (method: random)."},
        "trials": {"type": "integer", "minimum": 1, "maximum": 1000, "default": DEFAULT_TRIALS_CAP,
                   "description": "The most trials this sweep may run (grid: a larger grid is an error; "
                                  "random: the number of draws)."},
        "metric": {"type": "string", "pattern": r"^(val|test)/[A-Za-z0-9_]+$",
                   "description": "The metric that ranks trials (default: release.yaml's headline metric); "
                                  "its direction comes from the metric registry."},
        "over_budget": {"enum": ["refuse", "sample"], "default": "refuse",
                        "description": "When the trials exceed gitops.yaml's budgets in a PR: refuse the plan, "
                                       "or train a seeded sample of the trials that fits."},
        "parameters": {
            "type": "object",
            "minProperties": 1,
            "description": "Key paths of the resolved config (as in --set), each with a list of values or a range.",
            "propertyNames": {"pattern": KEY_PATH_PATTERN},
            "additionalProperties": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["values"],
                        "additionalProperties": False,
                        "properties": {"values": {"type": "array", "minItems": 1, "maxItems": 1000}},
                    },
                    {
                        "type": "object",
                        "required": ["min", "max"],
                        "additionalProperties": False,
                        "properties": {
                            "min": _NUMBER,
                            "max": _NUMBER,
                            "scale": {"enum": ["linear", "log"], "default": "linear"},
                            "count": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 3,
                                      "description": "Points of this range in a grid (ignored by random)."},
                        },
                    },
                ],
            },
        },
    },
}


@record(frozen=True)
class Parameter:
    """One swept key path: an explicit list of values, or a numeric range."""

    path: str
    values: tuple | None = None
    low: float | None = None
    high: float | None = None
    scale: str = "linear"
    count: int = 3
    key_mark: Mark | None = None
    value_mark: Mark | None = None
    item_marks: tuple[Mark, ...] = ()  # the position of each of `values`

    def mark_of(self, value: Any) -> Mark | None:
        """Where `value` is written: its item in `values`, else the parameter's mapping."""
        if self.values is not None and self.item_marks:
            for item, mark in zip(self.values, self.item_marks, strict=False):
                if item == value and type(item) is type(value):
                    return mark
        return self.value_mark

    @property
    def integer(self) -> bool:
        """True for a range whose both ends are integers: its points and draws are rounded to int."""
        return self.values is None and isinstance(self.low, int) and isinstance(self.high, int)

    def points(self) -> list[Any]:
        """The grid points of this parameter, in order (duplicates after integer rounding dropped)."""
        if self.values is not None:
            return list(self.values)
        n, lo, hi = self.count, self.low, self.high
        if n == 1:
            raw = [lo]
        elif self.scale == "log":
            a, b = math.log(lo), math.log(hi)
            raw = [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]
        else:
            raw = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        return list(dict.fromkeys(self._tidy(x) for x in raw))

    def draw(self, rng: random.Random) -> Any:
        """One random value of this parameter."""
        if self.values is not None:
            return self.values[rng.randrange(len(self.values))]
        if self.integer and self.scale == "linear":
            return rng.randint(int(self.low), int(self.high))
        if self.scale == "log":
            return self._tidy(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self._tidy(rng.uniform(self.low, self.high))

    def _tidy(self, x: float) -> Any:
        if self.integer:
            return int(round(x))
        return float(f"{x:.{FLOAT_DIGITS}g}")


@record(frozen=True)
class Trial:
    """One point of a sweep: `values` maps each swept key path to its value."""

    index: int  # 0-based position in the expansion; shown as #index in reports
    values: tuple[tuple[str, Any], ...]

    def overrides(self) -> list[str]:
        """The `--set` lines that turn the model's config into this trial's (values as JSON, which YAML reads)."""
        return [f"{path}={json.dumps(value, separators=(', ', ': '), allow_nan=False)}" for path, value in self.values]

    def as_dict(self) -> dict:
        """The trial as JSON: `{"trial": index, "values": {path: value}, "set": [--set lines]}`."""
        return {"trial": self.index, "values": dict(self.values), "set": self.overrides()}


@record(frozen=True)
class Sweep:
    """A loaded, schema-valid sweep.yaml."""

    model: str
    file: str
    method: str
    seed: int
    trials_cap: int
    metric: str | None
    over_budget: str
    parameters: tuple[Parameter, ...]
    doc: YamlDoc

    def grid_size(self) -> int:
        """The number of trials a grid sweep expands to: the product of every parameter's point count."""
        return math.prod(len(p.points()) for p in self.parameters)

    def expand(self) -> list[Trial]:
        """Every trial of the sweep, in a deterministic order (see the module docstring)."""
        names = [p.path for p in self.parameters]
        if self.method == "random":
            import random

            rng = random.Random(self.seed)
            combos = [tuple(p.draw(rng) for p in self.parameters) for _ in range(self.trials_cap)]
        else:
            combos = list(itertools.product(*(p.points() for p in self.parameters)))
        return [Trial(i, tuple(zip(names, combo, strict=True))) for i, combo in enumerate(combos)]


def sweep_path(name: str) -> str:
    """The repository-relative path of a model's sweep file, `models/<name>/sweep.yaml`."""
    return f"models/{name}/{SWEEP_FILE}"


def load(name: str, tree: Tree) -> tuple[Sweep | None, list[Problem]]:
    """Read and schema-check `models/<name>/sweep.yaml`; (None, []) when the model has none."""
    relpath = sweep_path(name)
    try:
        raw = tree.read(relpath)
    except ConfigError as exc:  # refused: a symbolic link under models/
        return None, list(exc.problems)
    if raw is None:
        return None, []
    label = tree.label(relpath)
    try:
        doc = load_yaml_text(raw, label)
    except ConfigError as exc:
        return None, list(exc.problems)
    from gitops.config import jsonschema_tools

    errors = _schema_errors(doc.data)
    if errors:
        problems = [_at(doc.key_mark_for(path) if at_key else doc.mark_for(path),
                        jsonschema_tools.format_path((SWEEP_KIND, *path)), message)
                    for path, message, at_key in errors]
        return None, problems
    data = jsonschema_tools.fill_defaults(SWEEP_SCHEMA, doc.data)
    params = []
    problems: list[Problem] = []
    for path, spec in data["parameters"].items():
        key_mark = doc.key_mark_for(("parameters", path))
        value_mark = doc.mark_for(("parameters", path))
        if "values" in spec:
            items = tuple(doc.mark_for(("parameters", path, "values", i)) for i in range(len(spec["values"])))
            params.append(Parameter(path, tuple(spec["values"]), key_mark=key_mark, value_mark=value_mark,
                                    item_marks=items))
            continue
        low, high, scale = spec["min"], spec["max"], spec.get("scale", "linear")
        where = f"{SWEEP_KIND}.parameters.{path}"
        if not (math.isfinite(low) and math.isfinite(high)):
            problems.append(_at(value_mark, where, "min and max must be finite numbers"))
        elif low > high:
            problems.append(_at(doc.mark_for(("parameters", path, "min")), where,
                                f"min ({low}) is greater than max ({high})"))
        elif scale == "log" and low <= 0:
            problems.append(_at(doc.mark_for(("parameters", path, "min")), where,
                                f"scale: log needs min > 0 (got {low})"))
        else:
            params.append(Parameter(path, None, low, high, scale, spec.get("count", 3), key_mark, value_mark))
    if problems:
        return None, problems
    sweep = Sweep(name, label, data["method"], data["seed"], data["trials"], data.get("metric"),
                  data["over_budget"], tuple(params), doc)
    if sweep.method == "grid" and sweep.grid_size() > sweep.trials_cap:
        sizes = " x ".join(str(len(p.points())) for p in sweep.parameters)
        mark = doc.mark_for(("trials",)) if "trials" in doc.data else doc.key_mark_for(("parameters",))
        return None, [_at(mark, f"{SWEEP_KIND}.trials",
                          f"the grid has {sweep.grid_size()} trials ({sizes}); the cap `trials` is "
                          f"{sweep.trials_cap}: raise it, drop points, or use method: random")]
    return sweep, []


def resolve_trials(sweep: Sweep, tree: Tree) -> tuple[list[tuple[Trial, Any]], list[Problem]]:
    """Resolve every trial's config; problems in the overrides point at sweep.yaml's positions.

    Returns ([(trial, ResolvedConfig)], problems). Problems of the model's own files are not
    repeated here: `validate` reports them once, for the model.
    """
    from gitops import config

    resolved: list[tuple[Trial, Any]] = []
    problems: dict[tuple, Problem] = {}
    for trial in sweep.expand():
        cfg, found = config.resolve(sweep.model, tree, trial.overrides())
        for problem in found:
            if problem.file != "--set":
                continue
            param = sweep.parameters[problem.line - 1]
            unknown = "unknown key" in problem.message or "cannot set a key" in problem.message
            value = dict(trial.values)[param.path]
            mark = param.key_mark if unknown else param.mark_of(value)
            message = problem.message if unknown else f"{problem.message} (value {jsonio.dumps(value)})"
            p = _at(mark or Mark(sweep.file, 1, 1), f"{SWEEP_KIND}.parameters.{param.path}", message)
            problems.setdefault((p.file, p.line, p.col, p.message), p)
        if cfg is not None:
            resolved.append((trial, cfg))
    return resolved, sorted(problems.values())


def check(name: str, tree: Tree, base_cfg: Any) -> list[Problem]:
    """Every problem of a model's sweep.yaml: schema, ranges, grid size, key paths and values, metric."""
    sweep, problems = load(name, tree)
    if sweep is None or problems:
        return problems
    if sweep.metric and base_cfg is not None:
        from gitops import config
        from gitops.config import catalog

        data = config.thaw(base_cfg.as_dict()["data"])
        message = config.metric_problem(sweep.metric, catalog.dataset_task(data), config.num_classes(data))
        if message:
            problems.append(_at(sweep.doc.mark_for(("metric",)), f"{SWEEP_KIND}.metric", message))
    if base_cfg is None:  # the model's own files are invalid: validate reports those first
        return problems
    _, found = resolve_trials(sweep, tree)
    return problems + found


def load_valid(name: str, root: Any) -> Sweep:
    """The model's sweep from the working folder; ConfigError when invalid, UsageError when absent."""
    from gitops.errors import UsageError
    from gitops.repo.tree import FsTree

    found, problems = load(name, FsTree(root))
    if problems:
        raise ConfigError(problems)
    if found is None:
        raise UsageError(f"models/{name} has no {SWEEP_FILE}")
    return found


def trial_overrides(name: str, root: Any, index: int) -> list[str]:
    """The `--set` lines of trial `index` of the model's sweep (what `gitops train --trial N` applies)."""
    from gitops.errors import UsageError

    trials = load_valid(name, root).expand()
    if not 0 <= index < len(trials):
        raise UsageError(f"models/{name}/{SWEEP_FILE} has {len(trials)} trials (0-{len(trials) - 1}); no trial {index}")
    return trials[index].overrides()


def metric_of(sweep: Sweep, cfg: Any) -> str:
    """The metric that ranks the trials: sweep.yaml's, else the release's headline metric."""
    return sweep.metric or cfg.headline_metric()


_PARAMETER_FORM = ("a parameter is either `{values: [...]}` or a range `{min: A, max: B}` "
                   "(optional `scale: linear|log`, `count: N`)")


def _schema_errors(data: Any) -> list[tuple[tuple, str, bool]]:
    """Every schema error of a sweep document as (path, message, at_key), with plain wording."""
    import fastjsonschema

    from gitops.config import jsonschema_tools

    try:  # the common case, a valid sweep, without importing jsonschema (a third of validate's start-up)
        jsonschema_tools.compiled_validator(SWEEP_SCHEMA)(data)
        return []
    except fastjsonschema.JsonSchemaException:
        pass
    out: list[tuple[tuple, str, bool]] = []
    # `$` ends the string, as in JSON Schema (ECMA-262), not before a final newline as in Python's re
    errors = sorted(jsonschema_tools.strict_validator_class()(SWEEP_SCHEMA).iter_errors(data),
                    key=lambda e: (list(map(str, e.absolute_path)), e.message))
    for error in errors:
        path = tuple(error.absolute_path)
        if error.validator == "oneOf":
            items = [(path, _PARAMETER_FORM, False)]
        elif error.validator == "pattern" and error.validator_value == KEY_PATH_PATTERN:
            if not path or path[-1] != error.instance:
                path = (*path, error.instance)
            items = [(path, f"{error.instance!r} is not a key path of model, train or data "
                            "(e.g. train.optimizer.learning_rate)", True)]
        else:
            items = jsonschema_tools.describe_error(error)
        for item in items:
            if item not in out:
                out.append(item)
    return out


def _at(mark: Mark, path: str, message: str) -> Problem:
    return Problem(mark.file, mark.line, mark.col, path, message)
