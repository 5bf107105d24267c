"""Mean and spread of a metric over seeds, and the noise band a report compares deltas with.

Pure Python (no numpy, no jax): reports, releases and the site read these without the training stack.

The noise rule (the report's footer states it): a change between two means is *noise* when
`|delta| <= NOISE_Z * SE`, with `SE = sqrt(s1**2 / n1 + s2**2 / n2)` the standard error of the
difference of two means (Welch's), `s` the sample standard deviation over seeds (ddof 1) and `n` the
seed count. A side trained once (n = 1) has no spread of its own and borrows the other side's `s`:
seed noise is a property of the model and recipe, which a PR usually changes only a little.

With no spread on either side (both trained once) a band still keeps sub-noise deltas from being
flagged worse, by the *single-seed rule*:
- a proportion metric (accuracy, top-k accuracy) measured on a held-out split of `n` examples has
  the sampling noise of that split: `|delta| <= NOISE_Z * sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n)`
  (binomial standard error of each side, taken as independent, which overstates a paired difference
  a little: a conservative band);
- any other metric, or a split of unknown size: `|delta| <= SINGLE_SEED_FLOOR * |baseline|`, a
  floor (0.5 %) for run-to-run variation that one run cannot measure. It is a convention, not a
  measurement: set `train.repeats` for a band measured over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

NOISE_Z = 2.0  # about a 95 % two-sided band for a normal difference; see the module docstring
SINGLE_SEED_FLOOR = 0.005
SINGLE_SEED_RULE = ("≈ noise (single seed): for accuracy-type metrics |Δ| ≤ 2 × √(p₁(1−p₁)/n + p₂(1−p₂)/n), the "
                    "sampling noise of the n held-out examples; for other metrics |Δ| ≤ 0.5 % of the baseline "
                    "(a floor, not a measurement: train.repeats measures the band over seeds)")
NOISE_RULE = ("≈ noise: |Δ| ≤ 2 × SE of the difference of the means, SE = √(s₁²/n₁ + s₂²/n₂), "
              "s the standard deviation over seeds (a side trained once borrows the other side's s)")


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """{values, mean, std, min, max, n} of one metric's per-seed values; std is the sample std (ddof 1), 0 for n = 1."""
    vals = [float(v) for v in values]
    n = len(vals)
    finite = [v for v in vals if math.isfinite(v)]
    if not finite:
        return {"values": vals, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": n}
    mean = math.fsum(finite) / len(finite) if len(finite) == n else math.nan
    std = 0.0
    if len(finite) == n and n > 1:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    elif len(finite) != n:
        std = math.nan
    return {"values": vals, "mean": mean, "std": std, "min": min(finite), "max": max(finite), "n": n}


def summarize_runs(per_seed: Sequence[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric (the union over seeds, sorted), the summary of its values; a seed lacking a metric gives NaN."""
    names = sorted({name for metrics in per_seed for name in metrics})
    return {name: summarize([m.get(name, math.nan) for m in per_seed]) for name in names}


def means(spread: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Per metric, the mean over seeds of a `summarize_runs` result: {name: mean}.

    NaN where a seed's value was not finite.
    """
    return {name: s["mean"] for name, s in spread.items()}


def closest_to_mean(per_seed: Sequence[Mapping[str, float]], metric: str) -> int:
    """Index of the seed whose `metric` is nearest the mean over seeds (ties: the lower index); 0 without it."""
    values = [m.get(metric) for m in per_seed]
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return 0
    mean = math.fsum(values) / len(values)
    return min(range(len(values)), key=lambda i: (abs(values[i] - mean), i))


def noise_band(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> float | None:
    """NOISE_Z x the standard error of mean(a) - mean(b); None when neither side has a spread.

    `a` and `b` are summaries ({std, n}) or None for a single run (n = 1, spread borrowed).
    """
    sides = [(s.get("std"), int(s.get("n") or 1)) if s else (None, 1) for s in (a, b)]
    known = [std for std, n in sides if n > 1 and _finite(std)]
    if not known:
        return None
    borrowed = max(known)
    variance = math.fsum((std if n > 1 and _finite(std) else borrowed) ** 2 / n for std, n in sides)
    return NOISE_Z * math.sqrt(variance)


def is_proportion(metric: str) -> bool:
    """A metric that is a fraction of examples (accuracy, top3_accuracy...): binomial noise applies."""
    return metric.rsplit("/", 1)[-1].endswith("accuracy")


def single_seed_band(metric: str, old: float, new: float, n: int | None) -> tuple[float, str]:
    """(band, basis) for two single-seed values of `metric`; see the module docstring's single-seed rule.

    Args:
        metric: `split/name`, e.g. test/accuracy.
        old, new: the baseline's and this run's values (finite).
        n: examples in the split the metric was measured on (None when unknown).
    Returns:
        The band in the metric's units and its basis: "binomial (n=270)" or "0.5% floor".
    """
    if is_proportion(metric) and n and 0.0 <= old <= 1.0 and 0.0 <= new <= 1.0:
        return NOISE_Z * math.sqrt((old * (1 - old) + new * (1 - new)) / n), f"binomial (n={n})"
    return SINGLE_SEED_FLOOR * abs(old), "0.5% floor"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def spread_of(doc: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The per-metric summaries of a metrics_spread document (or {}), tolerant of missing parts."""
    if not isinstance(doc, Mapping):
        return {}
    metrics = doc.get("metrics")
    return {k: dict(v) for k, v in metrics.items() if isinstance(v, Mapping)} if isinstance(metrics, Mapping) else {}


def seeds_count(doc: Mapping[str, Any] | None) -> int:
    """`n` (the number of seeds) of a metrics_spread document; 1 for a single run or a malformed document."""
    if not isinstance(doc, Mapping):
        return 1
    n = doc.get("n")
    return int(n) if isinstance(n, int) and n > 0 else 1

