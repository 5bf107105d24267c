"""Budgets: refuse a PR plan that would spend more than the repository allows.

`ci plan` runs on a GitHub-hosted runner without jax, so the cost estimate uses what is already
known: each model's total steps from its resolved config and the steps/s measured by its latest
finished run (a run folder in `runs/` or the runner cache, or the latest release's manifest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gitops.config.settings import Budgets
from gitops.records import record
from gitops.registry.tags import instant


@record(frozen=True)
class Cost:
    """The estimated cost of training one model in a PR: `steps` optimizer steps (repeats included) at the
    last measured `steps_per_second` (None when the model never trained).
    """

    model: str
    steps: int | None  # total optimizer steps (x repeats)
    steps_per_second: float | None  # last measured rate for this model, None when never trained

    @property
    def minutes(self) -> float | None:
        """Estimated device minutes (steps / steps_per_second / 60); None when either is unknown."""
        if self.steps is None or not self.steps_per_second:
            return None
        return self.steps / self.steps_per_second / 60.0


def violations(costs: list[Cost], budgets: Budgets) -> list[str]:
    """Human-readable reasons the plan is over budget ([] when within)."""
    found = []
    if budgets.max_models_per_pr is not None and len(costs) > budgets.max_models_per_pr:
        found.append(f"{len(costs)} models to train; the budget allows {budgets.max_models_per_pr} per PR")
    if budgets.max_steps_per_model is not None:
        for cost in costs:
            if cost.steps is not None and cost.steps > budgets.max_steps_per_model:
                found.append(f"{cost.model}: {cost.steps} steps; the budget allows {budgets.max_steps_per_model} per model")
    if budgets.max_device_minutes_per_pr is not None:
        known = [c.minutes for c in costs if c.minutes is not None]
        total = sum(known)
        if total > budgets.max_device_minutes_per_pr:
            found.append(
                f"estimated {total:.1f} device-minutes (from each model's last measured steps/s); "
                f"the budget allows {budgets.max_device_minutes_per_pr:g} per PR"
            )
    return found


def enforce(costs: list[Cost], budgets: Budgets, labels: Iterable[str]) -> tuple[list[str], bool]:
    """(violations, lifted): lifted when the override label is on the PR."""
    found = violations(costs, budgets)
    return found, bool(found) and budgets.override_label in set(labels)


def measured_rate(root, model: str) -> float | None:
    """steps/s of the model's most recent finished run (runs/ or $GITOPS_RUN_CACHE), if any."""
    import json

    from gitops.registry import runs

    folders = [base / model for base in runs.run_roots(root)]
    newest: tuple[float, float] | None = None
    for folder in folders:
        for manifest_path in folder.glob("*/manifest.json") if folder.is_dir() else []:
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            rate, finished = manifest.get("steps_per_second"), manifest.get("finished_at")
            when = instant(finished) if finished else None  # an instant: dates may carry offsets
            if rate and when is not None and (newest is None or when > newest[0]):
                newest = (when, float(rate))
    return newest[1] if newest else None


def plan_costs(root, head: str | None, models: list[str]) -> list[Cost]:
    """Steps and last measured rate of each model the plan trains, from its config at `head` (None: the working tree)."""
    from gitops import config
    from gitops.registry.plan import reading
    from gitops.repo.tree import FsTree, GitTree

    tree = GitTree(root, head) if head else FsTree(root)
    costs = []
    with reading(root, tree):  # a pull request's plugin package is read as data, as the plan read it
        for model in models:
            cfg = config.load(model, root, tree=tree)
            steps = config.total_steps(config.thaw(cfg.as_dict()["train"]), cfg.as_dict()["data"])
            costs.append(Cost(model, steps * cfg.train.repeats if steps else None, measured_rate(root, model)))
    return costs


def trial_costs(root, head: str | None, model: str, trials: list[dict]) -> list[Cost]:
    """Steps and rate of each sweep trial (its config is the model's plus the trial's `set` lines); head None: the working tree."""
    from gitops import config
    from gitops.registry.plan import reading
    from gitops.repo.tree import FsTree, GitTree

    tree = GitTree(root, head) if head else FsTree(root)
    rate = measured_rate(root, model)
    costs = []
    with reading(root, tree):
        for trial in trials:
            cfg = config.load(model, root, trial["set"], tree=tree)
            steps = config.total_steps(config.thaw(cfg.as_dict()["train"]), cfg.as_dict()["data"])
            costs.append(Cost(f"{model} trial #{trial['trial']}", steps * cfg.train.repeats if steps else None, rate))
    return costs


def fit_sweeps(base: list[Cost], sweeps: list, budgets: Budgets, costs_of: Callable[[object], list[Cost]]) -> list[Cost]:
    """All costs of a plan with sweeps; a sweep with `over_budget: sample` keeps a seeded sample that fits.

    Sampling keeps the most trials (k) for which the plan is within budget, chosen by
    `random.Random(seed).sample` and listed in trial order; the sweep records how many it had.
    With no k > 0 that fits, every trial stays and the budget refuses the plan as usual.
    """
    import random

    total = list(base)
    for sweep_plan in sweeps:
        costs = costs_of(sweep_plan)
        if sweep_plan.over_budget == "sample" and violations(total + costs, budgets):
            n = len(sweep_plan.trials)
            picks = random.Random(sweep_plan.seed).sample(range(n), n)
            for k in range(n - 1, 0, -1):
                keep = sorted(picks[:k])
                if not violations(total + [costs[i] for i in keep], budgets):
                    sweep_plan.sampled_from = n
                    sweep_plan.trials = [sweep_plan.trials[i] for i in keep]
                    costs = [costs[i] for i in keep]
                    break
        total += costs
    return total
