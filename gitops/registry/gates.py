"""Quality gates, and the one rule for a metric's direction and for comparing two values of a metric.

Direction: every metric declares `higher_is_better` where it is registered (the built-ins in
`catalog.METRICS`, plugin metrics in their `Plugin` spec, refused at registration without it), so
`direction("val/brier")` is a lookup, never a guess from the name. A name nobody registered has no
direction: `direction` returns None (the report then shows the values without a verdict) and
`higher_is_better` raises `UnknownMetric` (configs never get that far: validation refuses a gate,
`best_metric`, `early_stopping.metric` or sweep metric on an unknown metric first).

Comparing: `score(value, higher_is_better)` maps a value onto one axis where larger is better and
NaN is -inf, so a NaN is never better than anything. On that axis:

- `improves(new, best, min_delta, ties)` decides "a new best": `new` must be finite and beat `best`
  by more than `min_delta`; `ties=True` lets an equal value count as a new best (the later step wins,
  as in checkpoint selection), `ties=False` does not (early stopping: an equal value is no progress).
- `rank_key` orders values best first, every non-finite or missing value after the finite ones.
- `change(new, old, higher_is_better)` is the report's verdict: "equal" within 1e-12, else
  "better"/"worse" by direction; a non-finite new value is "worse", a finite one against a
  non-finite baseline "better".
- `regression(new, old, higher_is_better)` is how much worse `new` is, in the metric's units (a
  `max_regression` gate's quantity).

Gates: `evaluate_gates` judges a run's metrics against the `release.gates` of its config: `min`
(floor), `max` (ceiling) and `max_regression` against the baseline release (skipped without one).
`release` refuses a release with a failed gate; `report` shows the same results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gitops.config import catalog
from gitops.errors import GitopsError
from gitops.registry.versions import format_number

EQUAL_TOLERANCE = 1e-12  # two values this close are "equal" in the report and within a regression budget


class UnknownMetric(GitopsError):
    """A metric name no built-in table or installed plugin registered, so it has no direction."""


# --- direction -------------------------------------------------------------------------------------


def direction(metric: str) -> bool | None:
    """The registered direction of `split/name` (or a bare name): True when higher is better, None when
    no built-in or plugin metric of that name is registered."""
    entry = catalog.METRICS.entry(metric.split("/", 1)[-1])
    return entry.higher_is_better if entry is not None else None


def higher_is_better(metric: str) -> bool:
    """The registered direction of `split/name`: True when higher values are better.

    Raises:
        UnknownMetric: no built-in or plugin metric of that name is registered.
    """
    found = direction(metric)
    if found is None:
        known = ", ".join(sorted(catalog.METRICS))
        raise UnknownMetric(f"metric {metric!r} is not registered (built-in or plugin), so its direction is "
                            f"unknown; registered metrics: {known}")
    return found


# --- comparing two values --------------------------------------------------------------------------


def score(value: Any, higher_is_better: bool) -> float:
    """`value` on an axis where larger is better: itself or its negation; NaN is -inf (never better)."""
    value = float(value)
    if math.isnan(value):
        return -math.inf
    return value if higher_is_better else -value


def improves(new: float, best: float | None, *, min_delta: float = 0.0, ties: bool = False) -> bool:
    """Whether score `new` is a new best over score `best` (None: nothing seen yet).

    Both are `score` values. A non-finite `new` (a NaN or infinite metric) never improves. With
    `ties=True` a score equal to `best` counts as a new best (the later one wins); `min_delta` > 0
    asks for a margin (early stopping's `min_delta`, in the metric's units).
    """
    if not math.isfinite(new):
        return False
    if best is None:
        return True
    return new >= best + min_delta if ties else new > best + min_delta


def rank_key(value: Any, higher_is_better: bool) -> tuple[bool, float]:
    """Sort key putting the best value first and any missing or non-finite value after the finite
    ones (callers add their own tie-breaker, e.g. the trial index)."""
    if not _finite(value):
        return (True, 0.0)
    return (False, -score(value, higher_is_better))


def change(new: Any, old: Any, higher_is_better: bool | None) -> str:
    """The verdict on `new` against `old`: "equal", "better", "worse" or "none".

    Both finite: "equal" within `EQUAL_TOLERANCE`, else "better"/"worse" by direction ("none" when
    the direction is unknown). A non-finite `new` (inf/NaN) is "worse": never an improvement; a finite
    `new` against a non-finite `old` is "better"; anything else (a side missing) is "none".
    """
    if _finite(new) and _finite(old):
        if math.isclose(new, old, rel_tol=0, abs_tol=EQUAL_TOLERANCE):
            return "equal"
        if higher_is_better is None:
            return "none"
        return "better" if score(new, higher_is_better) > score(old, higher_is_better) else "worse"
    if _non_finite(new):
        return "worse"
    if _finite(new) and _non_finite(old):
        return "better"
    return "none"


def regression(new: float, old: float, higher_is_better: bool) -> float:
    """How much worse `new` is than `old`, in the metric's units (negative: it improved)."""
    return score(old, higher_is_better) - score(new, higher_is_better)


# --- gates -----------------------------------------------------------------------------------------


@dataclass
class GateResult:
    """One check of one gate: `kind` is min | max | max_regression, `status` pass | fail | skipped."""

    metric: str
    kind: str  # min | max | max_regression
    threshold: float
    value: float | None
    status: str  # pass | fail | skipped
    note: str = ""

    def as_dict(self) -> dict:
        """The check as a JSON-ready dict (keys as the fields; `value` None when the metric was missing)."""
        return {"metric": self.metric, "kind": self.kind, "threshold": self.threshold, "value": self.value,
                "status": self.status, "note": self.note}


def evaluate_gates(gates: list[dict], metrics: dict, baseline: dict | None) -> list[GateResult]:
    """min/max floors and ceilings, and max_regression against the baseline (skipped without one).

    Args:
        gates: `release.gates` entries, each {"metric": "split/name", and any of "min", "max",
            "max_regression"}.
        metrics: the run's metrics.json ("split/name" -> value).
        baseline: the baseline release's metrics, or None when there is none.

    Returns:
        One GateResult per bound of each gate, in order. A missing or non-finite value fails.

    Raises:
        UnknownMetric: a max_regression gate on a metric nobody registered (validation refuses
            such configs before this is reached).
    """
    results = []
    for gate in gates:
        metric = gate["metric"]
        value = metrics.get(metric)
        for kind in ("min", "max", "max_regression"):
            if kind not in gate:
                continue
            threshold = float(gate[kind])
            if value is None or not _finite(value):
                note = "metric missing from the run" if value is None else f"value is {_num(value)}, not a finite number"
                results.append(GateResult(metric, kind, threshold, None, "fail", note))
                continue
            if kind == "min":
                ok = value >= threshold
                results.append(GateResult(metric, kind, threshold, value, "pass" if ok else "fail",
                                          f"{format_number(value)} {'≥' if ok else '<'} {threshold:g}"))
            elif kind == "max":
                ok = value <= threshold
                results.append(GateResult(metric, kind, threshold, value, "pass" if ok else "fail",
                                          f"{format_number(value)} {'≤' if ok else '>'} {threshold:g}"))
            else:
                old = (baseline or {}).get(metric)
                if old is None or not _finite(old):
                    note = ("no baseline release to compare with" if old is None
                            else f"the baseline's value is {_num(old)}, nothing to regress from")
                    results.append(GateResult(metric, kind, threshold, value, "skipped", note))
                    continue
                ok = regression(value, old, higher_is_better(metric)) <= threshold + EQUAL_TOLERANCE
                note = (f"changed by {value - old:+.4g} vs baseline {format_number(old)}; "
                        f"allowed regression {threshold:g}")
                results.append(GateResult(metric, kind, threshold, value, "pass" if ok else "fail", note))
    return results


def note_seeds(results: list[GateResult], repeats: int, baseline_repeats: int) -> None:
    """Say on each result what it judged when either side is a mean over seeds (`train.repeats`)."""
    if repeats <= 1 and baseline_repeats <= 1:
        return
    for g in results:
        on = f"gate on the mean of {repeats} seeds" if repeats > 1 else "gate on a single seed"
        if g.kind == "max_regression" and baseline_repeats > 1 and g.status != "skipped":
            on += f"; baseline: mean of {baseline_repeats} seeds"
        g.note = f"{g.note} ({on})" if g.note else on


def failed(results: list[GateResult]) -> list[GateResult]:
    """The results that fail (a release with any is refused; a report with any exits 1)."""
    return [g for g in results if g.status == "fail"]


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _non_finite(x: Any) -> bool:
    return isinstance(x, float) and not math.isfinite(x)


def _num(x: Any) -> str:
    return "—" if x is None else format_number(x)
