"""A sweep's trials as results: which run is which trial, their ranking, and what mattered.

Trials are matched to run folders by training fingerprint (recomputed from sweep.yaml and the model's
files), never by anything a run folder says about itself, so the local runner, PR artifacts and the
run cache all feed the same table. Jax-free: the PR report calls it on a GitHub-hosted runner.

Importance (stated in every table that shows it): for a parameter whose points are listed or on a
grid, the share of the ranking metric's variance over finished trials explained by that parameter's
value (η², a one-way analysis of variance); for a parameter drawn at random from a range, where
values rarely repeat, the squared Spearman rank correlation between value and metric. Both lie in
[0, 1]; with fewer than three finished trials there is none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops import jsonio
from gitops.config.sweep import Sweep, Trial
from gitops.registry import gates

IMPORTANCE_RULE = ("importance: share of the metric's variance across finished trials explained by the "
                   "parameter (η² of a one-way grouping by value; squared Spearman rank correlation for "
                   "values drawn at random from a range)")


@dataclass
class TrialResult:
    """One trial and what is known of its run."""

    trial: Trial
    fingerprint: str  # training fingerprint (full)
    status: str  # finished | stopped | running | missing
    run: Path | None = None
    value: float | None = None  # the ranking metric (the mean when the run had repeats)
    std: float | None = None
    metrics: dict = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict:
        """The trial's row in the sweep's JSON output: its parameters plus fingerprint (12 hex), status,
        run folder, value and std (NaN/inf as None) and note.
        """
        return {**self.trial.as_dict(), "fingerprint": self.fingerprint[:12], "status": self.status,
                "run": str(self.run) if self.run else None, "value": _json_number(self.value),
                "std": _json_number(self.std), "note": self.note}


def collect(resolved: Iterable[tuple[Trial, Any]], runs: Mapping[str, Path], metric: str,
            stopped: Mapping[str, str] | None = None) -> list[TrialResult]:
    """Results of every trial; `runs` maps training fingerprints to run folders (finished or not).

    Args:
        resolved: (trial, ResolvedConfig) pairs from `sweep.resolve_trials`.
        runs: training fingerprint -> run folder.
        metric: the ranking metric, e.g. "val/accuracy".
        stopped: training fingerprint -> note, for trials successive halving stopped.
    """
    from gitops.registry.runs import read_run, read_spread

    stopped = stopped or {}
    results = []
    for trial, cfg in resolved:
        fp = cfg.training_fingerprint
        folder = runs.get(fp)
        if folder is None:
            results.append(TrialResult(trial, fp, "missing", note="no run folder (not trained, or training failed)"))
            continue
        info = read_run(folder)
        if not info.finished:
            status = "stopped" if fp in stopped else "running"
            results.append(TrialResult(trial, fp, status, folder, note=stopped.get(fp, "not finished")))
            continue
        spread = read_spread(folder) or {}
        summary = (spread.get("metrics") or {}).get(metric) if isinstance(spread, dict) else None
        std = summary.get("std") if isinstance(summary, dict) and (summary.get("n") or 1) > 1 else None
        value = info.metrics.get(metric)
        results.append(TrialResult(trial, fp, "finished", folder, _finite_or_none(value), _finite_or_none(std),
                                   dict(info.metrics)))
    return results


def ranked(results: list[TrialResult], metric: str) -> list[TrialResult]:
    """Finished trials best first (by the metric's direction), then the rest in trial order.

    A finished trial whose metric is missing or not finite ranks after every finite one.
    """
    higher = gates.higher_is_better(metric)
    finished = [r for r in results if r.status == "finished"]
    finished.sort(key=lambda r: (*gates.rank_key(r.value, higher), r.trial.index))
    rest = sorted((r for r in results if r.status != "finished"), key=lambda r: r.trial.index)
    return finished + rest


def best(results: list[TrialResult], metric: str) -> TrialResult | None:
    """The best finished trial by `metric` (higher or lower is better by its name); None when none has a value."""
    order = ranked(results, metric)
    return order[0] if order and order[0].status == "finished" and order[0].value is not None else None


def importance(sweep: Sweep, results: list[TrialResult]) -> dict[str, float]:
    """Per parameter, its importance in [0, 1] (see IMPORTANCE_RULE); {} with fewer than 3 finished trials."""
    done = [r for r in results if r.status == "finished" and r.value is not None]
    if len(done) < 3:
        return {}
    ys = [r.value for r in done]
    out = {}
    for param in sweep.parameters:
        xs = [dict(r.trial.values)[param.path] for r in done]
        if sweep.method == "random" and param.values is None:
            rho = _spearman([float(x) for x in xs], ys)
            out[param.path] = rho * rho if rho is not None else 0.0
        else:
            out[param.path] = _eta_squared(xs, ys)
    return out


def _eta_squared(xs: list[Any], ys: list[float]) -> float:
    mean = math.fsum(ys) / len(ys)
    total = math.fsum((y - mean) ** 2 for y in ys)
    if total <= 0:
        return 0.0
    groups: dict[str, list[float]] = {}
    for x, y in zip(xs, ys, strict=True):
        groups.setdefault(jsonio.dumps(x, sort_keys=True), []).append(y)
    between = math.fsum(len(g) * (math.fsum(g) / len(g) - mean) ** 2 for g in groups.values())
    return max(0.0, min(1.0, between / total))


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    rx, ry = _ranks(xs), _ranks(ys)
    n = len(xs)
    mx, my = math.fsum(rx) / n, math.fsum(ry) / n
    sx = math.sqrt(math.fsum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(math.fsum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return None
    return math.fsum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True)) / (sx * sy)


def _finite_or_none(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _json_number(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def _value_text(value: Any) -> str:
    return jsonio.dumps(value, separators=(",", ":")) if not isinstance(value, float) else f"{value:.6g}"


def table_rows(sweep: Sweep, results: list[TrialResult], metric: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the ranked trials table, shared by the terminal and the Markdown views."""
    from gitops.registry.versions import format_number

    header = ["rank", "trial", *[p.path for p in sweep.parameters], metric, "status"]
    rows = []
    rank = 0
    for r in ranked(results, metric):
        if r.status == "finished":
            rank += 1
        value = "—" if r.value is None else format_number(r.value)
        if r.std is not None:
            value += f" ± {r.std:.2g}"
        status = r.status if r.status == "finished" or not r.note else (
            r.note if r.status == "stopped" else f"{r.status}: {r.note}")
        rows.append([str(rank) if r.status == "finished" else "—", f"#{r.trial.index}",
                     *[_value_text(v) for _, v in r.trial.values], value, status])
    return header, rows


def markdown(sweep: Sweep, results: list[TrialResult], metric: str, *, sampled_from: int | None = None) -> str:
    """The PR comment's sweep section: ranked trials, importance, and how to commit the winner."""
    arrow = "↑" if gates.higher_is_better(metric) else "↓"
    done = sum(r.status == "finished" for r in results)
    lines = [f"**Sweep** `{sweep.file}`: {sweep.method}, {len(results)} trial(s), {done} finished, "
             f"ranked by {metric} ({arrow} better)"]
    if sampled_from:
        lines.append(f"_Sampled {len(results)} of {sampled_from} trials to fit the PR budget (seed {sweep.seed})._")
    header, rows = table_rows(sweep, results, metric)
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    scores = importance(sweep, results)
    if scores:
        lines += ["", "Importance: " + ", ".join(f"`{k}` {v:.2f}" for k, v in
                                                 sorted(scores.items(), key=lambda kv: -kv[1])),
                  f"_{IMPORTANCE_RULE}._"]
    winner = best(results, metric)
    if winner is not None:
        sets = " ".join(f"--set '{line}'" for line in winner.trial.overrides())
        lines += ["", f"Best: trial #{winner.trial.index}. Commit it with "
                      f"`gitops sweep apply {sweep.model} --trial {winner.trial.index} --commit` "
                      f"(or train it by hand: `gitops train {sweep.model} {sets}`)."]
    return "\n".join(lines) + "\n"


def as_json(sweep: Sweep, results: list[TrialResult], metric: str, *, sampled_from: int | None = None) -> dict:
    """The sweep's results as a JSON-ready dict: file, method, metric and its direction, `best_trial` (index or None),
    per-parameter importance, and every trial ranked best first. `sampled_from`: the grid size a random subset
    was drawn from (None when every trial ran).
    """
    winner = best(results, metric)
    return {
        "file": sweep.file,
        "method": sweep.method,
        "metric": metric,
        "higher_is_better": gates.higher_is_better(metric),
        "sampled_from": sampled_from,
        "best_trial": winner.trial.index if winner else None,
        "importance": importance(sweep, results),
        "trials": [r.as_dict() for r in ranked(results, metric)],
    }


def attach_to_report(root: Path, model_reports: list) -> list:
    """Fold a PR's sweep trials into one section per sweep: the best trial's full comparison with the
    release (noise bands, gates) plus the ranked trials table. Other reports pass through unchanged.

    Args:
        root: repository root (sweep.yaml and the model's files are read from its working folder,
            which in CI is the PR head).
        model_reports: `report.ModelReport`s, one per run folder.

    Returns:
        The reports to show, in the given order; a trial that is also the model's current config
        (same training fingerprint) stays as that model's own report too.
    """
    from gitops import config
    from gitops.config import sweep
    from gitops.repo.tree import FsTree

    tree = FsTree(root)
    by_model: dict[str, list] = {}
    for m in model_reports:
        by_model.setdefault(m.model, []).append(m)
    hidden: set[int] = set()
    for model, reports in by_model.items():
        try:
            spec, problems = sweep.load(model, tree)
            if spec is None or problems:
                continue
            resolved, problems = sweep.resolve_trials(spec, tree)
            base = config.load(model, root)
        except Exception:  # noqa: BLE001 - a model missing at head or invalid: report its runs plainly
            continue
        fps = {cfg.training_fingerprint for _, cfg in resolved}
        trial_reports = {m.training_fingerprint: m for m in reports if m.training_fingerprint in fps}
        if not trial_reports:
            continue
        metric = sweep.metric_of(spec, base)
        found = collect(resolved, {fp: Path(m.run) for fp, m in trial_reports.items()}, metric)
        winner = best(found, metric)
        keep = trial_reports.get(winner.fingerprint) if winner else None
        for fp, m in trial_reports.items():
            if m is not keep and fp != base.training_fingerprint:
                hidden.add(id(m))
        target = keep or next(iter(trial_reports.values()))
        target.sweep = {"markdown": markdown(spec, found, metric), "json": as_json(spec, found, metric),
                        "best_trial": winner.trial.index if winner else None}
    return [m for m in model_reports if id(m) not in hidden]
